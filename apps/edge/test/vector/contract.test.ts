import { env, runInDurableObject } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { METADATA_INDEXES } from "../../src/vector/config.js";
import { compileFilter } from "../../src/vector/filter.js";
import { getVectorIndex, localVectorIndex } from "../../src/vector/index.js";
import { vectorIndexContract } from "./contract.js";

/** An empty local index under a fresh name, configured like the production one. */
async function freshLocal(dimensions: number, metadataIndexes = [...METADATA_INDEXES]) {
  const name = `test:${crypto.randomUUID()}`;
  const stub = env.LOCAL_VECTORS.get(env.LOCAL_VECTORS.idFromName(name));
  await stub.configure({ dimensions, metadataIndexes });
  return { stub, index: localVectorIndex(env.LOCAL_VECTORS, name) };
}

vectorIndexContract(
  "LocalVectorIndex, 8 dimensions",
  async () => (await freshLocal(8, [...METADATA_INDEXES, "year", "draft"])).index,
  { numberKey: "year", booleanKey: "draft", strictFilters: true },
);
vectorIndexContract(
  "getVectorIndex(env, 'use-lite'), local backend",
  () => getVectorIndex(env, "use-lite"),
  { strictFilters: true },
);

describe("LocalVectorIndex beyond the contract", () => {
  it("breaks score ties by id", async () => {
    const { index } = await freshLocal(4);
    await index.upsert(["c", "a", "b"].map((id, i) => ({ id, values: [1 + i, 0, 0, 0] })));
    const r = await index.query([1, 0, 0, 0]);
    expect(r.matches.map((m) => m.id)).toEqual(["a", "b", "c"]);
  });

  it("sizes a model's index from the model and keeps its dimensions fixed", async () => {
    expect((await getVectorIndex(env, "use-lite").describe()).dimensions).toBe(512);
    const { stub } = await freshLocal(4);
    await stub.configure({ dimensions: 4, metadataIndexes: ["extra"] });
    // Awaited inside an async function: a bare RPC promise's rejection reads as unhandled.
    await expect((async () => stub.configure({ dimensions: 8 }))()).rejects.toThrow(
      /cannot change to 8/,
    );
  });

  it("takes its dimensions from the first write when never configured", async () => {
    const index = localVectorIndex(env.LOCAL_VECTORS, `test:${crypto.randomUUID()}`);
    expect(await index.describe()).toMatchObject({ dimensions: 0, vectorCount: 0 });
    expect((await index.query([1, 0, 0])).matches).toEqual([]);
    await index.insert([{ id: "a", values: [1, 0, 0] }]);
    expect(await index.describe()).toMatchObject({ dimensions: 3, vectorCount: 1 });
    await expect(index.insert([{ id: "b", values: [1, 0] }])).rejects.toThrow(
      /has 2 dimensions; the index has 3/,
    );
    const mixed = localVectorIndex(env.LOCAL_VECTORS, `test:${crypto.randomUUID()}`);
    await expect(
      mixed.upsert([
        { id: "a", values: [1, 0] },
        { id: "b", values: [1, 0, 0] },
      ]),
    ).rejects.toThrow(/dimensions/);
    expect((await mixed.describe()).vectorCount).toBe(0);
  });

  it("refuses filters Vectorize could not answer, with a reason", async () => {
    const { index } = await freshLocal(4);
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
    const { index } = await freshLocal(4, ["flag", "n", "doc.kind"]);
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

  it("answers a filtered query through the metadata index, not a table scan", async () => {
    const { stub } = await freshLocal(4);
    const c = compileFilter({ tenant: "t1", jobId: { $in: ["a", "b"] } }, METADATA_INDEXES);
    const plan = await runInDurableObject(stub, (_, state) =>
      state.storage.sql
        .exec<{ detail: string }>(
          `EXPLAIN QUERY PLAN SELECT id, norm, vec FROM vectors WHERE ${c.sql}`,
          ...c.params,
        )
        .toArray()
        .map((r) => r.detail)
        .join("\n"),
    );
    expect(plan).toMatch(/USING INDEX vectors_meta_/);
    expect(plan).not.toMatch(/SCAN vectors\b(?! USING)/);
  });

  it("takes up to 1000 vectors a call, as a Workers binding does", async () => {
    const { index } = await freshLocal(4);
    const batch = (n: number) =>
      Array.from({ length: n }, (_, i) => ({ id: `v${i}`, values: [1, i, 0, 0] }));
    await index.upsert(batch(1000));
    await expect(index.upsert(batch(1001))).rejects.toThrow(/at most 1000/);
    expect((await index.describe()).vectorCount).toBe(1000);
    // Deleting more ids than one statement may bind.
    await index.deleteByIds(batch(1000).map((v) => v.id));
    expect((await index.describe()).vectorCount).toBe(0);
  });

  it("hands out the Vectorize binding itself when the backend is vectorize", () => {
    const prod = { ...env, VECTOR_BACKEND: "vectorize" } as Env;
    expect(getVectorIndex(prod, "use-lite")).toBe(env.VECTORIZE);
  });
});
