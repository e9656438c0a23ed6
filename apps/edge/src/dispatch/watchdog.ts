import type { Peer } from "./peers.js";

/** Work ready this long while a worker of its model has room is a stall. */
export const STALL_MS = 5_000;

/** A shard's health as the watchdog sees it; `/healthz` and `/v1/metrics` report it. */
export interface ShardHealth {
  /** Tasks that could be leased now. */
  readyTasks: number;
  /** How long the oldest of them has waited, in ms (0 when none waits). */
  oldestReadyMs: number;
  /** Connected workers, and those of them with room for another task. */
  workers: number;
  workersWithRoom: number;
  /** Work has waited over STALL_MS while a worker that serves its model had room. */
  stalled: boolean;
}

/**
 * Judges a shard from its ready work and its workers' room. After every event the Dispatcher
 * leases what fits, so work a worker with room could take should never wait; when it does,
 * some path forgot to dispatch, and the watchdog (run from the alarm and from heartbeats) says
 * so and dispatches. `leasableSince(peer, model)` answers with the lease's own rule (pools,
 * donors that already answered a task), so work no connected worker may take is not a stall.
 */
export function judge(
  ready: Map<string, { tasks: number; since: number }>,
  peers: { peer: Readonly<Peer>; room: number }[],
  now: number,
  leasableSince: (peer: Readonly<Peer>, model: string) => number | null,
): ShardHealth {
  let readyTasks = 0;
  let oldest = now;
  let stalled = false;
  for (const [model, r] of ready) {
    readyTasks += r.tasks;
    oldest = Math.min(oldest, r.since);
    if (now - r.since <= STALL_MS) continue;
    // A worker back from a cool-down only just got its room: not a stall yet.
    stalled ||= peers.some((p) => {
      if (p.room <= 0 || p.peer.budget.coolUntil > now - STALL_MS) return false;
      if (!p.peer.hello?.models.some((m) => m.id === model)) return false;
      const since = leasableSince(p.peer, model);
      return since !== null && now - since > STALL_MS;
    });
  }
  return {
    readyTasks,
    oldestReadyMs: readyTasks ? now - oldest : 0,
    workers: peers.length,
    workersWithRoom: peers.filter((p) => p.room > 0).length,
    stalled,
  };
}
