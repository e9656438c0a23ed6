import { describe, expect, it } from "vitest";
import { keyringFor, openStore } from "../src/db/open.js";
import type { MetadataStore, NewChunk, NewDocument, NewJob } from "../src/db/store.js";
import { indexHasher, queryTerms } from "../src/search/terms.js";
import { BACKENDS, type Backend, unique } from "./backends.js";
import { newJob } from "./helpers.js";

// The metadata store's contract, run against each backend: the same calls must give the same
// answers on D1 and on Postgres.

/** A document version of a named document, with `chunks` chunks, for a job. */
function version(
  jobId: string,
  seq: number,
  key: string,
  opts: { state?: "pending" | "current"; version?: number; chunks?: number } = {},
): { document: NewDocument; chunks: NewChunk[] } {
  const id = `${key}@${jobId}`;
  const n = opts.chunks ?? 2;
  return {
    document: {
      seq,
      id,
      metadata: { name: key },
      chars: 10 * n,
      docKey: key,
      state: opts.state ?? "current",
      version: opts.version ?? 1,
      contentHash: `${key}-${opts.version ?? 1}`,
      fingerprint: `${key}-${opts.version ?? 1}`,
      rawKey: `raw/${key}-${opts.version ?? 1}`,
      createdAt: new Date().toISOString(),
    },
    chunks: Array.from({ length: n }, (_, i) => ({
      id: `${jobId}.${String(seq).padStart(5, "0")}.${String(i).padStart(5, "0")}`,
      documentSeq: seq,
      documentId: id,
      index: i,
      text: `${key} part ${i}`,
      start: i * 10,
      end: i * 10 + 9,
    })),
  };
}

/** A job made of document versions. */
function jobOf(
  id: string,
  tenant: string,
  docs: { document: NewDocument; chunks: NewChunk[] }[],
  extra: Partial<NewJob> = {},
): NewJob {
  return {
    ...newJob(id, 0, tenant),
    documents: docs.map((d) => d.document),
    chunks: docs.flatMap((d) => d.chunks),
    ...extra,
  };
}

const ids = async (store: MetadataStore, tenant: string, jobId: string) =>
  (await store.listChunks(tenant, jobId, null, 10_000)).map((c) => c.id);

describe.each(BACKENDS)("the metadata store on $name", (b: Backend) => {
  const open = () => openStore(b.env);

  it("creates a job with all its chunks in one transaction", async () => {
    const store = open();
    const t = unique("t");
    const id = unique("job_a");
    const { job, created } = await store.createJob(newJob(id, 250, t));
    expect(created).toBe(true);
    expect(job).toMatchObject({
      status: "queued",
      documents: 1,
      chunks: { total: 250, done: 0, failed: 0 },
    });
    expect((await store.listChunks(t, id, null, 1000)).length).toBe(250);
    await expect(store.createJob(newJob(id, 3, t))).rejects.toThrow();
    expect((await store.listChunks(t, id, null, 1000)).length).toBe(250);
    // Another tenant sees nothing of it.
    expect(await store.getJob(unique("t"), id)).toBeNull();
    expect(await store.listChunks(unique("t"), id, null, 10)).toEqual([]);
  });

  it("counts each chunk once however often its result is recorded, then settles the status", async () => {
    const store = open();
    const t = unique("t");
    const id = unique("job_b");
    await store.createJob(newJob(id, 120, t));
    const all = await ids(store, t, id);
    await store.recordDone(id, all.slice(0, 100));
    await store.recordDone(id, all.slice(50, 100)); // replay
    expect((await store.getJob(t, id))?.chunks).toEqual({
      total: 120,
      done: 100,
      failed: 0,
      cached: 0,
    });
    await store.recordFailed(id, all.slice(90, 110), "poison");
    expect((await store.getJob(t, id))?.chunks).toEqual({
      total: 120,
      done: 100,
      failed: 10,
      cached: 0,
    });
    expect((await store.getJob(t, id))?.status).toBe("queued");
    await store.recordDone(id, all.slice(110));
    const job = await store.getJob(t, id);
    expect(job).toMatchObject({
      status: "completed_with_errors",
      chunks: { total: 120, done: 110, failed: 10 },
    });
    expect(job?.completedAt).toBeTruthy();
    const failed = (await store.getChunks(t, all.slice(105, 106)))[0];
    expect(failed).toMatchObject({ status: "failed", error: "poison" });
  });

  it.runIf(b.concurrent)(
    "counts exactly once when the same results are recorded at the same time",
    async () => {
      const store = open();
      const t = unique("t");
      const a = unique("job_p");
      const c = unique("job_q");
      await store.createJob(newJob(a, 60, t));
      await store.createJob(newJob(c, 40, t));
      const ia = await ids(store, t, a);
      const ic = await ids(store, t, c);
      // Overlapping deliveries of the same results, several stores (connections) at once.
      const settled = await Promise.all([
        open().recordDoneAll([
          { jobId: a, chunkIds: ia.slice(0, 40) },
          { jobId: c, chunkIds: ic },
        ]),
        open().recordDoneAll([{ jobId: a, chunkIds: ia.slice(20) }]),
        open().recordDone(a, ia.slice(10, 50)),
        open().recordDoneAll([
          { jobId: c, chunkIds: ic.slice(5) },
          { jobId: a, chunkIds: ia },
        ]),
      ]);
      expect((await store.getJob(t, a))?.chunks.done).toBe(60);
      expect((await store.getJob(t, c))?.chunks.done).toBe(40);
      expect((await store.getJob(t, a))?.status).toBe("completed");
      // Whichever call finished the documents saw them finished: none finished unseen.
      expect(settled.length).toBe(4);
      expect(await store.settledVersions(a)).toEqual([]);
    },
  );

  it("completes a job whose every chunk is done, and fails one whose every chunk failed", async () => {
    const store = open();
    const t = unique("t");
    const [c, d] = [unique("job_c"), unique("job_d")];
    await store.createJob(newJob(c, 5, t));
    await store.createJob(newJob(d, 5, t));
    await store.recordDone(c, await ids(store, t, c));
    await store.recordFailed(d, await ids(store, t, d), "bad");
    expect((await store.getJob(t, c))?.status).toBe("completed");
    expect((await store.getJob(t, d))?.status).toBe("failed");
  });

  it("returns the first job for a repeated Idempotency-Key, also when submits race", async () => {
    const store = open();
    const t = unique("t");
    const first = newJob(unique("job_i"), 3, t);
    first.idempotencyKey = "key-1";
    first.requestHash = "h1";
    const made = await store.createJob(first);
    expect(made).toMatchObject({ created: true, requestHash: "h1", dispatched: false });
    const again = await store.createJob({
      ...newJob(unique("job_i"), 3, t),
      idempotencyKey: "key-1",
    });
    expect(again.created).toBe(false);
    expect(again.job.id).toBe(first.id);
    expect(again.ingest).toBeNull();
    // What the request took is kept with the job, for a retry to be answered with.
    const ingest = {
      accepted: 3,
      unchanged: 1,
      rejected: 1,
      rejections: [{ id: "x", code: "c", message: "m" }],
    };
    await store.markDispatched(first.id, ingest);
    expect(await store.findJobByIdempotencyKey(t, "key-1")).toMatchObject({
      dispatched: true,
      ingest,
    });
    if (!b.concurrent) return;
    const racing = await Promise.all(
      [0, 1, 2].map(() =>
        open().createJob({ ...newJob(unique("job_r"), 4, t), idempotencyKey: "key-2" }),
      ),
    );
    expect(racing.filter((r) => r.created)).toHaveLength(1);
    expect(new Set(racing.map((r) => r.job.id)).size).toBe(1);
    expect((await store.listJobs(t, { limit: 10 })).length).toBe(2);
  });

  it.runIf(b.concurrent)(
    "refuses a document name two submits make pending at the same moment",
    async () => {
      const t = unique("t");
      const jobs = [0, 1, 2, 3].map((i) => {
        const id = unique(`job_s${i}`);
        return jobOf(id, t, [version(id, 0, "same", { state: "pending", version: 2 })]);
      });
      const outcomes = await Promise.allSettled(jobs.map((j) => open().createJob(j)));
      // Each one either went in (superseding a pending one before it) or was refused with a 409;
      // at every moment at most one version is pending.
      for (const o of outcomes)
        if (o.status === "rejected")
          expect(o.reason).toMatchObject({ status: 409, code: "conflict" });
      expect(outcomes.some((o) => o.status === "fulfilled")).toBe(true);
      const live = await open().liveVersions(t, "default", ["same"]);
      expect(live.filter((v) => v.state === "pending")).toHaveLength(1);
      // And no two of its versions share a number.
      const versions = await open().documentVersions(t, "default", "same");
      expect(new Set(versions.map((v) => v.version)).size).toBe(versions.length);
    },
  );

  it("numbers a new version after one another submit gave the same number first", async () => {
    // Two submits of "same" read its live versions (version 1 current) before either wrote:
    // both chose version 2. The second written takes 3, and supersedes the first's.
    const store = open();
    const t = unique("t");
    const [j1, j2, j3] = [unique("job_n1"), unique("job_n2"), unique("job_n3")];
    await store.createJob(jobOf(j1, t, [version(j1, 0, "same")]));
    await store.recordDone(j1, await ids(store, t, j1));
    for (const j of [j2, j3])
      await store.createJob(jobOf(j, t, [version(j, 0, "same", { state: "pending", version: 2 })]));
    const versions = await store.documentVersions(t, "default", "same");
    expect(versions.map((v) => [v.version, v.state, v.jobId])).toEqual([
      [3, "pending", j3],
      [2, "superseded", j2],
      [1, "current", j1],
    ]);
  });

  it("makes a new version current once its chunks are done, then prunes the old one", async () => {
    const store = open();
    const t = unique("t");
    const [j1, j2] = [unique("job_v1"), unique("job_v2")];
    await store.createJob(jobOf(j1, t, [version(j1, 0, "a"), version(j1, 1, "b")]));
    await store.recordDone(j1, await ids(store, t, j1));
    expect((await store.getJob(t, j1))?.status).toBe("completed");
    await store.createJob(
      jobOf(j2, t, [version(j2, 0, "a", { state: "pending", version: 2, chunks: 3 })]),
    );
    const live = await store.liveVersions(t, "default", ["a", "b", "a", "zz"]);
    expect(
      live
        .map((v) => [v.docKey, v.state, v.version, v.maxVersion, v.jobId])
        .sort((x, y) => String(x[1]).localeCompare(String(y[1]))),
    ).toEqual([
      ["a", "current", 1, 2, j1],
      ["b", "current", 1, 1, j1],
      ["a", "pending", 2, 2, j2],
    ]);
    const chunks = await ids(store, t, j2);
    expect((await store.recordDone(j2, chunks.slice(0, 2))).settled).toEqual([]);
    // Search sees only the current version's chunks.
    expect(await store.getChunks(t, chunks, { currentOnly: true })).toEqual([]);
    expect((await store.recordDone(j2, chunks)).settled).toEqual([0]);
    expect(await store.settledVersions(j2)).toEqual([0]);
    expect((await store.getJob(t, j2))?.status).toBe("queued");
    expect(await store.promote(j2, [0])).toEqual({ superseded: 1 });
    expect(await store.promote(j2, [0])).toEqual({ superseded: 0 });
    expect((await store.getJob(t, j2))?.status).toBe("completed");
    expect((await store.getChunks(t, chunks, { currentOnly: true })).length).toBe(3);
    const versions = await store.documentVersions(t, "default", "a");
    expect(versions.map((v) => [v.version, v.state, v.jobStatus, v.model])).toEqual([
      [2, "current", "completed", "use-lite"],
      [1, "superseded", "completed", "use-lite"],
    ]);
    expect(versions[0]).toMatchObject({ metadata: { name: "a" }, chunks: 3, rawKey: "raw/a-2" });
    expect((await store.listDocuments(t, { limit: 10 })).map((v) => [v.docKey, v.version])).toEqual(
      [
        ["a", 2],
        ["b", 1],
      ],
    );
    expect((await store.listDocuments(t, { limit: 10, status: "ready" })).length).toBe(2);
    expect((await store.listDocuments(t, { limit: 10, prefix: "b" })).map((v) => v.docKey)).toEqual(
      ["b"],
    );
    expect(
      (await store.listDocuments(t, { limit: 10, after: ["default", "a"] })).map((v) => v.docKey),
    ).toEqual(["b"]);
    expect((await store.listDocuments(t, { limit: 10, jobId: j2 })).map((v) => v.docKey)).toEqual([
      "a",
    ]);
    expect((await store.liveRows(t, [["default", "a"]])).map((v) => [v.version, v.state])).toEqual([
      [2, "current"],
    ]);
    expect(await store.sharedOriginalsInUse(t, ["raw/a-1", "raw/a-2", "raw/x"])).toEqual(
      new Set(["raw/a-1", "raw/a-2"]),
    );
    const prune = await store.versionsToPrune(t, 10);
    expect(prune.map((v) => [v.docKey, v.version])).toEqual([["a", 1]]);
    // Vectors kept: both of j1's versions and j2's until the old one is pruned, then not its.
    const kept = async () => (await store.chunkUsage(t, "key")).storedVectors;
    expect(await kept()).toBe(7);
    await store.pruneVersions(prune);
    expect(await store.versionsToPrune(t, 10)).toEqual([]);
    expect(await kept()).toBe(5);
    await store.pruneVersions(prune);
    expect(await kept()).toBe(5);
    expect((await store.getDocument(t, j1, `a@${j1}`))?.chunkIds).toEqual([]);
    expect((await store.getDocument(t, j1, `b@${j1}`))?.chunkIds.length).toBe(2);
    expect(await store.sharedOriginalsInUse(t, ["raw/a-1", "raw/a-2"])).toEqual(
      new Set(["raw/a-2"]),
    );
    expect((await store.documentVersions(t, undefined, "a"))[1]?.prunedAt).toBeTruthy();
    expect(await store.listCollections(t)).toMatchObject([
      { name: "default", jobs: 2, documents: 2, chunks: 5 },
    ]);
  });

  it("makes a new version current on arrival when the cache has every chunk, and only then", async () => {
    const store = open();
    const t = unique("t");
    const [j1, j2] = [unique("job_c1"), unique("job_c2")];
    await store.createJob(
      jobOf(j1, t, [version(j1, 0, "a"), version(j1, 1, "b"), version(j1, 2, "c")]),
    );
    await store.recordDone(j1, await ids(store, t, j1));
    const fromCache = (v: ReturnType<typeof version>, cached: boolean[]) => ({
      ...v,
      chunks: v.chunks.map((c, i) => ({ ...c, cacheKey: `k-${c.id}`, cached: cached[i] })),
    });
    const pending = { state: "pending" as const, version: 2 };
    const { job } = await store.createJob(
      jobOf(j2, t, [
        fromCache(version(j2, 0, "a", pending), [true, true]),
        fromCache(version(j2, 1, "b", pending), [true, false]),
        version(j2, 2, "c", { ...pending, chunks: 0 }),
      ]),
    );
    expect(job.chunks).toMatchObject({ total: 4, done: 3, cached: 3 });
    const states = async (key: string) =>
      (await store.documentVersions(t, "default", key)).map((v) => [v.version, v.state]);
    // Everything from the cache, or nothing to compute: current at once, the old one superseded.
    expect(await states("a")).toEqual([
      [2, "current"],
      [1, "superseded"],
    ]);
    expect(await states("c")).toEqual([
      [2, "current"],
      [1, "superseded"],
    ]);
    // One chunk still to compute: pending, the old one still current.
    expect(await states("b")).toEqual([
      [2, "pending"],
      [1, "current"],
    ]);
  });

  it("fails a version with a failed chunk and keeps the current one; a newer pending one supersedes it", async () => {
    const store = open();
    const t = unique("t");
    const [j1, j2, j3] = [unique("job_f1"), unique("job_f2"), unique("job_f3")];
    await store.createJob(jobOf(j1, t, [version(j1, 0, "a")]));
    await store.recordDone(j1, await ids(store, t, j1));
    await store.createJob(jobOf(j2, t, [version(j2, 0, "a", { state: "pending", version: 2 })]));
    const c2 = await ids(store, t, j2);
    await store.recordDone(j2, c2.slice(0, 1));
    expect((await store.recordFailed(j2, c2.slice(1), "bad vector")).settled).toEqual([0]);
    await store.promote(j2, [0]);
    expect((await store.getJob(t, j2))?.status).toBe("completed_with_errors");
    const versions = await store.documentVersions(t, "default", "a");
    expect(versions.map((v) => [v.version, v.state])).toEqual([
      [2, "failed"],
      [1, "current"],
    ]);
    expect(versions[0]?.error).toMatch(/chunks failed/);
    // A pending version is superseded by a newer one submitted before it was done.
    await store.createJob(jobOf(j3, t, [version(j3, 0, "b", { state: "pending" })]));
    const j4 = unique("job_f4");
    await store.createJob(jobOf(j4, t, [version(j4, 0, "b", { state: "pending", version: 2 })]));
    expect(
      (await store.documentVersions(t, "default", "b")).map((v) => [v.version, v.state]),
    ).toEqual([
      [2, "pending"],
      [1, "superseded"],
    ]);
    // Cancelling a job leaves its pending versions cancelled, once.
    expect(await store.cancelJob(t, j4)).toBe(true);
    expect(await store.cancelJob(t, j4)).toBe(false);
    expect((await store.documentVersions(t, "default", "b"))[0]).toMatchObject({
      state: "cancelled",
      jobStatus: "cancelled",
    });
  });

  it("takes documents while a job is open, and settles it once closed", async () => {
    const store = open();
    const t = unique("t");
    const id = unique("job_o");
    await store.createJob(jobOf(id, t, [version(id, 0, "a")], { accepting: true }));
    await store.recordDone(id, await ids(store, t, id));
    expect((await store.getJob(t, id))?.status).toBe("queued");
    // Seqs are given out past the first batch's, each range once, to the job's own tenant.
    expect(await store.reserveSeqs(t, id, 3)).toBe(1);
    expect(await store.reserveSeqs(t, id, 2)).toBe(4);
    expect(await store.reserveSeqs(unique("t"), id, 2)).toBeNull();
    const more = version(id, 1, "b", { chunks: 3 });
    expect(
      await store.appendDocuments({
        jobId: id,
        tenant: t,
        documents: [more.document],
        chunks: more.chunks,
        unchanged: 2,
      }),
    ).toBe(true);
    expect(await store.getJob(t, id)).toMatchObject({
      documents: 4,
      documentsUnchanged: 2,
      chunks: { total: 5, done: 2 },
      accepting: true,
    });
    expect(await store.closeJob(t, id)).toBe(true);
    expect(await store.closeJob(t, id)).toBe(false);
    expect(await store.reserveSeqs(t, id, 1)).toBeNull();
    expect(
      await store.appendDocuments({
        jobId: id,
        tenant: t,
        documents: [],
        chunks: [],
        unchanged: 1,
      }),
    ).toBe(false);
    await store.recordDone(id, await ids(store, t, id));
    expect(await store.getJob(t, id)).toMatchObject({ status: "completed", accepting: false });
  });

  it("keeps ids, keys, metadata and text with quotes, backslashes and any Unicode as given", async () => {
    const store = open();
    const t = unique("t");
    const id = unique("job_q");
    const odd = ["it's", "''; DROP TABLE chunks; --", "back\\slash", "🦀 \u2028 ü", "'"];
    const docs = odd.map((key, seq) => {
      const v = version(id, seq, key, { chunks: 1 });
      v.document.metadata = { note: `${key} \\ "q"`, [key]: seq };
      return {
        document: v.document,
        chunks: v.chunks.map((c) => ({ ...c, text: `text of ${key}`, headings: [key] })),
      };
    });
    await store.createJob(jobOf(id, t, docs));
    expect(await store.getJob(t, id)).toMatchObject({ documents: odd.length });
    for (const [seq, key] of odd.entries()) {
      const doc = await store.getDocument(t, id, `${key}@${id}`);
      expect(doc).toMatchObject({ seq, id: `${key}@${id}`, rawKey: `raw/${key}-1` });
      const [chunk] = await store.getChunks(t, doc?.chunkIds ?? []);
      expect(chunk).toMatchObject({
        text: `text of ${key}`,
        documentId: `${key}@${id}`,
        headings: [key],
        metadata: { note: `${key} \\ "q"`, [key]: seq },
      });
    }
    const listed = await store.listDocuments(t, { limit: 100 });
    expect(listed.map((d) => [d.docKey, d.metadata]).sort()).toEqual(
      odd.map((key, seq) => [key, { note: `${key} \\ "q"`, [key]: seq }]).sort(),
    );
    // Deleting by one of these ids takes that document alone.
    await store.deleteDocument(id, odd.indexOf("''; DROP TABLE chunks; --"));
    expect(await store.getDocument(t, id, `''; DROP TABLE chunks; --@${id}`)).toBeNull();
    expect(await store.getJob(t, id)).toMatchObject({ documents: odd.length - 1 });
    expect((await store.getDocument(t, id, `it's@${id}`))?.chunkIds).toHaveLength(1);
  });

  it("writes values many rows share, or that repeat another column, as given", async () => {
    const store = open();
    const t = unique("t");
    const id = unique("job_s");
    // Metadata of nearly the 4 KB allowed, the same on every document, with quotes; the same
    // headings on every chunk; each document's key its id (as a submit without ids writes
    // them); a fingerprint on some documents only. Rows for several statements of each table.
    const shared = { note: `it's "shared" \\ ${"x'".repeat(1900)}` };
    const docs = Array.from({ length: 1000 }, (_, seq) => {
      const v = version(id, seq, `s${seq}`, { chunks: 2 });
      v.document.docKey = v.document.id;
      v.document.metadata = shared;
      v.document.fingerprint = seq % 7 === 0 ? `f${seq}` : null;
      return {
        document: v.document,
        chunks: v.chunks.map((c) => ({ ...c, headings: ["Ch. 1 'Start'", "§ 2"] })),
      };
    });
    await store.createJob(jobOf(id, t, docs));
    expect(await store.getJob(t, id)).toMatchObject({ documents: 1000, chunks: { total: 2000 } });
    const listed = await store.listDocuments(t, { limit: 1000 });
    expect(listed).toHaveLength(1000);
    for (const d of listed) {
      const seq = Number(d.docKey.slice(1, d.docKey.indexOf("@")));
      expect(d).toMatchObject({ docKey: `s${seq}@${id}`, metadata: shared, seq });
    }
    const chunks = await store.getChunks(t, await ids(store, t, id));
    expect(chunks).toHaveLength(2000);
    for (const c of chunks) {
      expect(c.headings).toEqual(["Ch. 1 'Start'", "§ 2"]);
      expect(c.text).toBe(`${c.documentId.slice(0, c.documentId.indexOf("@"))} part ${c.index}`);
    }
  });

  it("deletes a document with its chunks and counts, purges text, and deletes a job", async () => {
    const store = open();
    const t = unique("t");
    const id = unique("job_x");
    await store.createJob(jobOf(id, t, [version(id, 0, "a"), version(id, 1, "b", { chunks: 3 })]));
    const all = await ids(store, t, id);
    await store.recordDone(id, all.slice(0, 3));
    await store.deleteDocument(id, 1);
    await store.deleteDocument(id, 1);
    expect(await store.getJob(t, id)).toMatchObject({
      documents: 1,
      chunks: { total: 2, done: 2, failed: 0 },
    });
    expect(await store.chunkIds(id)).toEqual(all.slice(0, 2));
    expect(await store.originalsOf(id)).toEqual(["raw/a-1"]);
    expect((await store.getChunks(t, all.slice(0, 1)))[0]?.text).toBe("a part 0");
    await store.purgeText(id);
    expect((await store.getChunks(t, all.slice(0, 1)))[0]?.text).toBeNull();
    expect((await store.getJob(t, id))?.retention.textPurgedAt).toBeTruthy();
    expect(await store.originalsOf(id)).toEqual([]);
    expect(await store.tenantJobs(t)).toEqual([{ id, model: "use-lite" }]);
    await store.deleteJob(id);
    expect(await store.getJob(t, id)).toBeNull();
    expect(await store.chunkIds(id)).toEqual([]);
    expect(await store.tenantJobs(t)).toEqual([]);
  });

  it("keeps credentials: lookup, listing, changes, revocation and quarantine", async () => {
    const store = open();
    const t = unique("t");
    const [k1, k2, w1] = [unique("key"), unique("key"), unique("wt")];
    const base = { tenant: t, prefix: "p2pa_", expiresAt: null, quotas: null };
    await store.createCredential({
      ...base,
      id: k1,
      kind: "api",
      hash: unique("h1"),
      label: "one",
      scopes: ["jobs:read"],
    });
    const h2 = unique("h2");
    await store.createCredential({
      ...base,
      id: k2,
      kind: "api",
      hash: h2,
      label: "two",
      scopes: null,
      quotas: { chunksPerDay: 5 },
    });
    await store.createCredential({
      ...base,
      id: w1,
      kind: "worker",
      hash: unique("hw"),
      label: "w",
      scopes: null,
    });
    const found = await store.findCredential(h2);
    expect(found).toMatchObject({ id: k2, kind: "api", tenant: t, quotas: { chunksPerDay: 5 } });
    expect(found?.scopes.length).toBeGreaterThan(1);
    expect(await store.findCredential("nope")).toBeNull();
    const listed = await store.listCredentials(t);
    expect(listed.map((k) => k.id).sort()).toEqual([k1, k2, w1].sort());
    expect(listed.find((k) => k.id === w1)?.scopes).toEqual([]);
    expect(
      await store.updateCredential(t, k1, { label: "renamed", quotas: { requestsPerMinute: 3 } }),
    ).toBe(true);
    expect(await store.getCredential(t, k1)).toMatchObject({
      label: "renamed",
      quotas: { requestsPerMinute: 3 },
      scopes: ["jobs:read"],
    });
    expect(await store.updateCredential(unique("t"), k1, { label: "x" })).toBe(false);
    await store.touchCredential(k1);
    expect((await store.getCredential(t, k1))?.lastUsedAt).toBeTruthy();
    await store.quarantineCredential(w1, "wrong vectors");
    expect(await store.credentialStates([k1, k2, w1, "gone"])).toEqual(
      new Map([
        [k1, "active"],
        [k2, "active"],
        [w1, "quarantined"],
      ]),
    );
    expect(await store.revokeTenantCredential(t, k2)).toBe(true);
    expect(await store.revokeTenantCredential(t, k2)).toBe(false);
    expect(await store.findCredential(h2)).toBeNull();
    expect(await store.revokeCredential(w1, "api")).toBe(false);
    expect(await store.revokeCredential(w1, "worker")).toBe(true);
    expect((await store.credentialStates([k2, w1])).get(w1)).toBe("revoked");
    await store.eraseTenant(t);
    expect(await store.listCredentials(t)).toEqual([]);
  });

  it("keeps tenant settings and counts a tenant's chunks by day and by key", async () => {
    const store = open();
    const t = unique("t");
    expect(await store.tenantSettings(t)).toBeNull();
    await store.putTenantSettings(t, { textRetentionDays: 3 });
    const s = await store.putTenantSettings(t, { quotas: { chunksPerDay: 10 } });
    expect(s).toMatchObject({ textRetentionDays: 3, quotas: { chunksPerDay: 10 } });
    expect(await store.tenantSettings(t)).toEqual(s);
    // A job made with the tenant's default reads it as it is written.
    const inherits = unique("job_u");
    const made = await store.createJob({ ...newJob(inherits, 1, t), textRetentionDays: "tenant" });
    expect(made.job.retention.textDays).toBe(3);
    const other = unique("t");
    const none = await store.createJob({
      ...newJob(unique("job_u"), 1, other),
      textRetentionDays: "tenant",
    });
    expect(none.job.retention.textDays).toBeNull();
    await store.deleteJob(inherits);
    await store.deleteJob(none.job.id);
    const [a, c] = [unique("job_u"), unique("job_u")];
    await store.createJob({ ...newJob(a, 4, t), createdBy: "k1" });
    await store.createJob({ ...newJob(c, 3, t), createdBy: "k2" });
    await store.recordFailed(c, await ids(store, t, c), "x");
    const usage = await store.chunkUsage(t, "k1");
    expect(usage).toMatchObject({ tenantLast24h: 7, keyLast24h: 4, storedVectors: 4 });
    expect(usage.keyOldestAt).toBeTruthy();
    expect(await store.chunksByKey(t)).toEqual(
      new Map([
        ["k1", 4],
        ["k2", 3],
      ]),
    );
    expect(await store.chunkUsage(unique("t"), "k1")).toMatchObject({
      tenantLast24h: 0,
      keyLast24h: 0,
      tenantOldestAt: null,
      storedVectors: 0,
    });
  });

  it("lists jobs newest first, page by page, by status and collection", async () => {
    const store = open();
    const t = unique("t");
    const made: string[] = [];
    for (let i = 0; i < 5; i++) {
      const id = `job_${i}_${unique("l")}`;
      made.push(id);
      await store.createJob({
        ...newJob(id, 1, t),
        collection: i % 2 ? "odd" : "even",
        createdAt: `2026-01-0${i + 1}T00:00:00.000Z`,
      });
    }
    const first = await store.listJobs(t, { limit: 2 });
    expect(first.map((j) => j.id)).toEqual([made[4], made[3]]);
    const last = first[1];
    const next = await store.listJobs(t, {
      limit: 10,
      before: [last?.createdAt ?? "", last?.id ?? ""],
    });
    expect(next.map((j) => j.id)).toEqual([made[2], made[1], made[0]]);
    expect((await store.listJobs(t, { limit: 10, collection: "odd" })).length).toBe(2);
    await store.markStarted(made[0] as string);
    expect((await store.listJobs(t, { limit: 10, status: "running" })).map((j) => j.id)).toEqual([
      made[0],
    ]);
    expect((await store.listCollections(t)).map((c) => [c.name, c.jobs])).toEqual([
      ["even", 3],
      ["odd", 2],
    ]);
  });

  it("keeps a version's own original in the transaction that adds the version, and embedding vectors bit for bit", async () => {
    const store = open();
    const t = unique("t");
    const withOriginal = (job: NewJob, body: string) => {
      const doc = job.documents[0] as NewJob["documents"][number];
      doc.rawKey = `doc/${t}/${job.id}/0`;
      doc.original = { mediaType: "text/plain", body };
      return { job, key: doc.rawKey };
    };
    const first = withOriginal(newJob(unique("job_o"), 2, t), "sealed-a");
    await store.createJob(first.job);
    expect(await store.getOriginal(t, first.key)).toEqual({
      mediaType: "text/plain",
      body: "sealed-a",
    });
    expect(await store.getOriginal(unique("t"), first.key)).toBeNull();
    // A job refused as a whole (its document names the first one's current version) keeps
    // no original of its own.
    const refused = withOriginal(newJob(unique("job_o"), 2, t), "sealed-b");
    (refused.job.documents[0] as NewJob["documents"][number]).docKey = `${first.job.id}/doc`;
    await expect(store.createJob(refused.job)).rejects.toMatchObject({ status: 409 });
    expect(await store.getOriginal(t, refused.key)).toBeNull();
    const second = withOriginal(newJob(unique("job_o"), 1, t), "sealed-c");
    await store.createJob(second.job);
    await store.deleteOriginals(t, [first.key]);
    expect(await store.getOriginal(t, first.key)).toBeNull();
    expect(await store.getOriginal(t, second.key)).not.toBeNull();

    const id = unique("job_e");
    await store.createJob(newJob(id, 2, t));
    // Extremes, a subnormal and a negative zero: the stored bytes come back as they were.
    const v = new Float32Array([0.1, -2.5e-8, 3.4028234663852886e38, 1e-45, -0, 0]);
    await store.cachePut(t, "use-lite", id, [
      { key: "k1", vector: new Float32Array([1, 2]) },
      { key: "k1", vector: v },
      { key: "k2", vector: new Float32Array([5]) },
    ]);
    const got = await store.cachedVectors(t, "use-lite", ["k1", "k2", "k3", "k1"]);
    expect([...got.keys()].sort()).toEqual(["k1", "k2"]);
    const bytes = (f: Float32Array | undefined) => new Uint8Array(f?.buffer ?? new ArrayBuffer(0));
    expect(bytes(got.get("k1"))).toEqual(bytes(v));
    expect(Array.from(got.get("k2") ?? [])).toEqual([5]);
    expect(await store.cachedVectors(t, "other-model", ["k1"])).toEqual(new Map());
    // A job whose chunk came from the cache takes the entry: it goes when that chunk goes.
    const hit = unique("job_h");
    const job = newJob(hit, 1, t);
    job.chunks = job.chunks.map((c) => ({ ...c, cacheKey: "k1", cached: true }));
    const { job: made } = await store.createJob(job);
    expect(made).toMatchObject({ status: "completed", chunks: { total: 1, done: 1, cached: 1 } });
    await store.deleteJob(id);
    expect((await store.cachedVectors(t, "use-lite", ["k1", "k2"])).has("k1")).toBe(true);
    await store.deleteDocument(hit, 0);
    expect((await store.cachedVectors(t, "use-lite", ["k1"])).size).toBe(0);
    await store.eraseTenant(t);
    expect(await store.getOriginal(t, second.key)).toBeNull();
  });

  it("reads thousands of cached vectors back, each its own, over several reads", async () => {
    const store = open();
    const t = unique("t");
    const id = unique("job_c");
    const n = 2500;
    const vector = (i: number) => new Float32Array([i, -i / 3, i * 1e-40, 0.5]);
    await store.cachePut(
      t,
      "use-lite",
      id,
      Array.from({ length: n }, (_, i) => ({ key: `ck${i}`, vector: vector(i) })),
    );
    const keys = Array.from({ length: n + 10 }, (_, i) => `ck${i}`);
    const got = await store.cachedVectors(t, "use-lite", keys);
    expect(got.size).toBe(n);
    for (let i = 0; i < n; i++)
      expect(new Uint8Array(got.get(`ck${i}`)?.buffer ?? new ArrayBuffer(0))).toEqual(
        new Uint8Array(vector(i).buffer),
      );
  });

  it("registers workers", async () => {
    const store = open();
    const w = unique("w");
    await store.upsertWorker({
      id: w,
      name: "lab",
      version: "1.0.0",
      device: "cpu",
      threads: 4,
      models: ["use-lite"],
      connectedAt: new Date().toISOString(),
    });
    await store.workerSeen(w, 17, true);
    const [row] = await b.query<{ chunks_done: number; disconnected_at: string | null }>(
      "SELECT chunks_done, disconnected_at FROM workers WHERE id = ?",
      [w],
    );
    expect(row?.chunks_done).toBe(17);
    expect(row?.disconnected_at).toBeTruthy();
    expect(await store.ping()).toBe(true);
  });
});

describe.each(BACKENDS)("the keyword index on $name", (b: Backend) => {
  /** A job whose chunk i holds the words of `texts[i]`, hashed under the tenant's newest key. */
  async function indexed(
    tenant: string,
    texts: string[],
    metadata: Record<string, unknown> = {},
    id = unique("job_kw"),
  ) {
    const store = openStore(b.env);
    const hasher = await indexHasher(keyringFor(b.env), tenant);
    const job = newJob(id, texts.length, tenant);
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
  const find = async (tenant: string, query: string, filter?: VectorizeVectorMetadataFilter) => {
    const terms = await queryTerms(keyringFor(b.env), tenant, query);
    if (!terms) return [];
    return (
      await openStore(b.env).keywordSearch({
        tenant,
        model: "use-lite",
        match: terms.match,
        ...(filter ? { filter: { metadata: filter, keys: Object.keys(filter) } } : {}),
        limit: 10,
      })
    ).map((r) => r.id);
  };

  it("ranks chunks by their words, holds no word in clear, and forgets a deleted job's", async () => {
    const entries = async () =>
      Number((await b.query<{ n: number }>("SELECT count(*) AS n FROM chunk_terms"))[0]?.n);
    const before = await entries();
    const t = unique("t");
    const texts = Array.from({ length: 120 }, (_, i) => `pump model QX-${7700 + i} moves water`);
    const { store, job } = await indexed(t, texts, { category: "pump" });
    const id = job.id;
    // Every chunk holds "qx"; only one holds "7731", which BM25 weighs far above it.
    const ranked = await find(t, "QX-7731 spec sheet");
    expect(ranked[0]).toBe(job.chunks[31]?.id);
    expect(ranked).toHaveLength(10);
    expect((await find(t, "water pump")).length).toBe(10);
    expect(await find(t, "QX-7731", { category: "valve" })).toEqual([]);
    expect((await find(t, "QX-7731", { category: "pump", jobId: id }))[0]).toBe(job.chunks[31]?.id);
    expect(await find(t, "QX-7731", { jobId: "another" })).toEqual([]);
    const rows = await b.query<{ terms: string }>(
      "SELECT terms FROM chunk_terms WHERE terms IS NOT NULL",
    );
    expect(rows.length).toBeGreaterThanOrEqual(120);
    // Every term is a keyed hash of 16 hex digits, so no word is held in clear. (The check is on
    // whole terms: one hash in some hundreds holds "7731" somewhere by chance.)
    for (const r of rows)
      for (const term of r.terms.split(" ")) expect(term).toMatch(/^[0-9a-f]{16}$/);
    // Another tenant's words hash differently: the same query finds nothing of t's.
    const other = await queryTerms(keyringFor(b.env), unique("t"), "QX-7731");
    expect(
      await store.keywordSearch({
        tenant: t,
        model: "use-lite",
        match: other?.match ?? "",
        limit: 10,
      }),
    ).toEqual([]);
    await store.deleteJob(id);
    expect(await find(t, "QX-7731")).toEqual([]);
    // None of its entries is left behind.
    expect(await entries()).toBe(before);
  });

  it("drops a job's terms when its text is purged, and one document's when it is deleted", async () => {
    const t = unique("t");
    const { store, job } = await indexed(t, ["alpha zeta", "beta zeta"]);
    expect(await find(t, "zeta")).toHaveLength(2);
    await store.deleteDocument(job.id, 0);
    expect(await find(t, "zeta")).toEqual([]);
    const { store: s2, job: j2 } = await indexed(t, ["gamma omega"]);
    expect(await find(t, "omega")).toHaveLength(1);
    await s2.purgeText(j2.id);
    expect(await find(t, "omega")).toEqual([]);
  });

  it("filters on document metadata with the vector index's semantics", async () => {
    const t = unique("t");
    const docs: [string, Record<string, unknown>][] = [
      ["s", { category: "a", year: 2020, lang: "en" }],
      ["n", { category: "b", year: 2021.5, lang: null }],
      ["b", { category: true, year: "2020" }],
      ["o", { category: { x: 1 }, year: [2020] }],
      ["m", {}],
    ];
    const ids = new Map<string, string>();
    for (const [name, metadata] of docs) {
      const { job } = await indexed(t, [`needle ${name}`], metadata, unique(`job_${name}`));
      ids.set(job.chunks[0]?.id as string, name);
    }
    const names = async (filter?: VectorizeVectorMetadataFilter) =>
      (await find(t, "needle", filter)).map((id) => ids.get(id)).sort();
    expect(await names()).toEqual(["b", "m", "n", "o", "s"]);
    expect(await names({ category: "a" })).toEqual(["s"]);
    expect(await names({ category: true })).toEqual(["b"]);
    expect(await names({ category: { $ne: "a" } })).toEqual(["b", "m", "n", "o"]);
    expect(await names({ lang: null })).toEqual(["b", "m", "n", "o"]);
    expect(await names({ lang: { $ne: null } })).toEqual(["s"]);
    expect(await names({ year: { $gte: 2020 } })).toEqual(["n", "s"]);
    expect(await names({ year: { $lt: "2021" } })).toEqual(["b"]);
    expect(await names({ year: { $in: [2020, "2020"] } })).toEqual(["b", "s"]);
    expect(await names({ year: { $nin: [2020] } })).toEqual(["b", "m", "n", "o"]);
    expect(await names({ category: { $in: [] } })).toEqual([]);
    expect(await names({ "category.x": 1 })).toEqual(["o"]);
    expect(await names({ year: { $gt: 2020, $lt: 2022 } })).toEqual(["n"]);
    expect(await names({ collection: "default", category: { $nin: ["a", true] } })).toEqual([
      "m",
      "n",
      "o",
    ]);
    await expect(find(t, "needle", { category: { $regex: "a" } } as never)).rejects.toThrow(
      /unsupported filter operator/,
    );
  });
});

describe.each(BACKENDS)("keyword scores on $name", (b: Backend) => {
  /**
   * FTS5's BM25 (k1 1.2, b 0.75, an IDF at or below zero taken as 1e-6, phrases summed in query
   * order) of a chunk's terms for a query's terms, over an index of `docs`.
   */
  function bm25(docs: string[][], terms: string[], query: string[]): number {
    const n = docs.length;
    const avgdl = docs.reduce((sum, d) => sum + d.length, 0) / n;
    let score = 0;
    for (const q of query) {
      const hits = docs.filter((d) => d.includes(q)).length;
      let idf = Math.log((n - hits + 0.5) / (hits + 0.5));
      if (idf <= 0) idf = 1e-6;
      const f = terms.filter((t) => t === q).length;
      score += idf * ((f * (1.2 + 1.0)) / (f + 1.2 * (1 - 0.75 + (0.75 * terms.length) / avgdl)));
    }
    return score;
  }

  it("scores each match with FTS5's BM25 over the whole index, best first, ties by chunk id", async () => {
    const t = unique("t");
    const hasher = await indexHasher(keyringFor(b.env), t);
    const corpus = [
      "the pump moves water through the valve",
      "valve valve valve pressure",
      "water",
      "a long sentence about pumps and water and valves and pressure and flow and pipes",
      "pressure drop across the valve when the pump stops",
      "nothing relevant here at all",
      "water water water water pump",
      "water",
    ];
    const store = openStore(b.env);
    const id = unique("job_t");
    const job = newJob(id, corpus.length, t);
    job.chunks = await Promise.all(
      job.chunks.map(async (c, i) => ({
        ...c,
        text: corpus[i] as string,
        terms: await hasher.document(corpus[i] as string),
      })),
    );
    await store.createJob(job);
    await store.recordDone(
      id,
      job.chunks.map((c) => c.id),
    );
    const index = async () =>
      (await b.query<{ terms: string }>("SELECT terms FROM chunk_terms")).map((r) =>
        r.terms.split(" "),
      );
    for (const query of ["water pump", "valve", "pressure valve pump water", "pipes"]) {
      const terms = await queryTerms(keyringFor(b.env), t, query);
      const phrases = [...(terms?.match.matchAll(/"([^"]*)"/g) ?? [])].map((m) => m[1] as string);
      // Other test files write to a shared Postgres: the index must not change meanwhile.
      for (let attempt = 0; ; attempt++) {
        const before = await index();
        const hits = await store.keywordSearch({
          tenant: t,
          model: "use-lite",
          match: terms?.match ?? "",
          limit: 5,
        });
        const after = await index();
        if (before.length !== after.length && attempt < 5) continue;
        expect(hits.length).toBeGreaterThan(0);
        for (const h of hits) {
          const expected = bm25(after, h.terms.split(" "), phrases);
          expect(Math.abs(h.score - expected)).toBeLessThanOrEqual(1e-12 * Math.abs(expected));
        }
        const order = [...hits].sort((x, y) => y.score - x.score || (x.id < y.id ? -1 : 1));
        expect(hits.map((h) => h.id)).toEqual(order.map((h) => h.id));
        break;
      }
    }
    await store.deleteJob(id);
  });
});
