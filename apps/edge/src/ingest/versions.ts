import type { MetadataStore } from "../db/store.js";
import { getVectorIndex } from "../vector/index.js";

// Vectorize deletes at most 1000 ids a call; smaller slices keep each call short.
const IDS_PER_DELETE = 100;
/** Versions pruned per pass; the next promotion picks up any left. */
const PRUNE_BATCH = 50;

/**
 * Removes what superseded versions of a tenant's documents leave: their vectors, chunks,
 * keyword and cache entries, and their original unless a live version shares it. Search stops
 * showing a version the moment it is superseded (it reads current versions only); this takes
 * the leftovers away after. A failure leaves the version for the next pass.
 */
export async function pruneSuperseded(
  env: Env,
  store: MetadataStore,
  tenant: string,
): Promise<number> {
  let pruned = 0;
  for (const v of await store.versionsToPrune(tenant, PRUNE_BATCH)) {
    try {
      const doc = await store.getDocument(tenant, v.jobId, v.id);
      const ids = doc?.chunkIds ?? [];
      const index = getVectorIndex(env, v.model);
      for (let i = 0; i < ids.length; i += IDS_PER_DELETE)
        await index.deleteByIds(ids.slice(i, i + IDS_PER_DELETE));
      await store.pruneVersion(v.jobId, v.seq);
      if (v.rawKey && !(await store.originalInUse(tenant, v.rawKey)))
        await env.RAW.delete(v.rawKey);
      pruned++;
    } catch (err) {
      console.warn("pruning a superseded version failed; it is retried later", v.jobId, err);
      break;
    }
  }
  return pruned;
}
