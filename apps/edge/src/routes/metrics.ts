import { MODELS } from "@p2pa/shared";
import { router } from "../app.js";
import { METRIC_HELP } from "../dispatch/metrics.js";
import { shardsFrom } from "../dispatch/shards.js";
import { requireAuth } from "../lib/auth.js";

/**
 * Coordinator metrics in the Prometheus text format, summed over every shard of every model,
 * with gauges for connected workers and tasks by state.
 */
export const metricRoutes = router().get("/v1/metrics", requireAuth("api"), async (c) => {
  const totals = new Map<string, number>();
  const gauges = new Map<string, number>();
  const add = (m: Map<string, number>, key: string, v: number) => m.set(key, (m.get(key) ?? 0) + v);
  for (const model of Object.keys(MODELS)) {
    for (const shard of shardsFrom(c.env, model, 0)) {
      const [counters, stats] = await Promise.all([shard.counters(), shard.stats()]);
      for (const k of counters) add(totals, `${k.name}\u0000${k.label}`, k.value);
      add(gauges, `p2pa_workers_connected\u0000model=${model}`, stats.workers.length);
      for (const [state, n] of Object.entries(stats.tasks))
        add(gauges, `p2pa_tasks\u0000state=${state}`, n);
    }
  }
  const lines: string[] = [];
  const emit = (name: string, type: string, help: string, rows: [string, number][]) => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [label, v] of rows) lines.push(`${name}${label ? `{${label}}` : ""} ${v}`);
  };
  const byName = (m: Map<string, number>) => {
    const out = new Map<string, [string, number][]>();
    for (const [key, v] of m) {
      const [name, label] = key.split("\u0000") as [string, string];
      const lab = label.includes("=")
        ? label.replace(/^(\w+)=(.*)$/, '$1="$2"')
        : label
          ? `kind="${label}"`
          : "";
      out.set(name, [...(out.get(name) ?? []), [lab, v]]);
    }
    return out;
  };
  for (const [name, help] of Object.entries(METRIC_HELP))
    emit(name, "counter", help, byName(totals).get(name) ?? [["", 0]]);
  const g = byName(gauges);
  emit(
    "p2pa_workers_connected",
    "gauge",
    "Workers connected now",
    g.get("p2pa_workers_connected") ?? [],
  );
  emit("p2pa_tasks", "gauge", "Tasks by state", g.get("p2pa_tasks") ?? []);
  return c.text(`${lines.join("\n")}\n`, 200, {
    "Content-Type": "text/plain; version=0.0.4; charset=utf-8",
  });
});
