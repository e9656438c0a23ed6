import { AppError } from "../lib/errors.js";
import { requireModel } from "../lib/models.js";
import { slices } from "../lib/slices.js";
import { localIndexName } from "./config.js";
import type { LocalVectorIndex } from "./local-index.js";
import { modelPgvectorIndex } from "./pgvector.js";
import type { VectorIndex } from "./types.js";

export type { VectorIndex } from "./types.js";

/**
 * The vector index of `model`: its Vectorize binding when `VECTOR_BACKEND` is "vectorize", its
 * table in Postgres (`DATABASE_URL`, pgvector.ts) when it is "pgvector", otherwise the model's
 * `LocalVectorIndex` Durable Object, all behind the same interface, so callers never know
 * which one they hold. Each model has an index of its own, so vectors of
 * different models never mix: use-lite's binding is VECTORIZE, a registered model's the one
 * its entry in MODELS names (VECTORIZE_<ID> by default).
 */
export function getVectorIndex(env: Env, model: string): VectorIndex {
  if (env.VECTOR_BACKEND === "vectorize") {
    const binding = requireModel(env, model).vectorize;
    const index = (env as unknown as Record<string, unknown>)[binding];
    if (!index)
      throw new AppError(
        503,
        "not_configured",
        `model ${model} has no vector index: bind a Vectorize index as ${binding} in wrangler.toml`,
      );
    // `wrangler types` declares the binding as the beta `VectorizeIndex`; a v2 index answers
    // with the v2 shapes (`mutationId`, `vectorCount`). See types.ts.
    return index as Vectorize;
  }
  if (env.VECTOR_BACKEND === "pgvector") return modelPgvectorIndex(env, model);
  return localVectorIndex(env.LOCAL_VECTORS, localIndexName(model));
}

/**
 * A `VectorIndex` over the `LocalVectorIndex` object named `name`. Exposed for tests, which
 * use fresh names to get empty indexes.
 */
export function localVectorIndex(
  ns: DurableObjectNamespace<LocalVectorIndex>,
  name: string,
): VectorIndex {
  const object = ns.get(ns.idFromName(name));
  // Spelled out rather than returning the object handle, which also carries configure() and the
  // Durable Object plumbing that callers must not reach. Each call goes through an async
  // function because workerd reports a rejected RPC promise handed on as is as an unhandled
  // rejection, even when the caller awaits it.
  return {
    insert: async (vectors) => object.insert(vectors),
    upsert: async (vectors) => object.upsert(vectors),
    query: async (vector, options) => object.query(vector, options),
    getByIds: async (ids) => object.getByIds(ids),
    deleteByIds: async (ids) => object.deleteByIds(ids),
    describe: async () => object.describe(),
  };
}

/** Vectorize's getByIds reads at most 20 ids per call. */
const IDS_PER_READ = 20;
/** Vectorize deletes at most 1000 ids a call; smaller slices keep each call short. */
const IDS_PER_DELETE = 100;
/** Vectorize upserts at most 1000 vectors a call (5000 over HTTP); 500 keeps a call small. */
const VECTORS_PER_UPSERT = 1000;

/** The stored values of these vector ids (chunk ids), read in the slices the index allows. */
export async function vectorsOf(index: VectorIndex, ids: string[]): Promise<Map<string, number[]>> {
  const out = new Map<string, number[]>();
  for (const slice of slices(ids, IDS_PER_READ))
    for (const v of await index.getByIds(slice)) out.set(v.id, Array.from(v.values));
  return out;
}

/** Deletes these vector ids, in the slices the index allows. */
export async function deleteVectors(index: VectorIndex, ids: readonly string[]): Promise<void> {
  for (const slice of slices(ids, IDS_PER_DELETE)) await index.deleteByIds(slice);
}

/** Writes these vectors, in the slices the index allows. */
export async function upsertVectors(
  index: VectorIndex,
  vectors: readonly VectorizeVector[],
): Promise<void> {
  for (const slice of slices(vectors, VECTORS_PER_UPSERT)) await index.upsert(slice);
}
