import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { rng as seeded } from "../../../../scripts/lib/corpus.js";
import type { VectorIndex } from "../../src/vector/types.js";

/** How the suite drives one implementation. */
export interface ContractOptions {
  /**
   * Resolves once `mutation` is visible to reads. The local index applies mutations before it
   * answers (the default, no wait); Vectorize applies them seconds later, so a run against it
   * polls `describe()` until `processedUpToMutation` reaches the mutation.
   */
  settle?: (index: VectorIndex, mutation: VectorizeAsyncMutation) => Promise<void>;
}

/**
 * The behaviour the product relies on from a vector index, as a suite that runs against any
 * `VectorIndex`: the local Durable Object in CI, the real Vectorize binding when one is bound.
 * `makeIndex` returns an index of at least 4 dimensions with metadata indexes on `jobId` and
 * `documentId`. Every test writes under fresh ids, job ids and a fresh namespace, compares
 * counts relatively and deletes what it wrote, so the suite also runs against a shared index.
 */
export function vectorIndexContract(
  name: string,
  makeIndex: () => VectorIndex | Promise<VectorIndex>,
  options: ContractOptions = {},
): void {
  describe(name, () => {
    let index: VectorIndex;
    let dims: number;
    let run: string;
    let ns: string;
    let written: Set<string>;

    const id = (s: string) => `${run}-${s}`;
    const job = (s: string) => `${run}-job-${s}`;
    /** A vector of the index's length: the given leading components, then zeros. */
    const vec = (...xs: number[]) => Array.from({ length: dims }, (_, i) => xs[i] ?? 0);
    const settle = async (m: VectorizeAsyncMutation) => options.settle?.(index, m);
    const write = async (kind: "insert" | "upsert", vectors: VectorizeVector[]) => {
      for (const v of vectors) written.add(v.id);
      await settle(await index[kind](vectors));
    };
    const ids = (r: VectorizeMatches) => r.matches.map((m) => m.id);

    beforeEach(async () => {
      index = await makeIndex();
      dims = (await index.describe()).dimensions;
      expect(dims).toBeGreaterThanOrEqual(4);
      run = crypto.randomUUID().slice(0, 8);
      ns = `contract-${run}`;
      written = new Set();
    });

    afterEach(async () => {
      if (written.size > 0) await settle(await index.deleteByIds([...written]));
    });

    it("finds a stored vector as its own best match, with a score of about 1", async () => {
      const rand = seeded(7);
      const vs = ["a", "b", "c", "d"].map((s) => ({
        id: id(s),
        namespace: ns,
        values: Array.from({ length: dims }, () => rand() * 2 - 1),
      }));
      await write("upsert", vs);
      for (const v of vs) {
        const r = await index.query(v.values, { topK: 1, namespace: ns });
        expect(ids(r)).toEqual([v.id]);
        expect(r.count).toBe(1);
        expect(r.matches[0]?.score).toBeCloseTo(1, 4);
      }
    });

    it("ranks by cosine similarity, whatever the vectors' lengths", async () => {
      const expected: [string, number[], number][] = [
        ["same", [1, 0, 0, 0], 1],
        ["longer", [3, 0.3, 0, 0], 3 / Math.sqrt(9.09)],
        ["diagonal", [1, 1, 0, 0], Math.SQRT1_2],
        ["orthogonal", [0, 1, 0, 0], 0],
        ["opposite", [-2, -0.4, 0, 0], -2 / Math.sqrt(4.16)],
      ];
      await write(
        "upsert",
        expected.map(([s, xs]) => ({ id: id(s), namespace: ns, values: vec(...xs) })),
      );
      const r = await index.query(vec(1, 0, 0, 0), { topK: 10, namespace: ns });
      expect(ids(r)).toEqual(expected.map(([s]) => id(s)));
      r.matches.forEach((m, i) => {
        expect(m.score).toBeCloseTo(expected[i]?.[2] ?? Number.NaN, 4);
      });
    });

    it("restricts results with metadata filters", async () => {
      const meta = [
        ["j1d1", "1", "d1"],
        ["j1d2", "1", "d2"],
        ["j2d1", "2", "d1"],
        ["j3d1", "3", "d1"],
      ] as const;
      await write(
        "upsert",
        meta.map(([s, j, d], i) => ({
          id: id(s),
          values: vec(1, i / 10, 0, 0),
          metadata: { jobId: job(j), documentId: d },
        })),
      );
      const q = vec(1, 0, 0, 0);
      const hits = async (filter: VectorizeVectorMetadataFilter) =>
        ids(await index.query(q, { topK: 10, filter })).sort();
      expect(await hits({ jobId: job("1") })).toEqual([id("j1d1"), id("j1d2")]);
      expect(await hits({ jobId: { $eq: job("2") } })).toEqual([id("j2d1")]);
      expect(await hits({ jobId: job("1"), documentId: "d2" })).toEqual([id("j1d2")]);
      expect(await hits({ jobId: { $in: [job("1"), job("3")] } })).toEqual(
        [id("j1d1"), id("j1d2"), id("j3d1")].sort(),
      );
      expect(await hits({ jobId: job("1"), documentId: { $ne: "d1" } })).toEqual([id("j1d2")]);
      expect(
        await hits({ jobId: { $in: [job("1"), job("2")] }, documentId: { $nin: ["d2"] } }),
      ).toEqual([id("j1d1"), id("j2d1")]);
      expect(await hits({ jobId: job("none") })).toEqual([]);
    });

    it("insert keeps an existing vector; upsert replaces it", async () => {
      await write("insert", [{ id: id("x"), values: vec(1, 0, 0, 0), metadata: { v: 1 } }]);
      await write("insert", [{ id: id("x"), values: vec(0, 1, 0, 0), metadata: { v: 2 } }]);
      let [got] = await index.getByIds([id("x")]);
      expect(Array.from(got?.values ?? [])).toEqual(vec(1, 0, 0, 0));
      expect(got?.metadata).toEqual({ v: 1 });
      await write("upsert", [{ id: id("x"), values: vec(0, 1, 0, 0), metadata: { v: 2 } }]);
      [got] = await index.getByIds([id("x")]);
      expect(Array.from(got?.values ?? [])).toEqual(vec(0, 1, 0, 0));
      expect(got?.metadata).toEqual({ v: 2 });
    });

    it("returns stored values and metadata by id, leaving unknown ids out", async () => {
      const values = vec(0.1, -0.2, 0.3, 0.4);
      const metadata = { jobId: job("1"), documentId: "d1", index: 3, nested: { ok: true } };
      await write("upsert", [{ id: id("g"), namespace: ns, values, metadata }]);
      const got = await index.getByIds([id("g"), id("missing")]);
      expect(got.map((v) => v.id)).toEqual([id("g")]);
      const v = got[0] as VectorizeVector;
      expect(v.values).toHaveLength(dims);
      Array.from(v.values).forEach((x, i) => {
        expect(x).toBeCloseTo(values[i] ?? 0, 6);
      });
      expect(v.metadata).toEqual(metadata);
      expect(await index.getByIds([id("missing")])).toEqual([]);
    });

    it("deleteByIds removes vectors from queries, lookups and the count", async () => {
      const before = (await index.describe()).vectorCount;
      await write(
        "upsert",
        ["p", "q", "r"].map((s, i) => ({ id: id(s), namespace: ns, values: vec(1, i, 0, 0) })),
      );
      expect((await index.describe()).vectorCount).toBe(before + 3);
      await settle(await index.deleteByIds([id("p"), id("q"), id("never-stored")]));
      expect((await index.describe()).vectorCount).toBe(before + 1);
      expect(ids(await index.query(vec(1, 0, 0, 0), { topK: 10, namespace: ns }))).toEqual([
        id("r"),
      ]);
      expect(await index.getByIds([id("p"), id("q")])).toEqual([]);
    });

    it("keeps namespaces apart; no namespace searches all of them", async () => {
      const other = `${ns}-other`;
      await write("upsert", [
        { id: id("in-a"), namespace: ns, values: vec(1, 0, 0, 0), metadata: { jobId: job("n") } },
        {
          id: id("in-b"),
          namespace: other,
          values: vec(1, 0, 0, 0),
          metadata: { jobId: job("n") },
        },
      ]);
      const q = vec(1, 0, 0, 0);
      expect(ids(await index.query(q, { topK: 10, namespace: ns }))).toEqual([id("in-a")]);
      expect(ids(await index.query(q, { topK: 10, namespace: other }))).toEqual([id("in-b")]);
      const all = ids(await index.query(q, { topK: 10, filter: { jobId: job("n") } }));
      expect(all.sort()).toEqual([id("in-a"), id("in-b")]);
      const [b] = await index.getByIds([id("in-b")]);
      expect(b?.namespace).toBe(other);
    });

    it("rejects vectors and queries of the wrong dimension", async () => {
      const long = Array.from({ length: dims + 1 }, () => 0.5);
      const short = Array.from({ length: dims - 1 }, () => 0.5);
      await expect(index.upsert([{ id: id("long"), values: long }])).rejects.toThrow();
      await expect(index.insert([{ id: id("short"), values: short }])).rejects.toThrow();
      await expect(index.query(long, { namespace: ns })).rejects.toThrow();
      expect(await index.getByIds([id("long"), id("short")])).toEqual([]);
    });

    it("accepts ids up to 64 bytes and rejects longer ones", async () => {
      const max = `${run}-`.padEnd(64, "x");
      await write("upsert", [{ id: max, values: vec(1, 0, 0, 0) }]);
      expect((await index.getByIds([max])).map((v) => v.id)).toEqual([max]);
      await expect(index.upsert([{ id: `${max}x`, values: vec(1, 0, 0, 0) }])).rejects.toThrow();
      // Counted in bytes, not characters: 37 characters, 65 bytes.
      const wide = `${run}-${"é".repeat(28)}`;
      await expect(index.upsert([{ id: wide, values: vec(1, 0, 0, 0) }])).rejects.toThrow();
    });

    it("returns 5 matches by default and bounds topK like Vectorize", async () => {
      await write(
        "upsert",
        Array.from({ length: 7 }, (_, i) => ({
          id: id(`k${i}`),
          namespace: ns,
          values: vec(1, i, 0, 0),
        })),
      );
      const q = vec(1, 0, 0, 0);
      expect((await index.query(q, { namespace: ns })).count).toBe(5);
      expect((await index.query(q, { namespace: ns, topK: 100 })).count).toBe(7);
      expect((await index.query(q, { namespace: ns, topK: 50, returnValues: true })).count).toBe(7);
      await expect(index.query(q, { namespace: ns, topK: 101 })).rejects.toThrow();
      await expect(
        index.query(q, { namespace: ns, topK: 51, returnValues: true }),
      ).rejects.toThrow();
      await expect(
        index.query(q, { namespace: ns, topK: 51, returnMetadata: "all" }),
      ).rejects.toThrow();
    });

    it("returns values and metadata only as asked", async () => {
      const metadata = { jobId: job("m"), documentId: "d1", note: "not indexed", deep: { a: 1 } };
      await write("upsert", [{ id: id("m"), namespace: ns, values: vec(1, 2, 3, 4), metadata }]);
      const q = vec(1, 2, 3, 4);
      const one = async (o: VectorizeQueryOptions) =>
        (await index.query(q, { topK: 1, namespace: ns, ...o })).matches[0];
      const bare = await one({});
      expect(bare?.id).toBe(id("m"));
      expect(bare?.values).toBeUndefined();
      expect(bare?.metadata).toBeUndefined();
      expect((await one({ returnMetadata: "none" }))?.metadata).toBeUndefined();
      const indexed = await one({ returnMetadata: "indexed" });
      expect(indexed?.metadata).toMatchObject({ jobId: job("m"), documentId: "d1" });
      expect(indexed?.metadata).not.toHaveProperty("note");
      expect((await one({ returnMetadata: "all" }))?.metadata).toEqual(metadata);
      const withValues = await one({ returnValues: true });
      expect(Array.isArray(withValues?.values)).toBe(true);
      expect(withValues?.values).toEqual(vec(1, 2, 3, 4));
      expect(withValues?.metadata).toBeUndefined();
    });
  });
}
