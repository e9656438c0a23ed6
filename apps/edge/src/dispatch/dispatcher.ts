import { DurableObject } from "cloudflare:workers";
import {
  type Ack,
  CloseCode,
  type EdgeMessage,
  type ErrorInfo,
  getModel,
  type Hello,
  PROTOCOL_VERSION,
  parseMessage,
  type TaskResult,
  WorkerMessage,
} from "@p2pa/shared";
import { D1Store, type MetadataStore } from "../db/store.js";
import { AlarmClock } from "./alarm.js";
import { recordFailure, recordSuccess } from "./error-budget.js";
import { type JobEvent, JobLog } from "./job-log.js";
import { Metrics } from "./metrics.js";
import { JobNotifier } from "./notifier.js";
import { Peers, roomFor } from "./peers.js";
import { type Bucket, take } from "./rate-limit.js";
import { type EmbedOutcome, RealtimeLane } from "./realtime-lane.js";
import { checkResult } from "./result-check.js";
import { ResultStore } from "./store-result.js";
import { type NewTask, TaskQueue } from "./task-queue.js";
import { judge, type ShardHealth, STALL_MS } from "./watchdog.js";

export interface DispatcherStats {
  workers: {
    id: string;
    models: string[];
    /** Tasks the worker says it can hold at once. */
    capacity: number;
    /** Tasks it holds now (open leases awaiting its result). */
    held: number;
    /** Tasks the Dispatcher would lease to it now: capacity within its budget, less held. */
    room: number;
    draining: boolean;
    coolingDown: boolean;
    chunksDone: number;
  }[];
  tasks: Record<string, number>;
  health: ShardHealth;
}

const MAX_ATTEMPTS = 5;
/** How long a disconnected worker's leases wait for it to reconnect before being requeued. */
const RECONNECT_GRACE_MS = 5_000;
const BAD_FRAMES_BEFORE_CLOSE = 20;

/**
 * The coordinator for one shard of one model: it owns the shard's task queue, the
 * WebSocket connections of the workers assigned to it, and their leases. It keeps the
 * wiring, the socket hooks, `hello` and `pump`; per-peer state is `Peers`', the store path
 * `ResultStore`'s and the alarm `AlarmClock`'s. See README.md in this folder.
 */
export class Dispatcher extends DurableObject<Env> {
  private readonly queue: TaskQueue;
  private readonly jobs: JobLog;
  private readonly notifier: JobNotifier;
  private readonly metrics: Metrics;
  private readonly store: MetadataStore;
  private readonly results: ResultStore;
  private readonly peers: Peers;
  private readonly clock: AlarmClock;
  private readonly leaseMs: number;
  private readonly lane = new RealtimeLane();
  /** Per-connection message buckets; in memory, a fresh bucket after eviction is harmless. */
  private readonly buckets = new Map<WebSocket, Bucket>();
  /** When the stall watchdog looks next while work waits beside connected workers. */
  private watchAt: number | null = null;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.queue = new TaskQueue(
      ctx.storage.sql,
      MAX_ATTEMPTS,
      Number(env.LEASE_GIVE_UP_MS) || 10 * 60_000,
    );
    this.store = new D1Store(env.DB);
    this.jobs = new JobLog(ctx.storage.sql);
    this.metrics = new Metrics(ctx.storage.sql);
    this.notifier = new JobNotifier(env, this.jobs, this.store);
    this.results = new ResultStore(
      env,
      this.queue,
      this.jobs,
      this.store,
      this.metrics,
      this.notifier,
    );
    this.peers = new Peers(ctx);
    this.leaseMs = Number(env.LEASE_MS) || 60_000;
    this.clock = new AlarmClock(ctx.storage, {
      leases: (now) => this.queue.nextWake(now),
      cooldowns: (now) => {
        const ends = this.peers
          .all()
          .map(({ peer }) => peer.budget.coolUntil)
          .filter((t) => t > now);
        return ends.length ? Math.min(...ends) : null;
      },
      notifications: () => this.jobs.nextNotifyAt(),
      watchdog: () => this.watchAt,
    });
    ctx.blockConcurrencyWhile(async () => {
      this.queue.migrate();
      this.jobs.migrate();
      this.metrics.count("p2pa_coordinator_starts_total");
      const recovered = this.queue.recoverStoring(Date.now());
      if (recovered) {
        console.warn(`recovered ${recovered} task(s) cut off mid-write; they run again`);
        this.metrics.count("p2pa_tasks_recovered_total", "", recovered);
      }
      await this.clock.arm();
    });
  }

  // ---- RPC from the API ----

  /** Adds a job's tasks (idempotent per task id) and hands them to ready workers. */
  async enqueue(jobId: string, tenant: string, model: string, tasks: NewTask[]): Promise<number> {
    this.jobs.register(jobId, tenant);
    const added = this.queue.enqueue(jobId, tenant, model, tasks);
    await this.pump();
    return added;
  }

  /** Stops dispatching a job's tasks and ends their leases; `purge` when the job is deleted. */
  async cancel(jobId: string, purge = false): Promise<number> {
    if (purge) this.jobs.markDeleted(jobId);
    const n = this.queue.cancelJob(jobId);
    if (this.jobs.markEnded(jobId)) {
      this.jobs.appendEvents(jobId, [{ kind: "end", data: { status: "cancelled" } }]);
      if (!purge) await this.notifier.notifyEnd(jobId);
    }
    // Cancelled leases free their workers' room for other jobs' tasks.
    await this.pump();
    return n;
  }

  /** A job's event log after `afterSeq` (chunk results and the terminal event). */
  async events(jobId: string, afterSeq: number, limit = 1000): Promise<JobEvent[]> {
    return this.jobs.events(jobId, afterSeq, limit);
  }

  /** Tasks waiting for a worker: what the API checks before accepting more work. */
  async backlog(): Promise<number> {
    return this.queue.pendingCount();
  }

  /** Embeds texts on a connected worker ahead of all batch work. */
  async embed(model: string, texts: string[], timeoutMs = 30_000): Promise<EmbedOutcome> {
    const candidates = this.peers
      .all()
      .filter(
        ({ peer }) => peer.hello && !peer.draining && peer.hello.models.some((m) => m.id === model),
      );
    if (candidates.length === 0) {
      return {
        ok: false,
        code: "no_capacity",
        message: `no connected worker serves model ${model}`,
      };
    }
    // Least busy first: fewest real-time requests in flight.
    const busy = (workerId: string) => this.lane.inFlight(workerId);
    candidates.sort((a, b) => busy(a.peer.workerId) - busy(b.peer.workerId));
    const { ws, peer } = candidates[0] as (typeof candidates)[number];
    return this.lane.request(peer.workerId, timeoutMs, (requestId) =>
      this.send(ws, { type: "embed", v: PROTOCOL_VERSION, requestId, model, texts }),
    );
  }

  /** The shard's counters, for `/v1/metrics`. */
  async counters(): Promise<{ name: string; label: string; value: number }[]> {
    return this.metrics.snapshot();
  }

  /** A snapshot of the shard for the dashboard, `/healthz` and tests. */
  async stats(): Promise<DispatcherStats> {
    const now = Date.now();
    const rooms = this.rooms(now);
    return {
      workers: rooms.map(({ peer, held, room }) => ({
        id: peer.workerId,
        models: peer.hello?.models.map((m) => m.id) ?? [],
        capacity: peer.capacity,
        held,
        room,
        draining: peer.draining,
        coolingDown: peer.budget.coolUntil > now,
        chunksDone: peer.chunksDone,
      })),
      tasks: this.queue.counts(),
      health: judge(this.queue.ready(now), rooms, now),
    };
  }

  // ---- WebSocket lifecycle (hibernation API) ----

  override async fetch(request: Request): Promise<Response> {
    if (request.headers.get("Upgrade")?.toLowerCase() !== "websocket") {
      return new Response("expected a WebSocket upgrade", { status: 426 });
    }
    const pair = new WebSocketPair();
    const [client, server] = [pair[0], pair[1]];
    const workerId = `wkr_${crypto.randomUUID().replaceAll("-", "").slice(0, 20)}`;
    this.ctx.acceptWebSocket(server, [workerId]);
    this.metrics.count("p2pa_worker_connections_total");
    this.peers.accept(server, workerId);
    return new Response(null, { status: 101, webSocket: client });
  }

  override async webSocketMessage(ws: WebSocket, raw: string | ArrayBuffer): Promise<void> {
    const peer = this.peers.get(ws);
    if (!peer) return;
    const limited = take(this.buckets.get(ws), Date.now());
    this.buckets.set(ws, limited.bucket);
    if (!limited.ok) {
      this.protocolError(ws, "rate_limited", "too many messages; slow down");
      return;
    }
    const parsed = parseMessage(WorkerMessage, raw);
    if (!parsed.ok) {
      if (parsed.error.code === "unsupported_version") {
        // A worker on another protocol would otherwise sit idle forever: tell it, and close.
        this.metrics.count("p2pa_frames_refused_total", parsed.error.code);
        this.send(ws, {
          type: "error",
          v: PROTOCOL_VERSION,
          code: parsed.error.code,
          message: `${parsed.error.message}; upgrade p2pa-worker`,
        });
        ws.close(CloseCode.unsupportedVersion, `protocol ${PROTOCOL_VERSION} required`);
        return;
      }
      this.protocolError(ws, parsed.error.code, parsed.error.message);
      return;
    }
    const msg = parsed.message;
    if (msg.type !== "hello" && !peer.hello) {
      this.protocolError(ws, "hello_required", "send hello before anything else");
      return;
    }
    switch (msg.type) {
      case "hello":
        await this.onHello(ws, msg);
        return;
      case "ready":
        this.peers.update(ws, (p) => {
          p.capacity = msg.capacity;
        });
        await this.pump();
        return;
      case "heartbeat":
        await this.onHeartbeat(ws, msg.leaseIds, msg.capacity);
        return;
      case "result":
        await this.onResult(ws, msg);
        return;
      case "task_failed":
        await this.onTaskFailed(ws, msg.leaseId, msg.taskId, msg.error);
        return;
      case "release":
        this.queue.release(msg.leaseIds, peer.workerId);
        await this.pump();
        return;
      case "draining":
        this.peers.update(ws, (p) => {
          p.draining = true;
        });
        return;
      case "embed_result":
      case "embed_failed": {
        this.lane.settle(
          msg.requestId,
          peer.workerId,
          msg.type === "embed_result"
            ? { ok: true, vectors: msg.vectors, tokens: msg.tokens, workerId: peer.workerId }
            : { ok: false, code: "failed", message: msg.error.message },
        );
        return;
      }
    }
  }

  override async webSocketClose(ws: WebSocket, code: number): Promise<void> {
    await this.disconnect(ws);
    try {
      ws.close(code === 1005 || code === 1006 ? CloseCode.normal : code, "closing");
    } catch {
      // Already closed.
    }
  }

  override async webSocketError(ws: WebSocket): Promise<void> {
    await this.disconnect(ws);
  }

  override async alarm(): Promise<void> {
    this.clock.fired();
    const now = Date.now();
    const lapsed = new Set(this.requeueExpired(now));
    for (const { ws, peer } of this.peers.all()) {
      if (lapsed.has(peer.workerId)) this.charge(ws, "a lease expired before its result arrived");
    }
    for (const jobId of this.jobs.notifyDue(now)) await this.notifier.notifyEnd(jobId);
    this.watch(now, "alarm");
    await this.pump();
  }

  // ---- handlers ----

  private async onHello(ws: WebSocket, msg: Hello): Promise<void> {
    const unknown = msg.models.find(
      (m) => getModel(m.id) && getModel(m.id)?.dimension !== m.dimension,
    );
    if (unknown) {
      this.send(ws, {
        type: "error",
        v: PROTOCOL_VERSION,
        code: "model_mismatch",
        message: `model ${unknown.id} has the wrong dimension`,
      });
      ws.close(CloseCode.protocolError, "model mismatch");
      return;
    }
    const peer = this.peers.update(ws, (p) => {
      // The same worker process reconnecting keeps its identity and so its leases.
      if (msg.session) p.workerId = `wkr_${msg.session}`;
      p.hello = {
        models: msg.models,
        device: msg.device,
        threads: msg.threads,
        batchSize: msg.batchSize,
        version: msg.version,
        name: msg.name,
      };
      p.capacity = msg.capacity;
    });
    if (!peer) return;
    const workerId = peer.workerId;
    if (msg.session) {
      for (const other of this.peers.ofWorker(workerId, ws))
        other.close(CloseCode.normal, "replaced by a new connection");
      this.queue.reclaim(workerId, Date.now() + this.leaseMs);
    }
    this.send(ws, {
      type: "welcome",
      v: PROTOCOL_VERSION,
      workerId,
      leaseMs: this.leaseMs,
      heartbeatMs: this.heartbeatMs,
    });
    await this.pump();
    await this.store.upsertWorker({
      id: workerId,
      name: msg.name ?? null,
      version: msg.version,
      device: msg.device,
      threads: msg.threads,
      models: msg.models.map((m) => m.id),
      connectedAt: new Date().toISOString(),
    });
  }

  /**
   * A heartbeat renews the leases the worker lists and restates its capacity. Leases it does
   * not list, though granted well before, never reached it: they go back to the queue. Then
   * the watchdog looks, and whatever fits is dispatched.
   */
  private async onHeartbeat(ws: WebSocket, leaseIds: string[], capacity: number): Promise<void> {
    const now = Date.now();
    const peer = this.peers.update(ws, (p) => {
      p.capacity = capacity;
    });
    if (!peer) return;
    this.queue.heartbeat(peer.workerId, leaseIds, now + this.leaseMs);
    const lost = this.queue.reconcile(peer.workerId, leaseIds, now - 2 * this.heartbeatMs);
    if (lost) {
      console.warn(`worker ${peer.workerId} did not have ${lost} lease(s); requeued`);
      this.metrics.count("p2pa_leases_reconciled_total", "", lost);
    }
    this.watch(now, "heartbeat");
    await this.pump();
  }

  private async onResult(ws: WebSocket, msg: TaskResult): Promise<void> {
    const workerId = this.peers.get(ws)?.workerId;
    const ack = (status: Ack["status"], reason?: string) => {
      this.metrics.count("p2pa_results_total", status);
      this.send(ws, {
        type: "ack",
        v: PROTOCOL_VERSION,
        taskId: msg.taskId,
        leaseId: msg.leaseId,
        status,
        ...(reason ? { reason } : {}),
      });
    };
    const task = this.queue.getTask(msg.taskId);
    const lease = this.queue.getLease(msg.leaseId);
    if (task && (task.state === "done" || task.state === "storing")) return ack("duplicate");
    if (task?.state === "cancelled") return ack("rejected", "the job was cancelled");
    if (
      !task ||
      !lease ||
      lease.taskId !== msg.taskId ||
      lease.workerId !== workerId ||
      !TaskQueue.leaseLive(lease, Date.now())
    ) {
      return ack("rejected", "no valid lease for this task");
    }
    const checked = checkResult(task.items ?? [], task.model, msg);
    if (!checked.ok) {
      ack("rejected", checked.problem);
      await this.onTaskFailed(ws, msg.leaseId, msg.taskId, {
        code: "bad_result",
        message: checked.problem,
        retryable: true,
      });
      return;
    }
    // The result is in: the worker's room is open again, so the next task can go out while
    // this one is written.
    const storing = this.results.storeVectors(task, lease, checked.vectors);
    await this.pump();
    const outcome = await storing;
    if (outcome === "unavailable") {
      ack("rejected", "storage unavailable; the task was requeued");
      await this.pump();
      return;
    }
    if (outcome === "stored") {
      const n = task.items?.length ?? 0;
      this.peers.update(ws, (p) => {
        p.chunksDone += n;
        p.budget = recordSuccess(p.budget);
      });
    }
    ack(outcome);
  }

  private async onTaskFailed(
    ws: WebSocket,
    leaseId: string,
    taskId: string,
    error: ErrorInfo,
  ): Promise<void> {
    const lease = this.queue.getLease(leaseId);
    if (!lease || lease.workerId !== this.peers.get(ws)?.workerId || lease.taskId !== taskId)
      return;
    const r = this.queue.fail(leaseId, `${error.code}: ${error.message}`, Date.now());
    this.metrics.count("p2pa_task_failures_total");
    this.charge(ws, error.message);
    if (r?.outcome === "failed") await this.results.storeFailure(r.taskId);
    await this.pump();
  }

  private async disconnect(ws: WebSocket): Promise<void> {
    this.buckets.delete(ws);
    const peer = this.peers.get(ws);
    this.peers.forget(ws);
    if (!peer) return;
    if (this.peers.ofWorker(peer.workerId).length === 0) {
      // Leases stay for a short grace period so a worker whose connection dropped can
      // reconnect and deliver what it computed; after that the alarm requeues them.
      this.queue.graceWorker(peer.workerId, Date.now() + RECONNECT_GRACE_MS);
    }
    this.lane.dropWorker(peer.workerId);
    await this.pump();
    if (peer.hello)
      await this.store.workerSeen(peer.workerId, peer.chunksDone, true).catch(() => {});
  }

  /** Each connected peer with the tasks it holds and its room now. */
  private rooms(now: number) {
    const held = this.queue.heldByWorker();
    return this.peers.all().map(({ ws, peer }) => {
      const h = held.get(peer.workerId) ?? 0;
      return { ws, peer, held: h, room: roomFor(peer, h, now) };
    });
  }

  /**
   * Leases ready tasks to workers with room, one task per worker per round so they spread,
   * then sets the alarm for whatever comes due next. Called after every event that can
   * change ready work or room.
   */
  private async pump(): Promise<void> {
    const now = Date.now();
    // Expired leases are also collected here, so progress never depends on an alarm alone.
    this.requeueExpired(now);
    const started: string[] = [];
    const ready = this.rooms(now).filter((r) => r.room > 0);
    let progress = true;
    while (progress) {
      progress = false;
      for (const r of ready) {
        if (r.room <= 0) continue;
        for (const m of r.peer.hello?.models ?? []) {
          const [task] = this.queue.lease(r.peer.workerId, m.id, 1, now, this.leaseMs);
          if (!task) continue;
          r.room--;
          progress = true;
          if (this.jobs.markJobStarted(task.jobId)) started.push(task.jobId);
          this.send(r.ws, {
            type: "task",
            v: PROTOCOL_VERSION,
            taskId: task.taskId,
            leaseId: task.leaseId,
            model: task.model,
            attempt: task.attempt,
            items: task.items.map((i) => ({ chunkId: i.chunkId, text: i.text })),
          });
          break;
        }
      }
    }
    // Ready work left beside a worker with room for it should be impossible here; if this
    // pump could not place it, the watchdog looks again soon rather than wait for a frame.
    const left = this.queue.ready(now);
    const suspect = ready.some(
      (r) => r.room > 0 && r.peer.hello?.models.some((m) => left.has(m.id)),
    );
    if (!suspect) this.watchAt = null;
    else if (this.watchAt === null || this.watchAt <= now) this.watchAt = now + STALL_MS;
    await this.clock.arm(now);
    for (const jobId of started) await this.store.markStarted(jobId);
  }

  /**
   * The stall watchdog: ready work beside a worker with room means some path forgot to
   * dispatch. It is logged and counted here; the pump that follows every call repairs it.
   */
  private watch(now: number, from: string): void {
    const health = judge(this.queue.ready(now), this.rooms(now), now);
    if (!health.stalled) return;
    console.warn(
      `dispatch stall (found by ${from}): ${health.readyTasks} task(s) ready for ${health.oldestReadyMs} ms while ${health.workersWithRoom} worker(s) had room; dispatching`,
    );
    this.metrics.count("p2pa_dispatch_stalls_total", from);
  }

  private get heartbeatMs(): number {
    return Math.floor(this.leaseMs / 4);
  }

  /** Counts a failure against the worker's budget and tells it when it is benched. */
  private charge(ws: WebSocket, why: string): void {
    const now = Date.now();
    let benchedFor = 0;
    this.peers.update(ws, (p) => {
      const r = recordFailure(p.budget, now);
      p.budget = r.budget;
      if (r.coolingDown) benchedFor = r.budget.coolUntil - now;
    });
    if (benchedFor > 0) {
      // The cool-down's end is a wake source of the alarm (see the constructor).
      this.metrics.count("p2pa_workers_benched_total");
      this.send(ws, {
        type: "error",
        v: PROTOCOL_VERSION,
        code: "cooldown",
        message: `too many failures in a row (last: ${why}); no new tasks for ${Math.round(benchedFor / 1000)} s`,
      });
    }
  }

  private requeueExpired(now: number): string[] {
    const lapsed = this.queue.requeueExpired(now);
    this.metrics.count("p2pa_leases_expired_total", "", lapsed.length);
    return lapsed;
  }

  private protocolError(ws: WebSocket, code: string, message: string): void {
    this.metrics.count("p2pa_frames_refused_total", code);
    const peer = this.peers.update(ws, (p) => {
      p.badFrames++;
    });
    this.send(ws, { type: "error", v: PROTOCOL_VERSION, code, message });
    if (peer && peer.badFrames >= BAD_FRAMES_BEFORE_CLOSE)
      ws.close(CloseCode.tooManyErrors, "too many bad frames");
  }

  private send(ws: WebSocket, msg: EdgeMessage): void {
    try {
      ws.send(JSON.stringify(msg));
    } catch {
      // The socket closed under us; webSocketClose requeues its leases.
    }
  }
}
