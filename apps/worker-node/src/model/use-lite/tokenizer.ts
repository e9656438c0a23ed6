// The USE-lite tokenizer lives in @p2pa/shared (the edge counts tokens with it to size
// chunks); this module adds loading its vocabulary from disk.
import { readFile } from "node:fs/promises";
import path from "node:path";
import type { UseVocabulary } from "@p2pa/shared";

export { UseTokenizer, type UseVocabulary } from "@p2pa/shared";

/** Loads vocab.json from the USE-lite package folder (`dist/`). */
export async function loadUseVocabulary(dir: string): Promise<UseVocabulary> {
  return JSON.parse(await readFile(path.join(dir, "vocab.json"), "utf8")) as UseVocabulary;
}
