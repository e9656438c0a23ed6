import { DurableObject } from "cloudflare:workers";
import {
  type Ack,
  type BinaryResult,
  CloseCode,
  checkEmbedding,
  decodeResultFrame,
  decodeVector,
  dispatchMessage,
  type EdgeMessage,
  type EmbedResult,
  type ErrorInfo,
  type Hello,
  isResultFrame,
  MAX_CAPACITY,
  type MessageByType,
  type MessageHandlers,
  type PiiKind,
  PROTOCOL_VERSION,
  parseMessage,
  TASK_SIZE,
  type TaskResult,
  type WorkerList,
  WorkerMessage,
} from "@p2pa/shared";
import { keyringFor, openStore } from "../db/open.js";
import type { MetadataStore } from "../db/store.js";
import { metaByDocument, pendingChunks } from "../ingest/search-metadata.js";
import { sha256Hex } from "../lib/crypto.js";
import { findModel } from "../lib/models.js";
import { settings } from "../lib/settings.js";
import { maskPersonalData } from "../privacy/mask.js";
import { AlarmClock } from "./alarm.js";
import { Canaries, canaryChunkId } from "./canary.js";
import { recordFailure, recordSuccess } from "./error-budget.js";
import { HeldVectors } from "./held-vectors.js";
import { type JobEvent, JobLog } from "./job-log.js";
import { JobWatch } from "./job-watch.js";
import { Metrics } from "./metrics.js";
import { JobNotifier } from "./notifier.js";
import {
  INITIAL_EARNED,
  limitFor,
  Pace,
  type Peer,
  Peers,
  rateOf,
  recordChunks,
  roomFor,
} from "./peers.js";
import { type Bucket, take } from "./rate-limit.js";
import { type EmbedOutcome, RealtimeLane } from "./realtime-lane.js";
import { checkResult } from "./result-check.js";
import { openTask, sealTask } from "./sealed-items.js";
import { ResultStore } from "./store-result.js";
import {
  type DocumentMeta,
  type LeasedTask,
  type StoredTask,
  type TaskOptions,
  TaskQueue,
} from "./task-queue.js";
import { DEFAULT_VERIFY_POLICY, Verifier } from "./verify.js";
import { judge, STALL_MS } from "./watchdog.js";

/** A snapshot of the shard: one entry of GET /v1/workers. */
type ShardListing = WorkerList["shards"][number];
export type DispatcherStats = Required<Omit<ShardListing, "donors">> & Pick<ShardListing, "donors">;

const MAX_ATTEMPTS = 5;
/** How long a disconnected worker's leases wait for it to reconnect before being requeued. */
const RECONNECT_GRACE_MS = 5_000;
const BAD_FRAMES_BEFORE_CLOSE = 20;
/** How often connected workers' tokens are checked against D1 (revocation reaches them then). */
const REVALIDATE_MS = 10_000;
/** Workers a real-time request may be tried on before it fails. */
const REALTIME_TRIES = 3;
/**
 * How long tasks sent ahead of their job's write wait for the submit to confirm it before the
 * shard asks D1 itself (the submit stopped), and again while D1 does not answer.
 */
const CONFIRM_WAIT_MS = 60_000;
const CONFIRM_RETRY_MS = 5_000;

/** Headers by which the authenticated route tells the Dispatcher who is connecting. */
export const CREDENTIAL_HEADER = "X-P2PA-Credential";
export const TENANT_HEADER = "X-P2PA-Tenant";

/**
 * The coordinator for one shard of one model: it owns the shard's task queue, the
 * WebSocket connections of the workers assigned to it, and their leases. It keeps the
 * wiring, the socket hooks, `hello` and `pump`; per-peer state is `Peers`', the store path
 * `ResultStore`'s and the alarm `AlarmClock`'s. See README.md in this folder.
 */
export class Dispatcher extends DurableObject<Env> {
  private readonly queue: TaskQueue;
  private readonly held: HeldVectors;
  private readonly jobs: JobLog;
  /** Live progress streams, pushed as the job log grows. */
  private readonly watchers: JobWatch;
  private readonly notifier: JobNotifier;
  private readonly metrics: Metrics;
  private readonly store: MetadataStore;
  private readonly results: ResultStore;
  private readonly verifier: Verifier;
  private readonly canaries: Canaries;
  /** What a job gets when it does not say (`VERIFICATION`). */
  private readonly defaultVerify: TaskOptions["verify"];
  private readonly peers: Peers;
  private readonly clock: AlarmClock;
  private readonly leaseMs: number;
  /** About how long a worker's task should take it: its size follows (see Pace). */
  private readonly taskWorkMs: number;
  /** The longest a lease lives however often it is renewed (`LEASE_MAX_MS`). */
  private readonly leaseMaxMs: number;
  /** Connections one worker token may hold on this shard (`MAX_CONNECTIONS_PER_TOKEN`). */
  private readonly maxConnectionsPerToken: number;
  private readonly lane = new RealtimeLane();
  /** When each connection's last heartbeat was handled; heartbeats faster than that are dropped. */
  private readonly lastBeat = new Map<WebSocket, number>();
  private lastRevalidation = 0;
  /** Each connection's pace, which its tasks' size follows (in memory, as the buckets). */
  private readonly paces = new Map<WebSocket, Pace>();
  /** Per-connection message buckets; in memory, a fresh bucket after eviction is harmless. */
  private readonly buckets = new Map<WebSocket, Bucket>();
  /** When the stall watchdog looks next while work waits beside connected workers. */
  private watchAt: number | null = null;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    const config = settings(env);
    this.queue = new TaskQueue(ctx.storage.sql, MAX_ATTEMPTS, config.LEASE_GIVE_UP_MS);
    this.store = openStore(env);
    this.jobs = new JobLog(ctx.storage.sql);
    this.watchers = new JobWatch(
      this.jobs,
      (jobId) => this.store.getJobById(jobId),
      () => this.metrics.count("p2pa_progress_reads_total"),
    );
    this.jobs.listen((jobId) => this.watchers.changed(jobId));
    this.held = new HeldVectors(ctx.storage.sql);
    this.metrics = new Metrics(ctx.storage.sql);
    this.notifier = new JobNotifier(env, this.jobs, this.store);
    this.verifier = new Verifier(ctx.storage.sql, {
      ...DEFAULT_VERIFY_POLICY,
      agreeCosine: config.VERIFY_MIN_COSINE,
      spotRate: config.VERIFY_SPOT_RATE,
    });
    this.canaries = new Canaries(ctx.storage.sql, this.verifier.policy.agreeCosine);
    this.defaultVerify = config.VERIFICATION;
    this.results = new ResultStore(
      env,
      this.queue,
      this.jobs,
      this.store,
      this.metrics,
      this.notifier,
      this.verifier,
      this.held,
      ctx.id.toString(),
    );
    this.peers = new Peers(ctx);
    this.leaseMs = config.LEASE_MS;
    // Never more than a tenth of a lease: a task in a worker's window waits behind the others
    // it holds, and must still be done well inside its deadline.
    this.taskWorkMs = Math.min(config.TASK_WORK_MS, config.LEASE_MS / 10);
    this.leaseMaxMs = config.LEASE_MAX_MS;
    this.maxConnectionsPerToken = config.MAX_CONNECTIONS_PER_TOKEN;
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
      unconfirmed: () => this.jobs.nextConfirmBy(),
      watchdog: () => this.watchAt,
    });
    ctx.blockConcurrencyWhile(async () => {
      this.queue.migrate();
      this.jobs.migrate();
      this.verifier.migrate();
      this.canaries.migrate();
      this.held.migrate();
      this.metrics.migrate();
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

  /**
   * Adds a job's tasks (idempotent per task id) and hands them to ready workers. `accepting`:
   * more are to come (a stream or an open job), so the job does not end with these; `cache`:
   * the batch's embedding cache hits and misses, for the metrics. `unconfirmed`: the submit
   * has not written the job yet (a new job's first tasks go out while it does); nothing of
   * them is stored before `confirm`, and a job never confirmed is withdrawn.
   */
  async enqueue(
    jobId: string,
    tenant: string,
    model: string,
    tasks: StoredTask[],
    opts: Partial<TaskOptions> & {
      accepting?: boolean;
      cache?: { hits: number; misses: number };
      unconfirmed?: boolean;
    } = {},
  ): Promise<number> {
    const confirmBy = opts.unconfirmed ? Date.now() + CONFIRM_WAIT_MS : 0;
    this.jobs.register(jobId, tenant, opts.accepting ?? false, confirmBy);
    const added = this.queue.enqueue(jobId, tenant, model, tasks, {
      verify: opts.verify ?? this.defaultVerify,
      pool: opts.pool ?? "any",
    });
    this.countCache(opts.cache);
    // A last batch with nothing to compute (unchanged or cached) may end the job; one with
    // tasks ends it when they are stored.
    if (!opts.accepting && added === 0 && !this.queue.jobOpen(jobId))
      await this.results.settleJob(jobId);
    await this.pump();
    return added;
  }

  /**
   * The submit wrote the job whose tasks it sent unconfirmed: what its tasks brought in is
   * stored now, and from now on as it comes. `accepting` and `cache` as for `enqueue`; `meta`:
   * the search metadata of documents whose tasks went out before it was known (their detected
   * language), which their vectors carry instead.
   * "confirmed": it was unconfirmed; "known": it was confirmed already (or never unconfirmed);
   * "missing": the shard does not have it (withdrawn after CONFIRM_WAIT_MS, or its tasks never
   * came), so the caller enqueues its tasks.
   */
  async confirm(
    jobId: string,
    opts: { accepting: boolean; cache?: { hits: number; misses: number }; meta?: DocumentMeta },
  ): Promise<"confirmed" | "known" | "missing"> {
    if (!this.jobs.confirm(jobId)) return this.jobs.known(jobId) ? "known" : "missing";
    // In the same step: every task read from now on carries it (held results take it below).
    if (opts.meta) this.queue.setMeta(jobId, opts.meta);
    this.jobs.setAccepting(jobId, opts.accepting);
    this.countCache(opts.cache);
    // A job leased before it was written could not be marked started then.
    if (this.jobs.isStarted(jobId)) await this.store.markStarted(jobId);
    // (Its tasks cannot have ended before this: their results were held. What was held ends
    // them now, and settles the job as any stored result does.)
    await this.results.release(jobId, opts.meta);
    await this.pump();
    return "confirmed";
  }

  /**
   * The submit failed before it wrote the job (refused, raced, or D1 failed): its unconfirmed
   * tasks, and whatever they brought in, go as if never sent. A written job is never withdrawn.
   */
  async withdraw(jobId: string): Promise<void> {
    if (!this.jobs.unconfirmed(jobId)) return;
    this.results.withdraw(jobId);
    this.queue.cancelJob(jobId);
    this.queue.purgeJob(jobId);
    this.verifier.forgetJob(jobId);
    this.held.dropJob(jobId);
    this.jobs.forget(jobId);
    this.metrics.count("p2pa_jobs_withdrawn_total");
    await this.pump();
  }

  /**
   * An unconfirmed job whose submit never said how it ended (it stopped, or its write outlived
   * CONFIRM_WAIT_MS): D1 has the answer. Written: confirmed; not: withdrawn. (A submit whose
   * write commits after that finds its tasks gone and enqueues them again.)
   */
  private async settleUnconfirmed(jobId: string, now: number): Promise<void> {
    let job: Awaited<ReturnType<MetadataStore["getJobById"]>>;
    let meta: DocumentMeta | undefined;
    try {
      job = await this.store.getJobById(jobId);
      // Its documents' metadata as written (its submit found their languages after it sent them).
      const tenant = this.jobs.jobTenant(jobId);
      if (job && tenant !== null)
        meta = metaByDocument(await pendingChunks(this.env, this.store, tenant, job));
    } catch (err) {
      console.warn("cannot read an unconfirmed job; asking again later", jobId, err);
      this.jobs.confirmLater(jobId, now + CONFIRM_RETRY_MS);
      return;
    }
    // Its submit may have confirmed or withdrawn it while D1 answered.
    if (!this.jobs.unconfirmed(jobId)) return;
    if (job) await this.confirm(jobId, { accepting: job.accepting, ...(meta ? { meta } : {}) });
    else await this.withdraw(jobId);
  }

  private countCache(cache: { hits: number; misses: number } | undefined): void {
    if (cache?.hits) this.metrics.count("p2pa_embedding_cache_hits_total", "", cache.hits);
    if (cache?.misses) this.metrics.count("p2pa_embedding_cache_misses_total", "", cache.misses);
  }

  /** The job takes no more documents: it ends once its tasks have. */
  async close(jobId: string): Promise<void> {
    this.jobs.setAccepting(jobId, false);
    await this.results.settleJob(jobId);
    // Settling may have queued chunks whose hand-over had failed.
    await this.pump();
  }

  /** Stops dispatching a job's tasks and ends their leases; `purge` when the job is deleted. */
  async cancel(jobId: string, purge = false): Promise<number> {
    const n = this.queue.cancelJob(jobId);
    this.verifier.forgetJob(jobId);
    this.held.dropJob(jobId);
    if (purge) {
      // Deleted: nothing of the job's text, errors or events stays on the shard.
      this.jobs.markEnded(jobId);
      await this.jobs.markDeleted(jobId);
      this.queue.purgeJob(jobId);
    } else if (this.jobs.markEnded(jobId)) {
      this.jobs.appendEvents(jobId, [{ kind: "end", data: { status: "cancelled" } }]);
      await this.notifier.notifyEnd(jobId);
    }
    // Cancelled leases free their workers' room for other jobs' tasks.
    await this.pump();
    return n;
  }

  /** A document of an ended job was deleted: its items and chunk events leave the shard. */
  async forgetDocument(jobId: string, documentId: string): Promise<void> {
    this.queue.forgetDocument(jobId, documentId);
    this.jobs.forgetDocument(jobId, documentId);
  }

  /** The job's text retention ended: its tasks keep their chunk ids, not their text. */
  async purgeText(jobId: string): Promise<void> {
    this.queue.dropText(jobId);
  }

  /** A job's event log after `afterSeq` (chunk results and the terminal event). */
  async events(jobId: string, afterSeq: number, limit = 1000): Promise<JobEvent[]> {
    return this.jobs.events(jobId, afterSeq, limit);
  }

  /**
   * The job's live progress as Server-Sent Events after event id `after`, pushed as its log
   * grows and closed after its terminal event (see JobWatch). The caller has checked the tenant.
   */
  async watchEvents(jobId: string, after: number, chunks: boolean): Promise<ReadableStream> {
    return this.watchers.open(jobId, after, chunks);
  }

  /** Tasks (of TASK_SIZE chunks) waiting for a worker: checked before accepting more work. */
  async backlog(): Promise<number> {
    return this.queue.pendingUnits();
  }

  /**
   * Embeds texts on a connected worker ahead of all batch work. The answer is checked as
   * strictly as a batch result; a worker that fails or answers wrongly is charged and the
   * request moves to another worker, up to REALTIME_TRIES.
   */
  async embed(
    model: string,
    texts: string[],
    timeoutMs = 30_000,
    scope: { tenant?: string; pool?: TaskOptions["pool"] } = {},
  ): Promise<EmbedOutcome> {
    const tried = new Set<string>();
    let last: EmbedOutcome = {
      ok: false,
      code: "no_capacity",
      message: `no connected worker serves model ${model}`,
    };
    while (tried.size < REALTIME_TRIES) {
      const now = Date.now();
      const candidates = this.peers
        .all()
        .filter(
          ({ peer }) =>
            peer.hello &&
            !peer.draining &&
            peer.budget.coolUntil <= now &&
            !tried.has(peer.workerId) &&
            (scope.pool !== "own" || peer.tenant === scope.tenant) &&
            peer.hello.models.some((m) => m.id === model),
        );
      if (candidates.length === 0) return last;
      // Trusted donors first (a wrong query vector is not checked by a second donor), then
      // the least busy: fewest real-time requests in flight.
      const rank = (p: { workerId: string; credentialId: string }) =>
        (this.verifier.trusted(p.credentialId) ? 0 : 1_000_000) + this.lane.inFlight(p.workerId);
      candidates.sort((a, b) => rank(a.peer) - rank(b.peer));
      const { ws, peer } = candidates[0] as (typeof candidates)[number];
      tried.add(peer.workerId);
      last = await this.lane.request(
        peer.workerId,
        { model, count: texts.length },
        timeoutMs,
        (requestId) =>
          this.send(ws, { type: "embed", v: PROTOCOL_VERSION, requestId, model, texts }),
      );
      if (last.ok || last.code === "timeout") return last;
    }
    return last;
  }

  /** Checks every connected worker's token now (a revocation); returns connections closed. */
  async revalidateNow(): Promise<number> {
    const before = this.peers.all().length;
    this.lastRevalidation = 0;
    await this.revalidate(Date.now());
    return before - this.peers.all().length;
  }

  /** The shard's counters, for `/v1/metrics`. */
  async counters(): Promise<{ name: string; label: string; value: number }[]> {
    return this.metrics.snapshot();
  }

  /**
   * A snapshot of the shard for the dashboard, `/healthz` and tests; `tenant` limits the
   * workers listed to those that joined with that tenant's tokens.
   */
  async stats(tenant?: string): Promise<DispatcherStats> {
    const now = Date.now();
    const rooms = this.rooms(now);
    const listed = rooms.filter(({ peer }) => tenant === undefined || peer.tenant === tenant);
    return {
      workers: listed.map(({ peer, held, room }) => ({
        id: peer.workerId,
        token: peer.credentialId,
        name: peer.hello?.name ?? null,
        version: peer.hello?.version ?? null,
        models: peer.hello?.models.map((m) => m.id) ?? [],
        device: peer.hello?.device ?? null,
        threads: peer.hello?.threads ?? null,
        connectedAt: new Date(peer.connectedAt ?? now).toISOString(),
        capacity: peer.capacity,
        limit: limitFor(peer, now),
        held,
        room,
        draining: peer.draining,
        coolingDown: peer.budget.coolUntil > now,
        failures: peer.budget.failures,
        chunksDone: peer.chunksDone,
        chunksPerSecond: rateOf(peer, now),
      })),
      tasks: this.queue.counts(),
      health: judge(this.queue.ready(now), rooms, now, this.leasableSince(now)),
      ...(tenant === undefined
        ? {
            donors: this.verifier
              .records()
              .map((r) => ({ ...r, trusted: this.verifier.trusted(r.donor) })),
          }
        : {}),
    };
  }

  // ---- WebSocket lifecycle (hibernation API) ----

  override async fetch(request: Request): Promise<Response> {
    if (request.headers.get("Upgrade")?.toLowerCase() !== "websocket") {
      return new Response("expected a WebSocket upgrade", { status: 426 });
    }
    const credentialId = request.headers.get(CREDENTIAL_HEADER);
    const tenant = request.headers.get(TENANT_HEADER);
    if (!credentialId || !tenant) return new Response("unauthenticated", { status: 401 });
    const pair = new WebSocketPair();
    const [client, server] = [pair[0], pair[1]];
    const held = this.peers.all().filter(({ peer }) => peer.credentialId === credentialId).length;
    if (held >= this.maxConnectionsPerToken) {
      // Told on the socket, so every client sees why; the worker then stops reconnecting.
      server.accept();
      this.metrics.count("p2pa_frames_refused_total", "too_many_connections");
      server.close(
        CloseCode.tooManyConnections,
        `this token already holds ${held} connections, the most one token may`,
      );
      return new Response(null, { status: 101, webSocket: client });
    }
    const workerId = `wkr_${crypto.randomUUID().replaceAll("-", "").slice(0, 20)}`;
    this.ctx.acceptWebSocket(server, [workerId]);
    this.metrics.count("p2pa_worker_connections_total");
    this.peers.accept(server, workerId, credentialId, tenant);
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
    if (typeof raw !== "string" && isResultFrame(raw)) {
      // A result as raw float32, from a worker that offered it in its hello.
      if (!peer.hello?.binaryResults) {
        this.protocolError(ws, "bad_message", "binary results were not offered in hello");
        return;
      }
      const result = decodeResultFrame(raw);
      if (!result.ok) this.protocolError(ws, result.error.code, result.error.message);
      else await this.onResult(ws, result.message);
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
    await dispatchMessage<
      MessageByType<WorkerMessage>,
      WorkerMessage["type"],
      Promise<void>,
      [WebSocket, Readonly<Peer>]
    >(this.handlers, msg.type, msg, ws, peer);
  }

  /**
   * What the coordinator does with each worker frame, one entry per `WorkerMessage` type: a
   * type added to the protocol does not compile until it has one here.
   */
  private readonly handlers: MessageHandlers<
    WorkerMessage,
    Promise<void>,
    [WebSocket, Readonly<Peer>]
  > = {
    hello: (msg, ws) => this.onHello(ws, msg),
    ready: async (msg, ws) => {
      this.peers.update(ws, (p) => {
        p.capacity = msg.capacity;
      });
      await this.pump();
    },
    heartbeat: (msg, ws) => this.onHeartbeat(ws, msg.leaseIds, msg.capacity),
    result: (msg, ws) => this.onResult(ws, msg),
    task_failed: (msg, ws) => this.onTaskFailed(ws, msg.leaseId, msg.taskId, msg.error),
    release: async (msg, _ws, peer) => {
      this.queue.release(msg.leaseIds, peer.workerId);
      await this.pump();
    },
    draining: async (_msg, ws) => {
      this.peers.update(ws, (p) => {
        p.draining = true;
      });
    },
    embed_result: async (msg, ws) => this.onEmbedResult(ws, msg),
    embed_failed: async (msg, ws, peer) => {
      const settled = this.lane.settle(msg.requestId, peer.workerId, {
        ok: false,
        code: "failed",
        message: `worker reported ${msg.error.code}: ${msg.error.message}`,
      });
      if (settled) this.charge(ws, `real-time request failed (${msg.error.code})`);
    },
  };

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
    await this.revalidate(now);
    const lapsed = new Set(this.requeueExpired(now));
    for (const { ws, peer } of this.peers.all()) {
      if (lapsed.has(peer.workerId)) this.charge(ws, "a lease expired before its result arrived");
    }
    for (const jobId of this.jobs.notifyDue(now)) await this.notifier.notifyEnd(jobId);
    for (const jobId of this.jobs.confirmDue(now)) await this.settleUnconfirmed(jobId, now);
    this.watch(now, "alarm");
    await this.pump();
  }

  // ---- handlers ----

  private async onHello(ws: WebSocket, msg: Hello): Promise<void> {
    // A shard serves the model in its name (`<model>:<n>`, see shards.ts); the worker connected
    // for it, so its hello must offer it, with the dimension the deployment registered.
    const name = this.ctx.id.name ?? "";
    const model = name.slice(0, name.lastIndexOf(":"));
    const offered = msg.models.find((m) => m.id === model);
    const registered = findModel(this.env, model);
    const problem =
      model && !offered
        ? `this connection is for model ${model}; the hello offers ${msg.models.map((m) => m.id).join(", ")}`
        : offered && registered && offered.dimension !== registered.dimension
          ? `model ${model} returns ${offered.dimension} dimensions; this deployment registered it with ${registered.dimension}`
          : null;
    if (problem) {
      this.send(ws, {
        type: "error",
        v: PROTOCOL_VERSION,
        code: "model_mismatch",
        message: problem,
      });
      ws.close(CloseCode.protocolError, "model mismatch");
      return;
    }
    // The same worker process reconnecting keeps its identity and so its leases. The id is
    // derived from the session and the token, so it cannot be claimed with another token, and
    // the id shown by the API does not reveal the session that would claim it.
    const current = this.peers.get(ws);
    if (!current) return;
    const sessionId = msg.session
      ? `wkr_${(await sha256Hex(`${current.credentialId}\n${msg.session}`)).slice(0, 24)}`
      : null;
    const peer = this.peers.update(ws, (p) => {
      if (sessionId) p.workerId = sessionId;
      p.hello = {
        models: msg.models,
        device: msg.device,
        threads: msg.threads,
        batchSize: msg.batchSize,
        version: msg.version,
        name: msg.name,
        binaryResults: msg.binaryResults === true,
      };
      p.capacity = msg.capacity;
    });
    if (!peer) return;
    const workerId = peer.workerId;
    if (msg.session) {
      for (const other of this.peers.ofWorker(workerId, ws))
        other.close(CloseCode.normal, "replaced by a new connection");
      this.queue.reclaim(workerId, Date.now() + this.leaseMs, this.leaseMaxMs);
    }
    this.send(ws, {
      type: "welcome",
      v: PROTOCOL_VERSION,
      workerId,
      leaseMs: this.leaseMs,
      heartbeatMs: this.heartbeatMs,
      ...(msg.binaryResults ? { binaryResults: true } : {}),
    });
    // A token revoked since the upgrade was checked (the API caches credentials briefly).
    this.lastRevalidation = 0;
    await this.revalidate(Date.now());
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
    // A heartbeat is due every heartbeatMs; a peer sending them far faster gets no more work
    // done for it than one every quarter interval.
    if (now - (this.lastBeat.get(ws) ?? 0) < this.heartbeatMs / 4) return;
    this.lastBeat.set(ws, now);
    const peer = this.peers.update(ws, (p) => {
      p.capacity = capacity;
    });
    if (!peer) return;
    this.queue.heartbeat(peer.workerId, leaseIds, now + this.leaseMs, this.leaseMaxMs);
    const lost = this.queue.reconcile(peer.workerId, leaseIds, now - 2 * this.heartbeatMs);
    if (lost) {
      console.warn(`worker ${peer.workerId} did not have ${lost} lease(s); requeued`);
      this.metrics.count("p2pa_leases_reconciled_total", "", lost);
    }
    this.watch(now, "heartbeat");
    await this.revalidate(now);
    await this.pump();
  }

  /** Checks a real-time answer like a batch result before its caller sees it. */
  private onEmbedResult(ws: WebSocket, msg: EmbedResult): void {
    const peer = this.peers.get(ws);
    const want = this.lane.expected(msg.requestId);
    if (!peer || !want || want.workerId !== peer.workerId) return;
    const dimension = findModel(this.env, want.model)?.dimension ?? 0;
    let problem: string | null =
      msg.vectors.length === want.count
        ? null
        : `expected ${want.count} vectors, got ${msg.vectors.length}`;
    for (let i = 0; !problem && i < msg.vectors.length; i++) {
      const v = decodeVector(msg.vectors[i] as string);
      const why = v ? checkEmbedding(v, dimension) : "not base64 float32";
      if (why) problem = `vector ${i}: ${why}`;
    }
    if (problem) {
      this.metrics.count("p2pa_results_total", "rejected");
      this.lane.settle(msg.requestId, peer.workerId, {
        ok: false,
        code: "failed",
        message: `a worker's answer was refused (${problem})`,
      });
      this.charge(ws, `bad real-time answer: ${problem}`);
      return;
    }
    this.lane.settle(msg.requestId, peer.workerId, {
      ok: true,
      vectors: msg.vectors,
      tokens: msg.tokens,
      workerId: peer.workerId,
    });
  }

  /**
   * Closes connections whose worker token was revoked or deleted. At most every REVALIDATE_MS,
   * from heartbeats, hellos and the alarm, with one D1 query for the whole shard; so a
   * revocation reaches live connections within a heartbeat interval.
   */
  private async revalidate(now: number): Promise<void> {
    if (now - this.lastRevalidation < REVALIDATE_MS) return;
    this.lastRevalidation = now;
    const all = this.peers.all();
    // Tokens from the deployment secret change with a deploy, which restarts the shard.
    const ids = [...new Set(all.map(({ peer }) => peer.credentialId))].filter(
      (id) => !id.startsWith("secret:"),
    );
    if (ids.length === 0) return;
    let states: Map<string, "active" | "revoked" | "quarantined">;
    try {
      states = await this.store.credentialStates(ids);
    } catch (err) {
      console.error("could not check worker tokens; will retry", err);
      this.lastRevalidation = 0;
      return;
    }
    for (const { ws, peer } of all) {
      if (peer.credentialId.startsWith("secret:")) continue;
      const state = states.get(peer.credentialId) ?? "revoked";
      if (state === "active") continue;
      this.metrics.count("p2pa_frames_refused_total", state);
      if (state === "quarantined")
        ws.close(CloseCode.quarantined, "quarantined: results disagreed with other donors");
      else ws.close(CloseCode.unauthorized, "worker token revoked");
      await this.disconnect(ws, true);
    }
  }

  private async onResult(ws: WebSocket, msg: TaskResult | BinaryResult): Promise<void> {
    const arrived = Date.now();
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
    const expected = [...(task.items ?? []), ...(lease.canary ? [lease.canary] : [])];
    const checked = checkResult(expected, findModel(this.env, task.model), msg);
    if (!checked.ok) {
      ack("rejected", checked.problem);
      await this.onTaskFailed(ws, msg.leaseId, msg.taskId, {
        code: "bad_result",
        message: checked.problem,
        retryable: true,
      });
      return;
    }
    const donor = this.peers.get(ws)?.credentialId ?? "";
    if (lease.canary) {
      // The known-answer check: a wrong answer to a known canary is proof, not a vote.
      const answer = checked.vectors.pop() as Float32Array;
      const verdict = this.canaries.judge(lease.canary.id, donor, answer);
      this.metrics.count("p2pa_canaries_total", verdict);
      if (verdict === "fail") {
        ack("rejected", "a check in this task was answered wrongly");
        await this.onTaskFailed(ws, msg.leaseId, msg.taskId, {
          code: "bad_result",
          message: "failed a known-answer check",
          retryable: true,
        });
        await this.quarantine(donor, "it answered a known-answer check wrongly");
        return;
      }
    }
    // Its pace counts from arrival, not from when the write ends.
    const pace = this.paces.get(ws) ?? new Pace();
    this.paces.set(ws, pace);
    pace.note(expected.length, arrived);
    // The result is in: the worker's room is open again, so the next task can go out while
    // this one is written.
    const receiving = this.results.receive(
      task,
      lease,
      donor,
      checked.vectors,
      this.othersCanConfirm(task, donor),
    );
    await this.pump();
    const { outcome, outvoted } = await receiving;
    for (const loser of this.verifier.dueForQuarantine(outvoted))
      await this.quarantine(loser, "its results disagreed with other donors' that agreed");
    if (outcome === "unavailable") {
      ack("rejected", "storage unavailable; the task was requeued");
      await this.pump();
      return;
    }
    if (outcome === "withdrawn") return ack("rejected", "the job was withdrawn by its submit");
    if (outcome === "stored" || outcome === "accepted") {
      // Every item it computed, a hidden known-answer check included: the worker counts the
      // same, and a credit that left the check out would tell it which tasks held one.
      const n = expected.length;
      const before = this.peers.get(ws)?.earned ?? 0;
      const peer = this.peers.update(ws, (p) => {
        p.chunksDone += n;
        recordChunks(p, n, Date.now());
        p.budget = recordSuccess(p.budget);
        p.earned = Math.min(MAX_CAPACITY, p.earned + 1);
      });
      // Room it just earned (only while it is still proving itself).
      if (peer && peer.earned > before && before < peer.capacity) await this.pump();
    }
    ack(outcome);
  }

  private async onTaskFailed(
    ws: WebSocket,
    leaseId: string,
    taskId: string,
    error: ErrorInfo,
  ): Promise<void> {
    const peer = this.peers.get(ws);
    const lease = this.queue.getLease(leaseId);
    if (!peer || !lease || lease.workerId !== peer.workerId || lease.taskId !== taskId) return;
    const r = this.queue.fail(
      leaseId,
      `worker reported ${error.code}: ${error.message}`,
      Date.now(),
      peer.credentialId,
    );
    this.metrics.count("p2pa_task_failures_total");
    this.charge(ws, error.message);
    if (r?.outcome === "failed") await this.results.storeFailure(r.taskId);
    await this.pump();
  }

  /** A connection ended; `revoked` when its token was, so its leases go back at once. */
  private async disconnect(ws: WebSocket, revoked = false): Promise<void> {
    this.buckets.delete(ws);
    this.paces.delete(ws);
    this.lastBeat.delete(ws);
    const peer = this.peers.get(ws);
    this.peers.forget(ws);
    if (!peer) return;
    if (this.peers.ofWorker(peer.workerId).length === 0) {
      // Leases stay for a short grace period so a worker whose connection dropped can
      // reconnect and deliver what it computed; after that the alarm requeues them.
      this.queue.graceWorker(peer.workerId, Date.now() + (revoked ? 0 : RECONNECT_GRACE_MS));
    }
    this.lane.dropWorker(peer.workerId);
    await this.pump();
    if (peer.hello)
      await this.store.workerSeen(peer.workerId, peer.chunksDone, true).catch(() => {});
  }

  /**
   * Whether another donor connected now could confirm a result for this task: serves its
   * model, may see it (pool), is not benched or draining, and has not answered it.
   */
  private othersCanConfirm(
    task: { model: string; tenant: string; pool: string; answered: string[] },
    donor: string,
  ): boolean {
    const now = Date.now();
    return this.peers
      .all()
      .some(
        ({ peer }) =>
          peer.hello &&
          !peer.draining &&
          peer.budget.coolUntil <= now &&
          peer.credentialId !== donor &&
          !task.answered.includes(peer.credentialId) &&
          (task.pool !== "own" || peer.tenant === task.tenant) &&
          peer.hello.models.some((m) => m.id === task.model),
      );
  }

  /**
   * A donor was caught lying: its token is quarantined (in D1, so no shard takes it again),
   * its connections are told why and closed, and every result of its that nobody confirmed
   * is computed again by others, so the index heals itself.
   */
  private async quarantine(donor: string, reason: string): Promise<void> {
    const now = Date.now();
    this.verifier.quarantine(donor, reason, now);
    this.canaries.forgetDonor(donor);
    this.metrics.count("p2pa_donors_quarantined_total");
    console.warn(`quarantined worker token ${donor}: ${reason}`);
    for (const { ws, peer } of this.peers.all()) {
      if (peer.credentialId !== donor) continue;
      this.send(ws, {
        type: "error",
        v: PROTOCOL_VERSION,
        code: "quarantined",
        message: `this worker token is quarantined: ${reason}`,
      });
      ws.close(CloseCode.quarantined, "quarantined: results disagreed with other donors");
      await this.disconnect(ws, true);
    }
    const masks = new Map<string, PiiKind[]>();
    for (const t of this.queue.unconfirmedBy(donor)) {
      const task = this.queue.getTask(t.taskId);
      if (!task) continue;
      // The text goes out again as it went the first time: masked as the job asks.
      let mask = masks.get(task.jobId);
      if (!mask) {
        mask = (await this.store.getJobById(task.jobId))?.privacy.mask ?? [];
        masks.set(task.jobId, mask);
      }
      const texts = new Map(
        (
          await this.store.getChunks(
            task.tenant,
            t.items.map((i) => i.chunkId),
          )
        ).map((c) => [c.id, c.text]),
      );
      // A chunk deleted since, or whose text retention has ended, is not computed again.
      const items = t.items.flatMap((i) => {
        const text = texts.get(i.chunkId);
        if (text === undefined || text === null) return [];
        return [{ ...i, text: mask.length ? maskPersonalData(text, mask).text : text }];
      });
      if (items.length)
        this.queue.recompute(
          t.taskId,
          await sealTask(keyringFor(this.env), task.tenant, items),
          donor,
        );
    }
    // Recorded once what it stored is queued again: whoever sees the quarantine (the API
    // reads it from D1) sees its healing under way, never a gap before it starts.
    await this.store.quarantineCredential(donor, reason).catch((err) => {
      console.error("could not record the quarantine in D1", donor, err);
    });
    await this.pump();
  }

  /** Share of leases that carry a known-answer check (`VERIFY_CANARY_RATE`). */
  private get canaryRate(): number {
    return settings(this.env).VERIFY_CANARY_RATE;
  }

  /** The watchdog's view of what a peer could lease (see `judge`). */
  private leasableSince(now: number) {
    return (peer: Readonly<{ credentialId: string; tenant: string }>, model: string) =>
      this.queue.oldestLeasable({ donor: peer.credentialId, tenant: peer.tenant }, model, now);
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
    // Leasing is one synchronous pass: nothing else runs between reading a worker's room and
    // taking it, so no other handler can lease against a stale count. The (async) opening of
    // the sealed text and the sends come after, for leases already recorded.
    const out: { ws: WebSocket; task: LeasedTask }[] = [];
    let progress = true;
    while (progress) {
      progress = false;
      for (const r of ready) {
        if (r.room <= 0) continue;
        for (const m of r.peer.hello?.models ?? []) {
          const [task] = this.queue.lease(
            { workerId: r.peer.workerId, donor: r.peer.credentialId, tenant: r.peer.tenant },
            m.id,
            1,
            now,
            this.leaseMs,
            this.paces.get(r.ws)?.taskSize(now, this.taskWorkMs) ?? TASK_SIZE,
          );
          if (!task) continue;
          r.room--;
          progress = true;
          if (this.jobs.markJobStarted(task.jobId)) started.push(task.jobId);
          out.push({ ws: r.ws, task });
          break;
        }
      }
    }
    const keyring = keyringFor(this.env);
    const opened = await Promise.all(
      out.map(async ({ ws, task }) => {
        // A task whose text cannot be opened (its tenant's keys were destroyed) is not sent;
        // its lease runs out and counts as a failed attempt, as for a silent worker.
        const items = await openTask(keyring, task.tenant, task.items, task.texts).catch((err) => {
          console.error("cannot open a task's text; not sent", task.taskId, err);
          return null;
        });
        if (!items) return null;
        // Now and then a known-answer check rides along as one more item.
        const last = items.at(-1);
        if (last && task.verify !== "off" && Math.random() < this.canaryRate) {
          const canary = this.canaries.pick();
          if (canary) {
            const chunkId = canaryChunkId(last.chunkId);
            this.queue.setCanary(task.leaseId, canary.id, chunkId);
            items.push({ chunkId, text: canary.text });
          }
        }
        return { ws, task, items };
      }),
    );
    for (const f of opened) {
      if (!f) continue;
      const { ws, task, items } = f;
      this.send(ws, {
        type: "task",
        v: PROTOCOL_VERSION,
        taskId: task.taskId,
        leaseId: task.leaseId,
        model: task.model,
        attempt: task.attempt,
        items,
      });
    }
    // Ready work left beside a worker with room for it should be impossible here; if this
    // pump could not place it, the watchdog looks again soon rather than wait for a frame.
    const suspect = ready.some(
      (r) =>
        r.room > 0 &&
        r.peer.hello?.models.some((m) => this.leasableSince(now)(r.peer, m.id) !== null),
    );

    if (!suspect) this.watchAt = null;
    else if (this.watchAt === null || this.watchAt <= now) this.watchAt = now + STALL_MS;
    await this.clock.arm(now);
    // (An unconfirmed job is marked when it is confirmed: it is not in D1 yet.)
    for (const jobId of started)
      if (!this.jobs.unconfirmed(jobId)) await this.store.markStarted(jobId);
  }

  /**
   * The stall watchdog: ready work beside a worker with room means some path forgot to
   * dispatch. It is logged and counted here; the pump that follows every call repairs it.
   */
  private watch(now: number, from: string): void {
    const health = judge(this.queue.ready(now), this.rooms(now), now, this.leasableSince(now));
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
      // Trust is earned back: a failing peer holds fewer tasks until it finishes some again.
      p.earned = Math.max(INITIAL_EARNED, Math.floor(p.earned / 2));
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
