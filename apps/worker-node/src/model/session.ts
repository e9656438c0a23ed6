// One place that creates onnxruntime sessions, so every model runs with the same settings.
import os from "node:os";
import { InferenceSession } from "onnxruntime-node";

/** Default inference threads: every core the process may use. */
function defaultThreads(): number {
  return os.availableParallelism();
}

/**
 * Creates the (single) InferenceSession for a model.
 * - intraOpNumThreads = `threads`: parallelism inside each op (MatMul dominates these models).
 * - interOpNumThreads = 1: these graphs are one chain of ops, and a second pool would only
 *   compete with the first for the same cores.
 * - graphOptimizationLevel "all": constant folding and fusions (e.g. of the converted USE graph's
 *   shape arithmetic) done once at load.
 * - executionProviders: best first, e.g. ["cuda", "cpu"] from the device picker; default CPU.
 * Keep one session per process: sessions with different thread counts slow each other down.
 */
export async function createSession(
  model: string | Uint8Array,
  threads = defaultThreads(),
  executionProviders: readonly string[] = ["cpu"],
): Promise<InferenceSession> {
  if (!Number.isInteger(threads) || threads < 1) {
    throw new Error(`threads must be a positive integer, got ${threads}`);
  }
  const options: InferenceSession.SessionOptions = {
    executionProviders: [...executionProviders],
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: "all",
    executionMode: "sequential",
  };
  return typeof model === "string"
    ? InferenceSession.create(model, options)
    : InferenceSession.create(model, options);
}
