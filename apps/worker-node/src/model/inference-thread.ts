// The inference thread: loads one model with `loadModel` and runs its embed calls one at a
// time, in the order they arrive. onnxruntime-node runs a session synchronously on the calling
// thread, so the thread that calls it can do nothing else meanwhile; here that is this thread,
// not the worker's main one. Requests sent while a run is under way wait in the port and are
// taken the moment it ends.
import os from "node:os";
import { parentPort, workerData } from "node:worker_threads";
import { loadModel } from "./load.js";
import type { FromThread, ThreadError, ThreadStart, ToThread } from "./thread-protocol.js";
import type { Embedder } from "./types.js";

if (!parentPort) throw new Error("inference-thread.ts runs as a worker thread (see threaded.ts)");
const port = parentPort;

const post = (msg: FromThread, transfer: ArrayBuffer[] = []) => port.postMessage(msg, transfer);

const asThreadError = (err: unknown): ThreadError =>
  err instanceof Error
    ? { name: err.name, message: err.message, ...(err.stack ? { stack: err.stack } : {}) }
    : { name: "Error", message: String(err) };

/** Packs equal-length vectors into one array, so one buffer crosses to the main thread. */
function pack(vectors: Float32Array[]): { data: Float32Array; width: number } {
  const width = vectors[0]?.length ?? 0;
  const data = new Float32Array(vectors.length * width);
  vectors.forEach((v, i) => {
    if (v.length !== width) throw new Error(`vector ${i} has ${v.length} floats, not ${width}`);
    data.set(v, i * width);
  });
  return { data, width };
}

const start = workerData as ThreadStart;
// Before the session exists: onnxruntime's own threads, if it starts any, inherit the priority.
// On Linux the nice value is a thread's own, so this lowers only this thread.
if (start.opts.priority === "low") os.setPriority(os.constants.priority.PRIORITY_LOW);
/** The call being run, for its truncation events. */
let current = -1;

async function serve(model: Embedder): Promise<void> {
  let closing = false;
  let queue: Promise<void> = Promise.resolve();

  const embed = async (id: number, texts: string[]) => {
    // After dispose the main side has already answered every call still waiting here.
    if (closing) return;
    current = id;
    try {
      const { data, width } = pack(await model.embed(texts));
      post({ type: "done", id, data, count: texts.length, width, stats: { ...model.stats } }, [
        data.buffer as ArrayBuffer,
      ]);
    } catch (err) {
      post({ type: "failed", id, error: asThreadError(err), stats: { ...model.stats } });
    }
  };

  const close = async () => {
    try {
      await model.dispose();
    } finally {
      process.exit(0);
    }
  };

  port.on("message", (msg: ToThread) => {
    if (msg.type === "embed") {
      queue = queue.then(() => embed(msg.id, msg.texts));
    } else if (msg.type === "dispose") {
      closing = true;
      queue = queue.then(close);
    }
  });
  post({ type: "ready", manifest: model.manifest, info: model.info, stats: { ...model.stats } });
}

loadModel(start.idOrPath, {
  ...start.opts,
  onTruncate: (event) => post({ type: "truncate", id: current, event }),
}).then(serve, (err: unknown) => {
  // Nothing listens on the port after this, so the thread ends on its own.
  post({ type: "load_failed", error: asThreadError(err) });
});
