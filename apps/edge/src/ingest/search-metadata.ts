import type { Job } from "@p2pa/shared";
import type { ChunkRow, MetadataStore } from "../db/store.js";
import type { DocumentMeta, QueuedItem } from "../dispatch/task-queue.js";
import { maskPersonalData } from "../privacy/mask.js";
import { filterableKeys } from "../vector/config.js";

/**
 * What each of a document's vectors carries for search filters beyond the product's own keys:
 * its collection and the filterable keys of its metadata (scalar values only, as Vectorize
 * indexes no others).
 */
export function searchMetadata(
  collection: string,
  metadata: Record<string, unknown> | null | undefined,
  filterable: readonly string[],
): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = { collection };
  for (const key of filterable) {
    const v = metadata?.[key];
    if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") out[key] = v;
  }
  return out;
}

/** A written job's chunk still to compute, with the search metadata its vector carries. */
export interface PendingChunk {
  chunk: ChunkRow & { text: string };
  meta: Record<string, string | number | boolean>;
}

/**
 * A written job's chunks still to compute, read from the metadata store, each with its
 * document's search metadata as it was written (a detected language included).
 */
export async function pendingChunks(
  env: Pick<Env, "FILTERABLE_METADATA">,
  store: MetadataStore,
  tenant: string,
  job: Pick<Job, "id" | "collection">,
): Promise<PendingChunk[]> {
  const filterable = filterableKeys(env);
  const out: PendingChunk[] = [];
  for (let after: string | null = null; ; ) {
    const page = await store.listChunks(tenant, job.id, after, 1000);
    for (const c of page)
      if (c.status === "pending" && c.text !== null)
        out.push({
          chunk: { ...c, text: c.text },
          meta: searchMetadata(job.collection, c.metadata, filterable),
        });
    if (page.length < 1000) return out;
    after = page.at(-1)?.id ?? null;
  }
}

/** Each document's search metadata, of the chunks given. */
export function metaByDocument(chunks: readonly PendingChunk[]): DocumentMeta {
  const out: DocumentMeta = {};
  for (const { chunk, meta } of chunks) out[chunk.documentId] = meta;
  return out;
}

/**
 * A written job's pending chunks as work for its shard: their text masked as the job asks, and
 * a version that replaces a current one held until complete, as on the job's first hand-over.
 */
export async function pendingWork(
  store: MetadataStore,
  tenant: string,
  job: Pick<Job, "id" | "collection" | "privacy">,
  pending: readonly PendingChunk[],
): Promise<QueuedItem[]> {
  const mask = job.privacy.mask;
  const work: QueuedItem[] = pending.map(({ chunk: c, meta }) => ({
    chunkId: c.id,
    documentId: c.documentId,
    index: c.index,
    text: mask.length ? maskPersonalData(c.text, mask).text : c.text,
    meta,
  }));
  const documents = [...new Set(work.map((it) => it.documentId))];
  const replacing = new Set(
    (await store.liveVersions(tenant, job.collection, documents))
      .filter((v) => v.state === "pending" && v.jobId === job.id)
      .map((v) => v.docKey),
  );
  for (const it of work) if (replacing.has(it.documentId)) it.pending = true;
  return work;
}
