import { randomBytes } from "node:crypto";
import {
  CloseCode,
  dispatchMessage,
  type EdgeMessage,
  EdgeMessage as EdgeMessageSchema,
  type Embed,
  encodeResultFrame,
  encodeVector,
  LITTLE_ENDIAN,
  MAX_CAPACITY,
  type MessageByType,
  type MessageHandlers,
  PROTOCOL_VERSION,
  parseMessage,
  TASK_SIZE,
  type Task,
  type WorkerMessage,
} from "@p2pa/shared";
import ReconnectingWebSocket from "partysocket/ws";
import WS from "ws";
import type { InferenceGate } from "./inference-gate.js";
import type { Embedder } from "./model/index.js";
import { upgradeRefusal } from "./served.js";

/** Where a worker's connection stands. */
export type ConnectionState = "connecting" | "connected" | "reconnecting" | "draining" | "stopped";

/** A task's result, kept until the edge acknowledges it (sent again after a reconnect). */
interface Outgoing {
  taskId: string;
  leaseId: string;
  vectors: { chunkId: string; values: Float32Array }[];
  elapsedMs?: number;
}

export interface WorkerStats {
  state: ConnectionState;
  workerId: string | null;
  /** Tasks and chunks the edge stored or accepted (what it credits this worker with). */
  tasksDone: number;
  chunksDone: number;
  embedsDone: number;
  rejected: number;
  startedAt: number;
  /**
   * Milliseconds spent running the model (tasks and real-time requests), counted when each
   * call ends: with uptime, how busy this worker is. `inferenceMsAt` adds the call under way.
   */
  inferenceMs: number;
}

export interface WorkerOptions {
  url: string;
  token: string;
  embedder: Embedder;
  batchSize: number;
  threads: number;
  device: string;
  name: string;
  version: string;
  /** Offer results as binary frames (default); false keeps to JSON, as workers before them. */
  binaryResults?: boolean;
  /** Shared by the workers of one process that serves several models: one model runs at a time. */
  gate?: InferenceGate;
  /**
   * What the worker reports: connected, disconnected, rejected, edge_error, protocol_error;
   * fatal (closed for good: the token or the protocol) and not_served (the server refused the
   * model at connect, `detail.available` listing what it serves) end it.
   */
  onEvent?: (event: string, detail?: Record<string, unknown>) => void;
}

/** The edge's error code for a hello whose model is not the connection's, or has another dimension. */
const MODEL_MISMATCH = "model_mismatch";

/** Tasks a worker holds at once: the batch being computed and two more batches waiting. */
function capacityFor(batchSize: number): number {
  return Math.min(MAX_CAPACITY, Math.max(2, Math.ceil((3 * batchSize) / TASK_SIZE)));
}

/** The worker's own view of its window, as `--status-port` reports it. */
export interface WindowView {
  /** Tasks it can hold at once (0 while draining). */
  capacity: number;
  /** Tasks waiting for the model, and in the batch being computed. */
  queued: number;
  computing: number;
  /** Tasks it could take now: capacity less queued and computing. */
  room: number;
  /** Results sent and not yet acknowledged. */
  awaitingAck: number;
  /** Every lease it holds (what its heartbeats list). */
  leaseIds: string[];
}

/**
 * A volunteer worker: holds one WebSocket to the edge, takes tasks within the window it
 * states (`capacity`), embeds them in batches, and answers real-time requests before any
 * batch work.
 */
export class Worker {
  readonly stats: WorkerStats = {
    state: "connecting",
    workerId: null,
    tasksDone: 0,
    chunksDone: 0,
    embedsDone: 0,
    rejected: 0,
    startedAt: Date.now(),
    inferenceMs: 0,
  };
  private readonly socket: ReconnectingWebSocket;
  private readonly tasks: Task[] = [];
  private readonly embeds: Embed[] = [];
  /** Leases being computed or awaiting an ack, by lease id. */
  private readonly held = new Map<string, Task>();
  /** Results sent but not yet acknowledged; re-sent after a reconnect. */
  private readonly outbox = new Map<string, Outgoing>();
  /** The edge takes results as binary frames (it said so in `welcome`). */
  private binaryResults = false;
  /** Keeps this process's identity across reconnects, so its leases survive a dropped link. */
  private readonly session = randomBytes(18).toString("base64url");
  private busy = false;
  /**
   * When the model last went from idle to busy (performance.now()); null while it is idle.
   * Calls may queue behind one another (the next batch is handed over before the one running
   * ends), so busy means from the first call in until the last one out.
   */
  private inferringSince: number | null = null;
  /** Model calls made and not yet answered. */
  private inferring = 0;
  /** Tasks in the batch being computed now: their room opens when their results go out. */
  private computing = 0;
  private draining = false;
  private heartbeat: ReturnType<typeof setInterval> | null = null;
  private idleWaiters: (() => void)[] = [];
  /** What the server serves, once it refused this worker's model at connect. */
  private refusedWith: string[] | null = null;
  /** Why the server refused this worker's hello for its model (another id or dimension). */
  private mismatch: string | null = null;

  /**
   * What the worker does with each edge frame, one entry per `EdgeMessage` type: a type added
   * to the protocol does not compile until it has one here.
   */
  private readonly handlers: MessageHandlers<EdgeMessage> = {
    welcome: (msg) => {
      this.stats.workerId = msg.workerId;
      this.stats.state = this.draining ? "draining" : "connected";
      this.emit("connected", { workerId: msg.workerId });
      // After a reconnect: deliver what was computed meanwhile. The edge counts the leases
      // this worker still holds against its capacity, so nothing else needs restating.
      this.binaryResults = msg.binaryResults === true && LITTLE_ENDIAN;
      for (const r of this.outbox.values()) this.sendResult(r);
      if (this.heartbeat) clearInterval(this.heartbeat);
      this.heartbeat = setInterval(() => {
        this.send({
          type: "heartbeat",
          v: PROTOCOL_VERSION,
          leaseIds: this.leaseIds(),
          capacity: this.capacity,
        });
      }, msg.heartbeatMs);
    },
    task: (msg) => {
      if (this.draining) {
        this.send({ type: "release", v: PROTOCOL_VERSION, leaseIds: [msg.leaseId] });
        return;
      }
      this.tasks.push(msg);
      void this.drain();
    },
    embed: (msg) => {
      this.embeds.push(msg);
      void this.drain();
    },
    ack: (msg) => {
      const t = this.held.get(msg.leaseId);
      // Credited as the edge credits it: a result it stored, or accepted to confirm later.
      if (
        t &&
        this.outbox.has(msg.leaseId) &&
        (msg.status === "stored" || msg.status === "accepted")
      ) {
        this.stats.tasksDone++;
        this.stats.chunksDone += t.items.length;
      }
      this.held.delete(msg.leaseId);
      this.outbox.delete(msg.leaseId);
      if (msg.status === "rejected") {
        this.stats.rejected++;
        this.emit("rejected", { taskId: msg.taskId, reason: msg.reason });
      }
      this.settleIfIdle();
    },
    error: (msg) => {
      // The connection's model is not the one the hello offers: every reconnect would be too.
      if (msg.code === MODEL_MISMATCH) this.mismatch = msg.message;
      this.emit("edge_error", { code: msg.code, message: msg.message });
    },
  };

  constructor(private readonly opts: WorkerOptions) {
    const token = opts.token;
    const refused = (available: string[]) => {
      this.refusedWith = available;
    };
    // ws takes headers; the browser WebSocket API partysocket mimics does not.
    class AuthedWebSocket extends WS {
      constructor(address: string, protocols?: string | string[]) {
        super(address, protocols, { headers: { Authorization: `Bearer ${token}` } });
        // The server answered the upgrade over HTTP: read why before the attempt is dropped, so
        // a model it does not serve ends the worker instead of being asked for again and again.
        this.on("unexpected-response", (_req, res) => {
          void upgradeRefusal(res).then((available) => {
            if (available) refused(available);
            this.terminate();
          });
        });
      }
    }
    this.socket = new ReconnectingWebSocket(opts.url, [], {
      WebSocket: AuthedWebSocket,
      minReconnectionDelay: 500,
      maxReconnectionDelay: 15_000,
      reconnectionDelayGrowFactor: 1.6,
      connectionTimeout: 10_000,
      maxEnqueuedMessages: 0,
    });
    this.socket.addEventListener("open", () => this.onOpen());
    this.socket.addEventListener("close", (e) => this.onClose(e.code, e.reason));
    this.socket.addEventListener("message", (e) => void this.onMessage(e.data as string));
  }

  private emit(event: string, detail?: Record<string, unknown>) {
    this.opts.onEvent?.(event, detail);
  }

  private send(msg: WorkerMessage): void {
    if (this.socket.readyState === WS.OPEN) this.socket.send(JSON.stringify(msg));
  }

  /** A task's result: one binary frame of raw float32 where the edge takes it, else JSON. */
  private sendResult(r: Outgoing): void {
    if (this.socket.readyState !== WS.OPEN) return;
    if (this.binaryResults) {
      this.socket.send(encodeResultFrame(r));
      return;
    }
    this.send({
      type: "result",
      v: PROTOCOL_VERSION,
      taskId: r.taskId,
      leaseId: r.leaseId,
      vectors: r.vectors.map((x) => ({ chunkId: x.chunkId, vector: encodeVector(x.values) })),
      ...(r.elapsedMs === undefined ? {} : { elapsedMs: r.elapsedMs }),
    });
  }

  /** Tasks this worker can hold at once; 0 once it is draining. */
  private get capacity(): number {
    return this.draining ? 0 : capacityFor(this.opts.batchSize);
  }

  /** Every lease held: queued, computing, or with its result awaiting an ack. */
  private leaseIds(): string[] {
    return [...new Set([...this.held.keys(), ...this.tasks.map((t) => t.leaseId)])];
  }

  /** The window as this side counts it; the edge's `room` for this worker should match. */
  window(): WindowView {
    const queued = this.tasks.length;
    return {
      capacity: this.capacity,
      queued,
      computing: this.computing,
      room: Math.max(0, this.capacity - queued - this.computing),
      awaitingAck: this.outbox.size,
      leaseIds: this.leaseIds(),
    };
  }

  private onOpen(): void {
    const m = this.opts.embedder.manifest;
    this.send({
      type: "hello",
      v: PROTOCOL_VERSION,
      name: this.opts.name,
      session: this.session,
      version: this.opts.version,
      models: [{ id: m.id, dimension: m.dimension }],
      device: this.opts.device,
      threads: this.opts.threads,
      batchSize: this.opts.batchSize,
      capacity: this.capacity,
      // Results as raw float32 frames, where the edge takes them (its welcome says).
      binaryResults: LITTLE_ENDIAN && this.opts.binaryResults !== false,
    });
  }

  private onClose(code: number, reason: string): void {
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = null;
    // Tasks and results are kept: the edge holds our leases for a short while, and on
    // reconnect (same session) the results are delivered; stale ones are refused and dropped.
    // Real-time requests are answered on the connection they came on, so those go.
    this.embeds.length = 0;
    if (this.stats.state === "stopped") return;
    if (this.refusedWith) {
      this.end();
      this.emit("not_served", {
        model: this.opts.embedder.manifest.id,
        available: this.refusedWith,
      });
      return;
    }
    this.stats.state = this.draining ? "draining" : "reconnecting";
    this.emit("disconnected", { code, reason });
    // A revoked token, another protocol version, a token over its connection limit, or a model
    // the server registered otherwise: reconnecting would only be refused again.
    if (
      code === CloseCode.unauthorized ||
      code === CloseCode.unsupportedVersion ||
      code === CloseCode.tooManyConnections ||
      code === CloseCode.quarantined ||
      (code === CloseCode.protocolError && this.mismatch !== null)
    ) {
      this.end();
      this.emit("fatal", { code, reason });
      return;
    }
    this.settleIfIdle();
  }

  /** Closed for good by the server: no reconnecting, and nothing left to wait for. */
  private end(): void {
    this.stats.state = "stopped";
    this.socket.close();
    for (const w of this.idleWaiters.splice(0)) w();
  }

  private async onMessage(data: string): Promise<void> {
    const parsed = parseMessage(EdgeMessageSchema, data);
    if (!parsed.ok) {
      this.emit("protocol_error", { message: parsed.error.message });
      return;
    }
    const msg: EdgeMessage = parsed.message;
    dispatchMessage<MessageByType<EdgeMessage>, EdgeMessage["type"], void>(
      this.handlers,
      msg.type,
      msg,
    );
  }

  /** Runs queued work until none is left; real-time requests always go first. */
  private async drain(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      for (;;) {
        const embed = this.embeds.shift();
        if (embed) {
          await this.runEmbed(embed);
          continue;
        }
        if (this.tasks.length === 0) break;
        // Fill one inference batch from as many tasks as fit.
        const batch: Task[] = [];
        let items = 0;
        while (
          this.tasks.length &&
          (batch.length === 0 || items + (this.tasks[0]?.items.length ?? 0) <= this.opts.batchSize)
        ) {
          const t = this.tasks.shift() as Task;
          batch.push(t);
          items += t.items.length;
        }
        await this.runTasks(batch);
      }
    } finally {
      this.busy = false;
      this.settleIfIdle();
    }
  }

  private async runEmbed(req: Embed): Promise<void> {
    const { embedder } = this.opts;
    try {
      if (req.model !== embedder.manifest.id)
        throw new Error(`this worker serves ${embedder.manifest.id}, not ${req.model}`);
      const vectors = await this.infer(req.texts, true);
      const tokens = req.texts.reduce((n, t) => n + embedder.countTokens(t), 0);
      this.send({
        type: "embed_result",
        v: PROTOCOL_VERSION,
        requestId: req.requestId,
        vectors: vectors.map(encodeVector),
        tokens,
      });
      this.stats.embedsDone++;
    } catch (err) {
      this.send({
        type: "embed_failed",
        v: PROTOCOL_VERSION,
        requestId: req.requestId,
        error: {
          code: "embed_error",
          message: String((err as Error).message ?? err).slice(0, 2000),
          retryable: true,
        },
      });
    }
  }

  private async runTasks(batch: Task[]): Promise<void> {
    this.computing = batch.length;
    for (const t of batch) this.held.set(t.leaseId, t);
    const started = performance.now();
    const vectors: Float32Array[] = [];
    try {
      // A task can be larger than a batch (the edge sizes tasks to this worker's pace): the
      // model still runs batchSize texts at a time, and a real-time request waiting goes
      // between two of them rather than behind the whole task.
      // The next batch is handed to the model before the one running ends, so it starts the
      // moment that one does; a real-time request waits behind one batch at most.
      const texts = batch.flatMap((t) => t.items.map((i) => i.text));
      const size = this.opts.batchSize;
      const start = (at: number) => {
        const call = this.infer(texts.slice(at, at + size), false);
        call.catch(() => {}); // awaited below; not an unhandled rejection meanwhile
        return call;
      };
      let next = start(0);
      for (let at = 0; at < texts.length; at += size) {
        const running = next;
        for (let embed = this.embeds.shift(); embed; embed = this.embeds.shift())
          await this.runEmbed(embed);
        if (at + size < texts.length) next = start(at + size);
        vectors.push(...(await running));
      }
    } catch (err) {
      for (const t of batch) {
        this.send({
          type: "task_failed",
          v: PROTOCOL_VERSION,
          taskId: t.taskId,
          leaseId: t.leaseId,
          error: {
            code: "inference_error",
            message: String((err as Error).message ?? err).slice(0, 2000),
            retryable: true,
          },
        });
        this.held.delete(t.leaseId);
      }
      this.computing = 0;
      return;
    }
    const elapsedMs = performance.now() - started;
    let offset = 0;
    for (const t of batch) {
      const mine = vectors.slice(offset, offset + t.items.length);
      offset += t.items.length;
      const result: Outgoing = {
        taskId: t.taskId,
        leaseId: t.leaseId,
        vectors: t.items.map((item, i) => ({
          chunkId: item.chunkId,
          values: mine[i] as Float32Array,
        })),
        elapsedMs,
      };
      this.outbox.set(t.leaseId, result);
      this.sendResult(result);
    }
    // The results are out: the edge opens this much room as each arrives, and so do we.
    this.computing = 0;
  }

  /**
   * Runs the model once, counting the time it is busy; with a gate, in this model's turn (a
   * real-time request's turn comes first), and the wait for it is not counted.
   */
  private infer(texts: string[], realtime: boolean): Promise<Float32Array[]> {
    const run = async () => {
      if (this.inferring++ === 0) this.inferringSince = performance.now();
      try {
        return await this.opts.embedder.embed(texts);
      } finally {
        if (--this.inferring === 0 && this.inferringSince !== null) {
          this.stats.inferenceMs += performance.now() - this.inferringSince;
          this.inferringSince = null;
        }
      }
    };
    return this.opts.gate ? this.opts.gate.run(realtime, run) : run();
  }

  /**
   * Milliseconds the model has run until `now` (a performance.now() reading), the call under
   * way included: a batch that takes longer than a status interval still shows as busy while
   * it runs, not all at once when it ends.
   */
  inferenceMsAt(now = performance.now()): number {
    const running = this.inferringSince === null ? 0 : Math.max(0, now - this.inferringSince);
    return this.stats.inferenceMs + running;
  }

  /** Tasks leased to this worker and not yet finished: queued, computing, or awaiting an ack. */
  tasksHeld(): number {
    return this.leaseIds().length;
  }

  private settleIfIdle(): void {
    if (this.busy || this.embeds.length || this.held.size) return;
    if (this.draining && this.tasks.length === 0) {
      for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  /**
   * Stops taking work, hands back tasks not started, finishes the batch in progress and waits
   * (up to `timeoutMs`) for the edge to acknowledge its results. Then closes.
   */
  async stop(timeoutMs = 15_000): Promise<void> {
    if (this.stats.state === "stopped") return;
    this.draining = true;
    this.stats.state = "draining";
    this.send({ type: "draining", v: PROTOCOL_VERSION });
    const unstarted = this.tasks.splice(0);
    if (unstarted.length)
      this.send({
        type: "release",
        v: PROTOCOL_VERSION,
        leaseIds: unstarted.map((t) => t.leaseId),
      });
    const idle = new Promise<void>((resolve) => {
      this.idleWaiters.push(resolve);
      this.settleIfIdle();
    });
    await Promise.race([idle, new Promise((r) => setTimeout(r, timeoutMs).unref())]);
    this.stats.state = "stopped";
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.socket.close(CloseCode.normal, "worker stopped");
  }
}
