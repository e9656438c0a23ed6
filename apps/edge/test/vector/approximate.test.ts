import { env, runInDurableObject } from "cloudflare:test";
import { beforeAll, describe, expect, it } from "vitest";
import { rng } from "../../../../scripts/lib/corpus.js";
import { METADATA_INDEXES } from "../../src/vector/config.js";
import { localVectorIndex } from "../../src/vector/index.js";
import { LocalVectorIndex } from "../../src/vector/local-index.js";
import { rescoreCount } from "../../src/vector/memory.js";
import { dot, norm, type Scored, TopK } from "../../src/vector/topk.js";

// The local index past the size where it stops scoring every vector: its answers must still
// be the exact ones on clustered data, before and after writes, and after a restart.

const DIMS = 64;
const COUNT = 3000;
const CLUSTERS = 30;
const JOBS = 3;

/** Clustered vectors, seeded: centres plus noise, with the same noise level for queries. */
function clustered(seed: number) {
  const r = rng(seed);
  const gauss = () => Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
  const centres = Array.from({ length: CLUSTERS }, () =>
    Array.from({ length: DIMS }, () => gauss() + 0.5),
  );
  const near = (c: number[], spread: number) =>
    new Float32Array(c.map((x) => x + spread * gauss()));
  const vectors = Array.from({ length: COUNT }, (_, i) => ({
    id: `v${String(i).padStart(4, "0")}`,
    values: near(centres[i % CLUSTERS] as number[], 0.6),
    metadata: { tenant: "t1", jobId: `job-${i % JOBS}` },
  }));
  const queries = Array.from({ length: 20 }, (_, i) =>
    near(centres[(i * 7) % CLUSTERS] as number[], 0.6),
  );
  return { vectors, queries };
}

/** Brute-force search as the index defines it: cosine over the stored float32 values. */
function exact(
  stored: Map<string, { values: Float32Array; jobId: string }>,
  q: Float32Array,
  topK: number,
  jobId?: string,
): Scored[] {
  const top = new TopK(topK);
  const qn = norm(q);
  for (const [id, v] of stored) {
    if (jobId !== undefined && v.jobId !== jobId) continue;
    const d = qn * norm(v.values);
    top.push(id, d > 0 ? dot(q, v.values) / d : 0, null);
  }
  return top.items;
}

const summary = (r: VectorizeMatches | Scored[]) =>
  ("matches" in r ? r.matches : r).map((m) => `${m.id} ${m.score.toFixed(6)}`);

describe("LocalVectorIndex beyond the exact-scan size", () => {
  const name = `test:${crypto.randomUUID()}`;
  const stub = env.LOCAL_VECTORS.get(env.LOCAL_VECTORS.idFromName(name));
  const index = localVectorIndex(env.LOCAL_VECTORS, name);
  const { vectors, queries } = clustered(11);
  const stored = new Map<string, { values: Float32Array; jobId: string }>(
    vectors.map((v) => [v.id, { values: v.values, jobId: v.metadata.jobId }]),
  );

  beforeAll(async () => {
    await stub.configure({ dimensions: DIMS, metadataIndexes: [...METADATA_INDEXES] });
    for (let i = 0; i < vectors.length; i += 1000)
      await index.upsert(
        vectors.slice(i, i + 1000).map((v) => ({ ...v, values: Array.from(v.values) })),
      );
  });

  it("is past the exact-scan size, unfiltered and for one job", () => {
    // Otherwise the tests below would only check the exact path.
    expect(COUNT).toBeGreaterThan(rescoreCount(10));
    expect(COUNT / JOBS).toBeGreaterThan(rescoreCount(10));
  });

  it("answers exactly what brute force answers", async () => {
    for (const q of queries) {
      const r = await index.query(Array.from(q), { topK: 10 });
      expect(summary(r)).toEqual(summary(exact(stored, q, 10)));
      const f = await index.query(Array.from(q), {
        topK: 10,
        filter: { tenant: "t1", jobId: "job-1" },
      });
      expect(summary(f)).toEqual(summary(exact(stored, q, 10, "job-1")));
    }
  });

  it("reflects upserts, deletes and inserts made after the first query at once", async () => {
    const q = queries[0] as Float32Array;
    const before = await index.query(Array.from(q), { topK: 10 });
    const [best, second] = before.matches.map((m) => m.id) as [string, string];

    // Replace the best match by its opposite: it must drop out.
    const flipped = new Float32Array(q.map((x) => -x));
    await index.upsert([
      { id: best, values: Array.from(flipped), metadata: { tenant: "t1", jobId: "job-0" } },
    ]);
    stored.set(best, { values: flipped, jobId: "job-0" });
    let r = await index.query(Array.from(q), { topK: 10 });
    expect(r.matches.map((m) => m.id)).not.toContain(best);
    expect(summary(r)).toEqual(summary(exact(stored, q, 10)));

    await index.deleteByIds([second]);
    stored.delete(second);
    r = await index.query(Array.from(q), { topK: 10 });
    expect(r.matches.map((m) => m.id)).not.toContain(second);
    expect(summary(r)).toEqual(summary(exact(stored, q, 10)));

    await index.insert([
      { id: "new", values: Array.from(q), metadata: { tenant: "t1", jobId: "job-2" } },
    ]);
    stored.set("new", { values: q, jobId: "job-2" });
    r = await index.query(Array.from(q), { topK: 10, filter: { jobId: "job-2" } });
    expect(r.matches[0]?.id).toBe("new");
    expect(r.matches[0]?.score).toBeCloseTo(1, 6);
    expect(summary(r)).toEqual(summary(exact(stored, q, 10, "job-2")));
    expect((await index.describe()).vectorCount).toBe(stored.size);
  });

  it("keeps answering exactly across many writes (codes rebuilt as the count doubles)", async () => {
    // Another 3,000 vectors from other clusters: the count doubles, so the codes are rebuilt
    // around a new mean halfway through the writes.
    const more = clustered(12).vectors.map((v) => ({ ...v, id: `w${v.id}` }));
    for (let i = 0; i < more.length; i += 1000)
      await index.upsert(
        more.slice(i, i + 1000).map((v) => ({ ...v, values: Array.from(v.values) })),
      );
    for (const v of more) stored.set(v.id, { values: v.values, jobId: v.metadata.jobId });
    for (const q of [...queries.slice(0, 5), ...clustered(12).queries.slice(0, 5)]) {
      const r = await index.query(Array.from(q), { topK: 10 });
      expect(summary(r)).toEqual(summary(exact(stored, q, 10)));
    }
  });

  it("gives the same answers when rebuilt from SQLite, as after a restart", async () => {
    const qs = queries.slice(0, 5).map((q) => Array.from(q));
    const live = await Promise.all(qs.map((q) => index.query(q, { topK: 10 })));
    // A second instance over the same storage: what the runtime constructs after an eviction.
    // It has no in-memory form yet, so its first query reads everything back from SQLite.
    const restarted = await runInDurableObject(stub, async (_, state) => {
      const fresh = new LocalVectorIndex(state, env);
      await state.blockConcurrencyWhile(async () => {});
      return Promise.all(qs.map((q) => fresh.query(q, { topK: 10 })));
    });
    expect(restarted.map(summary)).toEqual(live.map(summary));
    expect(restarted.map(summary)).toEqual(
      qs.map((q) => summary(exact(stored, new Float32Array(q), 10))),
    );
  });
});
