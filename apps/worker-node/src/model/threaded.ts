// An Embedder whose model runs on a thread of its own (node:worker_threads), so the thread that
// calls it (the worker's WebSocket I/O: heartbeats, acks, decoding tasks) never waits on
// tokenization, a model run or pooling. The thread loads the model with `loadModel` and takes
// embed calls in order, one run at a time; calls made while one runs wait in the thread, so
// the next batch starts the moment the previous one ends. Vectors come back in one transferred
// buffer per call. `countTokens` stays synchronous: the main side loads the model's tokenizer
// too (the same files, the same code), without the session.
import { Worker } from "node:worker_threads";
import { loadTokenCounter } from "./load.js";
import type { FromThread, ThreadError, ThreadStart, ToThread } from "./thread-protocol.js";
import type { Embedder, EmbedderStats, LoadOptions } from "./types.js";

/**
 * Starts the thread's code, which lies next to this module. In the published package this
 * module is bundled into dist/cli.js and the thread is dist/inference-thread.js (build.mjs).
 * Run from source (tsx, vitest) it is inference-thread.ts, which a thread runs only once
 * tsx's loader is registered in it: a loader the process registered does not reach its threads.
 */
function startThread(workerData: ThreadStart): Worker {
  if (!/\.[cm]?ts$/.test(new URL(import.meta.url).pathname)) {
    return new Worker(new URL("./inference-thread.js", import.meta.url), { workerData });
  }
  const thread = new URL("./inference-thread.ts", import.meta.url).href;
  const tsx = import.meta.resolve("tsx/esm/api");
  const boot = `import(${JSON.stringify(tsx)}).then(({ register }) => { register(); return import(${JSON.stringify(thread)}); });`;
  return new Worker(boot, { eval: true, workerData });
}

/** The thread's error, with its name, message and stack (where in the thread it failed). */
const fromThread = (e: ThreadError): Error => {
  const err = new Error(e.message);
  err.name = e.name;
  if (e.stack) err.stack = e.stack;
  return err;
};

interface Pending {
  resolve: (vectors: Float32Array[]) => void;
  reject: (err: Error) => void;
}

/**
 * Loads a model as `loadModel` does (same ids, folders and manifest URLs, same options), on a
 * thread of its own; the Embedder returned runs every embed call there. `opts.fetch` cannot
 * cross to the thread: manifest URLs are fetched with the global fetch.
 */
export async function loadModelThreaded(idOrPath: string, opts: LoadOptions): Promise<Embedder> {
  if (opts.fetch)
    throw new Error("a threaded model fetches with the global fetch; omit opts.fetch");
  const { fetch: _fetch, onTruncate, ...cloneable } = opts;
  const worker = startThread({ idOrPath, opts: cloneable });

  const pending = new Map<number, Pending>();
  let loading = true;
  let nextId = 0;
  /** Why no call can be made any more (the thread ended, or dispose); null while it can. */
  let ended: Error | null = null;
  let exited = false;
  const stats: EmbedderStats = { texts: 0, batches: 0, truncated: 0 };

  // The thread keeps the process alive only while a call (or the load) waits on it, as an
  // in-process model would.
  const holdWhileBusy = () => (loading || pending.size > 0 ? worker.ref() : worker.unref());

  const endAll = (err: Error) => {
    ended ??= err;
    for (const p of pending.values()) p.reject(err);
    pending.clear();
    holdWhileBusy();
  };

  const exit = new Promise<void>((resolve) => {
    worker.once("exit", (code) => {
      exited = true;
      endAll(new Error(`the inference thread stopped (exit code ${code})`));
      resolve();
    });
  });
  worker.on("error", (err) => endAll(new Error(`the inference thread failed: ${err.message}`)));
  worker.on("messageerror", (err) =>
    endAll(new Error(`the inference thread sent what cannot be read: ${err.message}`)),
  );

  const ready = await new Promise<Extract<FromThread, { type: "ready" }>>((resolve, reject) => {
    const onLoad = (msg: FromThread) => {
      if (msg.type === "ready") resolve(msg);
      else if (msg.type === "load_failed") reject(fromThread(msg.error));
      else return;
      worker.off("message", onLoad);
      worker.off("exit", onExit);
    };
    const onExit = () => reject(ended ?? new Error("the inference thread stopped while loading"));
    worker.on("message", onLoad);
    worker.once("exit", onExit);
  }).catch(async (err: Error) => {
    await worker.terminate();
    throw err;
  });
  loading = false;
  Object.assign(stats, ready.stats);

  worker.on("message", (msg: FromThread) => {
    if (msg.type === "truncate") {
      if (pending.has(msg.id)) onTruncate?.(msg.event);
      return;
    }
    if (msg.type !== "done" && msg.type !== "failed") return;
    Object.assign(stats, msg.stats);
    const call = pending.get(msg.id);
    if (!call) return;
    pending.delete(msg.id);
    holdWhileBusy();
    if (msg.type === "failed") {
      call.reject(fromThread(msg.error));
      return;
    }
    const { data, count, width } = msg;
    call.resolve(
      Array.from({ length: count }, (_, i) => data.subarray(i * width, (i + 1) * width)),
    );
  });
  holdWhileBusy();

  let countTokens: (text: string) => number;
  try {
    countTokens = await loadTokenCounter(ready.manifest, ready.info);
  } catch (err) {
    await worker.terminate();
    throw err;
  }

  let disposing: Promise<void> | null = null;
  return {
    manifest: ready.manifest,
    info: ready.info,
    stats,
    parallelism: 1,
    countTokens,
    embed(texts) {
      if (ended) return Promise.reject(ended);
      const id = nextId++;
      return new Promise<Float32Array[]>((resolve, reject) => {
        pending.set(id, { resolve, reject });
        holdWhileBusy();
        try {
          worker.postMessage({ type: "embed", id, texts } satisfies ToThread);
        } catch (err) {
          pending.delete(id);
          holdWhileBusy();
          reject(err as Error);
        }
      });
    },
    dispose() {
      disposing ??= (async () => {
        endAll(new Error(`model ${ready.manifest.id} was disposed`));
        if (exited) return;
        worker.ref();
        worker.postMessage({ type: "dispose" } satisfies ToThread);
        await exit;
      })();
      return disposing;
    },
  };
}
