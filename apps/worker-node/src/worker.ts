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

/** A task being computed: its vectors come in as the model calls holding its texts end. */
interface Computing {
  task: Task;
  vectors: Float32Array[];
  /** Its texts before this index have gone into model calls. */
  cut: number;
  /** Its texts whose vectors have not come back. */
  left: number;
  /** When its first call was made (performance.now()). */
  started: number;
  /** A call holding some of its texts failed: the edge was told, and it is not sent. */
  failed: boolean;
}

/** One model call: consecutive texts of one task or more, `count` from `from` of each. */
type Piece = { run: Computing; from: number; count: number }[];

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
   * Milliseconds spent running the model (tasks and real-time requests), in whole models: with
   * a pool of two sessions, a second in which one of them runs counts half. With uptime, how
   * busy this worker is. Counted as calls start and end; `inferenceMsAt` adds the time since.
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

/**
 * Tasks a worker holds at once: a batch for each call the model runs at once (`parallelism`)
 * and two more batches waiting.
 */
function capacityFor(batchSize: number, parallelism: number): number {
  return Math.min(
    MAX_CAPACITY,
    Math.max(2, Math.ceil(((parallelism + 2) * batchSize) / TASK_SIZE)),
  );
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
  /** Wakes `drain` while it waits for a call to end: a task or a real-time request came. */
  private wake: (() => void) | null = null;
  /** When the count of calls in flight last changed (performance.now()). */
  private busySince = 0;
  /** Model calls made and not yet answered. */
  private inferring = 0;
  /** Tasks taken from the queue whose results have not gone out, by lease id. */
  private readonly computing = new Map<string, Computing>();
  /** The task whose texts are being cut into model calls; null between tasks. */
  private cutting: Computing | null = null;
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
        super(address, protocols, {
          headers: { Authorization: `Bearer ${token}` },
          // No permessage-deflate: most of what goes over this socket is results, float32
          // vectors that deflate by a tenth at best, and compressing them cost this machine and
          // the edge CPU the model and the coordinator need (README, "Coordinator capacity").
          perMessageDeflate: false,
        });
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
    return this.draining ? 0 : capacityFor(this.opts.batchSize, this.opts.embedder.parallelism);
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
      computing: this.computing.size,
      room: Math.max(0, this.capacity - queued - this.computing.size),
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

  /**
   * Runs queued work until none is left. The texts of the tasks queued are cut, in order, into
   * model calls of `batchSize` (a call may end one task and begin the next, and a task larger
   * than a batch takes several), and as many calls are kept in flight as the model runs at once,
   * plus one waiting: a session that finishes one call finds the next already there, across
   * task boundaries too. A task's result goes out when its last call ends. Real-time requests
   * go to the model the moment they arrive, before any call not yet started.
   */
  private async drain(): Promise<void> {
    if (this.busy) {
      this.wake?.();
      return;
    }
    this.busy = true;
    const depth = this.opts.embedder.parallelism + 1;
    const inFlight = new Set<Promise<void>>();
    // runPiece and runEmbed answer their own failures: these promises never reject.
    const track = (call: Promise<void>) => {
      inFlight.add(call);
      void call.finally(() => inFlight.delete(call));
    };
    try {
      for (;;) {
        for (let embed = this.embeds.shift(); embed; embed = this.embeds.shift())
          track(this.runEmbed(embed));
        const piece = inFlight.size < depth ? this.nextPiece() : null;
        if (piece) {
          track(this.runPiece(piece));
          continue;
        }
        if (inFlight.size === 0) break;
        // Until a call ends, or a task or request arrives.
        await Promise.race([
          ...inFlight,
          new Promise<void>((resolve) => {
            this.wake = resolve;
          }),
        ]);
        this.wake = null;
      }
    } finally {
      this.busy = false;
      this.wake = null;
      this.settleIfIdle();
    }
  }

  /** The next model call's texts: up to `batchSize`, from the task being cut and those after. */
  private nextPiece(): Piece | null {
    const parts: Piece = [];
    const size = this.opts.batchSize;
    let texts = 0;
    while (texts < size) {
      if (!this.cutting) {
        const task = this.tasks.shift();
        if (!task) break;
        this.cutting = this.begin(task);
        continue;
      }
      const run = this.cutting;
      const count = Math.min(size - texts, run.task.items.length - run.cut);
      parts.push({ run, from: run.cut, count });
      run.cut += count;
      texts += count;
      if (run.cut === run.task.items.length) this.cutting = null;
    }
    return parts.length > 0 ? parts : null;
  }

  /** A task taken from the queue: computing from now on. Null when it has nothing to compute. */
  private begin(task: Task): Computing | null {
    const run: Computing = {
      task,
      vectors: new Array<Float32Array>(task.items.length),
      cut: 0,
      left: task.items.length,
      started: performance.now(),
      failed: false,
    };
    this.held.set(task.leaseId, task);
    this.computing.set(task.leaseId, run);
    if (run.left > 0) return run;
    this.finish(run);
    return null;
  }

  private async runPiece(piece: Piece): Promise<void> {
    let vectors: Float32Array[];
    try {
      vectors = await this.infer(
        piece.flatMap(({ run, from, count }) =>
          run.task.items.slice(from, from + count).map((i) => i.text),
        ),
        false,
      );
    } catch (err) {
      for (const { run } of piece) this.fail(run, err);
      return;
    }
    let at = 0;
    for (const { run, from, count } of piece) {
      for (let i = 0; i < count; i++) run.vectors[from + i] = vectors[at + i] as Float32Array;
      at += count;
      run.left -= count;
      if (run.left === 0 && !run.failed) this.finish(run);
    }
  }

  /** A task whose every vector is in: its result goes out and waits for the edge's ack. */
  private finish(run: Computing): void {
    const { task } = run;
    this.computing.delete(task.leaseId);
    const result: Outgoing = {
      taskId: task.taskId,
      leaseId: task.leaseId,
      vectors: task.items.map((item, i) => ({
        chunkId: item.chunkId,
        values: run.vectors[i] as Float32Array,
      })),
      elapsedMs: performance.now() - run.started,
    };
    this.outbox.set(task.leaseId, result);
    this.sendResult(result);
  }

  /** A call of this task failed: the edge hears so once, and nothing more of it is computed. */
  private fail(run: Computing, err: unknown): void {
    if (run.failed) return;
    run.failed = true;
    if (this.cutting === run) this.cutting = null;
    const { task } = run;
    this.send({
      type: "task_failed",
      v: PROTOCOL_VERSION,
      taskId: task.taskId,
      leaseId: task.leaseId,
      error: {
        code: "inference_error",
        message: String((err as Error).message ?? err).slice(0, 2000),
        retryable: true,
      },
    });
    this.computing.delete(task.leaseId);
    this.held.delete(task.leaseId);
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

  /**
   * Runs the model once, counting the time it is busy; with a gate, in this model's turn (a
   * real-time request's turn comes first), and the wait for it is not counted.
   */
  private infer(texts: string[], realtime: boolean): Promise<Float32Array[]> {
    const run = async () => {
      this.countInferring(1);
      try {
        return await this.opts.embedder.embed(texts, { urgent: realtime });
      } finally {
        this.countInferring(-1);
      }
    };
    return this.opts.gate ? this.opts.gate.run(this.opts.embedder, realtime, run) : run();
  }

  /** Share of the model's sessions running now: calls made, at most one per session. */
  private busyShare(): number {
    const sessions = this.opts.embedder.parallelism;
    return Math.min(this.inferring, sessions) / sessions;
  }

  /** Adds the time since the last change, at the share busy then, and moves the count. */
  private countInferring(delta: number): void {
    const now = performance.now();
    this.stats.inferenceMs += this.busyShare() * (now - this.busySince);
    this.busySince = now;
    this.inferring += delta;
  }

  /**
   * Milliseconds the model has run until `now` (a performance.now() reading), the calls under
   * way included: a batch that takes longer than a status interval still shows as busy while
   * it runs, not all at once when it ends.
   */
  inferenceMsAt(now = performance.now()): number {
    return this.stats.inferenceMs + this.busyShare() * Math.max(0, now - this.busySince);
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
