import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

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
