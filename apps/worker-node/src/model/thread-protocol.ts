// The messages between an Embedder's main side (threaded.ts) and its inference thread
// (inference-thread.ts). Types only: neither side imports the other's code.
import type { EmbedderStats, LoadInfo, LoadOptions, ModelManifest } from "./types.js";

/** What the thread loads, as `workerData`: loadModel's arguments, less what cannot be cloned. */
export interface ThreadStart {
  idOrPath: string;
  opts: Omit<LoadOptions, "fetch" | "onTruncate">;
}

/** An error as it crosses the thread boundary. */
export interface ThreadError {
  name: string;
  message: string;
  stack?: string;
}

export type ToThread =
  /** Embed `texts` as one batch; answered with `done` or `failed` of the same id. */
  | { type: "embed"; id: number; texts: string[] }
  /** Release the session once the run under way (if any) ends, then exit. */
  | { type: "dispose" };

export type FromThread =
  | { type: "ready"; manifest: ModelManifest; info: LoadInfo; stats: EmbedderStats }
  | { type: "load_failed"; error: ThreadError }
  /** A text of call `id` was truncated (sent before that call's `done`). */
  | {
      type: "truncate";
      id: number;
      event: { index: number; tokens: number; maxTokens: number };
    }
  /**
   * Call `id`'s vectors: `count` rows of `width` floats in one transferred buffer. `stats`
   * are the thread's counters once the call ended.
   */
  | {
      type: "done";
      id: number;
      data: Float32Array;
      count: number;
      width: number;
      stats: EmbedderStats;
    }
  | { type: "failed"; id: number; error: ThreadError; stats: EmbedderStats };
