// Runs Hugging Face-layout sentence encoders (BERT family, e.g. all-MiniLM-L6-v2): tokenizer.json
// through @huggingface/tokenizers (pure JS, offline), one padded batch per embed call,
// mean pooling over the attention mask, then L2 normalisation.
import { readFile } from "node:fs/promises";
import path from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { type InferenceSession, Tensor } from "onnxruntime-node";
import { readJsonIfPresent } from "../files.js";
import type { Embedder, EmbedderStats, LoadInfo, LoadOptions, ModelManifest } from "../types.js";

/** BERT-style inputs this runner knows how to fill. */
const KNOWN_INPUTS = new Set(["input_ids", "attention_mask", "token_type_ids"]);
/** Default when neither the manifest nor the tokenizer files give a length (BERT's positions). */
export const DEFAULT_HF_MAX_TOKENS = 512;

/** A tokenizer plus what the runner needs to know about it. */
export interface HfTokenizer {
  /** Token ids with special tokens ([CLS] ... [SEP]). */
  encode(text: string): number[];
  /** Id used for padding (its value is masked out, but must be a valid id). */
  padId: number;
  /** Ids of special tokens (kept at the end when truncating). */
  specialIds: ReadonlySet<number>;
  /** tokenizer.json's truncation.max_length or tokenizer_config's model_max_length, if sane. */
  declaredMaxTokens?: number;
}

interface TokenizerJson {
  truncation?: { max_length?: number } | null;
  padding?: { pad_id?: number } | null;
}

/** Loads tokenizer.json (and tokenizer_config.json when present) from a model folder. */
export async function loadHfTokenizer(dir: string): Promise<HfTokenizer> {
  const json = JSON.parse(
    await readFile(path.join(dir, "tokenizer.json"), "utf8"),
  ) as TokenizerJson;
  const config = ((await readJsonIfPresent(path.join(dir, "tokenizer_config.json"))) ?? {}) as {
    model_max_length?: number;
  };
  const tok = new Tokenizer(json, config);
  const specialIds = new Set<number>();
  for (const [id, added] of tok.get_added_tokens_decoder()) if (added.special) specialIds.add(id);
  // model_max_length is 1e30 in configs that do not set it; only a real value counts.
  const fromConfig = config.model_max_length;
  const declared =
    json.truncation?.max_length ??
    (fromConfig !== undefined && fromConfig <= 100_000 ? fromConfig : undefined);
  return {
    encode: (text) => tok.encode(text).ids,
    padId: json.padding?.pad_id ?? tok.token_to_id("[PAD]") ?? 0,
    specialIds,
    declaredMaxTokens: declared,
  };
}

/** Name of the output to pool: the token states for mean pooling, else a sentence vector. */
export function pickOutput(session: InferenceSession, pooling: ModelManifest["pooling"]): string {
  const names = session.outputNames;
  const wanted = pooling === "mean" ? ["last_hidden_state"] : ["sentence_embedding", "embeddings"];
  const name = wanted.find((w) => names.includes(w)) ?? names[0];
  if (!name) throw new Error("model has no outputs");
  return name;
}

/** Width of `output` if the graph declares it statically, else undefined. */
export function declaredDimension(session: InferenceSession, output: string): number | undefined {
  const meta = session.outputMetadata[session.outputNames.indexOf(output)];
  const last = meta?.isTensor ? meta.shape.at(-1) : undefined;
  return typeof last === "number" && last > 0 ? last : undefined;
}

/** Cuts ids to `max`, keeping a trailing special token ([SEP]) as HF's own truncation does. */
function truncateIds(ids: number[], max: number, specialIds: ReadonlySet<number>): number[] {
  if (ids.length <= max) return ids;
  const last = ids.at(-1) as number;
  return specialIds.has(last) && max > 1 ? [...ids.slice(0, max - 1), last] : ids.slice(0, max);
}

/** Runs a padded batch and pools it: one row of `width` floats per sequence. */
export async function runBertBatch(
  session: InferenceSession,
  output: string,
  pooling: ModelManifest["pooling"],
  batch: number[][],
  padId: number,
): Promise<{ data: Float32Array; width: number }> {
  const b = batch.length;
  const t = Math.max(1, ...batch.map((x) => x.length));
  const ids = new BigInt64Array(b * t).fill(BigInt(padId));
  const mask = new BigInt64Array(b * t);
  batch.forEach((seq, i) => {
    for (let j = 0; j < seq.length; j++) {
      ids[i * t + j] = BigInt(seq[j] as number);
      mask[i * t + j] = 1n;
    }
  });
  const all: Record<string, Tensor> = {
    input_ids: new Tensor("int64", ids, [b, t]),
    attention_mask: new Tensor("int64", mask, [b, t]),
    token_type_ids: new Tensor("int64", new BigInt64Array(b * t), [b, t]),
  };
  const feeds = Object.fromEntries(session.inputNames.map((n) => [n, all[n] as Tensor]));
  const out = (await session.run(feeds))[output];
  if (!out) throw new Error(`model produced no "${output}"`);
  const data = out.data as Float32Array;
  if (pooling === "model") {
    if (out.dims.length !== 2 || out.dims[0] !== b)
      throw new Error(`"${output}" is [${out.dims}], want [B,H]`);
    return { data, width: out.dims[1] as number };
  }
  if (out.dims.length !== 3 || out.dims[0] !== b || out.dims[1] !== t) {
    throw new Error(`"${output}" is [${out.dims}], want [B,T,H] = [${b},${t},H]`);
  }
  const h = out.dims[2] as number;
  // Mean over real tokens only: padding positions have states too and must not count.
  const pooled = new Float32Array(b * h);
  batch.forEach((seq, i) => {
    const n = Math.max(seq.length, 1);
    for (let j = 0; j < seq.length; j++) {
      const base = (i * t + j) * h;
      for (let k = 0; k < h; k++) {
        pooled[i * h + k] = (pooled[i * h + k] as number) + (data[base + k] as number);
      }
    }
    for (let k = 0; k < h; k++) pooled[i * h + k] = (pooled[i * h + k] as number) / n;
  });
  return { data: pooled, width: h };
}

function l2normalize(v: Float32Array): Float32Array {
  let s = 0;
  for (const x of v) s += x * x;
  const inv = 1 / Math.max(Math.sqrt(s), 1e-12);
  for (let i = 0; i < v.length; i++) v[i] = (v[i] as number) * inv;
  return v;
}

/** Checks the session's inputs are BERT-style ones this runner can feed. */
function checkBertInputs(session: InferenceSession): void {
  const unknown = session.inputNames.filter((n) => !KNOWN_INPUTS.has(n));
  if (unknown.length > 0 || !session.inputNames.includes("input_ids")) {
    throw new Error(
      `hf-bert model inputs are [${session.inputNames}]; expected input_ids with optional attention_mask, token_type_ids`,
    );
  }
}

/** Builds the Embedder over an open session. */
export function hfEmbedder(
  session: InferenceSession,
  tokenizer: HfTokenizer,
  manifest: ModelManifest,
  info: LoadInfo,
  opts: LoadOptions,
): Embedder {
  checkBertInputs(session);
  const output = pickOutput(session, manifest.pooling);
  const stats: EmbedderStats = { texts: 0, batches: 0, truncated: 0 };
  return {
    manifest,
    info,
    stats,
    parallelism: 1,
    countTokens: (text) => tokenizer.encode(text).length,
    async embed(texts) {
      if (texts.length === 0) return [];
      const batch = texts.map((text, index) => {
        const ids = tokenizer.encode(text);
        if (ids.length <= manifest.maxTokens) return ids;
        stats.truncated++;
        opts.onTruncate?.({ index, tokens: ids.length, maxTokens: manifest.maxTokens });
        return truncateIds(ids, manifest.maxTokens, tokenizer.specialIds);
      });
      const { data, width } = await runBertBatch(
        session,
        output,
        manifest.pooling,
        batch,
        tokenizer.padId,
      );
      if (width !== manifest.dimension) {
        throw new Error(
          `${manifest.id}: model returns ${width}-dim vectors, manifest says ${manifest.dimension}`,
        );
      }
      stats.texts += texts.length;
      stats.batches++;
      return texts.map((_, i) => {
        const v = data.slice(i * width, (i + 1) * width);
        return manifest.normalize ? l2normalize(v) : v;
      });
    },
    dispose: () => session.release(),
  };
}
