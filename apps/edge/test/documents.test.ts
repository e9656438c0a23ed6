import { env } from "cloudflare:test";
import { afterEach, describe, expect, it, vi } from "vitest";
import { Dispatcher } from "../src/dispatch/dispatcher.js";
import { getVectorIndex } from "../src/vector/index.js";
import {
  call,
  errorOf,
  KEYS,
  originalsOf,
  storedOriginal,
  TestWorker,
  workerToken,
} from "./helpers.js";

/**
 * Documents as data, on the API and the coordinator in workerd with scripted workers: versions
 * by id, unchanged documents, the embedding cache, NDJSON streams, file uploads, open jobs,
 * listings and deletion.
 */

interface JobView {
  id: string;
  status: string;
  documents: number;
  documentsUnchanged: number;
  accepting: boolean;
  chunks: { total: number; done: number; failed: number; cached: number };
  ingest?: {
    accepted: number;
    unchanged: number;
    rejected: number;
    rejections: { line?: number; file?: string; id?: string; code: string; message: string }[];
  };
}

interface VersionView {
  version: number;
  state: string;
  jobId: string;
  chunks: number;
  contentHash: string | null;
  original: boolean;
}

interface DocumentView {
  id: string;
  collection: string;
  status: string;
  metadata: Record<string, unknown>;
  current: VersionView | null;
  pending: VersionView | null;
  versions: VersionView[];
}

const uid = () => crypto.randomUUID().slice(0, 8);

/** Waits for a condition the coordinator reaches in the background. */
async function until(ok: () => Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error("condition not reached in time");
    await new Promise((r) => setTimeout(r, 50));
  }
}
const open: TestWorker[] = [];

afterEach(() => {
  for (const w of open.splice(0)) w.ws.close();
});

async function worker(): Promise<TestWorker> {
  const w = await TestWorker.connect();
  open.push(w);
  return w;
}

async function post(json: unknown, key: string = KEYS.api): Promise<JobView> {
  const res = await call("/v1/jobs", { method: "POST", key, json });
  expect(res.status, await res.clone().text()).toBe(202);
  return (await res.json()) as JobView;
}

async function getJob(id: string): Promise<JobView> {
  return (await (await call(`/v1/jobs/${id}`)).json()) as JobView;
}

async function getDocument(id: string, collection: string): Promise<DocumentView> {
  const res = await call(`/v1/documents/${encodeURIComponent(id)}?collection=${collection}`);
  expect(res.status, await res.clone().text()).toBe(200);
  return (await res.json()) as DocumentView;
}

/** Answers tasks until the job has ended; returns how many tasks the worker computed. */
async function computeAll(w: TestWorker, jobId: string): Promise<number> {
  let tasks = 0;
  w.ready(8);
  for (;;) {
    const j = await getJob(jobId);
    if (j.status !== "queued" && j.status !== "running") return tasks;
    const t = await w.next("task", 5000).catch(() => null);
    if (!t) continue;
    w.send(w.resultFor(t));
    await w.next("ack");
    tasks++;
  }
}

async function chunkIdsOf(jobId: string): Promise<string[]> {
  const page = (await (await call(`/v1/jobs/${jobId}/chunks?limit=1000`)).json()) as {
    data: { id: string }[];
  };
  return page.data.map((c) => c.id);
}

const paragraph = (topic: string, n = 3) =>
  Array.from(
    { length: n },
    (_, i) => `Paragraph ${i} on ${topic}: ${"a sentence that says something of it. ".repeat(30)}`,
  ).join("\n\n");

describe("versions by document id", () => {
  it("keeps one current version: a new one is pending until all its chunks are stored, then replaces the old in one step", async () => {
    const collection = `versions-${uid()}`;
    const w = await worker();
    const v1 = await post({
      collection,
      documents: [{ id: "guide/intro.md", text: paragraph("lighthouses") }],
    });
    // A first version has nothing to replace: it is current from the start, being indexed.
    expect((await getDocument("guide/intro.md", collection)).status).toBe("indexing");
    expect(await computeAll(w, v1.id)).toBeGreaterThan(0);
    let doc = await getDocument("guide/intro.md", collection);
    expect(doc).toMatchObject({ status: "ready", pending: null, current: { version: 1 } });
    const v1Chunks = await chunkIdsOf(v1.id);

    const v2 = await post({
      collection,
      // Long enough for several tasks, so part of it can be stored before the rest.
      documents: [{ id: "guide/intro.md", text: paragraph("glaciers", 60) }],
    });
    expect((await getJob(v2.id)).chunks.total).toBeGreaterThan(32);
    doc = await getDocument("guide/intro.md", collection);
    expect(doc).toMatchObject({
      status: "indexing",
      current: { version: 1, jobId: v1.id, state: "current" },
      pending: { version: 2, jobId: v2.id, state: "pending" },
    });
    // Half of the new version stored: the old one is still the current one.
    w.ready(1);
    const t = await w.next("task");
    w.send(w.resultFor(t));
    await w.next("ack");
    doc = await getDocument("guide/intro.md", collection);
    expect(doc.current?.jobId).toBe(v1.id);
    expect(doc.pending?.jobId).toBe(v2.id);
    // Its stored chunks' vectors wait on the coordinator: in the index they would only crowd
    // the current version out of the nearest matches.
    const index = getVectorIndex(env, "use-lite");
    const v2Chunks = await chunkIdsOf(v2.id);
    // (A task's chunks and their copies, the same text elsewhere in the document.)
    expect((await getJob(v2.id)).chunks.done).toBeGreaterThanOrEqual((t.items as unknown[]).length);
    for (let i = 0; i < v2Chunks.length; i += 20)
      expect(await index.getByIds(v2Chunks.slice(i, i + 20))).toEqual([]);
    expect((await index.getByIds(v1Chunks.slice(0, 20))).length).toBe(
      Math.min(20, v1Chunks.length),
    );

    await computeAll(w, v2.id);
    doc = await getDocument("guide/intro.md", collection);
    expect(doc.status).toBe("ready");
    expect(doc.current).toMatchObject({ version: 2, jobId: v2.id });
    expect(doc.pending).toBeNull();
    // Current with all its vectors in the index.
    for (let i = 0; i < v2Chunks.length; i += 20)
      expect((await index.getByIds(v2Chunks.slice(i, i + 20))).length).toBe(
        Math.min(20, v2Chunks.length - i),
      );
    // The old version's chunks, vectors and original go (in the background, soon after).
    await until(async () => (await chunkIdsOf(v1.id)).length === 0);
    doc = await getDocument("guide/intro.md", collection);
    expect(doc.versions.map((v) => [v.version, v.state, v.chunks])).toEqual([
      [2, "current", (await getJob(v2.id)).chunks.total],
      [1, "superseded", 0],
    ]);
    expect(await index.getByIds(v1Chunks.slice(0, 20))).toEqual([]);
    expect(await originalsOf(v1.id)).toEqual([]);
    const [kept] = await originalsOf(v2.id);
    expect(kept && (await storedOriginal(kept))).toBeTruthy();
    // The original comes back as it was sent.
    const original = await call(
      `/v1/documents/${encodeURIComponent("guide/intro.md")}/original?collection=${collection}`,
    );
    expect(original.status).toBe(200);
    expect(await original.text()).toBe(paragraph("glaciers", 60));
  });

  it("holds a replacing version's vectors when a retried submit hands its work to the coordinator", async () => {
    const collection = `retried-${uid()}`;
    const w = await worker();
    const v1 = await post({ collection, documents: [{ id: "faq", text: paragraph("tides") }] });
    await computeAll(w, v1.id);
    // The first try sends its tasks, writes the job and its pending version, then finds the
    // coordinator down when it confirms the job written: the tasks wait there, unconfirmed.
    const json = { collection, documents: [{ id: "faq", text: paragraph("harbours", 60) }] };
    const headers = { "Idempotency-Key": `retry-${uid()}` };
    const down = vi
      .spyOn(Dispatcher.prototype, "confirm")
      .mockRejectedValueOnce(new Error("coordinator unavailable"));
    const first = await call("/v1/jobs", { method: "POST", json, headers });
    down.mockRestore();
    expect(first.status).toBe(503);
    const retried = await call("/v1/jobs", { method: "POST", json, headers });
    expect(retried.status).toBe(202);
    expect(retried.headers.get("Idempotent-Replayed")).toBe("true");
    const v2 = (await retried.json()) as JobView;
    expect((await getDocument("faq", collection)).pending?.jobId).toBe(v2.id);
    // Part of the new version stored: its vectors wait for the rest, as on a first try.
    w.ready(1);
    const t = await w.next("task");
    w.send(w.resultFor(t));
    await w.next("ack");
    const index = getVectorIndex(env, "use-lite");
    const v2Chunks = await chunkIdsOf(v2.id);
    for (let i = 0; i < v2Chunks.length; i += 20)
      expect(await index.getByIds(v2Chunks.slice(i, i + 20))).toEqual([]);
    await computeAll(w, v2.id);
    const doc = await getDocument("faq", collection);
    expect(doc).toMatchObject({ status: "ready", pending: null, current: { version: 2 } });
    for (let i = 0; i < v2Chunks.length; i += 20)
      expect((await index.getByIds(v2Chunks.slice(i, i + 20))).length).toBe(
        Math.min(20, v2Chunks.length - i),
      );
    // With the language the first try found after its tasks went out, read back from D1.
    const [last] = await index.getByIds(v2Chunks.slice(-1));
    expect(last?.metadata).toMatchObject({ collection, documentId: "faq", lang: "en" });
  });

  it("skips documents sent again unchanged, and computes only those that changed", async () => {
    const collection = `unchanged-${uid()}`;
    const w = await worker();
    const docs = Array.from({ length: 6 }, (_, i) => ({
      id: `note-${i}`,
      text: `Note ${i}: ${uid()} the tide tables for the harbour this week.`,
      metadata: { n: i },
    }));
    const first = await post({ collection, documents: docs });
    await computeAll(w, first.id);

    const again = await post({ collection, documents: docs });
    expect(again).toMatchObject({
      status: "completed",
      documents: 6,
      documentsUnchanged: 6,
      chunks: { total: 0 },
      ingest: { accepted: 6, unchanged: 6, rejected: 0 },
    });
    // Nothing reached the worker for it.
    w.ready(8);
    await expect(w.next("task", 500)).rejects.toThrow();

    // Metadata counts as a change, as text does; the other documents stay skipped.
    const changed = docs.map((d, i) =>
      i === 0 ? { ...d, text: `${d.text} Revised.` } : i === 1 ? { ...d, metadata: { n: 99 } } : d,
    );
    const third = await post({ collection, documents: changed });
    expect(third).toMatchObject({ documentsUnchanged: 4, documents: 6 });
    expect(third.chunks.total).toBe(2);
    expect(await computeAll(w, third.id)).toBe(1);
    // (Too short for its language to be told: no `lang` is guessed.)
    expect((await getDocument("note-1", collection)).metadata).toEqual({ n: 99 });
    // The same names in another collection are other documents.
    const elsewhere = await post({ collection: `${collection}-b`, documents: docs });
    expect(elsewhere.documentsUnchanged).toBe(0);
  });

  it("keeps each document's detected language as metadata.lang, unless the document names one", async () => {
    const collection = `lang-${uid()}`;
    const french =
      "Il pleut depuis trois jours et la rivière a débordé sur la route du vieux moulin, disent les voisins.";
    await post({
      collection,
      documents: [
        { id: "en", text: paragraph("tides") },
        { id: "fr", text: french, metadata: { n: 1 } },
        { id: "given", text: french, metadata: { lang: "de" } },
        { id: "unset", text: french, metadata: { lang: null } },
        { id: "short", text: "A short note." },
      ],
    });
    expect((await getDocument("en", collection)).metadata).toEqual({ lang: "en" });
    expect((await getDocument("fr", collection)).metadata).toEqual({ n: 1, lang: "fr" });
    expect((await getDocument("given", collection)).metadata).toEqual({ lang: "de" });
    expect((await getDocument("unset", collection)).metadata).toEqual({ lang: null });
    expect((await getDocument("short", collection)).metadata).toEqual({});
  });

  it("lets a newer submission supersede a version still pending", async () => {
    const collection = `race-${uid()}`;
    const w = await worker();
    const v1 = await post({ collection, documents: [{ id: "d", text: paragraph("one") }] });
    await computeAll(w, v1.id);
    const v2 = await post({ collection, documents: [{ id: "d", text: paragraph("two") }] });
    const v3 = await post({ collection, documents: [{ id: "d", text: paragraph("three") }] });
    // v2 never becomes current, even when its chunks are stored after v3 was submitted.
    await computeAll(w, v2.id);
    let doc = await getDocument("d", collection);
    expect(doc.current?.jobId).toBe(v1.id);
    expect(doc.pending?.jobId).toBe(v3.id);
    await computeAll(w, v3.id);
    doc = await getDocument("d", collection);
    expect(doc.current?.jobId).toBe(v3.id);
    expect(doc.versions.map((v) => v.state)).toEqual(["current", "superseded", "superseded"]);
    await until(async () => (await chunkIdsOf(v2.id)).length === 0);
  });
});

describe("originals", () => {
  it("keeps each small text's sealed original with its version, one R2 object per long content, and none when the job says not to", async () => {
    const collection = `originals-${uid()}`;
    const text = `Shared ${uid()} content in two documents.`;
    // Normalising changes it (line ends), and this one is cut into chunks: both keep their own.
    const crlf = `Sent ${uid()} with Windows\r\nline ends.`;
    const several = Array.from({ length: 4 }, (_, i) => paragraph(`part ${i}`, 1)).join("\n\n");
    const kept = await post({
      collection,
      documents: [
        { id: "one", text },
        { id: "two", text },
        { id: "crlf", text: crlf },
        { id: "several", text: several },
      ],
    });
    // A short text that is its own only chunk as sent is read back from that chunk: nothing
    // else is kept. Any other short text's original is a sealed row in D1, each version's own.
    const keys = await originalsOf(kept.id);
    expect(keys).toEqual([
      `doc/t1/${kept.id}/0/chunk`,
      `doc/t1/${kept.id}/1/chunk`,
      `doc/t1/${kept.id}/2`,
      `doc/t1/${kept.id}/3`,
    ]);
    expect((await chunkIdsOf(kept.id)).length).toBeGreaterThan(4);
    for (const key of keys.slice(0, 2)) expect(await storedOriginal(key)).toBeNull();
    for (const key of keys.slice(2)) {
      const sealed = new TextDecoder().decode((await storedOriginal(key)) as Uint8Array);
      expect(sealed.startsWith("p2pa1.")).toBe(true);
      expect(sealed).not.toContain("Windows");
      expect(sealed).not.toContain("part 1");
    }

    // A text over 8 KiB is an R2 object named by its content: two documents, one object,
    // kept until neither names it.
    const long = `Long ${uid()} ${"a paragraph of words that goes on ".repeat(300)}`;
    const big = await post({
      collection,
      documents: [
        { id: "long", text: long },
        { id: "long-copy", text: long },
      ],
    });
    const [bigKey, ...others] = await originalsOf(big.id);
    expect(others).toEqual([]);
    expect(bigKey).toMatch(/^raw\//);
    expect(await env.RAW.head(bigKey as string)).not.toBeNull();
    for (const [id, want] of [
      ["one", text],
      ["crlf", crlf],
      ["several", several],
      ["long", long],
    ] as const) {
      const res = await call(`/v1/documents/${id}/original?collection=${collection}`);
      expect(res.status).toBe(200);
      expect(res.headers.get("Content-Type")).toBe("text/plain; charset=utf-8");
      expect(await res.text()).toBe(want);
    }
    // Deleting a document deletes its own original, and a shared one with the last that names it.
    for (const job of [kept, big])
      expect((await call(`/v1/jobs/${job.id}/cancel`, { method: "POST" })).status).toBe(200);
    const drop = async (id: string) =>
      expect(
        (await call(`/v1/documents/${id}?collection=${collection}`, { method: "DELETE" })).status,
      ).toBe(204);
    await drop("long-copy");
    expect(await env.RAW.head(bigKey as string)).not.toBeNull();
    await drop("long");
    expect(await env.RAW.head(bigKey as string)).toBeNull();
    const original = (id: string) => call(`/v1/documents/${id}/original?collection=${collection}`);
    await drop("two");
    expect((await original("two")).status).toBe(404);
    expect(await (await original("one")).text()).toBe(text);
    await drop("crlf");
    expect(await storedOriginal(keys[2] as string)).toBeNull();
    expect(await storedOriginal(keys[3] as string)).not.toBeNull();

    const none = await post({
      collection,
      keepOriginals: false,
      documents: [{ id: "three", text: `Not ${uid()} kept.` }],
    });
    expect(await originalsOf(none.id)).toEqual([]);
    expect(await getJob(none.id)).toMatchObject({ keepOriginals: false });
    const res = await call(`/v1/documents/three/original?collection=${collection}`);
    expect(await errorOf(res)).toMatchObject({ status: 404 });
  });
});

describe("embedding cache", () => {
  /** Answers tasks on two donors until the job has ended (every result confirmed by both). */
  async function computeConfirmed(jobId: string): Promise<void> {
    const a = await worker();
    const b = await TestWorker.connect({}, await workerToken(`c-${uid()}`));
    open.push(b);
    a.ready(4);
    b.ready(4);
    for (;;) {
      const j = await getJob(jobId);
      if (j.status !== "queued" && j.status !== "running") return;
      for (const w of [a, b]) {
        const t = await w.next("task", 300).catch(() => null);
        if (!t) continue;
        w.send(w.resultFor(t));
        await w.next("ack");
      }
    }
  }

  it("serves vectors two donors agreed on for the same text, per tenant, and forgets them with their job", async () => {
    const text = `The cache ${uid()} knows this sentence already, and the one that follows it in the same line.`;
    const first = await post({
      verification: "always",
      cache: true,
      documents: [{ text }, { text: `${text} Twice.` }],
    });
    expect(first.chunks.cached).toBe(0);
    await computeConfirmed(first.id);
    const [a] = await chunkIdsOf(first.id);

    const hit = await post({ cache: true, documents: [{ text }] });
    expect(hit).toMatchObject({ status: "completed", chunks: { total: 1, done: 1, cached: 1 } });
    const [b] = await chunkIdsOf(hit.id);
    const index = getVectorIndex(env, "use-lite");
    const [va] = await index.getByIds([a as string]);
    const [vb] = await index.getByIds([b as string]);
    expect(Array.from(vb?.values ?? [])).toEqual(Array.from(va?.values ?? []));
    // With the metadata of its own job's document, its language found as for any other.
    expect(vb?.metadata).toMatchObject({ jobId: hit.id, tenant: "t1", lang: "en" });

    // Off for one job: computed again. Another tenant's text is never served from t1's cache.
    expect((await post({ cache: false, documents: [{ text }] })).chunks.cached).toBe(0);
    expect((await post({ cache: true, documents: [{ text }] }, KEYS.other)).chunks.cached).toBe(0);

    // The entry moved to the job that used it last: deleting the first job keeps it, and
    // deleting the job that holds it now takes it away.
    expect((await call(`/v1/jobs/${first.id}`, { method: "DELETE" })).status).toBe(204);
    const again = await post({ cache: true, documents: [{ text }] });
    expect(again.chunks.cached).toBe(1);
    const holder = await env.DB.prepare(
      "SELECT job_id AS j FROM embedding_cache WHERE tenant = 't1' AND job_id IN (?, ?)",
    )
      .bind(hit.id, again.id)
      .all<{ j: string }>();
    expect(holder.results.map((r) => r.j)).toEqual([again.id]);
    expect((await call(`/v1/jobs/${again.id}`, { method: "DELETE" })).status).toBe(204);
    expect((await post({ cache: true, documents: [{ text }] })).chunks.cached).toBe(0);
  });

  it("caches no result that only one donor vouched for", async () => {
    const w = await worker();
    for (const verification of ["off", "auto"]) {
      const text = `Unconfirmed ${uid()} results stay out of the cache.`;
      const j = await post({ verification, documents: [{ text }] });
      // One donor connected: auto stores its result on its own word, unconfirmed.
      await computeAll(w, j.id);
      expect((await post({ cache: true, documents: [{ text }] })).chunks.cached).toBe(0);
    }
  });

  it("computes a text repeated within one job once", async () => {
    const w = await worker();
    const text = `Boilerplate ${uid()}: all rights reserved.`;
    const j = await post({ documents: [{ text }, { text }, { text }] });
    expect(j.chunks.total).toBe(3);
    w.ready(4);
    const t = await w.next("task");
    expect((t.items as unknown[]).length).toBe(1);
    w.send(w.resultFor(t));
    await w.next("ack");
    expect(await getJob(j.id)).toMatchObject({ status: "completed", chunks: { done: 3 } });
  });
});

describe("NDJSON streams", () => {
  it("takes the good lines, reports the bad ones by line, and applies the header line's options", async () => {
    const collection = `stream-${uid()}`;
    const lines = [
      JSON.stringify({ job: { collection } }),
      JSON.stringify({ id: "s-1", text: "The first streamed document." }),
      "{not json",
      JSON.stringify({ id: "s-2", text: "The second streamed document.", metadata: { k: 1 } }),
      JSON.stringify({ id: "s-3" }),
      "",
      JSON.stringify({ id: "s-1", text: "The same id again in one stream." }),
      JSON.stringify({ text: "An anonymous document at the end." }),
    ];
    const res = await call("/v1/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/x-ndjson" },
      body: `${lines.join("\n")}\n`,
    });
    expect(res.status, await res.clone().text()).toBe(202);
    const job = (await res.json()) as JobView & { collection: string };
    expect(job.collection).toBe(collection);
    expect(job.ingest).toMatchObject({ accepted: 3, unchanged: 0, rejected: 3 });
    expect(job.ingest?.rejections.map((r) => [r.line, r.code])).toEqual([
      [3, "invalid_json"],
      [5, "validation_failed"],
      [7, "duplicate"],
    ]);
    expect(job).toMatchObject({ documents: 3, accepting: false });
    expect((await getDocument("s-2", collection)).metadata).toEqual({ k: 1 });
  });

  it("answers 422 when no line is a document, and creates no job", async () => {
    const before = (await (await call("/v1/jobs?limit=100")).json()) as { data: unknown[] };
    const res = await call("/v1/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/x-ndjson" },
      body: "nope\n{}\n",
    });
    expect((await errorOf(res)).status).toBe(422);
    const after = (await (await call("/v1/jobs?limit=100")).json()) as { data: unknown[] };
    expect(after.data.length).toBe(before.data.length);
    const badHeader = await call("/v1/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/x-ndjson" },
      body: `${JSON.stringify({ job: { collection: "Not A Name" } })}\n{"text":"x"}\n`,
    });
    expect(await errorOf(badHeader)).toMatchObject({ status: 422 });
  });
});

describe("open jobs", () => {
  it("takes documents until closed, and completes only then", async () => {
    const w = await worker();
    const job = await post({ open: true, documents: [{ text: `Open ${uid()} first.` }] });
    expect(job.accepting).toBe(true);
    // Its one task is done, yet the job waits for more.
    w.ready(1);
    const t = await w.next("task");
    w.send(w.resultFor(t));
    await w.next("ack");
    expect(await getJob(job.id)).toMatchObject({ status: "running", accepting: true });

    const json = await call(`/v1/jobs/${job.id}/documents`, {
      method: "POST",
      json: { documents: [{ text: `Open ${uid()} second.` }] },
    });
    expect(json.status).toBe(202);
    const nd = await call(`/v1/jobs/${job.id}/documents`, {
      method: "POST",
      headers: { "Content-Type": "application/x-ndjson" },
      body: `${JSON.stringify({ text: `Open ${uid()} third.` })}\n`,
    });
    expect(((await nd.json()) as JobView).ingest?.accepted).toBe(1);
    // An append none of whose lines is a document is refused whole, naming the lines.
    const bad = await call(`/v1/jobs/${job.id}/documents`, {
      method: "POST",
      headers: { "Content-Type": "application/x-ndjson" },
      body: '{"text":""}\nnot json\n',
    });
    const refused = await errorOf(bad);
    expect(refused).toMatchObject({ status: 422, details: { rejected: 2 } });
    expect((await getJob(job.id)).documents).toBe(3);
    const closed = await call(`/v1/jobs/${job.id}/close`, { method: "POST", json: {} });
    expect(closed.status).toBe(200);
    expect(((await closed.json()) as JobView).accepting).toBe(false);
    await computeAll(w, job.id);
    expect(await getJob(job.id)).toMatchObject({
      status: "completed",
      documents: 3,
      chunks: { done: 3 },
    });
    const late = await call(`/v1/jobs/${job.id}/documents`, {
      method: "POST",
      json: { documents: [{ text: "too late" }] },
    });
    expect(await errorOf(late)).toMatchObject({ status: 409, code: "conflict" });
    expect(
      (await errorOf(await call(`/v1/jobs/${job.id}/close`, { method: "POST", json: {} }))).status,
    ).toBe(409);
  });
});

describe("a job that ends with chunks not done", () => {
  it("leaves its first versions failed, and sending them again computes only what is missing", async () => {
    const collection = `cut-${uid()}`;
    const w = await worker();
    const documents = Array.from({ length: 40 }, (_, i) => ({
      id: `d-${i}`,
      text: `Sentence ${i} of a job ${uid()} cut short.`,
    }));
    const first = await post({ collection, documents });
    // One task of the first 32 chunks is computed, then the job is cancelled.
    w.ready(1);
    const t = await w.next("task");
    w.send(w.resultFor(t));
    await w.next("ack");
    expect((await call(`/v1/jobs/${first.id}/cancel`, { method: "POST" })).status).toBe(200);
    const listed = async (status: string) =>
      (
        (await (
          await call(`/v1/documents?collection=${collection}&status=${status}&limit=100`)
        ).json()) as { data: { id: string }[] }
      ).data.map((d) => d.id);
    const done = (t.items as unknown[]).length;
    expect(done).toBeLessThan(40);
    const [ready, failed] = [await listed("ready"), await listed("failed")];
    expect([ready.length, failed.length]).toEqual([done, 40 - done]);
    const cut = failed[0] as string;
    expect((await getDocument(cut, collection)).status).toBe("failed");
    expect((await getDocument(ready[0] as string, collection)).status).toBe("ready");

    // The same documents again: the whole ones are unchanged, the others computed again.
    const again = await post({ collection, documents });
    expect(again.documentsUnchanged).toBe(done);
    expect(again.chunks.total).toBe(40 - done);
    await computeAll(w, again.id);
    expect(await listed("ready")).toHaveLength(40);
    const doc = await getDocument(cut, collection);
    expect(doc).toMatchObject({ status: "ready", current: { version: 2, jobId: again.id } });
  });
});

describe("a document whose current version's job is deleted", () => {
  it("has no current version, says so, and numbers its next version after the ones it keeps", async () => {
    const collection = `renumber-${uid()}`;
    const w = await worker();
    const v1 = await post({ collection, documents: [{ id: "x", text: `First ${uid()}.` }] });
    await computeAll(w, v1.id);
    const v2 = await post({ collection, documents: [{ id: "x", text: `Second ${uid()}.` }] });
    await computeAll(w, v2.id);
    expect((await getDocument("x", collection)).current).toMatchObject({ version: 2 });
    expect((await call(`/v1/jobs/${v2.id}`, { method: "DELETE" })).status).toBe(204);
    const gone = await getDocument("x", collection);
    expect(gone).toMatchObject({ status: "failed", current: null, pending: null });
    const original = await errorOf(await call(`/v1/documents/x/original?collection=${collection}`));
    expect(original).toMatchObject({ status: 404 });
    expect(original.message).toMatch(/has no current version/);

    const v3 = await post({ collection, documents: [{ id: "x", text: `Third ${uid()}.` }] });
    await computeAll(w, v3.id);
    // The deleted job took version 2 with it; the superseded version 1 is still listed.
    const doc = await getDocument("x", collection);
    expect(doc.current).toMatchObject({ version: 2, jobId: v3.id });
    expect(doc.versions.map((v) => [v.version, v.state])).toEqual([
      [2, "current"],
      [1, "superseded"],
    ]);
  });
});

describe("a job stopped while a stream is adding to it", () => {
  it("says it was cancelled, or deleted, and keeps what it took before", async () => {
    for (const stop of ["cancel", "delete"] as const) {
      const job = await post({ open: true, documents: [{ text: `Open ${uid()}.` }] });
      const { readable, writable } = new TransformStream<Uint8Array, Uint8Array>();
      const writer = writable.getWriter();
      const lines = (from: number, n: number) =>
        new TextEncoder().encode(
          Array.from({ length: n }, (_, i) => `{"text":"Line ${from + i} ${uid()}."}\n`).join(""),
        );
      const answer = call(`/v1/jobs/${job.id}/documents`, {
        method: "POST",
        headers: { "Content-Type": "application/x-ndjson" },
        body: readable,
      });
      // The first batch of 500 is taken; then the job is stopped; then the rest arrives.
      await writer.write(lines(0, 600));
      await until(async () => (await getJob(job.id)).documents === 501);
      const stopped =
        stop === "cancel"
          ? await call(`/v1/jobs/${job.id}/cancel`, { method: "POST" })
          : await call(`/v1/jobs/${job.id}`, { method: "DELETE" });
      expect(stopped.ok).toBe(true);
      await writer.write(lines(600, 500));
      await writer.close();
      const e = await errorOf(await answer);
      if (stop === "cancel") {
        expect(e).toMatchObject({ status: 409, code: "conflict" });
        expect(e.message).toMatch(/was cancelled\) \(job \S+ keeps the 500 documents/);
        expect((await getJob(job.id)).documents).toBe(501);
      } else {
        expect(e).toMatchObject({ status: 404, message: `job ${job.id} was deleted` });
      }
    }
  });
});

describe("appends at the same moment", () => {
  it("gives each request seqs of its own, and keeps the job open when an append is refused", async () => {
    const collection = `appends-${uid()}`;
    const job = await post({ collection, open: true, documents: [{ id: "first", text: "One." }] });
    const batch = (tag: string) =>
      Array.from({ length: 20 }, (_, i) => ({ id: `${tag}-${i}`, text: `${tag} ${uid()} ${i}.` }));
    const append = (init: Parameters<typeof call>[1]) =>
      call(`/v1/jobs/${job.id}/documents`, { method: "POST", ...init });
    const answers = await Promise.all([
      append({ json: { documents: batch("a") } }),
      append({ json: { documents: batch("b") } }),
      append({
        headers: { "Content-Type": "application/x-ndjson" },
        body: `${batch("c")
          .map((d) => JSON.stringify(d))
          .join("\n")}\n`,
      }),
    ]);
    for (const a of answers) {
      expect(a.status, await a.clone().text()).toBe(202);
      expect(((await a.json()) as JobView).ingest?.accepted).toBe(20);
    }
    expect(await getJob(job.id)).toMatchObject({ accepting: true, documents: 61 });
    expect(new Set(await chunkIdsOf(job.id)).size).toBe(61);
    for (const tag of ["a", "b", "c"])
      expect((await getDocument(`${tag}-19`, collection)).current?.jobId).toBe(job.id);

    // An append the coordinator has no room for is refused; the job stays open for the next.
    const full = vi.spyOn(Dispatcher.prototype, "backlog").mockResolvedValueOnce(1e9);
    const refused = await append({ json: { documents: batch("d") } });
    full.mockRestore();
    expect(await errorOf(refused)).toMatchObject({ status: 503 });
    expect(await getJob(job.id)).toMatchObject({ accepting: true, documents: 61 });
    const again = await append({ json: { documents: batch("d"), close: true } });
    expect(again.status).toBe(202);
    expect(await getJob(job.id)).toMatchObject({ accepting: false, documents: 81 });
    expect(new Set(await chunkIdsOf(job.id)).size).toBe(81);
  });
});

describe("file uploads", () => {
  const form = (files: [string, string | Uint8Array, string?][], options?: unknown) => {
    const f = new FormData();
    for (const [name, body, type] of files)
      f.append("file", new File([body], name, type ? { type } : {}));
    if (options !== undefined) f.append("options", JSON.stringify(options));
    return f;
  };

  it("extracts Markdown into chunks with their headings, named by file", async () => {
    const collection = `files-${uid()}`;
    const md = `# Beekeeping\n\nHives need ${uid()} calm hands.\n\n## Winter\n\nBees cluster to keep warm.`;
    const res = await call("/v1/jobs", {
      method: "POST",
      body: form([["notes/bees.md", md, "text/markdown"]], { collection }),
    });
    expect(res.status, await res.clone().text()).toBe(202);
    const job = (await res.json()) as JobView;
    const chunks = (await (await call(`/v1/jobs/${job.id}/chunks`)).json()) as {
      data: { documentId: string; headings?: string[]; metadata: Record<string, unknown> }[];
    };
    expect(chunks.data.map((c) => c.headings)).toEqual([["Beekeeping"], ["Beekeeping", "Winter"]]);
    expect(chunks.data[0]?.documentId).toBe("notes/bees.md");
    expect(chunks.data[0]?.metadata).toMatchObject({ source: "notes/bees.md", format: "markdown" });
  });

  it("refuses what it cannot read with clear errors, keeping the files it can", async () => {
    const exe = new Uint8Array([0x4d, 0x5a, 0x90, 0x00, 0x03]);
    const none = await call("/v1/jobs", { method: "POST", body: form([["tool.exe", exe]]) });
    const err = await errorOf(none);
    expect(err).toMatchObject({ status: 422 });
    expect(JSON.stringify(err)).toMatch(/unsupported_format/);

    const mixed = await call("/v1/jobs", {
      method: "POST",
      body: form([
        ["fake.pdf", "this is not a pdf"],
        ["ok.txt", `Plain ${uid()} text is fine.`],
      ]),
    });
    expect(mixed.status).toBe(202);
    const job = (await mixed.json()) as JobView;
    expect(job.ingest?.accepted).toBe(1);
    expect(job.ingest?.rejections.map((r) => [r.file, r.code])).toEqual([
      ["fake.pdf", "unsupported_format"],
    ]);

    const big = await call("/v1/jobs", {
      method: "POST",
      body: form([["big.txt", "x".repeat(10 * 1024 * 1024 + 1)]]),
    });
    expect(await errorOf(big)).toMatchObject({ status: 413, code: "payload_too_large" });
    const many = await call("/v1/jobs", {
      method: "POST",
      body: form(Array.from({ length: 101 }, (_, i) => [`f${i}.txt`, `file ${i}`])),
    });
    expect(await errorOf(many)).toMatchObject({ status: 413 });
    const badOptions = await call("/v1/jobs", {
      method: "POST",
      body: form([["a.txt", "some text"]], { collection: "UPPER" }),
    });
    expect(await errorOf(badOptions)).toMatchObject({ status: 422 });
    const noFile = new FormData();
    noFile.append("options", "{}");
    expect((await errorOf(await call("/v1/jobs", { method: "POST", body: noFile }))).status).toBe(
      422,
    );
  });
});

describe("listings and deletion", () => {
  it("lists jobs newest first, page by page, and by status", async () => {
    const made = [];
    for (let i = 0; i < 3; i++) made.push((await post({ documents: [{ text: `list ${i}` }] })).id);
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const page = (await (
        await call(`/v1/jobs?limit=2${cursor ? `&cursor=${cursor}` : ""}`)
      ).json()) as { data: { id: string; status: string }[]; nextCursor: string | null };
      expect(page.data.length).toBeLessThanOrEqual(2);
      seen.push(...page.data.map((j) => j.id));
      cursor = page.nextCursor;
    } while (cursor);
    expect(new Set(seen).size).toBe(seen.length);
    // Newest first: the three just made lead, in reverse order of creation.
    expect(seen.slice(0, 3)).toEqual([...made].reverse());
    const queued = (await (await call("/v1/jobs?status=queued&limit=100")).json()) as {
      data: { status: string }[];
    };
    expect(queued.data.every((j) => j.status === "queued")).toBe(true);
    expect((await call("/v1/jobs?cursor=%%%")).status).toBe(422);
    expect((await call("/v1/jobs?status=nope")).status).toBe(422);
  });

  it("lists documents by collection and status, and deletes one everywhere", async () => {
    const collection = `listing-${uid()}`;
    const B = "b/section:1@draft";
    const w = await worker();
    const j = await post({
      collection,
      // An id with every character ids allow pages through a listing (the cursor carries it).
      documents: ["a", B, "c"].map((id) => ({ id, text: `Document ${id} ${uid()}.` })),
    });
    const listed = async (query: string) =>
      (
        (await (await call(`/v1/documents?collection=${collection}${query}`)).json()) as {
          data: { id: string; status: string }[];
        }
      ).data.map((d) => `${d.id}:${d.status}`);
    expect(await listed("")).toEqual(["a:indexing", `${B}:indexing`, "c:indexing"]);
    // Deleting a document whose version is still being indexed waits for the job.
    const early = await call(`/v1/documents/a?collection=${collection}`, { method: "DELETE" });
    expect(await errorOf(early)).toMatchObject({ status: 409 });
    await computeAll(w, j.id);
    expect(await listed("&status=ready")).toEqual(["a:ready", `${B}:ready`, "c:ready"]);
    expect(await listed("&status=indexing")).toEqual([]);
    const page = (await (await call(`/v1/documents?collection=${collection}&limit=2`)).json()) as {
      data: unknown[];
      nextCursor: string;
    };
    expect(page.data.length).toBe(2);
    expect(page.nextCursor).toMatch(/^[\w-]+$/);
    const rest = (await (
      await call(`/v1/documents?collection=${collection}&cursor=${page.nextCursor}`)
    ).json()) as { data: { id: string }[] };
    expect(rest.data.map((d) => d.id)).toEqual(["c"]);

    const chunkIds = await chunkIdsOf(j.id);
    const [original] = await originalsOf(j.id);
    const del = await call(`/v1/documents/a?collection=${collection}`, { method: "DELETE" });
    expect(del.status).toBe(204);
    expect((await call(`/v1/documents/a?collection=${collection}`)).status).toBe(404);
    expect(await listed("")).toEqual([`${B}:ready`, "c:ready"]);
    const left = await chunkIdsOf(j.id);
    expect(left.length).toBe(chunkIds.length - 1);
    expect(await getJob(j.id)).toMatchObject({ documents: 2 });
    expect((await originalsOf(j.id)).length).toBe(2);
    expect(original).toBeTruthy();
    // Another tenant sees none of it.
    expect(
      (
        await call(`/v1/documents/${encodeURIComponent(B)}?collection=${collection}`, {
          key: KEYS.other,
        })
      ).status,
    ).toBe(404);
  });
});
