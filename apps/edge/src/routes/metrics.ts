import { router } from "../app.js";
import { METRIC_HELP } from "../dispatch/metrics.js";
import { shardsFrom } from "../dispatch/shards.js";
import { requireAuth } from "../lib/auth.js";
import { modelIds } from "../lib/models.js";

type Labels = Record<string, string | number>;
type Row = { labels: Labels; value: number };

const GAUGE_HELP = {
  p2pa_workers_connected: "Workers connected now",
  p2pa_workers_with_room: "Connected workers with room for another task now",
  p2pa_tasks: "Tasks by state",
  p2pa_tasks_ready: "Tasks that could be leased now (pending, past their retry backoff)",
  p2pa_oldest_ready_task_age_seconds:
    "How long the oldest task that could be leased has waited, per shard",
  p2pa_shard_stalled:
    "1 while a shard has work waiting over the stall bound beside a worker with room",
} as const;

function labelText(labels: Labels): string {
  const parts = Object.entries(labels).map(
    ([k, v]) => `${k}="${String(v).replaceAll("\\", "\\\\").replaceAll('"', '\\"')}"`,
  );
  return parts.length ? `{${parts.join(",")}}` : "";
}

/**
 * Coordinator metrics in the Prometheus text format, for operators (they cover every tenant): counters summed over every shard of
 * every model, and gauges per model or per shard (workers, tasks, the stall watchdog's view).
 */
export const metricRoutes = router().get("/v1/metrics", requireAuth("admin"), async (c) => {
  const counters = new Map<string, Map<string, number>>();
  const gauges = new Map<keyof typeof GAUGE_HELP, Row[]>();
  const gauge = (name: keyof typeof GAUGE_HELP, labels: Labels, value: number) =>
    gauges.set(name, [...(gauges.get(name) ?? []), { labels, value }]);
  const tasksByState = new Map<string, number>();
  for (const model of modelIds(c.env)) {
    const shards = shardsFrom(c.env, model, 0);
    const snapshots = await Promise.all(shards.map((s) => Promise.all([s.counters(), s.stats()])));
    let connected = 0;
    let withRoom = 0;
    let ready = 0;
    snapshots.forEach(([rows, stats], shard) => {
      for (const k of rows) {
        const byLabel = counters.get(k.name) ?? new Map<string, number>();
        byLabel.set(k.label, (byLabel.get(k.label) ?? 0) + k.value);
        counters.set(k.name, byLabel);
      }
      for (const [state, n] of Object.entries(stats.tasks))
        tasksByState.set(state, (tasksByState.get(state) ?? 0) + n);
      connected += stats.health.workers;
      withRoom += stats.health.workersWithRoom;
      ready += stats.health.readyTasks;
      gauge(
        "p2pa_oldest_ready_task_age_seconds",
        { model, shard },
        stats.health.oldestReadyMs / 1000,
      );
      gauge("p2pa_shard_stalled", { model, shard }, stats.health.stalled ? 1 : 0);
    });
    gauge("p2pa_workers_connected", { model }, connected);
    gauge("p2pa_workers_with_room", { model }, withRoom);
    gauge("p2pa_tasks_ready", { model }, ready);
  }
  for (const [state, n] of tasksByState) gauge("p2pa_tasks", { state }, n);

  const lines: string[] = [];
  const emit = (name: string, type: string, help: string, rows: Row[]) => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const r of rows) lines.push(`${name}${labelText(r.labels)} ${r.value}`);
  };
  for (const [name, help] of Object.entries(METRIC_HELP)) {
    const byLabel = counters.get(name);
    const rows: Row[] = byLabel
      ? [...byLabel].map(([label, value]) => ({
          labels: (label ? { kind: label } : {}) as Labels,
          value,
        }))
      : [{ labels: {}, value: 0 }];
    emit(name, "counter", help, rows);
  }
  for (const [name, help] of Object.entries(GAUGE_HELP))
    emit(name, "gauge", help, gauges.get(name as keyof typeof GAUGE_HELP) ?? []);
  return c.text(`${lines.join("\n")}\n`, 200, {
    "Content-Type": "text/plain; version=0.0.4; charset=utf-8",
  });
});
