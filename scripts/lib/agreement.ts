import { DEV_CREDENTIALS } from "./local-edge.js";

/** A worker's own account of itself, from `p2pa-worker --status-port`. */
interface WorkerStatus {
  stats: { state: string; workerId: string | null; chunksDone: number; tasksDone: number } | null;
  window: {
    capacity: number;
    queued: number;
    computing: number;
    room: number;
    leaseIds: string[];
  } | null;
}

/** The Dispatcher's account of one worker, from `GET /v1/workers`. */
interface EdgeWorker {
  id: string;
  capacity: number;
  /** The most the edge lets it hold now (what it earned, its error budget). */
  limit: number;
  held: number;
  room: number;
  draining: boolean;
  coolingDown: boolean;
  chunksDone: number;
}

async function workerStatus(port: number): Promise<WorkerStatus> {
  const r = await fetch(`http://127.0.0.1:${port}/status`, { signal: AbortSignal.timeout(5000) });
  return (await r.json()) as WorkerStatus;
}

async function edgeWorkers(edgeUrl: string): Promise<EdgeWorker[]> {
  const r = await fetch(`${edgeUrl}/v1/workers`, {
    headers: { Authorization: `Bearer ${DEV_CREDENTIALS.adminKey}` },
    signal: AbortSignal.timeout(10_000),
  });
  const body = (await r.json()) as { shards: { workers: EdgeWorker[] }[] };
  return body.shards.flatMap((s) => s.workers);
}

/**
 * Compares what each worker believes about its window with what the Dispatcher believes about
 * it, at a quiet moment (no work in flight). Returns one line per disagreement; empty when
 * both sides agree on every worker: capacity, the leases held, and room. With `credits`, also
 * the chunks the edge credited it with (counted per connection at the edge: only for workers
 * that have kept one connection since they started).
 */
export async function windowDisagreements(
  edgeUrl: string,
  statusPorts: number[],
  opts: { credits?: boolean } = {},
): Promise<string[]> {
  const [edge, workers] = await Promise.all([
    edgeWorkers(edgeUrl),
    Promise.all(statusPorts.map((p) => workerStatus(p).then((s) => ({ port: p, s })))),
  ]);
  const out: string[] = [];
  for (const { port, s } of workers) {
    const id = s.stats?.workerId;
    const mine = edge.filter((w) => w.id === id);
    if (!id || mine.length !== 1) {
      out.push(`worker :${port} (${id}) appears ${mine.length} times at the edge`);
      continue;
    }
    const e = mine[0] as EdgeWorker;
    const w = s.window;
    if (!w) {
      out.push(`worker :${port} reports no window`);
      continue;
    }
    // The edge may hold a worker below its capacity on purpose (trust still being earned, a
    // failure budget); then it must never offer more room than the worker has.
    const roomAgrees = e.limit >= e.capacity ? e.room === w.room : e.room <= w.room;
    if (e.capacity !== w.capacity || e.held !== w.leaseIds.length || !roomAgrees)
      out.push(
        `${id}: edge capacity ${e.capacity} limit ${e.limit} room ${e.room} held ${e.held}; worker capacity ${w.capacity} room ${w.room} holds ${w.leaseIds.length}`,
      );
    if (opts.credits && e.chunksDone !== s.stats?.chunksDone)
      out.push(
        `${id}: the edge credits ${e.chunksDone} chunks, the worker counts ${s.stats?.chunksDone}`,
      );
  }
  return out;
}
