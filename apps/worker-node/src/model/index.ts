// Public surface of the model layer.
export { type BenchResult, benchEmbedder, benchSentences } from "./bench-model.js";
export { ModelIntegrityError, sha256File } from "./files.js";
export { loadModel } from "./load.js";
export {
  MANIFEST_FILE,
  ModelFile,
  ModelManifest,
  parseManifest,
  USE_LITE_MANIFEST,
} from "./manifest.js";
export { defaultThreads } from "./session.js";
export type { Embedder, EmbedderStats, LoadInfo, LoadOptions, TruncationEvent } from "./types.js";
export { convertUseLite, resolveUseLiteSource } from "./use-lite/convert.js";
export { UseTokenizer } from "./use-lite/tokenizer.js";
