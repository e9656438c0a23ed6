import type { MetadataStore, VersionRow } from "../db/store.js";
import { chunkIdOf } from "../lib/chunk-ids.js";
import { deleteVectors, getVectorIndex } from "../vector/index.js";
import { dropOriginals } from "./originals.js";

/** Versions pruned per pass. */
const PRUNE_BATCH = 100;

/** A version's chunk ids, as the submit flow made them. */
function chunkIdsOf(v: VersionRow): string[] {
  return Array.from({ length: v.chunks }, (_, i) => chunkIdOf(v.jobId, v.seq, i));
}

/**
 * Removes what superseded versions of a tenant's documents leave: their vectors, chunks,
 * keyword and cache entries, and their originals unless a live version shares them. Search
 * stops showing a version the moment it is superseded (it reads current versions only); this
 * takes the leftovers away after (when a job ends), a batch of versions at a time. A failure
 * leaves the batch for the next pass.
 */
export async function pruneSuperseded(
  env: Env,
  store: MetadataStore,
  tenant: string,
): Promise<number> {
  let pruned = 0;
  for (;;) {
    const batch = await store.versionsToPrune(tenant, PRUNE_BATCH);
    if (batch.length === 0) return pruned;
    try {
      const byModel = new Map<string, string[]>();
      for (const v of batch) {
        const ids = byModel.get(v.model) ?? [];
        ids.push(...chunkIdsOf(v));
        byModel.set(v.model, ids);
      }
      for (const [model, ids] of byModel) await deleteVectors(getVectorIndex(env, model), ids);
      await store.pruneVersions(batch.map((v) => ({ jobId: v.jobId, seq: v.seq, id: v.id })));
      await dropOriginals(
        env,
        store,
        tenant,
        batch.flatMap((v) => (v.rawKey ? [v.rawKey] : [])),
      );
      pruned += batch.length;
    } catch (err) {
      console.warn("pruning superseded versions failed; they are retried later", tenant, err);
      return pruned;
    }
    if (batch.length < PRUNE_BATCH) return pruned;
  }
}
