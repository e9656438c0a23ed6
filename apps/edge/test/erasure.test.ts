import {
  env,
  listDurableObjectIds,
  runDurableObjectAlarm,
  runInDurableObject,
} from "cloudflare:test";
import type { WebhookDelivery as Delivery } from "@p2pa/shared";
import { PROTOCOL_VERSION } from "@p2pa/shared";
import { afterEach, describe, expect, it, vi } from "vitest";
import { dispatcherAt, shardCount } from "../src/dispatch/shards.js";
import { sha256Hex } from "../src/lib/crypto.js";
import { DecryptError, Keyring } from "../src/lib/keyring.js";
import { ledger } from "../src/tenant/limits.js";
import { localIndexName } from "../src/vector/config.js";
import { getVectorIndex } from "../src/vector/index.js";
import { webhookHub } from "../src/webhooks/index.js";
import { call, KEYS, originalsOf, storedOriginal, TestWorker, workerToken } from "./helpers.js";

/*
 * Erasure, proven by looking everywhere: every D1 table, every R2 object and every Durable
 * Object's SQLite tables and KV entries are dumped as text, sealed values are opened with the
 * deployment's keyring, and the dump is searched for what was deleted. Each test first shows
 * the scan finds the data while it exists, so a scan that sees nothing cannot pass.
 */

const MODEL = "use-lite";
const keyring = () => new Keyring(env.DB, env.P2PA_DATA_KEYS);

// ---------------------------------------------------------------------------------------------
// The scanner

/** One place a needle was found. */
interface Hit {
  /** `d1:<table>.<column>`, `r2:<key>#key|#meta|#body`, `do:<Class>(<name>).<table>.<column>`, `do:<Class>(<name>).kv:<key>` */
  where: string;
  needle: string;
  /** "decrypted" when the needle was in the plaintext of a sealed value. */
  via: "plain" | "decrypted";
}

interface Scan {
  hits: Hit[];
  /** Sealed values the scanner could not open (so could not search): should be none. */
  opaque: string[];
  /** Tables that could not be read (internal ones only), by store. */
  unreadable: string[];
  covered: { d1Tables: string[]; r2Objects: number; durableObjects: string[]; kv: string[] };
}

/** Not fatal: invalid bytes become U+FFFD, ASCII around them survives. */
const utf8 = new TextDecoder();

/** Any stored value as searchable text; BLOBs (vectors) too, their bytes read as UTF-8. */
function asText(v: unknown): string | null {
  if (v === null || v === undefined) return null;
  if (typeof v === "string") return v;
  if (typeof v === "number" || typeof v === "bigint" || typeof v === "boolean") return String(v);
  if (v instanceof ArrayBuffer) return utf8.decode(new Uint8Array(v));
  if (ArrayBuffer.isView(v))
    return utf8.decode(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
  try {
    return JSON.stringify(v);
  } catch {
    return String(v);
  }
}

/** Keyring ciphertexts inside a stored value (a JSON document may hold several). */
const SEALED_IN_TEXT = /p2pa1\.[1-9][0-9]{0,9}\.[A-Za-z0-9_-]{38,}/g;

const quote = (name: string) => `"${name.replaceAll('"', '""')}"`;

/** Opens a sealed text value with the first tenant and context that authenticate. */
async function openText(
  kr: Keyring,
  sealed: string,
  tenants: (string | null | undefined)[],
  contexts: (string | null | undefined)[],
): Promise<string | null> {
  for (const t of new Set(tenants.filter((x): x is string => !!x)))
    for (const c of new Set(contexts.filter((x): x is string => !!x))) {
      try {
        return await kr.decrypt(t, sealed, c);
      } catch {}
    }
  return null;
}

interface DoDump {
  tables: { table: string; rows: Record<string, string | null>[] }[];
  kv: [string, string | null][];
  unreadable: string[];
}

/** Everything a Durable Object stores: every SQLite table (sqlite_master) and every KV entry. */
function dumpDurableObject(state: DurableObjectState): DoDump {
  const sql = state.storage.sql;
  const out: DoDump = { tables: [], kv: [], unreadable: [] };
  const names = sql
    .exec<{ name: string }>("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    .toArray()
    .map((r) => r.name);
  for (const table of names) {
    try {
      const rows = sql
        .exec(`SELECT * FROM ${quote(table)}`)
        .toArray()
        .map((r) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, asText(v)] as const)));
      out.tables.push({ table, rows });
    } catch (e) {
      // workerd keeps its own tables (_cf_KV: the KV entries, read below) out of reach.
      out.unreadable.push(`${table} (${(e as Error).message.slice(0, 80)})`);
    }
  }
  for (const [k, v] of state.storage.kv.list()) out.kv.push([k, asText(v)]);
  return out;
}

/** The tenants that appear in D1, so every object of theirs can be addressed by name. */
async function knownTenants(extra: string[]): Promise<string[]> {
  const rows = await env.DB.prepare(
    "SELECT tenant FROM jobs UNION SELECT tenant FROM credentials UNION SELECT tenant FROM tenant_keys",
  ).all<{ tenant: string }>();
  return [...new Set(["t1", "t2", "ops", ...extra, ...rows.results.map((r) => r.tenant)])];
}

/**
 * Every place any needle appears, in every store: D1 (every table, row and column, sealed
 * values opened), R2 (every object's key, metadata and body, sealed bodies opened) and the
 * Durable Objects (each Dispatcher shard and the vector index of the model, the webhook hub and
 * ledger of every tenant, and any other object that exists: every SQLite table and KV entry).
 */
async function scanEverything(needles: string[], tenant: string): Promise<Scan> {
  const scan: Scan = {
    hits: [],
    opaque: [],
    unreadable: [],
    covered: { d1Tables: [], r2Objects: 0, durableObjects: [], kv: [] },
  };
  const wanted = [...new Set(needles)].filter((n) => n.length >= 6);
  expect(wanted.length, "needles must be distinctive (6+ chars)").toBe(new Set(needles).size);
  const look = (where: string, text: string | null, via: Hit["via"] = "plain") => {
    if (!text) return;
    for (const needle of wanted) if (text.includes(needle)) scan.hits.push({ where, needle, via });
  };
  const kr = keyring();

  // D1: every table in sqlite_master.
  const jobTenant = new Map(
    (
      await env.DB.prepare("SELECT id, tenant FROM jobs").all<{ id: string; tenant: string }>()
    ).results.map((r) => [r.id, r.tenant] as const),
  );
  const tenants = await knownTenants([tenant]);
  const tables = (
    await env.DB.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all<{
      name: string;
    }>()
  ).results.map((r) => r.name);
  for (const table of tables) {
    let rows: Record<string, unknown>[];
    try {
      rows = (await env.DB.prepare(`SELECT * FROM ${quote(table)}`).all()).results;
    } catch (e) {
      scan.unreadable.push(`d1:${table} (${(e as Error).message.slice(0, 80)})`);
      continue;
    }
    scan.covered.d1Tables.push(table);
    for (const row of rows) {
      for (const [column, value] of Object.entries(row)) {
        const text = asText(value);
        const where = `d1:${table}.${column}`;
        look(where, text);
        if (text && Keyring.isCiphertext(text)) {
          // Chunk text is sealed for the job's tenant with the chunk id as context, a small
          // original with its key.
          const jobId = typeof row.job_id === "string" ? row.job_id : null;
          const id = typeof row.id === "string" ? row.id : null;
          const key = typeof row.key === "string" ? row.key : null;
          const plain = await openText(
            kr,
            text,
            [jobId && jobTenant.get(jobId), row.tenant as string | undefined, tenant, ...tenants],
            [id, jobId, key],
          );
          if (plain === null) scan.opaque.push(`${where} (row ${id ?? "?"})`);
          else look(where, plain, "decrypted");
        }
      }
    }
  }

  // R2: every object, every page.
  for (let cursor: string | undefined; ; ) {
    const page = await env.RAW.list({
      include: ["customMetadata", "httpMetadata"],
      ...(cursor ? { cursor } : {}),
    });
    for (const o of page.objects) {
      scan.covered.r2Objects++;
      look(`r2:${o.key}#key`, o.key);
      look(`r2:${o.key}#meta`, JSON.stringify([o.customMetadata ?? {}, o.httpMetadata ?? {}]));
      const body = await env.RAW.get(o.key);
      if (!body) continue;
      const bytes = new Uint8Array(await body.arrayBuffer());
      look(`r2:${o.key}#body`, utf8.decode(bytes));
      const sealed =
        bytes[0] === 0x50 && bytes[1] === 0x32 && bytes[2] === 0x50 && bytes[3] === 0x41;
      if (sealed) {
        const owner = o.key.startsWith("raw/") ? o.key.split("/")[1] : undefined;
        let plain: string | null = null;
        for (const t of new Set([owner, tenant].filter((x): x is string => !!x))) {
          try {
            plain = utf8.decode(await kr.decryptBytes(t, bytes, o.key));
            break;
          } catch {}
        }
        if (plain === null) scan.opaque.push(`r2:${o.key}#body`);
        else look(`r2:${o.key}#body`, plain, "decrypted");
      }
    }
    if (!page.truncated) break;
    cursor = page.cursor;
  }

  // Durable Objects: the named ones of the model and of every tenant, plus any other object.
  type Ns = DurableObjectNamespace<Rpc.DurableObjectBranded | undefined>;
  const groups: { cls: string; ns: Ns; names: string[] }[] = [
    {
      cls: "Dispatcher",
      ns: env.DISPATCHER as unknown as Ns,
      names: Array.from({ length: shardCount(env) }, (_, i) => `${MODEL}:${i}`),
    },
    {
      cls: "LocalVectorIndex",
      ns: env.LOCAL_VECTORS as unknown as Ns,
      names: [localIndexName(MODEL)],
    },
    {
      cls: "WebhookHub",
      ns: env.WEBHOOKS as unknown as Ns,
      names: tenants.map((t) => `tenant:${t}`),
    },
    { cls: "TenantLedger", ns: env.TENANTS as unknown as Ns, names: tenants },
  ];
  for (const { cls, ns, names } of groups) {
    const byId = new Map<string, { label: string; id: DurableObjectId }>();
    const existing = await listDurableObjectIds(ns);
    const existingIds = new Set(existing.map((id) => id.toString()));
    for (const name of names) {
      const id = ns.idFromName(name);
      // The model's objects and those of the tenant under test always; other tenants' when
      // they exist.
      const mine = name === tenant || name === `tenant:${tenant}`;
      if (
        cls === "Dispatcher" ||
        cls === "LocalVectorIndex" ||
        mine ||
        existingIds.has(id.toString())
      )
        byId.set(id.toString(), { label: name, id });
    }
    for (const id of existing)
      if (!byId.has(id.toString()))
        byId.set(id.toString(), { label: `#${id.toString().slice(0, 12)}`, id });
    for (const { label, id } of byId.values()) {
      const dump = await runInDurableObject(ns.get(id), (_o, state) => dumpDurableObject(state));
      const at = `do:${cls}(${label})`;
      scan.covered.durableObjects.push(at);
      for (const u of dump.unreadable)
        if (!u.startsWith("_cf_")) scan.unreadable.push(`${at}.${u}`);
      for (const { table, rows } of dump.tables)
        for (const row of rows)
          for (const [column, text] of Object.entries(row)) {
            look(`${at}.${table}.${column}`, text);
            // Sealed values inside (task text: blocks of a task, or one item's text) are opened
            // and searched too, under any tenant and the contexts the coordinator seals with.
            const sealed = text?.match(SEALED_IN_TEXT) ?? [];
            if (sealed.length === 0) continue;
            const chunkIds = [
              ...Object.values(row)
                .join(" ")
                .matchAll(/"chunkId":"([^"]+)"/g),
            ];
            const contexts = ["task-texts", ...chunkIds.map((m) => `task:${m[1]}`)];
            for (const value of sealed) {
              const plain = await openText(kr, value, [tenant, ...tenants], contexts);
              if (plain === null) scan.opaque.push(`${at}.${table}.${column}`);
              else look(`${at}.${table}.${column}`, plain, "decrypted");
            }
          }
      for (const [k, v] of dump.kv) {
        scan.covered.kv.push(`${at}.kv:${k}`);
        look(`${at}.kv:${k}#key`, k);
        look(`${at}.kv:${k}`, v);
      }
    }
  }
  return scan;
}

/** Hits as lines, for assertion messages: what was found where. */
function describeHits(hits: Hit[]): string {
  if (hits.length === 0) return "(nothing found)";
  const lines = new Map<string, number>();
  for (const h of hits) {
    const line = `${h.where}${h.via === "decrypted" ? " [decrypted]" : ""} <- ${h.needle}`;
    lines.set(line, (lines.get(line) ?? 0) + 1);
  }
  return [...lines].map(([l, n]) => (n > 1 ? `${l} (x${n})` : l)).join("\n");
}

/** The stores a set of hits lies in, as `store:table.column` (R2 objects by kind of part). */
function placesOf(hits: Hit[], needle?: string): string[] {
  return [
    ...new Set(
      hits
        .filter((h) => needle === undefined || h.needle === needle)
        .map((h) => {
          const place = h.where.startsWith("r2:") ? `r2:${h.where.split("#")[1]}` : h.where;
          return `${place}${h.via === "decrypted" ? " [decrypted]" : ""}`;
        }),
    ),
  ].sort();
}

/** Asserts the scan found none of the needles anywhere, listing every hit when it did. */
function expectNothing(scan: Scan, what: string) {
  // Only workerd's own tables are out of reach (their KV entries are read through the API).
  expect(
    scan.unreadable.filter((u) => !/^d1:_cf_/.test(u)),
    `${what}: unreadable`,
  ).toEqual([]);
  expect(scan.opaque, `${what}: sealed values the scan could not open`).toEqual([]);
  expect(scan.hits, `${what}: found after deletion:\n${describeHits(scan.hits)}`).toEqual([]);
}

// ---------------------------------------------------------------------------------------------
// Tenants, jobs and workers

/** A fresh tenant with an API key (no scopes stored: every scope), as setup.ts seeds t1. */
async function newTenant(prefix: string) {
  const tenant = `${prefix}-${crypto.randomUUID()}`;
  const key = `sk_${prefix}_${crypto.randomUUID()}`;
  const credId = `cred_${prefix}_${crypto.randomUUID().slice(0, 8)}`;
  const hash = await sha256Hex(key);
  await env.DB.prepare("INSERT INTO credentials (id, kind, tenant, hash) VALUES (?, 'api', ?, ?)")
    .bind(credId, tenant, hash)
    .run();
  return { tenant, key, credId, hash };
}

/** Distinctive words: a random id each, so a hit can only be this text. */
const words = (tag: string, n: number) =>
  Array.from({ length: n }, () => `${tag}${crypto.randomUUID().replaceAll("-", "")}`);

interface Doc {
  id: string;
  words: string[];
  text: string;
}

const doc = (tag: string, n = 6): Doc => {
  const w = words(tag, n);
  return { id: `doc-${tag}-${crypto.randomUUID()}`, words: w, text: w.join(" ") };
};

interface JobView {
  id: string;
  status: string;
  documents: number;
  chunks: { total: number; done: number; failed: number };
  retention: { textDays: number | null; textPurgedAt?: string };
  completedAt?: string;
  webhook?: { id: string; url: string; secret?: string };
}

interface ChunkView {
  id: string;
  documentId: string;
  text: string | null;
  status: string;
}

async function submitJob(key: string, docs: Doc[], extra: Record<string, unknown> = {}) {
  const res = await call("/v1/jobs", {
    method: "POST",
    key,
    json: {
      documents: docs.map((d) => ({ id: d.id, text: d.text, metadata: { doc: d.id } })),
      // Small chunks: each document becomes a few chunks.
      chunking: { maxChars: 120, overlap: 10 },
      ...extra,
    },
  });
  expect(res.status, await res.clone().text()).toBe(202);
  return (await res.json()) as JobView;
}

async function getJob(id: string, key: string): Promise<JobView> {
  const res = await call(`/v1/jobs/${id}`, { key });
  expect(res.status).toBe(200);
  return (await res.json()) as JobView;
}

async function chunksOf(id: string, key: string): Promise<ChunkView[]> {
  const res = await call(`/v1/jobs/${id}/chunks?limit=1000`, { key });
  expect(res.status).toBe(200);
  return ((await res.json()) as { data: ChunkView[] }).data;
}

const ended = (s: string) => s !== "queued" && s !== "running";

/** Computes every task the worker is given until all the jobs have ended. */
async function computeAll(w: TestWorker, jobs: { id: string; key: string }[]) {
  w.ready(4);
  const deadline = Date.now() + 20_000;
  for (;;) {
    const states = await Promise.all(jobs.map(async (j) => (await getJob(j.id, j.key)).status));
    if (states.every(ended)) {
      for (const s of states) expect(s).toBe("completed");
      return;
    }
    if (Date.now() > deadline) throw new Error(`jobs did not end: ${states.join(", ")}`);
    const t = await w.next("task", 300).catch(() => null);
    if (t) w.send(w.resultFor(t));
  }
}

async function poll<T>(what: string, f: () => Promise<T | null | undefined | false>, ms = 10_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Stands in for the webhook receiver: answers 204 to our hook URLs and records bodies. */
function fakeReceiver(prefix: string) {
  const real = globalThis.fetch.bind(globalThis);
  const got: { url: string; body: string }[] = [];
  vi.spyOn(globalThis, "fetch").mockImplementation(async (input, init) => {
    const url = input instanceof Request ? input.url : String(input);
    if (!url.startsWith(prefix)) return real(input, init);
    got.push({ url, body: typeof init?.body === "string" ? init.body : "" });
    return new Response(null, { status: 204 });
  });
  return got;
}

interface Sse {
  event: string;
  id: string;
  data: Record<string, unknown>;
}

/** Reads an SSE stream to its end (the route closes it after the terminal event). */
async function readEvents(res: Response): Promise<Sse[]> {
  const reader = (res.body as ReadableStream<Uint8Array>)
    .pipeThrough(new TextDecoderStream())
    .getReader();
  const out: Sse[] = [];
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return out;
    buf += value;
    for (let i = buf.indexOf("\n\n"); i >= 0; i = buf.indexOf("\n\n")) {
      const frame = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const f: Partial<Sse> = {};
      for (const line of frame.split("\n")) {
        if (line.startsWith("event: ")) f.event = line.slice(7);
        else if (line.startsWith("id: ")) f.id = line.slice(4);
        else if (line.startsWith("data: "))
          f.data = JSON.parse(line.slice(6)) as Record<string, unknown>;
      }
      if (f.event) out.push(f as Sse);
    }
  }
}

const needlesOf = (docs: Doc[]) => docs.flatMap((d) => [...d.words, d.id]);

/** Where a document's original is found, opened: an R2 object, or a small text's D1 row. */
const ORIGINAL_PLACES = ["r2:body [decrypted]", "d1:originals.body [decrypted]"];

/** Places that hold both a document's chunk text and its original. */
function expectTextAndOriginal(places: string[], what: string) {
  expect(places, what).toContain("d1:chunks.text [decrypted]");
  expect(
    places.filter((p) => ORIGINAL_PLACES.includes(p)),
    `${what}: its original`,
  ).toHaveLength(1);
}

/** Opens an original as kept (sealed bytes from R2, or a sealed text row from D1). */
async function openOriginal(tenant: string, key: string, sealed: Uint8Array): Promise<string> {
  return key.startsWith("doc/")
    ? await keyring().decrypt(tenant, utf8.decode(sealed), key)
    : utf8.decode(await keyring().decryptBytes(tenant, sealed, key));
}

/** What the scan must see of a live job: text via decryption in D1 and R2, ids in every store. */
async function expectLiveJob(scan: Scan, jobId: string, docs: Doc[], what: string) {
  const all = describeHits(scan.hits);
  expect(scan.opaque, `${what}: sealed values the scan could not open`).toEqual([]);
  const textHits = scan.hits.filter((h) => docs.some((d) => d.words.includes(h.needle)));
  for (const d of docs)
    expectTextAndOriginal(
      placesOf(scan.hits.filter((h) => d.words.includes(h.needle))),
      `${what}: text of ${d.id}\n${all}`,
    );
  // Sealed at rest: the plaintext is never in a store as is.
  expect(
    textHits.filter((h) => h.via === "plain"),
    `${what}: plaintext at rest\n${all}`,
  ).toEqual([]);
  const jobPlaces = placesOf(scan.hits, jobId).join("\n");
  expect(jobPlaces, `${what}: job id in D1`).toMatch(/^d1:jobs\.id$/m);
  expect(jobPlaces, `${what}: job id in the vector index`).toMatch(
    /^do:LocalVectorIndex\(index:use-lite\)\.log\./m,
  );
  expect(jobPlaces, `${what}: job id on the Dispatcher`).toMatch(/^do:Dispatcher\(use-lite:0\)\./m);
  // Originals are kept under their content hash (documents with the same bytes share one), so
  // the job is found through its rows: each original they name is in R2.
  const originals = await originalsOf(jobId);
  expect(originals.length, `${what}: originals named by the job's documents`).toBeGreaterThan(0);
  for (const key of originals)
    expect(await storedOriginal(key), `${what}: original ${key} kept`).not.toBeNull();
}

/** Workers of the running test: closed after it, so a failed test leaves no worker holding tasks. */
const workersOpen: TestWorker[] = [];
async function worker(token?: string): Promise<TestWorker> {
  const w = await TestWorker.connect({}, token);
  workersOpen.push(w);
  return w;
}

afterEach(() => {
  vi.restoreAllMocks();
  for (const w of workersOpen.splice(0)) {
    try {
      w.ws.close();
    } catch {} // already closed by the test
  }
});

// ---------------------------------------------------------------------------------------------

describe("erasure leaves nothing behind", { timeout: 60_000 }, () => {
  it("DELETE /v1/jobs/{id} removes the job's text, ids and chunks from every store, and only that job", async () => {
    const a = await newTenant("jobdel");
    const hookBase = `http://127.0.0.1:9/erasure-hook-${crypto.randomUUID()}`;
    const received = fakeReceiver(hookBase);
    const docs = [doc("zebra"), doc("yak")];
    const keep = [doc("okapi")];
    const j = await submitJob(a.key, docs, { webhook: { url: `${hookBase}/job` } });
    const other = await submitJob(a.key, keep);
    expect(j.webhook?.secret).toMatch(/^whsec_/);
    const endpointId = j.webhook?.id as string;

    const w = await worker();
    const live = await call(`/v1/jobs/${j.id}/events?chunks=true`, { key: a.key });
    expect(live.status).toBe(200);
    const [events] = await Promise.all([
      readEvents(live),
      computeAll(w, [
        { id: j.id, key: a.key },
        { id: other.id, key: a.key },
      ]),
    ]);
    w.ws.close();
    expect(events.at(-1)?.event).toBe("completed");

    const chunks = await chunksOf(j.id, a.key);
    const chunkIds = chunks.map((c) => c.id);
    expect(chunkIds.length).toBe(j.chunks.total);
    expect(chunks.every((c) => c.status === "done")).toBe(true);
    expect(new Set(events.filter((e) => e.event === "chunk").map((e) => e.data.chunkId))).toEqual(
      new Set(chunkIds),
    );
    // The job's webhook got its terminal event: a delivery exists, with the job in its payload.
    const hub = webhookHub(env, a.tenant);
    const delivery = await poll("the job.completed delivery", async () => {
      const ds = await hub.deliveries(endpointId);
      const d = ds.find((x: Delivery) => x.eventType === "job.completed");
      if (d && d.status === "pending") await runDurableObjectAlarm(hub);
      return d?.status === "delivered" ? d : null;
    });
    expect(delivery.jobId).toBe(j.id);
    expect(received.some((r) => r.body.includes(j.id))).toBe(true);
    const sealedBefore = await env.DB.prepare(
      "SELECT id, text FROM chunks WHERE job_id = ? ORDER BY id",
    )
      .bind(j.id)
      .all<{ id: string; text: string }>();
    expect(sealedBefore.results.length).toBe(chunkIds.length);

    const needles = [...needlesOf(docs), j.id, endpointId, `${hookBase}/job`, ...chunkIds];
    const before = await scanEverything(needles, a.tenant);
    await expectLiveJob(before, j.id, docs, "before deletion");
    expect(placesOf(before.hits, j.id).join("\n"), "job id in the webhook hub").toMatch(
      /^do:WebhookHub\(tenant:[^)]+\)\.deliveries\.job_id$/m,
    );
    expect(placesOf(before.hits, endpointId), "the job's endpoint").toContain(
      `do:WebhookHub(tenant:${a.tenant}).endpoints.id`,
    );
    for (const id of chunkIds.slice(0, 3))
      expect(placesOf(before.hits, id), `chunk ${id}`).toEqual(
        expect.arrayContaining(["d1:chunks.id", "do:LocalVectorIndex(index:use-lite).log.ids"]),
      );
    console.log(
      `job deletion, before: ${before.hits.length} hits in\n  ${placesOf(before.hits).join("\n  ")}`,
    );

    expect((await call(`/v1/jobs/${j.id}`, { method: "DELETE", key: a.key })).status).toBe(204);

    const after = await scanEverything(needles, a.tenant);
    // The audit log is append-only and hash-chained: it names the job it records
    // (job.created, job.deleted) and is kept until the tenant is erased. Nothing else may.
    const audit = after.hits.filter(
      (h) => h.needle === j.id && h.where === `do:TenantLedger(${a.tenant}).audit.target`,
    );
    const rest = after.hits.filter((h) => !audit.includes(h));
    console.log(
      `job deletion, after: ${rest.length} hits outside the audit log; audit: ${audit.length}`,
    );
    expectNothing({ ...after, hits: rest }, "after DELETE /v1/jobs/{id}");
    const log = await ledger(env, a.tenant).list({ action: "job." });
    expect(log.data.filter((e) => e.target === j.id).map((e) => e.action)).toEqual([
      "job.created",
      "job.deleted",
    ]);
    expect(audit.length).toBe(2);
    // What the audit entries say about the job holds no text and no document id.
    expect(JSON.stringify(log.data)).not.toMatch(new RegExp(needlesOf(docs).join("|")));

    expect((await call(`/v1/jobs/${j.id}`, { key: a.key })).status).toBe(404);
    expect((await call(`/v1/jobs/${j.id}/events`, { key: a.key })).status).toBe(404);
    expect(await hub.deliveries(endpointId)).toEqual([]);
    expect(await getVectorIndex(env, MODEL).getByIds(chunkIds.slice(0, 20))).toEqual([]);
    // Crypto: the rows are gone, not just unreadable; the tenant's key still opens old copies.
    const copy = sealedBefore.results[0] as { id: string; text: string };
    expect(await keyring().decrypt(a.tenant, copy.text, copy.id)).toContain(docs[0]?.words[0]);

    // The other job of the same tenant is untouched.
    const kept = await getJob(other.id, a.key);
    expect(kept).toMatchObject({ status: "completed", chunks: { done: other.chunks.total } });
    const keptChunks = await chunksOf(other.id, a.key);
    expect(keptChunks.map((c) => c.text).join(" ")).toContain(keep[0]?.words[0]);
    expect((await getVectorIndex(env, MODEL).getByIds(keptChunks.map((c) => c.id))).length).toBe(
      keptChunks.length,
    );
    const otherScan = await scanEverything([...needlesOf(keep), other.id], a.tenant);
    await expectLiveJob(otherScan, other.id, keep, "the other job after the deletion");
  });

  it("DELETE /v1/jobs/{id}/documents/{documentId} removes that document only, everywhere", async () => {
    const a = await newTenant("docdel");
    const docs = [doc("gnu"), doc("ibex"), doc("lemur")];
    const [keepA, gone, keepB] = docs as [Doc, Doc, Doc];
    const j = await submitJob(a.key, docs);
    const w = await worker();
    await computeAll(w, [{ id: j.id, key: a.key }]);
    const chunks = await chunksOf(j.id, a.key);
    const goneChunks = chunks.filter((c) => c.documentId === gone.id).map((c) => c.id);
    expect(goneChunks.length).toBeGreaterThan(1);
    const jobBefore = await getJob(j.id, a.key);

    const needles = [...gone.words, ...goneChunks, gone.id];
    const before = await scanEverything(
      [...needles, j.id, ...keepA.words, ...keepB.words],
      a.tenant,
    );
    await expectLiveJob(before, j.id, docs, "before deleting the document");
    for (const id of goneChunks)
      expect(placesOf(before.hits, id), `chunk ${id}`).toEqual(
        expect.arrayContaining(["d1:chunks.id", "do:LocalVectorIndex(index:use-lite).log.ids"]),
      );
    console.log(
      `document deletion, before: ${before.hits.filter((h) => needles.includes(h.needle)).length} hits of the document in\n  ${placesOf(before.hits.filter((h) => needles.includes(h.needle))).join("\n  ")}`,
    );

    const del = await call(`/v1/jobs/${j.id}/documents/${encodeURIComponent(gone.id)}`, {
      method: "DELETE",
      key: a.key,
    });
    expect(del.status).toBe(204);

    const after = await scanEverything([...needles, ...keepA.words, ...keepB.words], a.tenant);
    // Nothing keeps the document id, the audit log included: its entry names the job and
    // holds only a hash of the document id.
    const goneHits = after.hits.filter((h) => needles.includes(h.needle));
    console.log(`document deletion, after: ${goneHits.length} hits of the document`);
    expectNothing({ ...after, hits: goneHits }, "after deleting the document");
    const digest = Array.from(
      new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(gone.id))),
      (b) => b.toString(16).padStart(2, "0"),
    ).join("");
    expect(
      (await ledger(env, a.tenant).list({ action: "document.deleted" })).data.map((e) => [
        e.target,
        e.details.documentSha256,
      ]),
    ).toEqual([[j.id, digest]]);
    // The other two documents are all still there, in D1 and in the (rewritten) raw object.
    for (const d of [keepA, keepB]) {
      expectTextAndOriginal(
        placesOf(after.hits.filter((h) => d.words.includes(h.needle))),
        `text of ${d.id}`,
      );
    }
    // Their originals are still kept; the deleted one's is gone.
    const kept = await originalsOf(j.id);
    expect(kept.length).toBe(2);
    const texts = [];
    for (const key of kept) {
      const sealed = await storedOriginal(key);
      expect(sealed).not.toBeNull();
      texts.push(await openOriginal(a.tenant, key, sealed as Uint8Array));
    }
    expect(texts.sort()).toEqual([keepA.text, keepB.text].sort());

    // Counters and listings follow.
    expect(await getJob(j.id, a.key)).toMatchObject({
      status: "completed",
      documents: 2,
      chunks: {
        total: jobBefore.chunks.total - goneChunks.length,
        done: jobBefore.chunks.done - goneChunks.length,
        failed: 0,
      },
    });
    const listed = (await chunksOf(j.id, a.key)).map((c) => c.id);
    expect(listed.filter((id) => goneChunks.includes(id))).toEqual([]);
    expect(listed.length).toBe(chunks.length - goneChunks.length);
    expect(await getVectorIndex(env, MODEL).getByIds(goneChunks)).toEqual([]);
    expect(
      (
        await call(`/v1/jobs/${j.id}/documents/${encodeURIComponent(gone.id)}`, {
          method: "DELETE",
          key: a.key,
        })
      ).status,
    ).toBe(404);

    // A running job's documents cannot be deleted.
    const running = await submitJob(a.key, [doc("tapir")]);
    w.ready(1);
    await w.next("task");
    expect((await getJob(running.id, a.key)).status).toBe("running");
    const runningDoc = (await chunksOf(running.id, a.key))[0]?.documentId as string;
    const refused = await call(`/v1/jobs/${running.id}/documents/${runningDoc}`, {
      method: "DELETE",
      key: a.key,
    });
    expect(refused.status).toBe(409);
    expect((await getJob(running.id, a.key)).documents).toBe(1);
    expect((await call(`/v1/jobs/${running.id}`, { method: "DELETE", key: a.key })).status).toBe(
      204,
    );
    w.ws.close();
  });

  it("DELETE /v1/tenant erases every job, key, webhook, audit entry and data key of the tenant", async () => {
    const a = await newTenant("erase-me");
    const hookBase = `http://127.0.0.1:9/erase-tenant-${crypto.randomUUID()}`;
    fakeReceiver(hookBase);
    const ep = await call("/v1/webhooks", {
      method: "POST",
      key: a.key,
      json: { url: `${hookBase}/all`, events: ["job.completed"] },
    });
    expect(ep.status).toBe(201);
    const endpoint = (await ep.json()) as { id: string; secret: string };
    const made = await call("/v1/keys", {
      method: "POST",
      key: a.key,
      json: { label: "erasure-extra", scopes: ["jobs:write", "jobs:read"] },
    });
    expect(made.status).toBe(201);
    const extra = (await made.json()) as { id: string; secret: string; prefix: string };
    const docs1 = [doc("quokka"), doc("wombat")];
    const docs2 = [doc("narwhal")];
    const j1 = await submitJob(a.key, docs1);
    const j2 = await submitJob(extra.secret, docs2);
    // Another tenant's job, to show erasure stays inside the tenant.
    const t1Docs = [doc("kept")];
    const t1Job = await submitJob(KEYS.api, t1Docs);
    const w = await worker();
    await computeAll(w, [
      { id: j1.id, key: a.key },
      { id: j2.id, key: a.key },
      { id: t1Job.id, key: KEYS.api },
    ]);
    w.ws.close();
    const chunkIds = [
      ...(await chunksOf(j1.id, a.key)).map((c) => c.id),
      ...(await chunksOf(j2.id, a.key)).map((c) => c.id),
    ];
    const audit = await call("/v1/audit", { key: a.key });
    expect(audit.status).toBe(200);
    const entries = ((await audit.json()) as { data: { action: string }[] }).data;
    expect(entries.map((e) => e.action)).toEqual(
      expect.arrayContaining(["webhook.created", "key.created", "job.created"]),
    );
    // The terminal events reached the tenant's endpoint.
    const hub = webhookHub(env, a.tenant);
    await poll("deliveries to the tenant's endpoint", async () => {
      const ds = await hub.deliveries(endpoint.id);
      return ds.filter((d) => d.eventType === "job.completed").length === 2;
    });
    // A sealed chunk text, as a backup of D1 would hold it.
    const copy = (await env.DB.prepare("SELECT id, text FROM chunks WHERE job_id = ? LIMIT 1")
      .bind(j1.id)
      .first<{ id: string; text: string }>()) as { id: string; text: string };
    expect(Keyring.isCiphertext(copy.text)).toBe(true);
    const rawCopyKey = (await originalsOf(j1.id))[0] as string;
    const rawCopy = (await storedOriginal(rawCopyKey)) as Uint8Array;
    expect(await keyring().decrypt(a.tenant, copy.text, copy.id)).toMatch(/quokka|wombat/);

    const needles = [
      ...needlesOf([...docs1, ...docs2]),
      j1.id,
      j2.id,
      ...chunkIds,
      a.tenant,
      a.credId,
      a.hash,
      extra.id,
      await sha256Hex(extra.secret),
      extra.prefix,
      endpoint.id,
      endpoint.secret,
      hookBase,
    ];
    const before = await scanEverything(needles, a.tenant);
    await expectLiveJob(before, j1.id, docs1, "before erasure (job 1)");
    await expectLiveJob(before, j2.id, docs2, "before erasure (job 2)");
    const tenantPlaces = placesOf(before.hits, a.tenant);
    expect(tenantPlaces, "the tenant's name").toEqual(
      expect.arrayContaining([
        "d1:credentials.tenant",
        "d1:jobs.tenant",
        "d1:tenant_keys.tenant",
        `do:TenantLedger(${a.tenant}).audit.tenant`,
        // The documents are short texts: their originals are rows of D1, keyed by tenant.
        "d1:originals.tenant",
        "d1:originals.key",
      ]),
    );
    expect(placesOf(before.hits, extra.id)).toEqual(
      expect.arrayContaining([
        "d1:credentials.id",
        "d1:jobs.created_by",
        `do:TenantLedger(${a.tenant}).audit.target`,
      ]),
    );
    expect(placesOf(before.hits, endpoint.id)).toContain(
      `do:WebhookHub(tenant:${a.tenant}).endpoints.id`,
    );
    expect(placesOf(before.hits, endpoint.secret)).toContain(
      `do:WebhookHub(tenant:${a.tenant}).endpoints.secret`,
    );
    // The KV side of the objects is read too (the ledger keeps its chain head there).
    expect(before.covered.kv).toContain(`do:TenantLedger(${a.tenant}).kv:audit:head`);
    console.log(
      `tenant erasure, before: ${before.hits.length} hits in\n  ${placesOf(before.hits).join("\n  ")}`,
    );

    // Confirmation must name the tenant.
    expect(
      (await call(`/v1/tenant?confirm=someone-else`, { method: "DELETE", key: a.key })).status,
    ).toBe(422);
    const erased = await call(`/v1/tenant?confirm=${a.tenant}`, { method: "DELETE", key: a.key });
    expect(erased.status).toBe(200);
    expect(await erased.json()).toEqual({ erased: a.tenant, jobs: 2 });

    const after = await scanEverything(needles, a.tenant);
    console.log(
      `tenant erasure, after: ${after.hits.length} hits; scanned D1 tables ${after.covered.d1Tables.join(", ")}; ${after.covered.r2Objects} R2 objects; objects ${after.covered.durableObjects.join(", ")}; unreadable: ${after.unreadable.join(", ") || "none"}`,
    );
    expectNothing(after, "after DELETE /v1/tenant");
    expect(
      (
        await env.DB.prepare("SELECT count(*) AS n FROM tenant_keys WHERE tenant = ?")
          .bind(a.tenant)
          .first<{ n: number }>()
      )?.n,
    ).toBe(0);
    // Its keys are dead (the route cleared this isolate's credential cache).
    for (const key of [a.key, extra.secret])
      expect((await call(`/v1/jobs/${j1.id}`, { key })).status).toBe(401);
    // Crypto-shredding: a copy of its ciphertext taken before erasure cannot be opened.
    await expect(keyring().decrypt(a.tenant, copy.text, copy.id)).rejects.toBeInstanceOf(
      DecryptError,
    );
    await expect(openOriginal(a.tenant, rawCopyKey, rawCopy)).rejects.toBeInstanceOf(DecryptError);
    // The ledger holds no audit entry, schedule, or (in memory) rate state of the tenant either.
    expect(await ledger(env, a.tenant).usage()).toEqual({ requestsLastMinute: {} });
    expect((await ledger(env, a.tenant).list()).data).toEqual([]);
    expect(await ledger(env, a.tenant).scheduledPurges()).toEqual([]);

    // t1 is untouched.
    const t1Scan = await scanEverything([...needlesOf(t1Docs), t1Job.id], "t1");
    await expectLiveJob(t1Scan, t1Job.id, t1Docs, "t1 after another tenant's erasure");
    expect(await getJob(t1Job.id, KEYS.api)).toMatchObject({ status: "completed" });
    expect((await chunksOf(t1Job.id, KEYS.api))[0]?.text).toContain("kept");
    // Clean up t1's job for the tests that follow.
    expect((await call(`/v1/jobs/${t1Job.id}`, { method: "DELETE" })).status).toBe(204);
  });

  it("a job that names no retention takes its tenant's policy as the job is made", async () => {
    const a = await newTenant("policy");
    const b = await newTenant("policy-other");
    expect((await submitJob(a.key, [doc("otter")])).retention).toEqual({ textDays: null });
    const put = await call("/v1/tenant/policy", {
      method: "PUT",
      key: a.key,
      json: { retention: { textDays: 7 } },
    });
    expect(put.status).toBe(200);
    const inherited = await submitJob(a.key, [doc("heron")]);
    expect(inherited.retention).toEqual({ textDays: 7 });
    expect((await getJob(inherited.id, a.key)).retention).toEqual({ textDays: 7 });
    // Its own choice wins, "keep" included; another tenant's policy is not this one's.
    const own = await submitJob(a.key, [doc("lynx")], { retention: { textDays: null } });
    expect(own.retention).toEqual({ textDays: null });
    expect((await submitJob(b.key, [doc("mole")])).retention).toEqual({ textDays: null });
  });

  it("retention: textDays 0 purges text on the ledger's alarm; vectors and the audit entry stay", async () => {
    const a = await newTenant("retain");
    const short = [doc("puffin"), doc("marmot")];
    const long = [doc("walrus")];
    const j0 = await submitJob(a.key, short, { retention: { textDays: 0 } });
    const j30 = await submitJob(a.key, long, { retention: { textDays: 30 } });
    expect(j0.retention).toEqual({ textDays: 0 });
    const w = await worker();
    await computeAll(w, [
      { id: j0.id, key: a.key },
      { id: j30.id, key: a.key },
    ]);
    const chunkIds = (await chunksOf(j0.id, a.key)).map((c) => c.id);
    const stub = ledger(env, a.tenant);
    const originals0 = await originalsOf(j0.id);

    // The notifier schedules each purge at the job's end. The 0-day one is due at once, so the
    // alarm may already have run it on its own; otherwise it is run here.
    const scheduled = await poll("the purges to be scheduled", async () => {
      const s = await stub.scheduledPurges();
      const purged = (await getJob(j0.id, a.key)).retention.textPurgedAt;
      return s.some((p) => p.jobId === j30.id) && (purged || s.some((p) => p.jobId === j0.id))
        ? s
        : null;
    });
    const completed30 = Date.parse((await getJob(j30.id, a.key)).completedAt as string);
    const due30 = scheduled.find((p) => p.jobId === j30.id)?.due as number;
    expect(Math.abs(due30 - (completed30 + 30 * 86_400_000))).toBeLessThan(5_000);
    const ranHere = await runDurableObjectAlarm(stub);
    const purgedAt = await poll("the text purge", async () => {
      return (await getJob(j0.id, a.key)).retention.textPurgedAt;
    });
    console.log(`retention: alarm run by the test: ${ranHere}; purged at ${purgedAt}`);

    const job0 = await getJob(j0.id, a.key);
    expect(job0).toMatchObject({ status: "completed", retention: { textDays: 0 } });
    const purgedChunks = await chunksOf(j0.id, a.key);
    expect(purgedChunks.map((c) => c.text)).toEqual(chunkIds.map(() => null));
    expect(await originalsOf(j0.id)).toEqual([]);
    for (const key of originals0) expect(await storedOriginal(key)).toBeNull();
    const scan = await scanEverything(
      [...needlesOf(long), j30.id, ...short.flatMap((d) => d.words)],
      a.tenant,
    );
    const shortHits = scan.hits.filter((h) => short.some((d) => d.words.includes(h.needle)));
    expectNothing({ ...scan, hits: shortHits }, "text after the retention purge");
    // Vectors stay: the chunks are still found by vector.
    expect((await getVectorIndex(env, MODEL).getByIds(chunkIds)).length).toBe(chunkIds.length);
    const search = call("/v1/search", {
      method: "POST",
      key: a.key,
      json: { query: "anything", topK: 50, filter: { jobId: j0.id } },
    });
    await w.answerEmbed(0, 1);
    const found = await search;
    expect(found.status).toBe(200);
    const results = ((await found.json()) as { results: { chunk: ChunkView }[] }).results;
    expect(results.map((r) => r.chunk.id).sort()).toEqual([...chunkIds].sort());
    expect(results.every((r) => r.chunk.text === null)).toBe(true);
    w.ws.close();
    // The purge is in the audit log, by the system.
    const log = await call("/v1/audit?action=text.purged", { key: a.key });
    expect(log.status).toBe(200);
    expect(((await log.json()) as { data: unknown[] }).data).toEqual([
      expect.objectContaining({ actor: "system", action: "text.purged", target: j0.id }),
    ]);

    // The 30-day job stays scheduled and keeps its text, though the alarm ran now.
    await runDurableObjectAlarm(stub);
    expect(await stub.scheduledPurges()).toEqual([{ jobId: j30.id, due: due30 }]);
    const job30 = await getJob(j30.id, a.key);
    expect(job30.retention).toEqual({ textDays: 30 });
    expect((await chunksOf(j30.id, a.key)).every((c) => c.text !== null)).toBe(true);
    for (const key of await originalsOf(j30.id)) expect(await storedOriginal(key)).not.toBeNull();
    await expectLiveJob(
      await scanEverything([...needlesOf(long), j30.id], a.tenant),
      j30.id,
      long,
      "the 30-day job after the alarm ran",
    );
  });

  it("a failed job's text, held by the coordinator for its failed tasks, goes with a document and with retention", async () => {
    const a = await newTenant("failed");
    const docs = [doc("heron"), doc("bison")];
    const [gone, kept] = docs as [Doc, Doc];
    const purgedDoc = doc("oriole");
    const purged = [purgedDoc];
    const kept1 = await submitJob(a.key, docs);
    const short = await submitJob(a.key, purged, { retention: { textDays: 0 } });
    // Every attempt fails, on five different donors: the jobs fail with their text unembedded.
    const shard = dispatcherAt(env, MODEL, 0);
    const ours = (sql: SqlStorage) =>
      sql
        .exec<{ id: string; errors: string; leases: number }>(
          "SELECT id, errors, (SELECT count(*) FROM leases WHERE task_id = tasks.id) AS leases FROM tasks WHERE job_id IN (?, ?)",
          kept1.id,
          short.id,
        )
        .toArray();
    const tag = crypto.randomUUID().slice(0, 8);
    for (let attempt = 1; attempt <= 5; attempt++) {
      // No wait for the retry backoff; the previous donor is gone and holds no lease.
      await runInDurableObject(shard, (_o, state) => {
        state.storage.sql.exec("UPDATE tasks SET not_before = 0");
      });
      const w = await worker(await workerToken(`erasure${tag}_${attempt}`));
      const donor = `cred_erasure${tag}_${attempt}_`;
      w.ready(2);
      // Fails whatever it is given until both tasks carry a failure of this donor.
      await poll(`donor ${attempt} to fail both tasks`, async () => {
        const t = await w.next("task", 200).catch(() => null);
        if (t)
          w.send({
            type: "task_failed",
            v: PROTOCOL_VERSION,
            taskId: t.taskId,
            leaseId: t.leaseId,
            error: { code: "oom", message: "out of memory", retryable: true },
          });
        const rows = await runInDurableObject(shard, (_o, state) => ours(state.storage.sql));
        return rows.length === 2 && rows.every((r) => r.errors.includes(donor));
      });
      w.ready(0);
      w.ws.close();
      await poll(`donor ${attempt} to let go`, async () => {
        const rows = await runInDurableObject(shard, (_o, state) => ours(state.storage.sql));
        return rows.every((r) => r.leases === 0);
      });
    }
    for (const j of [kept1, short])
      await poll(
        `job ${j.id} to fail`,
        async () => (await getJob(j.id, a.key)).status === "failed",
      );

    const goneChunks = (await chunksOf(kept1.id, a.key))
      .filter((c) => c.documentId === gone.id)
      .map((c) => c.id);
    const needles = [...gone.words, ...goneChunks, ...purgedDoc.words];
    const before = await scanEverything([...needles, ...kept.words], a.tenant);
    const places = placesOf(before.hits.filter((h) => gone.words.includes(h.needle)));
    console.log(`failed job, before: text of the failed document in\n  ${places.join("\n  ")}`);
    expectTextAndOriginal(places, "the failed document");
    // The coordinator holds it too, sealed in its failed task's blocks.
    expect(places).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^do:Dispatcher\(.+\)\.task_blocks\.text \[decrypted\]$/),
      ]),
    );

    const del = await call(`/v1/jobs/${kept1.id}/documents/${encodeURIComponent(gone.id)}`, {
      method: "DELETE",
      key: a.key,
    });
    expect(del.status).toBe(204);
    // The 0-day job's purge: scheduled at its end, run by its alarm (here, or already).
    await runDurableObjectAlarm(ledger(env, a.tenant));
    await poll(
      "the text purge",
      async () => (await getJob(short.id, a.key)).retention.textPurgedAt,
    );

    const after = await scanEverything([...needles, ...kept.words], a.tenant);
    const left = after.hits.filter((h) => needles.includes(h.needle));
    console.log(`failed job, after: ${left.length} hits of the deleted document and purged text`);
    expectNothing(
      { ...after, hits: left },
      "after deleting a failed job's document and purging text",
    );
    // The document that stays keeps its text.
    expectTextAndOriginal(
      placesOf(after.hits.filter((h) => kept.words.includes(h.needle))),
      "the document that stays",
    );
  });
});
