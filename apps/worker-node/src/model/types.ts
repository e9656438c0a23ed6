// The model layer's shared types: what a loaded model offers (Embedder), how a load went and
// what it takes. Every loader (use-lite/, hf/) and every caller imports them from here, and this
// file imports only the manifest's types, so the model files form no import cycle.
import type { ModelManifest } from "./manifest.js";

export type { ModelManifest } from "./manifest.js";

/** A text cut to `maxTokens` at embed time (the last resort; chunkers should prevent it). */
interface TruncationEvent {
  /** Position of the text in the `embed` call. */
  index: number;
  /** Tokens the text had. */
  tokens: number;
  /** Tokens the model was given. */
  maxTokens: number;
}

/** Counters since the model was loaded. */
export interface EmbedderStats {
  /** Texts embedded. */
  texts: number;
  /** session.run calls (one per embed call with at least one text). */
  batches: number;
  /** Texts truncated to maxTokens (see {@link TruncationEvent}). */
  truncated: number;
}

/** How a load went: where the model file is and whether cached work was reused. */
export interface LoadInfo {
  /** The ONNX file the session runs. */
  modelPath: string;
  /** SHA-256 of that file. */
  sha256: string;
  /**
   * True when nothing was converted or downloaded: the cached files verified and were used.
   * (A local folder always reports true.)
   */
  reused: boolean;
}

/** How one embed call is scheduled. */
export interface EmbedOptions {
  /**
   * A real-time request: where calls wait for a session (a pool, pool.ts), it goes before the
   * batch calls waiting. A single session runs calls in the order they come.
   */
  urgent?: boolean;
}

/** A loaded model: texts in, unit-length vectors out. */
export interface Embedder {
  /** The model's manifest (for use-lite, `files` lists the converted model.onnx). */
  readonly manifest: ModelManifest;
  readonly info: LoadInfo;
  readonly stats: Readonly<EmbedderStats>;
  /** Embed calls it runs at the same time: its sessions (1 unless a pool, pool.ts). */
  readonly parallelism: number;
  /**
   * Embeds the texts with ONE inference call for the whole batch, returning one
   * `manifest.dimension`-long vector per text, in order. Texts longer than
   * `manifest.maxTokens` are truncated to it and reported (stats.truncated, onTruncate):
   * size texts with `countTokens` first so this never happens.
   */
  embed(texts: string[], options?: EmbedOptions): Promise<Float32Array[]>;
  /** Tokens the model sees for `text` (special tokens included), for sizing chunks. */
  countTokens(text: string): number;
  /** Releases the inference session. */
  dispose(): Promise<void>;
}

/** Options for `loadModel` (load.ts). */
export interface LoadOptions {
  /** Folder for converted and downloaded models (e.g. ~/.cache/p2pa). */
  cacheDir: string;
  /** Inference threads (default: os.availableParallelism()); a pool shares them out. */
  threads?: number;
  /**
   * Sessions of the model side by side, each with `threads / sessions` threads
   * (`loadModelPool` only; default there: defaultSessions). loadModel and loadModelThreaded
   * load one session and refuse another count.
   */
  sessions?: number;
  /**
   * How the threads the model layer starts run beside other programs (loadModelThreaded,
   * loadModelPool; loadModel runs on its caller's thread and leaves it as it is). "low": at the
   * lowest scheduling priority (nice 19), so the model takes only the cores nothing else wants,
   * as volunteer computing clients run; on Linux only the inference threads are lowered,
   * elsewhere the whole process. Default "normal".
   */
  priority?: "low" | "normal";
  /** onnxruntime execution providers, best first (default ["cpu"]; see src/device.ts). */
  executionProviders?: readonly string[];
  /**
   * SHA-256 (lower-case hex) the manifest at a manifest URL must have, as the server's model
   * list states it: a manifest that differs is refused before any file it lists is fetched.
   */
  manifestSha256?: string;
  /** fetch used for manifest URLs (default: the global fetch). */
  fetch?: typeof fetch;
  /** Called for each text truncated at embed time. */
  onTruncate?: (event: TruncationEvent) => void;
}
