import type { ModelPart, StatusSource } from "./status.js";
import type { ConnectionState, WindowView, Worker, WorkerStats } from "./worker.js";

/** One model a worker process serves, over its own connection (a Worker). */
interface ModelConnection {
  model: string;
  worker: StatusSource & Pick<Worker, "stop">;
}

/**
 * The state several connections show as one: theirs when they agree, else the one that needs
 * attention first (a connection down, then one not up yet, then one stopping).
 */
export function combinedState(states: readonly ConnectionState[]): ConnectionState {
  const first = states[0] ?? "connecting";
  if (states.every((s) => s === first)) return first;
  for (const s of ["reconnecting", "connecting", "draining"] as const)
    if (states.includes(s)) return s;
  // Some connected, some stopped: the process is on its way out.
  return "draining";
}

/**
 * The connections of one worker process, one per model, seen as one worker by the status line
 * and `--status-port` (sums over the models, each model also on its own), and stopped together.
 */
export class WorkerGroup implements StatusSource {
  constructor(readonly members: readonly ModelConnection[]) {
    if (members.length === 0) throw new Error("a worker group needs at least one model");
  }

  /** With one model, that worker's own figures; with several, their sums. */
  get stats(): WorkerStats {
    const all = this.members.map((m) => m.worker.stats);
    const [only] = all;
    if (only && all.length === 1) return only;
    const sum = (pick: (s: WorkerStats) => number) => all.reduce((n, s) => n + pick(s), 0);
    return {
      state: combinedState(all.map((s) => s.state)),
      // Each connection is a worker of its own on the server: see models().
      workerId: null,
      tasksDone: sum((s) => s.tasksDone),
      chunksDone: sum((s) => s.chunksDone),
      embedsDone: sum((s) => s.embedsDone),
      rejected: sum((s) => s.rejected),
      startedAt: Math.min(...all.map((s) => s.startedAt)),
      inferenceMs: sum((s) => s.inferenceMs),
    };
  }

  window(): WindowView {
    const all = this.members.map((m) => m.worker.window());
    const [only] = all;
    if (only && all.length === 1) return only;
    const sum = (pick: (w: WindowView) => number) => all.reduce((n, w) => n + pick(w), 0);
    return {
      capacity: sum((w) => w.capacity),
      queued: sum((w) => w.queued),
      computing: sum((w) => w.computing),
      room: sum((w) => w.room),
      awaitingAck: sum((w) => w.awaitingAck),
      leaseIds: all.flatMap((w) => w.leaseIds),
    };
  }

  inferenceMsAt(now = performance.now()): number {
    return this.members.reduce((n, m) => n + m.worker.inferenceMsAt(now), 0);
  }

  tasksHeld(): number {
    return this.members.reduce((n, m) => n + m.worker.tasksHeld(), 0);
  }

  models(): ModelPart[] {
    return this.members.map((m) => ({ model: m.model, source: m.worker }));
  }

  /** Stops every connection at once (each drains as a single worker does). */
  async stop(timeoutMs?: number): Promise<void> {
    await Promise.all(this.members.map((m) => m.worker.stop(timeoutMs)));
  }
}
