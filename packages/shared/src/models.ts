import { z } from "zod";

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

/** A model id: one safe path segment, as the worker's manifest and cache folders need. */
const ModelId = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, "must be letters, digits, '.', '_' or '-'")
  .refine((s) => !s.includes(".."), "must not contain '..'");

/**
 * A model the operator adds to a deployment (`MODELS`, a JSON array of these). Workers fetch it
 * from `manifest` (the p2pa-model.json they already understand, checked against its SHA-256);
 * the edge counts tokens for chunking with the tokenizer.json the manifest lists.
 */
export const ModelRegistration = z.strictObject({
  id: ModelId,
  /** Length of every vector the model returns. */
  dimension: z.number().int().min(1).max(4096),
  /** The model's token window; chunks are cut to stay within it. */
  maxTokens: z.number().int().min(8).max(32_768),
  /** Chunk size in characters when a job names none (default: about 4 characters a token). */
  defaultChunkChars: z.number().int().min(50).max(100_000).optional(),
  /** Largest chunk size a job may ask for (default: 4,000, or the default if larger). */
  maxChunkChars: z.number().int().min(50).max(100_000).optional(),
  /** Where workers and the edge fetch the model: the manifest's URL and its SHA-256. */
  manifest: z.strictObject({
    url: z.url({ protocol: /^https?$/ }),
    sha256: z.string().regex(/^[0-9a-f]{64}$/, "must be 64 lower-case hex digits"),
  }),
  /**
   * The Vectorize binding its vectors go to in production (each model has its own index, so
   * vectors of different models never mix). Default: VECTORIZE_<ID>, upper-cased, with
   * anything but letters and digits as `_`.
   */
  vectorize: z
    .string()
    .regex(/^[A-Z_][A-Z0-9_]*$/)
    .optional(),
});
export type ModelRegistration = z.infer<typeof ModelRegistration>;
