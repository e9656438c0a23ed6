import { DurableObject } from "cloudflare:workers";
import { settings } from "../lib/settings.js";
import { slices } from "../lib/slices.js";
import { getVectorIndex, upsertVectors } from "./index.js";
import { type PackedVectors, packVectors, unpackVectors } from "./packed.js";

/**
 * Writes vectors to a model's index on behalf of a Dispatcher shard. The Vectorize binding's
 * client encodes every vector as text in the isolate that calls it (its values as decimals,
 * some 10 KB and 67 µs of CPU a 512-dimension vector measured in workerd, `npm run bench --
 * --only index-client`; pgvector's text form costs about the same), more than all the rest of
 * a shard's work for the chunk. A shard hands a group write's vectors to `INDEX_WRITERS` of
 * these objects at once, packed in one buffer each, and they pay for the encoding on their own
 * threads while it goes on with its leases. The shard waits for every part, so a write is
 * stored whole or fails whole exactly as when it writes the index itself. A submit hands the
 * vectors it takes from the embedding cache to its job's shard's writers the same way.
 */
export class IndexWriter extends DurableObject<Env> {
  async upsert(model: string, packed: PackedVectors): Promise<number> {
    await upsertVectors(getVectorIndex(this.env, model), unpackVectors(packed));
    return packed.ids.length;
  }
}

/**
 * How many index writers a shard hands its vectors to: `INDEX_WRITERS` where set, else 4 for
 * the indexes whose client encodes vectors as text (Vectorize, pgvector) and none for the local
 * index, which takes them as they are.
 */
function indexWriters(env: Env): number {
  const set = settings(env).INDEX_WRITERS;
  if (set !== undefined) return set;
  return env.VECTOR_BACKEND === "vectorize" || env.VECTOR_BACKEND === "pgvector" ? 4 : 0;
}

/** Fewest vectors a writer is handed: smaller writes are not worth a hop. */
const MIN_VECTORS_PER_WRITER = 64;

/** Most vectors one hand-over carries (4 MB of 512-dimension values; RPC messages are capped). */
const MAX_VECTORS_PER_MESSAGE = 2048;

/**
 * Upserts `vectors` into `model`'s index: through the index writers of `route` (a shard's
 * name), split among them and all at once (each taking its parts in turn), or directly where
 * there are none. Returns how many hand-overs it took (0: written directly).
 */
export async function writeVectors(
  env: Env,
  model: string,
  vectors: readonly VectorizeVector[],
  route: string,
): Promise<number> {
  if (vectors.length === 0) return 0;
  const pool = indexWriters(env);
  // A deployment whose configuration predates the writers has no binding for them.
  const ns = (env as Partial<Env>).INDEX_WRITER;
  if (pool === 0 || !ns) {
    await upsertVectors(getVectorIndex(env, model), vectors);
    return 0;
  }
  const writers = Math.min(pool, Math.ceil(vectors.length / MIN_VECTORS_PER_WRITER));
  const parts = slices(
    vectors,
    Math.min(MAX_VECTORS_PER_MESSAGE, Math.ceil(vectors.length / writers)),
  );
  await Promise.all(
    Array.from({ length: writers }, async (_, k) => {
      const writer = ns.get(ns.idFromName(`${model}:${route}:${k}`));
      for (let i = k; i < parts.length; i += writers)
        await writer.upsert(model, packVectors(parts[i] as VectorizeVector[]));
    }),
  );
  return parts.length;
}
