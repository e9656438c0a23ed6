import { getModel } from "@p2pa/shared";

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
 * The metadata indexes the production Vectorize index is deployed with (README, "Deploying"):
 * the product filters searches by tenant, job and document.
 */
export const METADATA_INDEXES: readonly string[] = ["tenant", "jobId", "documentId"];

/** Durable Object name of a model's local index. */
export function localIndexName(model: string): string {
  return `index:${model}`;
}

/**
 * The configuration a local index derives from its Durable Object name, as production derives
 * it from the deployed index: the model's dimension and the product's metadata indexes.
 * Undefined for names that are not `index:<known model>` (tests, ad-hoc indexes).
 */
export function configForName(name: string | undefined): LocalIndexConfig | undefined {
  if (!name?.startsWith("index:")) return undefined;
  const model = getModel(name.slice("index:".length));
  return model && { dimensions: model.dimension, metadataIndexes: [...METADATA_INDEXES] };
}
