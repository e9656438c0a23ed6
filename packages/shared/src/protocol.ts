import { z } from "zod";

/**
 * The worker <-> edge protocol. Every frame is a JSON object with a `type` and the protocol
 * version `v`. Vectors travel as base64 float32 (see vector-codec.ts), except task results
 * between a worker and an edge that both offered binary frames in `hello`/`welcome`: those
 * are one binary frame of raw float32 each (result-frame.ts).
 *
 * Flow: worker sends `hello`, edge answers `welcome`. Flow control is by absolute window,
 * never by increments: the worker states how many tasks it can hold at once (`capacity`, in
 * `hello`, restated in every `heartbeat` and changed with `ready`), and the edge keeps the
 * worker's open leases at or under it. The edge counts those leases itself, so no lost or
 * repeated frame can leave either side with a wrong picture of the other's room.
 * Each task ends with `result` or `task_failed`, acknowledged by `ack`. Real-time requests
 * (`embed`) skip the batch queue and are answered with `embed_result`/`embed_failed`.
 *
 * Version 2 replaced version 1's incremental `credit` frames with the window above.
 */
export const PROTOCOL_VERSION = 2;

/** Versions of this protocol the edge speaks (a worker on another one is told so and closed). */
export const SUPPORTED_PROTOCOL_VERSIONS = [PROTOCOL_VERSION] as const;

/** The most tasks one worker connection may hold at once. */
export const MAX_CAPACITY = 64;

/**
 * Chunks per task for a worker whose pace is not known yet: one inference batch for a default
 * worker, big enough to amortise a round trip and a store, small enough that a lost worker
 * costs little to redo. Faster workers get tasks cut larger, in steps of this size.
 */
export const TASK_SIZE = 32;

/**
 * The most chunks a task holds: work is queued in tasks this large and cut to each worker's
 * pace when leased, up to this size for the fastest.
 */
export const MAX_TASK_SIZE = 256;

const v = z.literal(PROTOCOL_VERSION);
const Id = z.string().min(1).max(128);

/**
 * A worker's words, made safe to keep and show: control characters dropped, whitespace
 * collapsed, HTML's special characters escaped, at most 300 characters. What a worker says
 * ends up in chunk errors, event streams and dashboards; it must never choose what a
 * submitter's page renders.
 */
export function plainText(s: string, max = 300): string {
  const flat = s
    // biome-ignore lint/suspicious/noControlCharactersInRegex: dropping them is the point
    .replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]+/g, " ")
    .replace(/\s+/g, " ")
    .trim()
    .slice(0, max);
  return flat.replace(
    /[<>&"']/g,
    (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&#39;" })[c] as string,
  );
}

/** An error as a peer reports it: a bounded plain code, and its message made plain text. */
export const ErrorInfo = z.object({
  code: z
    .string()
    .regex(/^[a-z][a-z0-9_.-]{0,63}$/, "an error code is lowercase letters, digits, _ . -"),
  message: z
    .string()
    .max(2000)
    .transform((m) => plainText(m)),
  retryable: z.boolean().default(true),
});
export type ErrorInfo = z.infer<typeof ErrorInfo>;

// ---- worker -> edge ----

export const Hello = z.object({
  type: z.literal("hello"),
  v,
  name: z.string().max(128).optional(),
  /**
   * A random id the worker keeps for the life of its process. Reconnecting with the same
   * session keeps the leases it held, so results computed across a dropped connection count.
   */
  session: z
    .string()
    .regex(/^[A-Za-z0-9_-]{16,64}$/)
    .optional(),
  version: z.string().max(64),
  models: z
    .array(z.object({ id: Id, dimension: z.number().int().positive() }))
    .min(1)
    .max(32),
  device: z.string().max(64),
  threads: z.number().int().positive().max(1024),
  batchSize: z.number().int().positive().max(4096),
  /** Tasks the worker can hold at once (queued and computing); 0 takes only real-time work. */
  capacity: z.number().int().min(0).max(MAX_CAPACITY),
  /** The worker can send results as binary frames (result-frame.ts), if the edge can take them. */
  binaryResults: z.boolean().optional(),
});
export type Hello = z.infer<typeof Hello>;

/** Capacity of the connection, from `hello` on. */
const Capacity = z.number().int().min(0).max(MAX_CAPACITY);

/** Changes how many tasks the worker can hold at once (absolute, not an increment). */
export const Ready = z.object({
  type: z.literal("ready"),
  v,
  capacity: Capacity,
});
export type Ready = z.infer<typeof Ready>;

export const TaskResult = z.object({
  type: z.literal("result"),
  v,
  taskId: Id,
  leaseId: Id,
  /** One per task item, in item order. */
  vectors: z
    .array(z.object({ chunkId: Id, vector: z.string().max(1 << 16) }))
    .min(1)
    .max(1024),
  elapsedMs: z.number().nonnegative().optional(),
});
export type TaskResult = z.infer<typeof TaskResult>;

export const TaskFailed = z.object({
  type: z.literal("task_failed"),
  v,
  taskId: Id,
  leaseId: Id,
  error: ErrorInfo,
});
export type TaskFailed = z.infer<typeof TaskFailed>;

/** Hands tasks back unstarted (a worker shutting down). */
export const Release = z.object({
  type: z.literal("release"),
  v,
  leaseIds: z.array(Id).max(2 * MAX_CAPACITY),
});
export type Release = z.infer<typeof Release>;

/**
 * Keeps the leases the worker still holds alive, and restates its window: `leaseIds` is every
 * lease it holds (queued, computing, or its result awaiting an ack) and `capacity` how many it
 * can hold. The edge reconciles its own picture with both.
 */
export const Heartbeat = z.object({
  type: z.literal("heartbeat"),
  v,
  leaseIds: z.array(Id).max(2 * MAX_CAPACITY),
  capacity: Capacity,
});
export type Heartbeat = z.infer<typeof Heartbeat>;

/** The worker takes no new work from now on (it is shutting down). */
export const Draining = z.object({ type: z.literal("draining"), v });
export type Draining = z.infer<typeof Draining>;

export const EmbedResult = z.object({
  type: z.literal("embed_result"),
  v,
  requestId: Id,
  vectors: z.array(z.string().max(1 << 16)).max(2048),
  tokens: z.number().int().nonnegative(),
});
export type EmbedResult = z.infer<typeof EmbedResult>;

export const EmbedFailed = z.object({
  type: z.literal("embed_failed"),
  v,
  requestId: Id,
  error: ErrorInfo,
});
export type EmbedFailed = z.infer<typeof EmbedFailed>;

export const WorkerMessage = z.discriminatedUnion("type", [
  Hello,
  Ready,
  TaskResult,
  TaskFailed,
  Release,
  Heartbeat,
  Draining,
  EmbedResult,
  EmbedFailed,
]);
export type WorkerMessage = z.infer<typeof WorkerMessage>;

// ---- edge -> worker ----

export const Welcome = z.object({
  type: z.literal("welcome"),
  v,
  workerId: Id,
  /** A lease not renewed within this many ms goes back to the queue. */
  leaseMs: z.number().int().positive(),
  /** How often the worker should send `heartbeat`. */
  heartbeatMs: z.number().int().positive(),
  /** The edge takes results as binary frames from this worker (it offered them in `hello`). */
  binaryResults: z.boolean().optional(),
});
export type Welcome = z.infer<typeof Welcome>;

export const TaskItem = z.object({ chunkId: Id, text: z.string() });
export type TaskItem = z.infer<typeof TaskItem>;

export const Task = z.object({
  type: z.literal("task"),
  v,
  taskId: Id,
  leaseId: Id,
  model: Id,
  attempt: z.number().int().positive(),
  items: z.array(TaskItem).min(1).max(1024),
});
export type Task = z.infer<typeof Task>;

export const Embed = z.object({
  type: z.literal("embed"),
  v,
  requestId: Id,
  model: Id,
  texts: z.array(z.string()).min(1).max(2048),
});
export type Embed = z.infer<typeof Embed>;

export const Ack = z.object({
  type: z.literal("ack"),
  v,
  taskId: Id,
  leaseId: Id,
  /**
   * stored: accepted and stored now; accepted: kept until another donor confirms it (the
   * worker is done with it either way); duplicate: already stored; rejected: lease not valid
   * or bad result.
   */
  status: z.enum(["stored", "accepted", "duplicate", "rejected"]),
  reason: z.string().max(2000).optional(),
});
export type Ack = z.infer<typeof Ack>;

export const ErrorFrame = z.object({
  type: z.literal("error"),
  v,
  code: z.string().max(64),
  message: z.string().max(2000),
});
export type ErrorFrame = z.infer<typeof ErrorFrame>;

export const EdgeMessage = z.discriminatedUnion("type", [Welcome, Task, Embed, Ack, ErrorFrame]);
export type EdgeMessage = z.infer<typeof EdgeMessage>;

/** WebSocket close codes the edge uses (4000-4999 is the application range). */
export const CloseCode = {
  normal: 1000,
  protocolError: 4400,
  unauthorized: 4401,
  unsupportedVersion: 4426,
  tooManyErrors: 4429,
  /** The token already has as many connections as a token may hold. */
  tooManyConnections: 4430,
  /** The token was caught returning wrong results: it gets no more work. */
  quarantined: 4403,
} as const;

export type ParseResult<T> =
  | { ok: true; message: T }
  | {
      ok: false;
      error: {
        code: "bad_json" | "bad_message" | "too_large" | "unsupported_version";
        message: string;
      };
    };

/** Largest frame either side accepts. */
export const MAX_FRAME_BYTES = 4 * 1024 * 1024;

/**
 * Parses one frame against a message union. Never throws: malformed JSON, unknown types and
 * invalid fields come back as a typed error the caller turns into an `error` frame.
 */
export function parseMessage<S extends z.ZodType>(
  schema: S,
  raw: string | ArrayBuffer,
): ParseResult<z.infer<S>> {
  const text = typeof raw === "string" ? raw : new TextDecoder().decode(raw);
  if (text.length > MAX_FRAME_BYTES) {
    return {
      ok: false,
      error: { code: "too_large", message: `frame over ${MAX_FRAME_BYTES} bytes` },
    };
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return { ok: false, error: { code: "bad_json", message: "frame is not valid JSON" } };
  }
  const version = (json as { v?: unknown } | null)?.v;
  if (typeof version === "number" && version !== PROTOCOL_VERSION) {
    return {
      ok: false,
      error: {
        code: "unsupported_version",
        message: `protocol version ${version} is not spoken here; this side speaks ${SUPPORTED_PROTOCOL_VERSIONS.join(", ")}`,
      },
    };
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue?.path.length ? ` at ${issue.path.join(".")}` : "";
    return {
      ok: false,
      error: { code: "bad_message", message: `${issue?.message ?? "invalid message"}${where}` },
    };
  }
  return { ok: true, message: parsed.data };
}

/** Each frame type of a message union, mapped to its message. */
export type MessageByType<M extends { type: string }> = { [T in M as T["type"]]: T };

/**
 * One handler per frame type of the union `M`, each given that type's message (and `A`, what
 * the receiving side adds, such as the socket): a type added to the protocol does not compile
 * until each side has a handler for it.
 */
export type MessageHandlers<M extends { type: string }, R = void, A extends unknown[] = []> = {
  [K in M["type"]]: (msg: Extract<M, { type: K }>, ...args: A) => R;
};

/**
 * Calls the handler for `msg`'s type. `type` is `msg.type`, passed apart so that TypeScript
 * correlates the handler with its message without a cast.
 */
export function dispatchMessage<
  T extends Record<string, unknown>,
  K extends keyof T,
  R,
  A extends unknown[] = [],
>(handlers: { [P in K]: (msg: T[P], ...args: A) => R }, type: K, msg: T[K], ...args: A): R {
  return handlers[type](msg, ...args);
}
