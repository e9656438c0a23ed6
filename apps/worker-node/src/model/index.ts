// Public surface of the model layer.
export { benchEmbedder, benchSentences } from "./bench-model.js";
export { ModelIntegrityError } from "./files.js";
export { loadModel } from "./load.js";
export {
  MANIFEST_FILE,
  USE_LITE_MANIFEST,
} from "./manifest.js";
export {
  defaultSessions,
  describeSessions,
  loadModelPool,
} from "./pool.js";

export type { Embedder } from "./types.js";
