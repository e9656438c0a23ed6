import { env } from "cloudflare:test";
import { exports } from "cloudflare:workers";
import { encodeVector, PROTOCOL_VERSION } from "@p2pa/shared";
import { expect } from "vitest";
import type { NewJob } from "../src/db/store.js";
import { sha256Hex } from "../src/lib/crypto.js";

export const KEYS = {
  api: "test_api_key",
  other: "other_tenant_key",
  worker: "test_worker_token",
  /** t2's worker token: workers of another tenant. */
  otherWorker: "other_worker_token",
  admin: "test_admin_key",
};

/** Calls the edge the way a client would, through its fetch handler. */
export function call(
  path: string,
  init: RequestInit & { key?: string | null; json?: unknown } = {},
) {
  const headers = new Headers(init.headers);
  if (init.key !== null) headers.set("Authorization", `Bearer ${init.key ?? KEYS.api}`);
  let body = init.body;
  if (init.json !== undefined) {
    body = JSON.stringify(init.json);
    if (!headers.has("Content-Type")) headers.set("Content-Type", "application/json");
  }
  return (exports as unknown as { default: Fetcher }).default.fetch(`http://edge.test${path}`, {
    ...init,
    headers,
    body,
  });
}

export async function errorOf(res: Response) {
  const body = (await res.json()) as {
    error: { code: string; message: string; details?: unknown };
  };
  return { status: res.status, ...body.error };
}

export type Frame = Record<string, unknown> & { type: string };

/** A protocol-speaking worker inside the test, over a real WebSocket to the edge. */
export class TestWorker {
  readonly frames: Frame[] = [];
  /** The edge's welcome to this connection. */
  welcome: Frame | null = null;
  private waiters: (() => void)[] = [];
  private constructor(readonly ws: WebSocket) {
    ws.addEventListener("message", (e) => {
      this.frames.push(JSON.parse(e.data as string) as Frame);
      for (const w of this.waiters.splice(0)) w();
    });
  }

  static async connect(
    hello: Partial<Frame> = {},
    token = KEYS.worker,
    model?: string,
  ): Promise<TestWorker> {
    const query = model ? `?model=${encodeURIComponent(model)}` : "";
    const res = await call(`/v1/workers/connect${query}`, {
      key: token,
      headers: { Upgrade: "websocket" },
    });
    expect(res.status).toBe(101);
    const ws = res.webSocket as WebSocket;
    ws.accept();
    const w = new TestWorker(ws);
    w.send({
      type: "hello",
      v: PROTOCOL_VERSION,
      version: "test",
      models: [{ id: "use-lite", dimension: 512 }],
      device: "cpu",
      threads: 1,
      batchSize: 16,
      // Tests open the window themselves with ready(), to control what is leased when.
      capacity: 0,
      ...hello,
    });
    w.welcome = await w.next("welcome");
    return w;
  }

  /** States how many tasks this worker can hold at once (absolute). */
  /**
   * Answers the next real-time `embed` request with a unit vector along `axis` for each of
   * its texts (what a search test needs from a worker).
   */
  async answerEmbed(axis = 0, tokens = 1) {
    const req = (await this.next("embed")) as Frame & { requestId: string; texts: string[] };
    const unit = new Float32Array(512);
    unit[axis] = 1;
    this.send({
      type: "embed_result",
      v: PROTOCOL_VERSION,
      requestId: req.requestId,
      vectors: req.texts.map(() => encodeVector(unit)),
      tokens,
    });
    return req;
  }

  ready(capacity: number) {
    this.send({ type: "ready", v: PROTOCOL_VERSION, capacity });
  }

  send(f: Frame | string | Uint8Array) {
    this.ws.send(typeof f === "string" || f instanceof Uint8Array ? f : JSON.stringify(f));
  }

  /** Resolves with the first unread frame of a type. */
  async next(type: string, timeoutMs = 5000): Promise<Frame> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.frames.findIndex((f) => f.type === type);
      if (i >= 0) return this.frames.splice(i, 1)[0] as Frame;
      if (Date.now() > deadline)
        throw new Error(`no ${type} frame; have ${JSON.stringify(this.frames.map((f) => f.type))}`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
  }

  count(type: string) {
    return this.frames.filter((f) => f.type === type).length;
  }

  resultFor(task: Frame, mutate?: (v: Float32Array, i: number) => Float32Array) {
    const items = task.items as { chunkId: string; text: string }[];
    return {
      type: "result",
      v: PROTOCOL_VERSION,
      taskId: task.taskId,
      leaseId: task.leaseId,
      vectors: items.map((it, i) => {
        const v = new Float32Array(512);
        v[i % 512] = 1;
        return { chunkId: it.chunkId, vector: encodeVector(mutate ? mutate(v, i) : v) };
      }),
    };
  }
}

/**
 * Answers the worker's tasks until `chunks` chunks are answered, then waits for each ack; runs
 * `between` after each result is sent (frames the edge handles while it writes). Tasks are cut
 * to a worker's pace, so how many a job takes is not known ahead. Returns the tasks answered.
 */
export async function answerChunks(
  w: TestWorker,
  chunks: number,
  between?: () => void,
): Promise<Frame[]> {
  const tasks: Frame[] = [];
  for (let n = 0; n < chunks; ) {
    const t = await w.next("task");
    w.send(w.resultFor(t));
    between?.();
    tasks.push(t);
    n += (t.items as unknown[]).length;
  }
  for (const _ of tasks) await w.next("ack");
  return tasks;
}

export async function submit(nDocs: number) {
  // Each submit's texts are its own: the embedding cache and long originals are shared by
  // content, so tests stay apart.
  const nonce = crypto.randomUUID().slice(0, 8);
  const documents = Array.from({ length: nDocs }, (_, i) => ({
    text: `Document number ${i} says something short (${nonce}).`,
  }));
  const res = await call("/v1/jobs", { method: "POST", json: { documents } });
  expect(res.status).toBe(202);
  return (await res.json()) as { id: string; chunks: { total: number } };
}

export const job = async (id: string) =>
  (await (await call(`/v1/jobs/${id}`)).json()) as {
    status: string;
    chunks: { total: number; done: number; failed: number };
  };

/** A new worker token of tenant t1 (another donor), stored hashed as the API stores them. */
export async function workerToken(name: string, tenant = "t1"): Promise<string> {
  const token = `wt_${name}_${crypto.randomUUID()}`;
  const hash = await sha256Hex(token);
  await env.DB.prepare(
    "INSERT INTO credentials (id, kind, tenant, hash) VALUES (?, 'worker', ?, ?)",
  )
    .bind(`cred_${name}_${token.slice(-8)}`, tenant, hash)
    .run();
  return token;
}

/**
 * Waits until the edge has taken in every frame `w` sent before this call, for a check that
 * something did NOT arrive. The probe is a result for a lease that does not exist: the edge
 * answers it (an ack, rejected, charging nobody) in order on the same socket, so any frame the
 * edge sent while handling the earlier frames is in `w.frames` before that answer, however slow
 * the edge is. (Leasing in a `ready` or `heartbeat` is done before its handler's first await,
 * so by the answer a lease it took is recorded, and its task frame is sent or on its way; check
 * the shard's state too where a task sent late would matter.)
 */
export async function roundTrip(w: TestWorker, timeoutMs = 5000): Promise<void> {
  const probe = `probe_${crypto.randomUUID()}`;
  w.send({
    type: "result",
    v: PROTOCOL_VERSION,
    taskId: probe,
    leaseId: probe,
    vectors: [{ chunkId: probe, vector: "" }],
  });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const i = w.frames.findIndex((f) => f.type === "ack" && f.taskId === probe);
    if (i >= 0) {
      expect(w.frames.splice(i, 1)[0]).toMatchObject({ status: "rejected" });
      return;
    }
    if (Date.now() > deadline)
      throw new Error(
        `no answer to the probe; have ${JSON.stringify(w.frames.map((f) => f.type))}`,
      );
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The keys of the originals a job's documents name (R2 objects, or small texts in D1). */
export async function originalsOf(jobId: string): Promise<string[]> {
  const rows = await env.DB.prepare(
    "SELECT DISTINCT raw_key AS k FROM documents WHERE job_id = ? AND raw_key IS NOT NULL ORDER BY raw_key",
  )
    .bind(jobId)
    .all<{ k: string }>();
  return rows.results.map((r) => r.k);
}

/**
 * An original as kept, sealed: an R2 object's bytes, or a small text's row in D1 (keys under
 * `doc/`, or `inline/` as kept before), as UTF-8. Null when it is not kept.
 */
export async function storedOriginal(key: string): Promise<Uint8Array | null> {
  if (key.startsWith("doc/") || key.startsWith("inline/")) {
    const row = await env.DB.prepare("SELECT body FROM originals WHERE key = ?")
      .bind(key)
      .first<{ body: string }>();
    return row ? new TextEncoder().encode(row.body) : null;
  }
  const obj = await env.RAW.get(key);
  return obj ? new Uint8Array(await obj.arrayBuffer()) : null;
}

/** Every original a tenant has kept, in R2 or D1, by key. */
export async function keptOriginals(tenant: string): Promise<string[]> {
  const r2 = await env.RAW.list({ prefix: `raw/${tenant}/` });
  const d1 = await env.DB.prepare("SELECT key FROM originals WHERE tenant = ?")
    .bind(tenant)
    .all<{ key: string }>();
  return [...r2.objects.map((o) => o.key), ...d1.results.map((r) => r.key)].sort();
}

/** A new job's rows as a submit writes them: one document of `chunks` short chunks. */
export function newJob(id: string, chunks: number, tenant: string): NewJob {
  return {
    id,
    tenant,
    model: "use-lite",
    collection: "default",
    chunking: { maxChars: 1000, overlap: 100 },
    verification: "auto",
    pool: "any",
    piiMask: [],
    textRetentionDays: null,
    createdBy: null,
    idempotencyKey: null,
    requestHash: null,
    createdAt: new Date().toISOString(),
    documents: [
      {
        seq: 0,
        id: "doc",
        metadata: { k: "v" },
        chars: 10 * chunks,
        // Each job's document is a document of its own (not a version of another job's).
        docKey: `${id}/doc`,
        state: "current",
        version: 1,
        contentHash: id,
        fingerprint: id,
        rawKey: null,
        createdAt: new Date().toISOString(),
      },
    ],
    unchanged: 0,
    accepting: false,
    keepOriginals: true,
    // More chunks than one D1 statement can carry, to exercise the statement splitting.
    chunks: Array.from({ length: chunks }, (_, i) => ({
      id: `${id}.00000.${String(i).padStart(5, "0")}`,
      documentSeq: 0,
      documentId: "doc",
      index: i,
      text: `chunk ${i}`,
      start: i * 10,
      end: i * 10 + 9,
    })),
  };
}
