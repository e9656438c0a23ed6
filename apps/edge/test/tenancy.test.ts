/**
 * Tenant isolation, route by route: tenant t1 builds a full fixture (a completed job, a job
 * still queued, a webhook endpoint with a delivery, a key, audit entries, a connected
 * worker), then another tenant's key walks EVERY route of the OpenAPI document with t1's
 * ids and must neither learn nor change anything of t1's. A route or path parameter the
 * walk has no rule for fails the test, so a new route cannot slip past unwalked.
 */
import { encodeVector, PROTOCOL_VERSION } from "@p2pa/shared";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { call, type Frame, KEYS, TestWorker, workerToken } from "./helpers.js";

const U = crypto.randomUUID().replaceAll("-", "").slice(0, 12);
/** t1 sends this User-Agent, so its audit entries carry a string that no other tenant's do. */
const AGENT = `tenancy-t1-agent/${U}`;
const HOOK_HOST = `hooks-${U}.tenancy-t1.example.com`;
const HOOK_URL = `https://${HOOK_HOST}/t1/receiver-${U}`;
const T2_HOOK_URL = `https://hooks-${U}.tenancy-t2.example.com/t2`;
const DOC_A = { id: `t1doc-alpha-${U}`, text: `Heron alpha ${U} counts seven lanterns at dawn.` };
const DOC_B = { id: `t1doc-bravo-${U}`, text: `Bravo ledger ${U} keeps the quiet harbour tide.` };
const COLLECTION = `t1-coll-${U}`.toLowerCase();
const DOC_OPEN = { id: `t1doc-open-${U}`, text: `Open job ${U} waits for a worker at the pier.` };
const META_A = `t1-meta-alpha-${U}`;
const META_B = `t1-meta-bravo-${U}`;
const KEY_LABEL = `t1-fixture-key-${U}`;
const IDEM = `t1-idem-${U}`;
const DIM = 512;
const MUTATING = new Set(["POST", "PUT", "PATCH", "DELETE"]);
const ALLOWED_REFUSALS = new Set([401, 403, 404, 409, 422, 426]);

/** The same unit vector for a text whether it was a job's chunk or a search query. */
function vecFor(text: string): Float32Array {
  const v = new Float32Array(DIM);
  const slot = [DOC_A.text, DOC_B.text, DOC_OPEN.text].indexOf(text);
  v[slot >= 0 ? slot : DIM - 1] = 1;
  return v;
}

/** Calls as tenant t1 (its API key: every scope, not an operator), with t1's User-Agent. */
function t1(path: string, init: Parameters<typeof call>[1] = {}) {
  return call(path, {
    ...init,
    key: init.key ?? KEYS.api,
    headers: { "User-Agent": AGENT, ...(init.headers as Record<string, string> | undefined) },
  });
}

async function json<T>(res: Response | Promise<Response>, status = 200): Promise<T> {
  const r = await res;
  const text = await r.text();
  expect(r.status, `${r.url}: ${text}`).toBe(status);
  return JSON.parse(text) as T;
}

async function until<T>(what: string, f: () => Promise<T | null | undefined>, ms = 10_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Reads a body to its end, or for at most `ms` (an event stream may never end). */
async function readAll(res: Response, ms = 1500): Promise<{ text: string; complete: boolean }> {
  if (!res.body) return { text: "", complete: true };
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  const deadline = Date.now() + ms;
  for (;;) {
    let timer: ReturnType<typeof setTimeout> | null = null;
    const left = deadline - Date.now();
    const r =
      left > 0
        ? await Promise.race([
            reader.read(),
            new Promise<null>((resolve) => {
              timer = setTimeout(() => resolve(null), left);
            }),
          ])
        : null;
    if (timer !== null) clearTimeout(timer);
    if (r === null) {
      await reader.cancel().catch(() => undefined);
      return { text, complete: false };
    }
    if (r.done) return { text, complete: true };
    text += r.value;
  }
}

/** What a WebSocket upgrade came to: `close <code>` after a 101, or the HTTP status. */
async function socketOutcome(res: Response): Promise<string> {
  if (res.status !== 101) return `http ${res.status}`;
  const ws = res.webSocket as WebSocket;
  const closed = new Promise<string>((resolve) => {
    ws.addEventListener("close", (e) => resolve(`close ${e.code}`));
    setTimeout(() => resolve("open (not closed within 3 s)"), 3000);
  });
  ws.accept();
  const out = await closed;
  try {
    ws.close();
  } catch {
    // already closed
  }
  return out;
}

// ---- the fixture ----

interface Fixture {
  done: { id: string; chunkIds: string[] };
  open: { id: string; chunkIds: string[] };
  doneBody: unknown;
  webhook: { id: string; secret: string; deliveryIds: string[] };
  key: { id: string; secret: string };
  workerCred: string;
  workerSecret: string;
  workerIds: string[];
  auditHashes: string[];
  /** label → a string that only t1 knows; none may appear in another tenant's answers. */
  secrets: Map<string, string>;
}

let fx: Fixture;
let taskWorker: TestWorker | undefined;
let embedWorker: TestWorker | undefined;

/** A worker that answers every real-time `embed` request with vecFor of each text. */
function answerEmbeds(w: TestWorker) {
  w.ws.addEventListener("message", (e) => {
    const f = JSON.parse(e.data as string) as Frame;
    if (f.type !== "embed") return;
    const texts = f.texts as string[];
    w.send({
      type: "embed_result",
      v: PROTOCOL_VERSION,
      requestId: f.requestId,
      vectors: texts.map((t) => encodeVector(vecFor(t))),
      tokens: texts.length,
    });
  });
}

type ChunkRow = {
  id: string;
  jobId: string;
  documentId: string;
  index: number;
  text: string | null;
  metadata: Record<string, unknown>;
  status: string;
  vector?: number[];
};

async function chunksOf(jobId: string) {
  return (
    await json<{ data: ChunkRow[] }>(t1(`/v1/jobs/${jobId}/chunks?includeVectors=true&limit=1000`))
  ).data;
}

async function searchAsT1(query: string) {
  return json<{ results: { score: number; chunk: ChunkRow }[] }>(
    t1("/v1/search", { method: "POST", json: { query, topK: 5 } }),
  );
}

beforeAll(async () => {
  // The webhook receiver: t1's (public, https) endpoint answers 204; nothing leaves the test.
  const real = globalThis.fetch.bind(globalThis);
  vi.spyOn(globalThis, "fetch").mockImplementation((input, init) => {
    const url = input instanceof Request ? input.url : String(input);
    if (new URL(url).hostname.includes(`hooks-${U}`))
      return Promise.resolve(new Response(null, { status: 204 }));
    return real(input, init);
  });

  const hook = await json<{ id: string; secret: string }>(
    t1("/v1/webhooks", { method: "POST", json: { url: HOOK_URL, events: ["job.completed"] } }),
    201,
  );
  const key = await json<{ id: string; secret: string }>(
    t1("/v1/keys", { method: "POST", json: { label: KEY_LABEL } }),
    201,
  );

  // The completed job: two documents with distinctive text and metadata, served to the end.
  taskWorker = await TestWorker.connect();
  taskWorker.ready(4);
  const doneBody = {
    documents: [
      { ...DOC_A, metadata: { owner: META_A } },
      { ...DOC_B, metadata: { owner: META_B } },
    ],
    collection: COLLECTION,
    verification: "off",
  };
  const done = await json<{ id: string; chunks: { total: number } }>(
    t1("/v1/jobs", { method: "POST", json: doneBody, headers: { "Idempotency-Key": IDEM } }),
    202,
  );
  expect(done.chunks.total).toBe(2);
  const tw = taskWorker;
  await until(
    "the fixture job to complete",
    async () => {
      const i = tw.frames.findIndex((f) => f.type === "task");
      const task = i >= 0 ? tw.frames.splice(i, 1)[0] : undefined;
      if (task) {
        const items = task.items as { chunkId: string; text: string }[];
        tw.send({
          type: "result",
          v: PROTOCOL_VERSION,
          taskId: task.taskId,
          leaseId: task.leaseId,
          vectors: items.map((it) => ({
            chunkId: it.chunkId,
            vector: encodeVector(vecFor(it.text)),
          })),
        });
      }
      const job = await json<{ status: string }>(t1(`/v1/jobs/${done.id}`));
      expect(job.status, "the fixture job must complete").toMatch(/queued|running|completed/);
      return job.status === "completed";
    },
    20_000,
  );
  // Nobody takes work from now on: the second job and anything t2 submits stay queued.
  taskWorker.ws.close(1000, "done");
  taskWorker = undefined;
  await until("the task worker to leave", async () => {
    const w = await json<{ shards: { workers: unknown[] }[] }>(t1("/v1/workers"));
    return w.shards.every((s) => s.workers.length === 0);
  });
  const open = await json<{ id: string; status: string }>(
    t1("/v1/jobs", { method: "POST", json: { documents: [DOC_OPEN] } }),
    202,
  );
  expect(open.status).toBe("queued");

  // A t1 worker (its own token) that holds no work and embeds queries for anyone (pool any).
  const workerSecret = await workerToken(`tenancy_${U}`);
  const workerCred = `cred_tenancy_${U}_${workerSecret.slice(-8)}`;
  embedWorker = await TestWorker.connect({ name: `t1-worker-${U}` }, workerSecret);
  answerEmbeds(embedWorker);

  // The completed job emitted job.completed to t1's endpoint; wait until it was delivered.
  const deliveries = await until("the job.completed delivery", async () => {
    const d = await json<{ data: { id: string; status: string }[] }>(
      t1(`/v1/webhooks/${hook.id}/deliveries`),
    );
    return d.data.length && d.data.every((x) => x.status === "delivered") ? d.data : null;
  });

  const doneChunks = await chunksOf(done.id);
  const openChunks = await chunksOf(open.id);
  expect(doneChunks.map((c) => [c.documentId, c.text, c.status, c.vector?.length])).toEqual([
    [DOC_A.id, DOC_A.text, "done", DIM],
    [DOC_B.id, DOC_B.text, "done", DIM],
  ]);
  expect(openChunks.map((c) => c.status)).toEqual(["pending"]);
  const workers = await json<{ shards: { workers: { id: string; token: string }[] }[] }>(
    t1("/v1/workers"),
  );
  const workerIds = workers.shards.flatMap((s) => s.workers.map((w) => w.id));
  expect(workers.shards.flatMap((s) => s.workers.map((w) => w.token))).toEqual([workerCred]);
  const audit = await json<{ data: { hash: string; userAgent: string | null; action: string }[] }>(
    t1("/v1/audit?limit=500"),
  );
  expect(audit.data.filter((e) => e.userAgent === AGENT).map((e) => e.action)).toEqual(
    expect.arrayContaining(["webhook.created", "key.created", "job.created"]),
  );
  // The search the walk will try as t2 does find t1's chunk for t1: it is not empty by accident.
  expect((await searchAsT1(DOC_A.text)).results[0]?.chunk).toMatchObject({
    id: doneChunks[0]?.id,
    text: DOC_A.text,
  });

  const secrets = new Map<string, string>([
    ["completed job id", done.id],
    ["open job id", open.id],
    ["document A id", DOC_A.id],
    ["document B id", DOC_B.id],
    ["open document id", DOC_OPEN.id],
    ["document A text", DOC_A.text],
    ["document B text", DOC_B.text],
    ["open document text", DOC_OPEN.text],
    ["metadata A", META_A],
    ["metadata B", META_B],
    ["webhook endpoint id", hook.id],
    ["webhook url", HOOK_URL],
    ["webhook host", HOOK_HOST],
    ["webhook secret", hook.secret],
    ["key id", key.id],
    ["key secret", key.secret],
    ["key label", KEY_LABEL],
    ["worker token id", workerCred],
    ["worker token secret", workerSecret],
    ["t1 user agent", AGENT],
  ]);
  for (const c of [...doneChunks, ...openChunks]) secrets.set(`chunk id ${c.id}`, c.id);
  for (const d of deliveries) secrets.set(`delivery id ${d.id}`, d.id);
  for (const w of workerIds) secrets.set(`worker id ${w}`, w);
  for (const e of audit.data) secrets.set(`audit entry ${e.action} ${e.hash}`, e.hash);
  fx = {
    done: { id: done.id, chunkIds: doneChunks.map((c) => c.id) },
    open: { id: open.id, chunkIds: openChunks.map((c) => c.id) },
    doneBody,
    webhook: { id: hook.id, secret: hook.secret, deliveryIds: deliveries.map((d) => d.id) },
    key,
    workerCred,
    workerSecret,
    workerIds,
    auditHashes: audit.data.map((e) => e.hash),
    secrets,
  };
}, 120_000);

afterAll(() => {
  taskWorker?.ws.close();
  embedWorker?.ws.close();
  vi.restoreAllMocks();
});

// ---- the walk's rules ----

/**
 * Path parameters, by the path up to and including the parameter: which of t1's ids to put
 * there. A parameter not listed here fails the walk.
 */
const PARAMS: Record<string, (f: Fixture) => string[]> = {
  "/v1/jobs/{id}": (f) => [f.done.id, f.open.id],
  "/v1/jobs/{id}/documents/{documentId}": () => [DOC_A.id, DOC_B.id, DOC_OPEN.id],
  "/v1/documents/{id}": () => [DOC_A.id, DOC_B.id, DOC_OPEN.id],
  "/v1/webhooks/{id}": (f) => [f.webhook.id],
  "/v1/webhooks/{id}/deliveries/{deliveryId}": (f) => f.webhook.deliveryIds,
  // The fixture's key, t1's own API key and both of t1's worker tokens.
  "/v1/keys/{id}": (f) => [f.key.id, "c1", "c3", f.workerCred],
  "/v1/workers/tokens/{id}": (f) => [f.workerCred, "c3"],
  "/v1/admin/tenants/{tenant}": () => ["t1"],
  // Models belong to the deployment, not to a tenant: every tenant reads the same list.
  "/v1/models/{model}": () => ["use-lite"],
};

interface Variant {
  query?: string;
  json?: unknown;
  headers?: Record<string, string>;
}

interface Outcome {
  route: string;
  url: string;
  status: number;
  text: string;
  complete: boolean;
  socket?: string;
}

interface Rule {
  /** Requests to send (path parameters come from PARAMS); one plain request when absent. */
  variants?: (f: Fixture) => Variant[];
  /** Operators only: any tenant's API key gets 403. */
  operator?: true;
  /** The worker WebSocket. */
  socket?: true;
  /** What another tenant must get, beyond the rules every route follows. */
  t2?: (o: Outcome, f: Fixture) => void;
  /**
   * Secrets (by label) that t2's answer may hold because t2 has its own copy: it replayed
   * t1's body as its own job first, so it has documents of the same names.
   */
  ownCopies?: string[];
}

/** The document names t2's own replay of t1's body gives it. */
const SAME_NAMES = ["document A id", "document B id", "metadata A", "metadata B"];

const t1JobIds = (f: Fixture) => [f.done.id, f.open.id];

/** Every route of the document, by `METHOD path`. A route missing here fails the walk. */
const ROUTES: Record<string, Rule> = {
  "POST /v1/jobs": {
    // t1's very body under t1's Idempotency-Key: another tenant gets a job of its own, never
    // a replay of t1's (that would hand out t1's job id).
    variants: (f) => [{ json: f.doneBody, headers: { "Idempotency-Key": IDEM } }],
    t2: (o) => expect(o.status, `${o.route}: ${o.text}`).toBe(202),
  },
  "GET /v1/jobs": {
    variants: () => [{}, { query: "status=completed" }, { query: `collection=${COLLECTION}` }],
    t2: (o, f) => {
      expect(o.status, `${o.route}: ${o.text}`).toBe(200);
      const { data } = JSON.parse(o.text) as { data: { id: string }[] };
      expect(data.filter((j) => t1JobIds(f).includes(j.id))).toEqual([]);
    },
  },
  "GET /v1/jobs/{id}": {},
  "POST /v1/jobs/{id}/documents": {
    variants: () => [{ json: { documents: [{ id: "t2-append", text: "from another tenant" }] } }],
  },
  "POST /v1/jobs/{id}/close": { variants: () => [{ json: {} }] },
  "GET /v1/documents": {
    variants: (f) => [
      {},
      { query: `collection=${COLLECTION}` },
      { query: `jobId=${f.done.id}` },
      { query: "status=ready&limit=100" },
    ],
    ownCopies: SAME_NAMES,
    t2: (o, f) => {
      expect(o.status, `${o.route}: ${o.text}`).toBe(200);
      const { data } = JSON.parse(o.text) as {
        data: { current: { jobId: string } | null; pending: { jobId: string } | null }[];
      };
      const t1Jobs = t1JobIds(f);
      expect(
        data.filter((d) =>
          [d.current?.jobId, d.pending?.jobId].some((j) => t1Jobs.includes(j ?? "")),
        ),
      ).toEqual([]);
    },
  },
  "GET /v1/documents/{id}": {
    // Without a collection: the one collection holding that id (t1 has one per id).
    variants: () => [{}],
    ownCopies: SAME_NAMES,
    t2: (o, f) => {
      // t2's own copy (same name, its own job) or nothing; never t1's versions.
      if (o.status === 404) return;
      expect(o.status, `${o.route}: ${o.text}`).toBe(200);
      const { versions } = JSON.parse(o.text) as { versions: { jobId: string }[] };
      expect(versions.filter((v) => t1JobIds(f).includes(v.jobId))).toEqual([]);
    },
  },
  "GET /v1/documents/{id}/original": {
    // Without a collection: the one collection holding that id (t1 has one per id).
    variants: () => [{}],
    ownCopies: [...SAME_NAMES, "document A text", "document B text"],
    t2: (o) => {
      // t2's own copy of the same text (it replayed t1's body), or nothing.
      if (o.status !== 404) expect(o.status, `${o.route}: ${o.text}`).toBe(200);
    },
  },
  "DELETE /v1/documents/{id}": {
    // Without a collection: the one collection holding that id (t1 has one per id).
    variants: () => [{}],
    ownCopies: SAME_NAMES,
    // t2 may delete its own copies; t1's stay (the snapshot after the walk says so).
    t2: (o) => expect([204, 404, 409], `${o.route}: ${o.text}`).toContain(o.status),
  },
  "DELETE /v1/jobs/{id}": {},
  "GET /v1/jobs/{id}/chunks": {
    variants: () => [{}, { query: "includeVectors=true&limit=1000" }],
  },
  "POST /v1/jobs/{id}/cancel": { variants: () => [{ json: {} }] },
  "DELETE /v1/jobs/{id}/documents/{documentId}": {},
  "GET /v1/jobs/{id}/results": { variants: () => [{}, { headers: { "Accept-Encoding": "gzip" } }] },
  "GET /v1/jobs/{id}/events": {
    variants: () => [{}, { query: "chunks=true" }, { headers: { "Last-Event-ID": "0" } }],
  },
  "POST /v1/webhooks": {
    variants: () => [{ json: { url: T2_HOOK_URL, events: ["job.completed"] } }],
  },
  "GET /v1/webhooks": {},
  "DELETE /v1/webhooks/{id}": {},
  "PATCH /v1/webhooks/{id}": {
    variants: () => [{ json: { url: T2_HOOK_URL } }, { json: { events: ["job.failed"] } }],
  },
  "GET /v1/webhooks/{id}/deliveries": {},
  "POST /v1/webhooks/{id}/deliveries/{deliveryId}/redeliver": { variants: () => [{ json: {} }] },
  "POST /v1/search": {
    variants: (f) => [
      { json: { query: DOC_A.text, topK: 50 } },
      { json: { query: DOC_B.text, topK: 50, filter: { jobId: f.done.id } } },
      { json: { query: DOC_A.text, filter: { documentId: DOC_A.id } } },
      { json: { query: DOC_A.text, filter: { jobId: f.done.id, documentId: DOC_A.id } } },
      { json: { query: DOC_OPEN.text, pool: "any", filter: { jobId: f.open.id } } },
      { json: { query: DOC_A.text, mode: "keyword", topK: 50 } },
      { json: { query: DOC_B.text, mode: "hybrid", topK: 50, collections: [COLLECTION] } },
      {
        json: {
          query: DOC_A.text,
          mode: "keyword",
          filter: { collection: COLLECTION, documentId: { $in: [DOC_A.id, DOC_B.id] } },
        },
      },
    ],
    // The query really ran (a worker embedded it) and found nothing of t1's.
    t2: (o, f) => {
      expect(o.status, `${o.route}: ${o.text}`).toBe(200);
      const { results } = JSON.parse(o.text) as { results: { chunk: ChunkRow }[] };
      const t1Jobs = t1JobIds(f);
      expect(
        results.filter((r) => t1Jobs.includes(r.chunk.jobId)),
        `${o.route} found t1's chunks`,
      ).toEqual([]);
    },
  },
  "GET /v1/collections": {
    t2: (o) => {
      expect(o.status, `${o.route}: ${o.text}`).toBe(200);
      // t2 knows the name (POST /v1/jobs replays t1's body, collection included), so it may
      // list a collection of that name: its own, with its one job, never t1's as well.
      const { data } = JSON.parse(o.text) as { data: { name: string; jobs: number }[] };
      expect(data.find((c) => c.name === COLLECTION)?.jobs ?? 0).toBeLessThanOrEqual(1);
    },
  },
  "POST /v1/embeddings": {
    variants: () => [{ json: { model: "use-lite", input: [DOC_A.text, DOC_B.text] } }],
  },
  "GET /v1/models": { t2: (o) => expect(o.status, `${o.route}: ${o.text}`).toBe(200) },
  "GET /v1/models/{model}": {
    // Not t1's resource: the deployment's model, which every tenant reads alike (none of
    // t1's secrets may show in it).
    ownCopies: [],
    t2: (o) => expect(o.status, `${o.route}: ${o.text}`).toBe(200),
  },
  "GET /v1/workers": {
    variants: () => [{}, { query: "model=use-lite" }],
    t2: (o) => expect(o.status, `${o.route}: ${o.text}`).toBe(200),
  },
  "GET /v1/workers/connect": { socket: true, variants: () => [{}, {}] },
  "DELETE /v1/workers/tokens/{id}": { operator: true },
  "GET /v1/metrics": { operator: true },
  "POST /v1/keys": {
    variants: () => [
      { json: { label: `t2-walk-key-${U}` } },
      { json: { kind: "worker", label: `t2-walk-token-${U}` } },
    ],
  },
  "GET /v1/keys": {},
  "GET /v1/keys/{id}": {},
  "PATCH /v1/keys/{id}": {
    variants: () => [
      { json: { label: "renamed by another tenant" } },
      { json: { quotas: { requestsPerMinute: 1 } } },
    ],
  },
  "DELETE /v1/keys/{id}": {},
  "GET /v1/usage": {},
  "GET /v1/audit": {
    variants: () => [
      {},
      { query: "actor=c1" },
      { query: "order=desc&limit=500" },
      { query: "action=job." },
    ],
  },
  "GET /v1/audit/verify": {},
  "GET /v1/tenant/policy": {},
  "PUT /v1/tenant/policy": { variants: () => [{ json: { retention: { textDays: 7 } } }] },
  "GET /v1/tenant/encryption": {},
  "POST /v1/tenant/encryption/rotate": { variants: () => [{ json: {} }] },
  // Naming t1 as the tenant to erase: another tenant's key can only erase its own.
  "DELETE /v1/tenant": { variants: () => [{ query: "confirm=t1" }] },
  "PUT /v1/admin/tenants/{tenant}/quotas": {
    operator: true,
    variants: () => [{ json: { requestsPerMinute: 1, chunksPerDay: 1 } }],
  },
  "GET /v1/admin/tenants/{tenant}/usage": { operator: true },
  "DELETE /v1/admin/tenants/{tenant}": { operator: true },
  "POST /v1/admin/encryption/rewrap": { operator: true, variants: () => [{ json: {} }] },
};

const HTTP_METHODS = ["get", "put", "post", "delete", "patch", "head", "options", "trace"];

interface DocRoute {
  route: string;
  method: string;
  path: string;
  scopes: string[];
}

async function documentRoutes(): Promise<DocRoute[]> {
  const doc = await json<{
    paths: Record<string, Record<string, { security?: Record<string, string[]>[] }>>;
  }>(call("/openapi.json", { key: null }));
  const routes: DocRoute[] = [];
  for (const [path, item] of Object.entries(doc.paths))
    for (const [method, op] of Object.entries(item)) {
      if (!HTTP_METHODS.includes(method)) continue;
      const scopes = (op.security ?? []).flatMap((s) => s.bearer ?? []);
      routes.push({
        route: `${method.toUpperCase()} ${path}`,
        method: method.toUpperCase(),
        path,
        scopes,
      });
    }
  // Guards against an empty or truncated walk, and against rules for routes that are gone.
  expect(routes.length, "routes in /openapi.json").toBeGreaterThanOrEqual(
    Object.keys(ROUTES).length,
  );
  expect(
    Object.keys(ROUTES).filter((r) => !routes.some((d) => d.route === r)),
    "rules for routes the document no longer has",
  ).toEqual([]);
  expect(
    routes.filter((d) => !ROUTES[d.route]).map((d) => d.route),
    "routes with no fixture rule: add one to ROUTES (and PARAMS) in tenancy.test.ts",
  ).toEqual([]);
  return routes;
}

/** The concrete paths for a route: every combination of its parameters' fixture values. */
function concretePaths(path: string, f: Fixture): string[] {
  let out = [""];
  let rest = path;
  let prefix = "";
  for (;;) {
    const m = rest.match(/^([^{]*)\{([^}]+)\}/);
    if (!m) break;
    const [whole, literal = ""] = m;
    prefix += whole;
    const values = PARAMS[prefix];
    if (!values) throw new Error(`no fixture rule for path parameter ${prefix} (route ${path})`);
    const vs = values(f);
    expect(vs.length, `fixture values for ${prefix}`).toBeGreaterThan(0);
    out = out.flatMap((o) => vs.map((v) => `${o}${literal}${encodeURIComponent(v)}`));
    rest = rest.slice(whole.length);
  }
  return out.map((o) => o + rest);
}

/** Sends every request of a route with one key; bodies and streams are read (with a limit). */
async function walkRoute(d: DocRoute, key: string, f: Fixture): Promise<Outcome[]> {
  const rule = ROUTES[d.route] as Rule;
  const variants = rule.variants?.(f) ?? [{}];
  const out: Outcome[] = [];
  for (const path of concretePaths(d.path, f)) {
    for (const [i, v] of variants.entries()) {
      if (MUTATING.has(d.method) && d.method !== "DELETE" && v.json === undefined)
        throw new Error(`${d.route}: the rule gives no body for variant ${i}`);
      const url = v.query ? `${path}?${v.query}` : path;
      // The socket rule's first variant is the upgrade, the second a plain GET.
      const upgrade = rule.socket && i === 0;
      const res = await call(url, {
        method: d.method,
        key,
        headers: { ...v.headers, ...(upgrade ? { Upgrade: "websocket" } : {}) },
        ...(v.json !== undefined ? { json: v.json } : {}),
      });
      if (upgrade) {
        out.push({
          route: d.route,
          url,
          status: res.status,
          text: "",
          complete: true,
          socket: await socketOutcome(res),
        });
        continue;
      }
      // The runtime's fetch decodes a gzip export transparently, so its text is searchable.
      const { text, complete } = await readAll(res);
      out.push({ route: d.route, url, status: res.status, text, complete });
    }
  }
  return out;
}

/** The labels of t1's secrets that appear in a text. */
function leaked(text: string, f: Fixture): string[] {
  return [...f.secrets].filter(([, s]) => text.includes(s)).map(([label]) => label);
}

// ---- t1's state, before and after ----

async function snapshot(f: Fixture) {
  const get = async (path: string) => {
    const r = await t1(path);
    return { status: r.status, body: (await r.json()) as Record<string, unknown> };
  };
  const jobs = await Promise.all(
    t1JobIds(f).map(async (id) => {
      const { status, body } = await get(`/v1/jobs/${id}`);
      return { status, id: body.id, state: body.status, chunks: body.chunks, docs: body.documents };
    }),
  );
  const chunks = await Promise.all(
    t1JobIds(f).map(async (id) =>
      (await chunksOf(id)).map((c) => ({
        id: c.id,
        documentId: c.documentId,
        text: c.text,
        metadata: c.metadata,
        status: c.status,
        vector: c.vector?.length ?? 0,
      })),
    ),
  );
  const webhooks = ((await get("/v1/webhooks")).body.data as { id: string; url: string }[])
    .map((e) => ({ id: e.id, url: e.url }))
    .sort((a, b) => a.id.localeCompare(b.id));
  const deliveries = (
    (await get(`/v1/webhooks/${f.webhook.id}/deliveries`)).body.data as Record<string, unknown>[]
  ).map((d) => ({ id: d.id, status: d.status, attempts: d.attempts, event: d.eventType }));
  const keys = await Promise.all(
    [f.key.id, "c1", "c3", f.workerCred].map(async (id) => {
      const { status, body } = await get(`/v1/keys/${id}`);
      const { lastUsedAt: _used, ...rest } = body;
      return { status, key: rest };
    }),
  );
  const usage = (await get("/v1/usage")).body as {
    quotas: unknown;
    storedVectors: number;
    keys: { id: string; quotas: unknown }[];
  };
  const verify = (await get("/v1/audit/verify")).body as {
    ok: boolean;
    head: { seq: number; hash: string };
  };
  const workers = (await get("/v1/workers")).body as { shards: { workers: { id: string }[] }[] };
  return {
    jobs,
    chunks,
    webhooks,
    deliveries,
    keys,
    policy: (await get("/v1/tenant/policy")).body,
    encryption: (await get("/v1/tenant/encryption")).body,
    usage: {
      quotas: usage.quotas,
      storedVectors: usage.storedVectors,
      keys: usage.keys
        .map((k) => ({ id: k.id, quotas: k.quotas }))
        .sort((a, b) => a.id.localeCompare(b.id)),
    },
    audit: { ok: verify.ok, head: verify.head },
    workers: workers.shards.flatMap((s) => s.workers.map((w) => w.id)).sort(),
  };
}

type Snapshot = Awaited<ReturnType<typeof snapshot>>;

/** What must hold of t1 after anyone else's walk, beyond an unchanged snapshot. */
async function expectT1Intact(f: Fixture, before: Snapshot, after: Snapshot) {
  expect(after.jobs.map((j) => [j.status, j.state])).toEqual([
    [200, "completed"],
    [200, "queued"],
  ]);
  expect(after.keys.map((k) => [k.key.id, k.status, k.key.revokedAt])).toEqual([
    [f.key.id, 200, null],
    ["c1", 200, null],
    ["c3", 200, null],
    [f.workerCred, 200, null],
  ]);
  expect(after.webhooks.map((w) => w.id)).toContain(f.webhook.id);
  expect(after.deliveries.map((d) => d.id)).toEqual(f.webhook.deliveryIds);
  expect(after.chunks[0]?.map((c) => [c.documentId, c.text, c.vector])).toEqual([
    [DOC_A.id, DOC_A.text, DIM],
    [DOC_B.id, DOC_B.text, DIM],
  ]);
  expect(after.audit.ok, "t1's audit chain verifies").toBe(true);
  expect(after.workers).toEqual(f.workerIds);
  expect(after).toEqual(before);
  // Nothing another tenant did is in t1's log; every entry of t1's log is still there.
  const log = await json<{ data: { actor: string; hash: string }[] }>(t1("/v1/audit?limit=500"));
  expect(log.data.filter((e) => e.actor === "c2")).toEqual([]);
  expect((await json<{ data: unknown[] }>(t1("/v1/audit?actor=c2"))).data).toEqual([]);
  expect(log.data.map((e) => e.hash).slice(0, f.auditHashes.length)).toEqual(f.auditHashes);
  // t1's search still finds t1's text.
  const found = await searchAsT1(DOC_B.text);
  expect(found.results[0]?.chunk).toMatchObject({
    id: f.done.chunkIds[1],
    documentId: DOC_B.id,
    text: DOC_B.text,
    metadata: { owner: META_B },
  });
}

// ---- the tests ----

describe("tenant isolation across every route of the OpenAPI document", () => {
  it("another tenant's key learns nothing of t1 and changes nothing of t1's", async () => {
    const routes = await documentRoutes();
    const before = await snapshot(fx);
    const outcomes: Outcome[] = [];
    const problems: string[] = [];
    for (const d of routes) {
      const rule = ROUTES[d.route] as Rule;
      const got = await walkRoute(d, KEYS.other, fx);
      expect(got.length, `${d.route}: requests sent`).toBeGreaterThan(0);
      for (const o of got) {
        outcomes.push(o);
        const at = `${d.method} ${o.url} → ${o.socket ?? o.status}`;
        const leaks = leaked(o.text, fx).filter((l) => !rule.ownCopies?.includes(l));
        if (leaks.length)
          problems.push(`${at} leaked ${leaks.join(", ")}: ${o.text.slice(0, 300)}`);
        if (rule.socket) {
          if (o.socket) {
            if (o.socket !== "close 4401" && !/^http 4\d\d$/.test(o.socket))
              problems.push(`${at}: a t2 API key's upgrade was not refused (${o.socket})`);
          } else if (o.status < 400) problems.push(`${at}: a plain GET was not refused`);
          continue;
        }
        if (rule.operator) {
          if (o.status !== 403) problems.push(`${at}: an operator route must answer 403`);
          continue;
        }
        const ok = ALLOWED_REFUSALS.has(o.status) || (o.status >= 200 && o.status < 300);
        if (!ok) problems.push(`${at}: unexpected status: ${o.text.slice(0, 200)}`);
        // A route that names one of t1's resources must refuse another tenant outright.
        // (Unless the route names t2's own copy of the same name, which its rule checks.)
        if (d.path.includes("{") && o.status < 300 && !rule.ownCopies)
          problems.push(
            `${at}: another tenant succeeded on t1's resource: ${o.text.slice(0, 200)}`,
          );
        if (!o.complete && o.status < 300)
          problems.push(`${at}: another tenant got a stream that did not end`);
        try {
          rule.t2?.(o, fx);
        } catch (err) {
          problems.push(`${at}: ${(err as Error).message}`);
        }
      }
    }
    const table = new Map<string, string[]>();
    for (const o of outcomes) {
      const got = table.get(o.route) ?? [];
      const v = o.socket ?? String(o.status);
      if (!got.includes(v)) got.push(v);
      table.set(o.route, got);
    }
    console.log(
      `tenancy walk as t2: ${routes.length} routes, ${outcomes.length} requests\n${[...table]
        .map(([r, v]) => `  ${r.padEnd(62)} ${v.join(" / ")}`)
        .join("\n")}`,
    );
    expect(problems, "isolation problems").toEqual([]);

    const after = await snapshot(fx);
    await expectT1Intact(fx, before, after);
  }, 120_000);

  it("a jobs:read key of t1 can read the job but change nothing, on any route", async () => {
    const routes = await documentRoutes();
    const ro = await json<{ id: string; secret: string; scopes: string[] }>(
      t1("/v1/keys", {
        method: "POST",
        json: { label: `t1-read-only-${U}`, scopes: ["jobs:read"] },
      }),
      201,
    );
    expect(ro.scopes).toEqual(["jobs:read"]);
    const before = await snapshot(fx);
    const problems: string[] = [];
    const seen = new Map<string, number[]>();
    for (const d of routes) {
      const rule = ROUTES[d.route] as Rule;
      for (const o of await walkRoute(d, ro.secret, fx)) {
        seen.set(d.route, [...(seen.get(d.route) ?? []), o.status]);
        const at = `${d.method} ${o.url} → ${o.socket ?? o.status}`;
        if (rule.socket) {
          if (o.socket && o.socket !== "close 4401" && !/^http 4\d\d$/.test(o.socket))
            problems.push(`${at}: an API key's upgrade was not refused`);
          continue;
        }
        if (MUTATING.has(d.method)) {
          if (o.status !== 403)
            problems.push(`${at}: a read-only key must get 403: ${o.text.slice(0, 200)}`);
        } else if (rule.operator || d.scopes.some((s) => s !== "jobs:read")) {
          if (o.status !== 403)
            problems.push(`${at}: needs ${d.scopes.join(", ") || "an operator"}; want 403`);
        } else if (d.scopes.includes("jobs:read") && (o.status < 200 || o.status >= 300)) {
          problems.push(
            `${at}: a jobs:read route refused a jobs:read key: ${o.text.slice(0, 200)}`,
          );
        }
      }
    }
    expect(problems, "read-only key problems").toEqual([]);
    expect(seen.get("GET /v1/jobs/{id}")).toEqual([200, 200]);
    expect(seen.get("GET /v1/jobs/{id}/chunks")).toEqual([200, 200, 200, 200]);

    const after = await snapshot(fx);
    // Reading an export is audited; nothing else the read-only key did may be.
    const added = await json<{ data: { seq: number; actor: string; action: string }[] }>(
      t1(`/v1/audit?limit=500&order=desc`),
    );
    const fresh = added.data.filter((e) => e.seq > before.audit.head.seq);
    expect(fresh.map((e) => [e.actor, e.action])).toEqual(fresh.map(() => [ro.id, "export.read"]));
    expect(fresh.length).toBeGreaterThan(0);
    await expectT1Intact(fx, { ...before, audit: after.audit }, after);
  }, 120_000);
});
