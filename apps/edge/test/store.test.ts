import { env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { keyringFor, openStore } from "../src/db/open.js";
import { FILTER_METADATA, type NewJob } from "../src/db/store.js";
import { indexHasher, queryTerms } from "../src/search/terms.js";
import { compileFilter } from "../src/vector/filter.js";

function newJob(id: string, chunks: number): NewJob {
  return {
    id,
    tenant: "t1",
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
    // More chunks than one statement can carry, to exercise the statement splitting.
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

describe("D1Store", () => {
  it("creates a job with all its chunks in one transaction", async () => {
    const store = openStore(env);
    const { job, created } = await store.createJob(newJob("job_a", 250));
    expect(created).toBe(true);
    expect(job).toMatchObject({
      status: "queued",
      documents: 1,
      chunks: { total: 250, done: 0, failed: 0 },
    });
    expect((await store.listChunks("t1", "job_a", null, 1000)).length).toBe(250);
    await expect(store.createJob(newJob("job_a", 3))).rejects.toThrow();
    expect((await store.listChunks("t1", "job_a", null, 1000)).length).toBe(250);
  });

  it("counts each chunk once however often its result is recorded, then settles the status", async () => {
    const store = openStore(env);
    await store.createJob(newJob("job_b", 120));
    const ids = (await store.listChunks("t1", "job_b", null, 1000)).map((c) => c.id);
    await store.recordDone("job_b", ids.slice(0, 100));
    await store.recordDone("job_b", ids.slice(50, 100)); // replay
    expect((await store.getJob("t1", "job_b"))?.chunks).toEqual({
      total: 120,
      done: 100,
      failed: 0,
      cached: 0,
    });
    await store.recordFailed("job_b", ids.slice(90, 110), "poison");
    expect((await store.getJob("t1", "job_b"))?.chunks).toEqual({
      total: 120,
      done: 100,
      failed: 10,
      cached: 0,
    });
    expect((await store.getJob("t1", "job_b"))?.status).toBe("queued");
    await store.recordDone("job_b", ids.slice(110));
    const job = await store.getJob("t1", "job_b");
    expect(job).toMatchObject({
      status: "completed_with_errors",
      chunks: { total: 120, done: 110, failed: 10 },
    });
    expect(job?.completedAt).toBeTruthy();
    const failed = (await store.getChunks("t1", ids.slice(105, 106)))[0];
    expect(failed).toMatchObject({ status: "failed", error: "poison" });
  });

  it("completes a job whose every chunk is done, and fails one whose every chunk failed", async () => {
    const store = openStore(env);
    await store.createJob(newJob("job_c", 5));
    await store.createJob(newJob("job_d", 5));
    const c = (await store.listChunks("t1", "job_c", null, 10)).map((x) => x.id);
    const d = (await store.listChunks("t1", "job_d", null, 10)).map((x) => x.id);
    await store.recordDone("job_c", c);
    await store.recordFailed("job_d", d, "bad");
    expect((await store.getJob("t1", "job_c"))?.status).toBe("completed");
    expect((await store.getJob("t1", "job_d"))?.status).toBe("failed");
  });
});

describe("the keyword index", () => {
  /** A job whose chunk i holds the words of `texts[i]`, hashed under the tenant's newest key. */
  async function indexed(id: string, texts: string[], metadata: Record<string, unknown> = {}) {
    const store = openStore(env);
    const hasher = await indexHasher(keyringFor(env), "t1");
    const job = newJob(id, texts.length);
    job.documents[0] = { ...(job.documents[0] as NewJob["documents"][number]), metadata };
    job.chunks = await Promise.all(
      job.chunks.map(async (c, i) => ({
        ...c,
        text: texts[i] as string,
        terms: await hasher.document(texts[i] as string),
      })),
    );
    await store.createJob(job);
    await store.recordDone(
      id,
      job.chunks.map((c) => c.id),
    );
    return { store, job };
  }
  const find = async (query: string, filter?: VectorizeVectorMetadataFilter) => {
    const terms = await queryTerms(keyringFor(env), "t1", query);
    if (!terms) return [];
    return (
      await openStore(env).keywordSearch({
        tenant: "t1",
        model: "use-lite",
        match: terms.match,
        ...(filter ? { filter: compileFilter(filter, Object.keys(filter), FILTER_METADATA) } : {}),
        limit: 10,
      })
    ).map((r) => r.id);
  };

  it("ranks chunks by their words, holds no word in clear, and forgets a deleted job's", async () => {
    const texts = Array.from({ length: 120 }, (_, i) => `pump model QX-${7700 + i} moves water`);
    const { store, job } = await indexed("job_kw", texts, { category: "pump" });
    // Every chunk holds "qx"; only one holds "7731", which BM25 weighs far above it.
    const ranked = await find("QX-7731 spec sheet");
    expect(ranked[0]).toBe(job.chunks[31]?.id);
    expect(ranked).toHaveLength(10);
    expect((await find("water pump")).length).toBe(10);
    expect(await find("QX-7731", { category: "valve" })).toEqual([]);
    expect((await find("QX-7731", { category: "pump", jobId: "job_kw" }))[0]).toBe(
      job.chunks[31]?.id,
    );
    expect(await find("QX-7731", { jobId: "another" })).toEqual([]);
    const { results } = await env.DB.prepare("SELECT terms FROM chunk_terms").all<{
      terms: string;
    }>();
    expect(results.length).toBeGreaterThanOrEqual(120);
    for (const r of results) expect(r.terms).not.toMatch(/pump|water|7731/);
    // Another tenant's words hash differently: the same query finds nothing of t1's.
    const other = await queryTerms(keyringFor(env), "t2", "QX-7731");
    expect(
      await store.keywordSearch({
        tenant: "t1",
        model: "use-lite",
        match: other?.match ?? "",
        limit: 10,
      }),
    ).toEqual([]);
    await store.deleteJob("job_kw");
    expect(await find("QX-7731")).toEqual([]);
    const left = await env.DB.prepare(
      "SELECT count(*) AS n FROM keyword_rows WHERE job_id = 'job_kw'",
    ).first<{ n: number }>();
    expect(left?.n).toBe(0);
  });

  it("drops a job's terms when its text is purged, and one document's when it is deleted", async () => {
    const { store } = await indexed("job_kw2", ["alpha zeta", "beta zeta"]);
    expect(await find("zeta")).toHaveLength(2);
    await store.deleteDocument("job_kw2", 0);
    expect(await find("zeta")).toEqual([]);
    const { store: s2 } = await indexed("job_kw3", ["gamma omega"]);
    expect(await find("omega")).toHaveLength(1);
    await s2.purgeText("job_kw3");
    expect(await find("omega")).toEqual([]);
  });
});
