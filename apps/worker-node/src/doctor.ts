import { createRequire } from "node:module";
import path from "node:path";
import pc from "picocolors";
import type { WorkerConfig } from "./config.js";
import { pickDevice } from "./device.js";
import { UserError } from "./errors.js";
import { describeSessions, type Embedder } from "./model/index.js";
import { httpBase, judgeProbe, type ProbeVerdict, reachServer } from "./preflight.js";
import { loadServedModel, type ServedLoad } from "./resolve-model.js";

const require = createRequire(import.meta.url);
const { engines } = require("../package.json") as { engines: { node: string } };

/** One line of the report. */
export interface CheckResult {
  name: string;
  ok: boolean;
  detail: string;
  /** What to do about a failure. */
  hint?: string;
  /** Not run, because a check it needs failed (`ok` is then false). */
  skipped?: true;
}

interface Outcome {
  ok: boolean;
  detail: string;
  hint?: string;
}

/** What one check learns for the checks after it. */
interface Found {
  verdict?: ProbeVerdict;
  /** The models that loaded, in the order asked for. */
  loaded: ServedLoad[];
}

interface Check {
  name: string;
  /** Model checks do not need each other: one model failing leaves the others to be checked. */
  kind?: "model";
  run(config: WorkerConfig, found: Found): Promise<Outcome>;
}

export interface DoctorOptions {
  /** Print one JSON object at the end instead of a line per check. */
  json: boolean;
  out: NodeJS.WritableStream & { isTTY?: boolean };
  env: NodeJS.ProcessEnv;
  /** The Node.js version to judge (default: this process's). */
  nodeVersion?: string;
}

/** What the worker is asked to embed: a sentence every text model has words for. */
const SAMPLE = "The quick brown fox jumps over the lazy dog.";
/** Embeddings timed after a first, warm-up call (which pays for allocations). */
const TIMED_RUNS = 5;

/** Whether `version` (e.g. "20.20.2") satisfies a `>=X[.Y[.Z]]` range, as engines states it. */
export function meetsRange(version: string, range: string): boolean {
  const m = /^>=\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?$/.exec(range.trim());
  if (!m) throw new Error(`engines range "${range}" is not of the form >=X.Y.Z`);
  const want = [m[1], m[2], m[3]].map((p) => Number(p ?? 0));
  const have = version.replace(/^v/, "").split(".").map(Number);
  for (let i = 0; i < 3; i++) {
    const d = (have[i] ?? 0) - (want[i] ?? 0);
    if (d !== 0) return d > 0;
  }
  return true;
}

function nodeCheck(version: string): Check {
  return {
    name: "node",
    run: async () =>
      meetsRange(version, engines.node)
        ? { ok: true, detail: `Node.js ${version} (needs ${engines.node})` }
        : {
            ok: false,
            detail: `Node.js ${version} is too old: p2pa-worker needs ${engines.node}`,
            hint: `Install Node.js ${engines.node.replace(/^>=\s*/, "")} or newer (https://nodejs.org, or nvm install --lts).`,
          },
  };
}

const failure = (err: UserError): Outcome => ({
  ok: false,
  detail: err.message,
  ...(err.hint ? { hint: err.hint } : {}),
});

/** Asks once: a donor running doctor wants an answer now, not the start's minute of retries. */
const serverCheck: Check = {
  name: "server",
  async run(config, found) {
    let answer: Awaited<ReturnType<typeof reachServer>>;
    try {
      answer = await reachServer(config.server, config.token, { waitMs: 0 });
    } catch (err) {
      if (err instanceof UserError) return failure(err);
      throw err;
    }
    found.verdict = await judgeProbe(answer);
    if (!found.verdict.ok && found.verdict.failed === "server") return failure(found.verdict.error);
    return {
      ok: true,
      detail: `${answer.base.origin} answered in ${answer.ms.toFixed(0)} ms`,
    };
  },
};

const tokenCheck: Check = {
  name: "token",
  async run(_config, { verdict }) {
    if (!verdict) throw new Error("the token check needs the server check's answer");
    if (!verdict.ok) return failure(verdict.error);
    return { ok: true, detail: "accepted as a worker token" };
  },
};

/**
 * One --model value: the server serves it (as its model list says, where it has one), it loads
 * (from the manifest the server names, for a model known only by name) and embeds a sentence.
 */
const modelCheck = (spec: string, name: string): Check => ({
  name,
  kind: "model",
  async run(config, found) {
    const started = performance.now();
    let served: ServedLoad;
    try {
      served = await loadServedModel(spec, {
        base: httpBase(config.server),
        token: config.token,
        device: pickDevice(config.device),
        load: {
          cacheDir: config.cacheDir,
          threads: config.threads,
          ...(config.sessions === undefined ? {} : { sessions: config.sessions }),
        },
      });
    } catch (err) {
      if (err instanceof UserError) return failure(err);
      throw err;
    }
    found.loaded.push(served);
    const loadMs = performance.now() - started;
    const { embedder } = served;
    const { manifest, info } = embedder;
    const from = info.reused ? "from" : "into";
    const loaded = `${manifest.id} loaded ${from} ${path.dirname(info.modelPath)} in ${loadMs.toFixed(0)} ms`;
    const damaged = `The model's files may be damaged: delete ${path.dirname(info.modelPath)} and run doctor again.`;
    let timed: { vector: Float32Array; msPer: number };
    try {
      timed = await timeSample(embedder);
    } catch (err) {
      return {
        ok: false,
        detail: `${loaded}, but embedding failed: ${(err as Error).message}`,
        hint: damaged,
      };
    }
    const problem = vectorProblem(timed.vector, manifest.dimension);
    if (problem) return { ok: false, detail: `${loaded}, but ${problem}`, hint: damaged };
    return {
      ok: true,
      detail: `${loaded}; ${manifest.dimension} dimensions, ${timed.msPer.toFixed(1)} ms per embedding${served.served ? "; the server serves it" : ""}`,
    };
  },
});

/** Embeds the sample sentence: once to warm up, then timed; returns the last vector. */
async function timeSample(embedder: Embedder): Promise<{ vector: Float32Array; msPer: number }> {
  await embedder.embed([SAMPLE]);
  const started = performance.now();
  let vectors: Float32Array[] = [];
  for (let i = 0; i < TIMED_RUNS; i++) vectors = await embedder.embed([SAMPLE]);
  const msPer = (performance.now() - started) / TIMED_RUNS;
  return { vector: vectors[0] ?? new Float32Array(0), msPer };
}

/** Why a vector is not what the model promises (its dimension, finite, unit length); or null. */
function vectorProblem(v: Float32Array, dimension: number): string | null {
  if (v.length !== dimension)
    return `the vector has ${v.length} dimensions, the manifest says ${dimension}`;
  let sum = 0;
  for (const x of v) {
    if (!Number.isFinite(x)) return "the vector holds a value that is not a finite number";
    sum += x * x;
  }
  const norm = Math.sqrt(sum);
  if (Math.abs(norm - 1) > 1e-3) return `the vector's length is ${norm.toFixed(4)}, not 1`;
  return null;
}

const CUDA_HINT =
  "Install onnxruntime-node's CUDA 12 build (npm install --onnxruntime-node-install=cuda12) on a machine with an NVIDIA driver and CUDA 12 libraries, or run with --device cpu.";

const deviceCheck: Check = {
  name: "device",
  async run(config, found) {
    // Every model is loaded for the same device: one that could not start CUDA says why.
    const loaded = found.loaded.find((l) => l.cudaError) ?? found.loaded[0];
    if (!loaded) throw new Error("the device check needs a loaded model");
    const { device, cudaError } = loaded;
    const runs = `${device.name} (execution providers: ${device.executionProviders.join(", ")}; ${describeSessions(loaded.embedder.parallelism, config.threads)})`;
    if (cudaError && config.device === "cuda")
      return {
        ok: false,
        detail: `--device cuda, but no CUDA session could start (${cudaError}); the worker would run on the CPU instead`,
        hint: CUDA_HINT,
      };
    if (cudaError)
      return {
        ok: true,
        detail: `CUDA provider found but no CUDA session could start (${cudaError}); the worker runs on ${runs}`,
      };
    const why =
      config.device !== "auto"
        ? `as --device ${config.device} asks`
        : device.name === "cuda"
          ? "picked by --device auto"
          : "picked by --device auto: no CUDA provider installed";
    return { ok: true, detail: `${runs}, ${why}` };
  },
};

/**
 * Runs the checks in order, printing each as it ends (or one JSON object at the end). Each
 * check needs the ones before it, as the worker's own start does: after a failure the rest are
 * reported as skipped. Returns the exit code: 0 when every check passed, 1 otherwise.
 */
export async function runDoctor(config: WorkerConfig, opts: DoctorOptions): Promise<number> {
  const several = config.models.length > 1;
  const checks = [
    nodeCheck(opts.nodeVersion ?? process.versions.node),
    serverCheck,
    tokenCheck,
    ...config.models.map((spec) => modelCheck(spec, several ? `model ${spec}` : "model")),
    deviceCheck,
  ];
  const render = lineRenderer(opts);
  const found: Found = { loaded: [] };
  const results: CheckResult[] = [];
  let failed: Check | null = null;
  try {
    for (const check of checks) {
      const blocked = failed !== null && !(check.kind === "model" && failed.kind === "model");
      const result: CheckResult = blocked
        ? {
            name: check.name,
            ok: false,
            detail: `not run: the ${failed?.name} check failed`,
            skipped: true,
          }
        : { name: check.name, ...(await check.run(config, found)) };
      if (!result.ok && !failed) failed = check;
      results.push(result);
      if (!opts.json) opts.out.write(render(result));
    }
  } finally {
    await Promise.all(found.loaded.map((l) => l.embedder.dispose()));
  }
  const ok = failed === null;
  if (opts.json) opts.out.write(`${JSON.stringify({ ok, checks: results })}\n`);
  else
    opts.out.write(
      ok
        ? `all ${results.length} checks passed\n`
        : `the ${failed?.name} check failed: fix it and run doctor again\n`,
    );
  return ok ? 0 : 1;
}

/**
 * ✓ / ✗ in colour on a terminal; plain words where the output is read by a program or a log,
 * or where NO_COLOR asks for it (https://no-color.org: any non-empty value).
 */
function lineRenderer(opts: DoctorOptions): (r: CheckResult) => string {
  const fancy = Boolean(opts.out.isTTY) && !opts.env.NO_COLOR;
  const c = pc.createColors(fancy);
  const width = 7;
  return (r) => {
    const mark = r.skipped
      ? fancy
        ? c.dim("-")
        : "skip"
      : r.ok
        ? fancy
          ? c.green("✓")
          : "ok"
        : fancy
          ? c.red("✗")
          : "FAIL";
    const lead = fancy ? `${mark} ` : `${mark.padEnd(5)}`;
    const name = r.name.padEnd(width);
    const body = r.skipped ? c.dim(`${name} ${r.detail}`) : `${c.bold(name)} ${r.detail}`;
    const indent = " ".repeat(fancy ? 2 : 5);
    const hint = r.hint ? `${indent}${fancy ? c.yellow("→") : "fix:"} ${r.hint}\n` : "";
    return `${lead}${body}\n${hint}`;
  };
}
