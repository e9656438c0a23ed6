import { type Hello, MAX_TASK_SIZE, TASK_SIZE } from "@p2pa/shared";
import { allowedInFlight, type Budget, freshBudget } from "./error-budget.js";

/** What a worker said about itself in `hello`. */
type PeerHello = Pick<
  Hello,
  "models" | "device" | "threads" | "batchSize" | "version" | "name" | "binaryResults"
>;

/**
 * Tasks a new connection may hold before it has finished any; each stored task earns one more
 * (up to what it asked for). A peer shows what it can finish before it is trusted with more,
 * so a connection that takes tasks and never answers holds little.
 */
export const INITIAL_EARNED = 2;

/** Per-connection state. Its one copy lives here; see `Peers`. */
export interface Peer {
  /**
   * The worker's identity on this shard: random per connection, or derived from its session
   * and its token so a reconnect keeps its leases and nobody else can claim them.
   */
  workerId: string;
  /** The worker token it joined with: the donor's identity for failure counting. */
  credentialId: string;
  tenant: string;
  hello: PeerHello | null;
  /** Tasks the worker says it can hold at once (absolute; from hello, ready, heartbeat). */
  capacity: number;
  /** How many tasks it has earned the right to hold (see INITIAL_EARNED). */
  earned: number;
  draining: boolean;
  chunksDone: number;
  /** Chunks credited per RATE_BUCKET_MS bucket over the last RATE_WINDOW_MS: [bucket, chunks]. */
  recent: [number, number][];
  /** Epoch ms the socket was accepted. */
  connectedAt: number;
  badFrames: number;
  budget: Budget;
}

/** The window a worker's current rate is measured over, in buckets of RATE_BUCKET_MS. */
const RATE_WINDOW_MS = 60_000;
const RATE_BUCKET_MS = 5_000;

/** Counts `n` credited chunks into the peer's recent buckets (call inside `update`). */
export function recordChunks(peer: Peer, n: number, now: number): void {
  const bucket = Math.floor(now / RATE_BUCKET_MS);
  const oldest = bucket - RATE_WINDOW_MS / RATE_BUCKET_MS;
  const recent = (peer.recent ?? []).filter(([b]) => b > oldest);
  const last = recent.at(-1);
  if (last && last[0] === bucket) last[1] += n;
  else recent.push([bucket, n]);
  peer.recent = recent;
}

/** Results a worker's pace is measured over, and how long one counts. */
const PACE_SAMPLES = 8;
const PACE_MAX_AGE_MS = 30_000;

/**
 * A worker's pace, from when its last results arrived. Kept in memory only: after hibernation
 * a worker starts again from TASK_SIZE and its pace is measured anew within a few results.
 */
export class Pace {
  /** [arrived at, chunks], oldest first. */
  private samples: [number, number][] = [];

  /** A result of `chunks` arrived at `at`. */
  note(chunks: number, at: number): void {
    const kept = this.samples.filter(([t]) => t > at - PACE_MAX_AGE_MS);
    kept.push([at, chunks]);
    this.samples = kept.slice(-PACE_SAMPLES);
  }

  /**
   * Chunks the next task leased to this worker should hold: about `workMs` of its work at the
   * pace its recent results came in (chunks per ms between the first and the last of them), in
   * steps of TASK_SIZE, from TASK_SIZE (a worker not yet measured) to MAX_TASK_SIZE. A fast
   * GPU gets large tasks, so the coordinator's cost per task is spread over many chunks; a
   * slow laptop small ones, so a task lost with it costs little and its lease is never at risk.
   */
  taskSize(now: number, workMs: number): number {
    const recent = this.samples.filter(([t]) => t > now - PACE_MAX_AGE_MS);
    const first = recent[0];
    const last = recent.at(-1);
    if (!first || !last || recent.length < 4) return TASK_SIZE;
    const chunks = recent.slice(1).reduce((n, [, c]) => n + c, 0);
    const span = last[0] - first[0];
    const fits = span <= 0 ? MAX_TASK_SIZE : (chunks * workMs) / span;
    return Math.min(MAX_TASK_SIZE, Math.max(TASK_SIZE, Math.floor(fits / TASK_SIZE) * TASK_SIZE));
  }
}

/** Chunks per second over the last minute (or since it connected, when that is shorter). */
export function rateOf(peer: Readonly<Peer>, now: number): number {
  const oldest = Math.floor(now / RATE_BUCKET_MS) - RATE_WINDOW_MS / RATE_BUCKET_MS;
  const chunks = (peer.recent ?? []).reduce((n, [b, c]) => (b > oldest ? n + c : n), 0);
  const span = Math.min(RATE_WINDOW_MS, Math.max(now - (peer.connectedAt ?? now), 1000));
  return Math.round((chunks * 10_000) / span) / 10;
}

/**
 * The one owner of per-connection state. Each open socket has exactly one `Peer` object in
 * memory, shared by every event handler of this Durable Object; every change goes through
 * `update`, which writes the whole object to the socket's attachment at once, so hibernation
 * restores exactly the last change.
 *
 * Why it must be one object: a handler that read the attachment, awaited a D1 or vector write
 * (other frames of the same socket run meanwhile), and then wrote its own copy back would undo
 * whatever those frames changed. That lost update is how a shard once stopped dispatching.
 * Callers therefore never keep a copy across an `await`; they read through `get` again.
 */
export class Peers {
  private readonly live = new Map<WebSocket, Peer>();
  /** Sockets whose close is being handled; still listed by getWebSockets for a moment. */
  private readonly gone = new WeakSet<WebSocket>();

  constructor(private readonly ctx: DurableObjectState) {}

  /** Registers a freshly accepted socket. */
  accept(ws: WebSocket, workerId: string, credentialId: string, tenant: string): Peer {
    const peer: Peer = {
      workerId,
      credentialId,
      tenant,
      hello: null,
      capacity: 0,
      earned: INITIAL_EARNED,
      draining: false,
      chunksDone: 0,
      recent: [],
      connectedAt: Date.now(),
      badFrames: 0,
      budget: freshBudget(),
    };
    this.live.set(ws, peer);
    ws.serializeAttachment(peer);
    return peer;
  }

  /** The socket's peer (read-only: change it with `update`), or null once it is gone. */
  get(ws: WebSocket): Readonly<Peer> | null {
    if (this.gone.has(ws)) return null;
    let peer = this.live.get(ws);
    if (!peer) {
      // After hibernation the attachment is the only copy; it holds the last change.
      peer = (ws.deserializeAttachment() as Peer | null) ?? undefined;
      if (!peer) return null;
      this.live.set(ws, peer);
    }
    return peer;
  }

  /** Reads, changes and writes back the socket's peer in one step; null when it is gone. */
  update(ws: WebSocket, change: (peer: Peer) => void): Readonly<Peer> | null {
    const peer = this.get(ws) as Peer | null;
    if (!peer) return null;
    change(peer);
    ws.serializeAttachment(peer);
    return peer;
  }

  /** Every open socket with its peer, in a stable order. */
  all(): { ws: WebSocket; peer: Readonly<Peer> }[] {
    return this.ctx.getWebSockets().flatMap((ws) => {
      const peer = this.get(ws);
      return peer ? [{ ws, peer }] : [];
    });
  }

  /** Open sockets of one worker identity (one, or briefly two while a reconnect replaces one). */
  ofWorker(workerId: string, except?: WebSocket): WebSocket[] {
    return this.all()
      .filter(({ ws, peer }) => ws !== except && peer.workerId === workerId)
      .map(({ ws }) => ws);
  }

  /** The socket closed: it takes no part in dispatch from now on. */
  forget(ws: WebSocket): void {
    this.gone.add(ws);
    this.live.delete(ws);
  }
}

/**
 * The most tasks the Dispatcher lets a peer hold now: what it asked for, narrowed by what it
 * has earned and by its error budget. Zero before hello and while draining.
 */
export function limitFor(peer: Readonly<Peer>, now: number): number {
  if (!peer.hello || peer.draining) return 0;
  return allowedInFlight(peer.budget, now, Math.min(peer.capacity, peer.earned));
}

/** How many more tasks may be leased to a peer now, given those it holds (from the lease table). */
export function roomFor(peer: Readonly<Peer>, held: number, now: number): number {
  return Math.max(0, limitFor(peer, now) - held);
}
