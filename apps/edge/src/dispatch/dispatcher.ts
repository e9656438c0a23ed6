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
import { getVectorIndex } from "../vector/index.js";
import {
  allowedInFlight,
  type Budget,
  freshBudget,
  recordFailure,
  recordSuccess,
} from "./error-budget.js";
import { type JobEvent, JobLog } from "./job-log.js";
import { Metrics } from "./metrics.js";
import { JobNotifier } from "./notifier.js";
import { type Bucket, take } from "./rate-limit.js";
import { type EmbedOutcome, RealtimeLane } from "./realtime-lane.js";
import { checkResult } from "./result-check.js";
import { type NewTask, TaskQueue } from "./task-queue.js";

/** Per-connection state, kept in the WebSocket attachment so it survives hibernation. */
interface Peer {
  workerId: string;
  hello: Pick<Hello, "models" | "device" | "threads" | "batchSize" | "version" | "name"> | null;
  credits: number;
  draining: boolean;
  chunksDone: number;
  badFrames: number;
  budget: Budget;
}

export interface DispatcherStats {
  workers: {
    id: string;
    models: string[];
    credits: number;
    draining: boolean;
    chunksDone: number;
  }[];
  tasks: Record<string, number>;
}

const MAX_ATTEMPTS = 5;
/** How long a disconnected worker's leases wait for it to reconnect before being requeued. */
const RECONNECT_GRACE_MS = 5_000;
const BAD_FRAMES_BEFORE_CLOSE = 20;

/**
 * The coordinator for one shard of one model: it owns the shard's task queue, the
 * WebSocket connections of the workers assigned to it, and their leases. See README.md in
 * this folder for how shards divide the work.
 */
export class Dispatcher extends DurableObject<Env> {
  private readonly queue: TaskQueue;
  private readonly jobs: JobLog;
  private readonly notifier: JobNotifier;
  private readonly metrics: Metrics;
  private readonly store: MetadataStore;
  private readonly leaseMs: number;
  private readonly lane = new RealtimeLane();
  /** Per-connection message buckets; in memory, a fresh bucket after eviction is harmless. */
  private readonly buckets = new Map<WebSocket, Bucket>();

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
    this.notifier = new JobNotifier(env, ctx, this.jobs, this.store);
    this.leaseMs = Number(env.LEASE_MS) || 60_000;
    ctx.blockConcurrencyWhile(async () => {
      this.queue.migrate();
      this.jobs.migrate();
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
    const candidates = this.ctx
      .getWebSockets()
      .map((ws) => ({ ws, peer: this.peer(ws) }))
      .filter(
        ({ peer }) =>
          peer?.hello && !peer.draining && peer.hello.models.some((m) => m.id === model),
      );
    if (candidates.length === 0) {
      return {
        ok: false,
        code: "no_capacity",
        message: `no connected worker serves model ${model}`,
      };
    }
    // Least busy first: fewest real-time requests in flight.
    const busy = (p: Peer | null) => this.lane.inFlight(p?.workerId ?? "");
    candidates.sort((a, b) => busy(a.peer) - busy(b.peer));
    const { ws, peer } = candidates[0] as { ws: WebSocket; peer: Peer };
    return this.lane.request(peer.workerId, timeoutMs, (requestId) =>
      this.send(ws, { type: "embed", v: PROTOCOL_VERSION, requestId, model, texts }),
    );
  }

  /** The shard's counters, for `/v1/metrics`. */
  async counters(): Promise<{ name: string; label: string; value: number }[]> {
    return this.metrics.snapshot();
  }

  /** A snapshot of the shard for the dashboard and tests. */
  async stats(): Promise<DispatcherStats> {
    return {
      workers: this.ctx.getWebSockets().flatMap((ws) => {
        const p = this.peer(ws);
        return p
          ? [
              {
                id: p.workerId,
                models: p.hello?.models.map((m) => m.id) ?? [],
                credits: p.credits,
                draining: p.draining,
                chunksDone: p.chunksDone,
              },
            ]
          : [];
      }),
      tasks: this.queue.counts(),
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
    const peer: Peer = {
      budget: freshBudget(),
      workerId,
      hello: null,
      credits: 0,
      draining: false,
      chunksDone: 0,
      badFrames: 0,
    };
    server.serializeAttachment(peer);
    return new Response(null, { status: 101, webSocket: client });
  }

  override async webSocketMessage(ws: WebSocket, raw: string | ArrayBuffer): Promise<void> {
    const peer = this.peer(ws);
    if (!peer) return;
    const limited = take(this.buckets.get(ws), Date.now());
    this.buckets.set(ws, limited.bucket);
    if (!limited.ok) {
      this.protocolError(ws, peer, "rate_limited", "too many messages; slow down");
      return;
    }
    const parsed = parseMessage(WorkerMessage, raw);
    if (!parsed.ok) {
      this.protocolError(ws, peer, parsed.error.code, parsed.error.message);
      return;
    }
    const msg = parsed.message;
    if (msg.type !== "hello" && !peer.hello) {
      this.protocolError(ws, peer, "hello_required", "send hello before anything else");
      return;
    }
    switch (msg.type) {
      case "hello":
        await this.onHello(ws, peer, msg);
        return;
      case "credit":
        peer.credits = Math.min(peer.credits + msg.n, 1024);
        this.save(ws, peer);
        await this.pump();
        return;
      case "heartbeat":
        this.queue.heartbeat(peer.workerId, msg.leaseIds, Date.now() + this.leaseMs);
        await this.armAlarm();
        return;
      case "result":
        await this.onResult(ws, peer, msg);
        return;
      case "task_failed":
        await this.onTaskFailed(ws, peer, msg.leaseId, msg.taskId, msg.error);
        return;
      case "release":
        this.queue.release(msg.leaseIds, peer.workerId);
        await this.pump();
        return;
      case "draining":
        peer.draining = true;
        peer.credits = 0;
        this.save(ws, peer);
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
    const lapsed = new Set(this.requeueExpired());
    for (const ws of this.ctx.getWebSockets()) {
      const peer = this.peer(ws);
      if (peer && lapsed.has(peer.workerId))
        this.charge(ws, peer, "a lease expired before its result arrived");
    }
    for (const jobId of this.jobs.notifyPending()) await this.notifier.notifyEnd(jobId);
    await this.pump();
  }

  // ---- handlers ----

  private async onHello(ws: WebSocket, peer: Peer, msg: Hello): Promise<void> {
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
    if (msg.session) {
      // The same worker process reconnecting: it keeps its identity and so its leases.
      peer.workerId = `wkr_${msg.session}`;
      for (const other of this.ctx.getWebSockets()) {
        if (other !== ws && this.peer(other)?.workerId === peer.workerId)
          other.close(CloseCode.normal, "replaced by a new connection");
      }
      this.queue.reclaim(peer.workerId, Date.now() + this.leaseMs);
    }
    peer.hello = {
      models: msg.models,
      device: msg.device,
      threads: msg.threads,
      batchSize: msg.batchSize,
      version: msg.version,
      name: msg.name,
    };
    this.save(ws, peer);
    this.send(ws, {
      type: "welcome",
      v: PROTOCOL_VERSION,
      workerId: peer.workerId,
      leaseMs: this.leaseMs,
      heartbeatMs: Math.floor(this.leaseMs / 4),
    });
    await this.store.upsertWorker({
      id: peer.workerId,
      name: msg.name ?? null,
      version: msg.version,
      device: msg.device,
      threads: msg.threads,
      models: msg.models.map((m) => m.id),
      connectedAt: new Date().toISOString(),
    });
  }

  private async onResult(ws: WebSocket, peer: Peer, msg: TaskResult): Promise<void> {
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
      lease.workerId !== peer.workerId ||
      !TaskQueue.leaseLive(lease, Date.now())
    ) {
      return ack("rejected", "no valid lease for this task");
    }
    const checked = checkResult(task.items ?? [], task.model, msg);
    if (!checked.ok) {
      ack("rejected", checked.problem);
      await this.onTaskFailed(ws, peer, msg.leaseId, msg.taskId, {
        code: "bad_result",
        message: checked.problem,
        retryable: true,
      });
      return;
    }
    if (!this.queue.beginStoring(msg.taskId, lease.expired)) return ack("duplicate");
    const items = task.items ?? [];
    try {
      await getVectorIndex(this.env, task.model).upsert(
        items.map((it, i) => ({
          id: it.chunkId,
          values: checked.vectors[i] as Float32Array,
          metadata: {
            tenant: task.tenant,
            jobId: task.jobId,
            documentId: it.documentId,
            index: it.index,
          },
        })),
      );
      await this.store.recordDone(
        task.jobId,
        items.map((it) => it.chunkId),
      );
    } catch (err) {
      this.queue.abortStoring(msg.taskId);
      ack("rejected", "storage unavailable; the task was requeued");
      console.error("storing task failed", msg.taskId, err);
      await this.pump();
      return;
    }
    this.queue.finishStoring(msg.taskId);
    if (this.jobs.isDeleted(task.jobId)) {
      // The job was deleted while this result was being written: take the vectors back out.
      await getVectorIndex(this.env, task.model).deleteByIds(items.map((it) => it.chunkId));
    }
    this.jobs.appendEvents(
      task.jobId,
      items.map((it) => ({
        kind: "chunk" as const,
        data: { chunkId: it.chunkId, documentId: it.documentId, index: it.index, status: "done" },
      })),
    );
    await this.settleJob(task.jobId);
    peer.chunksDone += items.length;
    this.save(ws, peer);
    peer.budget = recordSuccess(peer.budget);
    this.save(ws, peer);
    this.metrics.count("p2pa_chunks_stored_total", "", items.length);
    ack("stored");
  }

  private async onTaskFailed(
    ws: WebSocket,
    peer: Peer,
    leaseId: string,
    taskId: string,
    error: ErrorInfo,
  ): Promise<void> {
    const lease = this.queue.getLease(leaseId);
    if (!lease || lease.workerId !== peer.workerId || lease.taskId !== taskId) return;
    const r = this.queue.fail(leaseId, `${error.code}: ${error.message}`, Date.now());
    this.metrics.count("p2pa_task_failures_total");
    this.charge(ws, peer, error.message);
    if (r?.outcome === "failed") {
      const task = this.queue.getTask(r.taskId);
      const reasons = this.queue.errors(r.taskId).map((e) => e.reason);
      if (task?.items) {
        const reason = `failed after ${task.attempts} attempts: ${reasons.at(-1) ?? ""}`;
        this.metrics.count("p2pa_chunks_failed_total", "", task.items.length);
        await this.store.recordFailed(
          task.jobId,
          task.items.map((i) => i.chunkId),
          reason,
        );
        this.jobs.appendEvents(
          task.jobId,
          task.items.map((it) => ({
            kind: "chunk" as const,
            data: {
              chunkId: it.chunkId,
              documentId: it.documentId,
              index: it.index,
              status: "failed",
              error: reason,
            },
          })),
        );
        await this.settleJob(task.jobId);
      }
    }
    this.save(ws, peer);
    await this.pump();
  }

  private async disconnect(ws: WebSocket): Promise<void> {
    this.buckets.delete(ws);
    const peer = this.peer(ws);
    if (!peer) return;
    const live = this.ctx
      .getWebSockets()
      .some((o) => o !== ws && this.peer(o)?.workerId === peer.workerId);
    if (!live) {
      // Leases stay for a short grace period so a worker whose connection dropped can
      // reconnect and deliver what it computed; after that the alarm requeues them.
      this.queue.graceWorker(peer.workerId, Date.now() + RECONNECT_GRACE_MS);
      await this.armAlarm();
    }
    this.lane.dropWorker(peer.workerId);
    if (peer.hello)
      await this.store.workerSeen(peer.workerId, peer.chunksDone, true).catch(() => {});
    await this.pump(ws);
  }

  /** Records the job's terminal event once no task of it can change any more. */
  private async settleJob(jobId: string): Promise<void> {
    if (this.queue.jobOpen(jobId)) {
      await this.notifier.maybeNotifyProgress(jobId);
      return;
    }
    if (!this.jobs.markEnded(jobId)) return;
    const job = await this.store.getJobById(jobId);
    this.jobs.appendEvents(jobId, [
      { kind: "end", data: { status: job?.status ?? "completed", chunks: job?.chunks } },
    ]);
    await this.notifier.notifyEnd(jobId);
  }

  /** Leases pending tasks to workers with credits, spreading them across workers. */
  private async pump(exclude?: WebSocket): Promise<void> {
    // Expired leases are also collected here, so progress never depends on an alarm alone.
    this.requeueExpired();
    const started: string[] = [];
    const sockets = this.ctx.getWebSockets().filter((ws) => ws !== exclude);
    let progress = true;
    while (progress) {
      progress = false;
      for (const ws of sockets) {
        const peer = this.peer(ws);
        if (!peer?.hello || peer.draining || peer.credits <= 0) continue;
        // A worker over its error budget holds fewer tasks, or none while cooling down.
        const allowed = allowedInFlight(peer.budget, Date.now(), peer.credits);
        if (allowed === 0 || (allowed < peer.credits && this.queue.held(peer.workerId) >= allowed))
          continue;
        for (const m of peer.hello.models) {
          const [task] = this.queue.lease(peer.workerId, m.id, 1, Date.now(), this.leaseMs);
          if (!task) continue;
          peer.credits--;
          progress = true;
          if (this.jobs.markJobStarted(task.jobId)) started.push(task.jobId);
          this.send(ws, {
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
        this.save(ws, peer);
      }
    }
    await this.armAlarm();
    for (const jobId of started) await this.store.markStarted(jobId);
  }

  private async armAlarm(): Promise<void> {
    const next = this.queue.nextWake(Date.now());
    if (next === null) return;
    const current = await this.ctx.storage.getAlarm();
    if (current === null || next < current) await this.ctx.storage.setAlarm(next);
  }

  /** Counts a failure against the worker's budget and tells it when it is benched. */
  private charge(ws: WebSocket, peer: Peer, why: string): void {
    const r = recordFailure(peer.budget, Date.now());
    peer.budget = r.budget;
    this.save(ws, peer);
    if (r.coolingDown) {
      this.metrics.count("p2pa_workers_benched_total");
      const seconds = Math.round((r.budget.coolUntil - Date.now()) / 1000);
      this.send(ws, {
        type: "error",
        v: PROTOCOL_VERSION,
        code: "cooldown",
        message: `too many failures in a row (last: ${why}); no new tasks for ${seconds} s`,
      });
      void this.ctx.storage.setAlarm(r.budget.coolUntil);
    }
  }

  private requeueExpired(): string[] {
    const lapsed = this.queue.requeueExpired(Date.now());
    this.metrics.count("p2pa_leases_expired_total", "", lapsed.length);
    return lapsed;
  }

  private protocolError(ws: WebSocket, peer: Peer, code: string, message: string): void {
    this.metrics.count("p2pa_frames_refused_total", code);
    peer.badFrames++;
    this.save(ws, peer);
    this.send(ws, { type: "error", v: PROTOCOL_VERSION, code, message });
    if (peer.badFrames >= BAD_FRAMES_BEFORE_CLOSE)
      ws.close(CloseCode.tooManyErrors, "too many bad frames");
  }

  private peer(ws: WebSocket): Peer | null {
    return (ws.deserializeAttachment() as Peer | null) ?? null;
  }

  private save(ws: WebSocket, peer: Peer): void {
    ws.serializeAttachment(peer);
  }

  private send(ws: WebSocket, msg: EdgeMessage): void {
    try {
      ws.send(JSON.stringify(msg));
    } catch {
      // The socket closed under us; webSocketClose requeues its leases.
    }
  }
}
