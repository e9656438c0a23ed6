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
  /** Token window of the model. */
  maxTokens: number;
  /**
   * Largest chunk, in characters, that can never exceed `maxTokens`. The tokenizers we support
   * emit at most one token per character plus a constant, so this bound is safe without
   * running the tokenizer at the edge.
   */
  maxChunkChars: number;
}

export const MODELS: Readonly<Record<string, ModelInfo>> = {
  "use-lite": { id: "use-lite", dimension: 512, maxTokens: 1024, maxChunkChars: 1000 },
};

export const DEFAULT_MODEL = "use-lite";

/** Looks a model up by id; undefined when the edge does not know it. */
export function getModel(id: string): ModelInfo | undefined {
  return Object.hasOwn(MODELS, id) ? MODELS[id] : undefined;
}
