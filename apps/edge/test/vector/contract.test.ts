import { env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { METADATA_INDEXES } from "../../src/vector/config.js";
import { getVectorIndex, localVectorIndex } from "../../src/vector/index.js";
import { standInTests, vectorIndexContract } from "./contract.js";

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

  standInTests(
    async (dimensions, metadataIndexes) => (await freshLocal(dimensions, metadataIndexes)).index,
  );

  it("hands out the Vectorize binding itself when the backend is vectorize", () => {
    const prod = { ...env, VECTOR_BACKEND: "vectorize" } as Env;
    expect(getVectorIndex(prod, "use-lite")).toBe(env.VECTORIZE);
  });
});
