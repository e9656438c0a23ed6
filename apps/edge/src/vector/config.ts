import { findModel } from "../lib/models.js";

/**
 * How a local index is set up, the counterpart of `wrangler vectorize create --dimensions`
 * plus `wrangler vectorize create-metadata-index` for each filterable property.
 */
export interface LocalIndexConfig {
  /** Length of every vector in the index; fixed once set. */
  dimensions: number;
  /** Metadata keys that can be filtered on and come back with `returnMetadata: "indexed"`. */
  metadataIndexes?: string[];
}

/**
 * The metadata indexes the product itself filters on: every search is held to its tenant, and
 * may be narrowed to jobs, documents and collections.
 */
export const METADATA_INDEXES: readonly string[] = ["tenant", "jobId", "documentId", "collection"];

/**
 * Keys the product writes into every vector's metadata. A document metadata key of the same
 * name is never copied into the vector (the product's value wins) and cannot be made filterable.
 */
const RESERVED_METADATA_KEYS: readonly string[] = [...METADATA_INDEXES, "index"];

/** Vectorize allows 10 metadata indexes per index; the product uses the rest of them. */
const MAX_METADATA_INDEXES = 10;

/**
 * The document metadata keys a search can filter on (`FILTERABLE_METADATA`, comma-separated).
 * Vectorize filters only on properties that have a metadata index, so each of these needs one
 * in production (README, "Deploying"); the local index creates them itself. Reserved and
 * malformed names are left out, and the list is cut to what Vectorize can index.
 */
export function filterableKeys(env: Pick<Env, "FILTERABLE_METADATA"> | undefined): string[] {
  const raw: string = env?.FILTERABLE_METADATA ?? "";
  const keys = raw
    .split(",")
    .map((k) => k.trim())
    .filter((k) => /^[A-Za-z_][\w-]{0,63}$/.test(k) && !RESERVED_METADATA_KEYS.includes(k));
  return [...new Set(keys)].slice(0, MAX_METADATA_INDEXES - METADATA_INDEXES.length);
}

/** Every metadata index of a model's index: the product's own, then the filterable keys. */
function metadataIndexes(env: Pick<Env, "FILTERABLE_METADATA"> | undefined): string[] {
  return [...METADATA_INDEXES, ...filterableKeys(env)];
}

/** Durable Object name of a model's local index. */
export function localIndexName(model: string): string {
  return `index:${model}`;
}

/**
 * The configuration a local index derives from its Durable Object name, as production derives
 * it from the deployed index: the model's dimension and the metadata indexes. Undefined for
 * names that are not `index:<known model>` (tests, ad-hoc indexes).
 */
export function configForName(
  name: string | undefined,
  env: Pick<Env, "FILTERABLE_METADATA" | "MODELS">,
): LocalIndexConfig | undefined {
  if (!name?.startsWith("index:")) return undefined;
  const model = findModel(env, name.slice("index:".length));
  return model && { dimensions: model.dimension, metadataIndexes: metadataIndexes(env) };
}
