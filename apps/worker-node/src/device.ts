import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { type Embedder, loadModel } from "./model/index.js";
import type { LoadOptions } from "./model/types.js";

export type DeviceChoice = "auto" | "cpu" | "cuda";

export interface Device {
  /** What the worker reports to the edge and shows on its status line. */
  name: "cpu" | "cuda";
  /** ONNX Runtime execution providers, best first. */
  executionProviders: string[];
}

/**
 * Where the CUDA provider library would be: onnxruntime-node ships it only when installed with
 * `--onnxruntime-node-install=cuda12` (CPU binaries are always there).
 */
function cudaProviderPresent(): boolean {
  try {
    const require = createRequire(import.meta.url);
    const root = path.dirname(require.resolve("onnxruntime-node/package.json"));
    const dir = path.join(root, "bin", "napi-v6", process.platform, process.arch);
    return existsSync(path.join(dir, "libonnxruntime_providers_cuda.so"));
  } catch {
    return false;
  }
}

/**
 * Picks the best device: `auto` uses CUDA when its provider is installed (falling back to
 * the CPU if the session cannot start there), else the CPU.
 */
export function pickDevice(choice: DeviceChoice): Device {
  if (choice === "cpu") return { name: "cpu", executionProviders: ["cpu"] };
  if (choice === "cuda" || cudaProviderPresent())
    return { name: "cuda", executionProviders: ["cuda", "cpu"] };
  return { name: "cpu", executionProviders: ["cpu"] };
}

/** A model loaded for a device, as the worker runs it. */
export interface LoadedModel {
  embedder: Embedder;
  /** Where it runs: the CPU when CUDA was picked but could not start. */
  device: Device;
  /** Why CUDA could not start, when it was picked and the CPU took over; else null. */
  cudaError: string | null;
}

/**
 * Loads the model on the device picked, falling back to the CPU when a CUDA session cannot
 * start (no driver, no CUDA provider library): the CPU always can, and a donor's worker should
 * still run. The caller says whether that fallback is worth a warning. `loader` is how the
 * model is loaded: in this thread (loadModel) or as sessions on threads of their own (loadModelPool).
 */
export async function loadOnDevice(
  model: string,
  device: Device,
  opts: Omit<LoadOptions, "executionProviders">,
  loader: (idOrPath: string, opts: LoadOptions) => Promise<Embedder> = loadModel,
): Promise<LoadedModel> {
  const load = (d: Device) => loader(model, { ...opts, executionProviders: d.executionProviders });
  try {
    return { embedder: await load(device), device, cudaError: null };
  } catch (err) {
    if (device.name !== "cuda") throw err;
    const cpu = pickDevice("cpu");
    return { embedder: await load(cpu), device: cpu, cudaError: (err as Error).message };
  }
}
