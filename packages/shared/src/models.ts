/**
 * Models the edge knows how to schedule. The edge never runs a model; it needs only what
 * shapes the work: the output dimension (to validate results and size the vector index) and
 * the largest chunk that fits the model's window without truncation.
 */
export interface ModelInfo {
  /** Stable id used in the API and the wire protocol. */
  id: string;
  /** Length of every output vector. */
  dimension: number;
  /** Token window of the model: the chunker keeps every chunk within it. */
  maxTokens: number;
  /** Chunk size, in characters, when a job names none. */
  defaultChunkChars: number;
  /** Largest `chunking.maxChars` a job may ask for. */
  maxChunkChars: number;
}

export const MODELS: Readonly<Record<string, ModelInfo>> = {
  // USE-lite reads at most 128 tokens (its graph clips longer input; its position table has
  // 128 rows): about 500-600 characters of English.
  "use-lite": {
    id: "use-lite",
    dimension: 512,
    maxTokens: 128,
    defaultChunkChars: 600,
    maxChunkChars: 4000,
  },
};

export const DEFAULT_MODEL = "use-lite";

/** Looks a model up by id; undefined when the edge does not know it. */
export function getModel(id: string): ModelInfo | undefined {
  return Object.hasOwn(MODELS, id) ? MODELS[id] : undefined;
}
