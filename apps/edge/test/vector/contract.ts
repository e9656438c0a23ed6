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
  /** A key with a metadata index of type number; the number-filter test needs one. */
  numberKey?: string;
  /** A key with a metadata index of type boolean; the boolean-filter test needs one. */
  booleanKey?: string;
  /**
   * Also check what Vectorize leaves undocumented but the local index defines (filter.ts):
   * missing keys, null, and values of another type than the filter's. Leave it off for a run
   * against Vectorize.
   */
  strictFilters?: boolean;
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

    /**
     * Writes vectors under one fresh job, each with the given metadata, plus one vector in
     * another job that matches everything: a filter that ignored the job key would find it.
     * Returns a function that lists the ids (by their labels) a filter finds within the job.
     */
    const filterCase = async (
      key: string,
      labelled: Record<string, VectorizeVectorMetadata | null | undefined>,
    ) => {
      // The strict test stores a JSON null, which the binding's metadata type leaves out.
      const meta = (jobId: string, value: VectorizeVectorMetadata | null | undefined) =>
        (value === undefined ? { jobId } : { jobId, [key]: value }) as Record<
          string,
          VectorizeVectorMetadata
        >;
      const j = job(`f-${key}`);
      const entries = Object.entries(labelled);
      await write("upsert", [
        ...entries.map(([label, value], i) => ({
          id: id(`f-${label}`),
          values: vec(1, i / 10, 0, 0),
          metadata: meta(j, value),
        })),
        ...entries.map(([label, value]) => ({
          id: id(`f-other-${label}`),
          values: vec(1, 0, 0, 0),
          metadata: meta(`${j}-other`, value),
        })),
      ]);
      const q = vec(1, 0, 0, 0);
      const prefix = id("f-");
      return async (cond: VectorizeVectorMetadataFilter[string]) =>
        ids(await index.query(q, { topK: 50, filter: { jobId: j, [key]: cond } }))
          .map((x) => x.slice(prefix.length))
          .sort();
    };

    it("filters strings with every operator, keys AND-ed", async () => {
      const hits = await filterCase("documentId", { a: "d1", b: "d2", c: "d3", d: "d4" });
      expect(await hits("d2")).toEqual(["b"]);
      expect(await hits({ $eq: "d2" })).toEqual(["b"]);
      expect(await hits({ $ne: "d2" })).toEqual(["a", "c", "d"]);
      expect(await hits({ $in: ["d1", "d3", "d9"] })).toEqual(["a", "c"]);
      expect(await hits({ $nin: ["d1", "d3"] })).toEqual(["b", "d"]);
      expect(await hits({ $lt: "d3" })).toEqual(["a", "b"]);
      expect(await hits({ $lte: "d3" })).toEqual(["a", "b", "c"]);
      expect(await hits({ $gt: "d2" })).toEqual(["c", "d"]);
      expect(await hits({ $gte: "d2" })).toEqual(["b", "c", "d"]);
      // An upper and a lower bound together, which Vectorize documents as allowed.
      expect(await hits({ $gt: "d1", $lte: "d3" })).toEqual(["b", "c"]);
      expect(await hits("d9")).toEqual([]);
    });

    it.runIf(options.numberKey)("filters numbers with every operator", async () => {
      const key = options.numberKey as string;
      const hits = await filterCase(key, { neg: -3, zero: 0, half: 2.5, ten: 10 });
      expect(await hits(10)).toEqual(["ten"]);
      expect(await hits({ $eq: 2.5 })).toEqual(["half"]);
      expect(await hits({ $ne: 0 })).toEqual(["half", "neg", "ten"]);
      expect(await hits({ $in: [-3, 10, 7] })).toEqual(["neg", "ten"]);
      expect(await hits({ $nin: [-3, 10] })).toEqual(["half", "zero"]);
      expect(await hits({ $lt: 2.5 })).toEqual(["neg", "zero"]);
      expect(await hits({ $lte: 2.5 })).toEqual(["half", "neg", "zero"]);
      expect(await hits({ $gt: 0 })).toEqual(["half", "ten"]);
      expect(await hits({ $gte: 0 })).toEqual(["half", "ten", "zero"]);
      expect(await hits({ $gte: -3, $lt: 10 })).toEqual(["half", "neg", "zero"]);
    });

    it.runIf(options.booleanKey)("filters booleans with $eq, $ne and $in", async () => {
      const key = options.booleanKey as string;
      const hits = await filterCase(key, { yes: true, no: false });
      expect(await hits(true)).toEqual(["yes"]);
      expect(await hits({ $eq: false })).toEqual(["no"]);
      expect(await hits({ $ne: true })).toEqual(["no"]);
      expect(await hits({ $in: [true] })).toEqual(["yes"]);
      expect(await hits({ $nin: [true] })).toEqual(["no"]);
    });

    it.runIf(options.strictFilters)(
      "never matches a value of another type; $ne and $nin match a missing key",
      async () => {
        const hits = await filterCase("documentId", {
          str: "5",
          num: 5,
          one: 1,
          yes: true,
          nul: null,
          missing: undefined,
          list: ["5"],
        });
        expect(await hits("5")).toEqual(["str"]);
        expect(await hits(5)).toEqual(["num"]);
        expect(await hits({ $eq: 1 })).toEqual(["one"]);
        expect(await hits(true)).toEqual(["yes"]);
        expect(await hits({ $in: ["5", true] })).toEqual(["str", "yes"]);
        expect(await hits({ $ne: "5" })).toEqual(["list", "missing", "nul", "num", "one", "yes"]);
        expect(await hits({ $nin: [5, 1] })).toEqual(["list", "missing", "nul", "str", "yes"]);
        expect(await hits({ $gte: 1 })).toEqual(["num", "one"]);
        expect(await hits({ $lt: "6" })).toEqual(["str"]);
        expect(await hits(null)).toEqual(["missing", "nul"]);
        expect(await hits({ $ne: null })).toEqual(["list", "num", "one", "str", "yes"]);
      },
    );

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

    it("stores the values a write was called with, though the caller's array changes after", async () => {
      // Views into one buffer, as vectors decoded from one result frame are; the caller reuses
      // the buffer as soon as the call has started.
      const frame = new Float32Array(2 * dims);
      frame.set(vec(1, 0, 0, 0), 0);
      frame.set(vec(0, 1, 0, 0), dims);
      const views = [frame.subarray(0, dims), frame.subarray(dims)];
      for (const v of ["a", "b"]) written.add(id(v));
      const pending = index.upsert([
        { id: id("a"), namespace: ns, values: views[0] as Float32Array },
        { id: id("b"), namespace: ns, values: views[1] as Float32Array },
      ]);
      frame.fill(0.5);
      await settle(await pending);
      const got = await index.getByIds([id("a"), id("b")]);
      expect(got.map((v) => Array.from(v.values))).toEqual([vec(1, 0, 0, 0), vec(0, 1, 0, 0)]);
      const best = await index.query(vec(0, 1, 0, 0), { topK: 1, namespace: ns });
      expect(ids(best)).toEqual([id("b")]);
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

/**
 * What the local index and the pgvector index define beyond Vectorize and both must keep:
 * filters Vectorize could not answer are refused with a reason, metadata compares strictly by
 * type (nested keys and ranges included), and a call takes at most 1000 vectors. Called inside
 * a `describe`; `fresh` returns an empty index of `dimensions` with these metadata indexes
 * (the production ones when absent).
 */
export function standInTests(
  fresh: (dimensions: number, metadataIndexes?: string[]) => VectorIndex | Promise<VectorIndex>,
): void {
  it("refuses filters Vectorize could not answer, with a reason", async () => {
    const index = await fresh(4);
    await index.upsert([{ id: "a", values: [1, 0, 0, 0], metadata: { jobId: "j", note: "n" } }]);
    const q = [1, 0, 0, 0];
    await expect(index.query(q, { filter: { note: "n" } })).rejects.toThrow(/no metadata index/);
    await expect(index.query(q, { filter: {} })).rejects.toThrow(/empty/);
    await expect(index.query(q, { filter: { $bad: "x" } })).rejects.toThrow(/invalid/);
    await expect(
      index.query(q, { filter: { jobId: { $like: "j" } } as VectorizeVectorMetadataFilter }),
    ).rejects.toThrow(/unsupported/);
  });

  it("compares metadata by type, nested keys and ranges included", async () => {
    const index = await fresh(4, ["flag", "n", "doc.kind"]);
    await index.upsert([
      { id: "t", values: [1, 0, 0, 0], metadata: { flag: true, n: 1, doc: { kind: "pdf" } } },
      { id: "one", values: [1, 0, 0, 0], metadata: { flag: 1, n: 5, doc: { kind: "txt" } } },
      { id: "s", values: [1, 0, 0, 0], metadata: { flag: "true", n: "5" } },
    ]);
    const hits = async (filter: VectorizeVectorMetadataFilter) =>
      (await index.query([1, 0, 0, 0], { filter })).matches.map((m) => m.id).sort();
    expect(await hits({ flag: true })).toEqual(["t"]);
    expect(await hits({ flag: { $ne: true } })).toEqual(["one", "s"]);
    expect(await hits({ n: 5 })).toEqual(["one"]);
    expect(await hits({ n: { $gte: 1, $lt: 5 } })).toEqual(["t"]);
    expect(await hits({ "doc.kind": "pdf" })).toEqual(["t"]);
    expect(await hits({ "doc.kind": null })).toEqual(["s"]);
    expect(await hits({ "doc.kind": { $nin: ["pdf"] } })).toEqual(["one", "s"]);
    const [m] = (await index.query([1, 0, 0, 0], { filter: { n: 1 }, returnMetadata: "indexed" }))
      .matches;
    expect(m?.metadata).toEqual({ flag: true, n: 1, doc: { kind: "pdf" } });
  });

  it("takes up to 1000 vectors a call, as a Workers binding does", async () => {
    const index = await fresh(4);
    const batch = (n: number) =>
      Array.from({ length: n }, (_, i) => ({ id: `v${i}`, values: [1, i, 0, 0] }));
    await index.upsert(batch(1000));
    await expect(index.upsert(batch(1001))).rejects.toThrow(/at most 1000/);
    expect((await index.describe()).vectorCount).toBe(1000);
    // Deleting more ids than one statement may bind.
    await index.deleteByIds(batch(1000).map((v) => v.id));
    expect((await index.describe()).vectorCount).toBe(0);
  });
}
