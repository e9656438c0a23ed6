// From a --model value to a loaded model the server serves. A built-in id or a name is asked
// about before anything loads; a name that is not built in is loaded from the manifest the
// server's model list names; a folder or a manifest URL is loaded first, then asked about by
// its manifest's id. Used by the worker's start and by doctor, so both reach the same verdict.
import { stat } from "node:fs/promises";
import path from "node:path";
import { type Device, type LoadedModel, loadOnDevice } from "./device.js";
import { UserError } from "./errors.js";
import { loadModelPool, USE_LITE_MANIFEST } from "./model/index.js";
import type { LoadOptions } from "./model/types.js";
import { askServer, ModelNotServed, type ServedModel, type ServerAnswer } from "./served.js";

/** Exit code of a model that cannot be found or loaded. */
const MODEL_EXIT = 5;

const BUILT_IN: ReadonlySet<string> = new Set([USE_LITE_MANIFEST.id]);

/** A name a server's model list could hold: one path segment (the cache folder it gets). */
const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** Where a --model value's model comes from. */
type Source = "built-in" | "url" | "path" | "server";

async function sourceOf(spec: string): Promise<Source> {
  if (BUILT_IN.has(spec)) return "built-in";
  if (/^https?:\/\//i.test(spec)) return "url";
  const here = await stat(path.resolve(spec)).then(
    () => true,
    () => false,
  );
  // A value that is neither here nor a plain name is a path, and the loader says it is missing.
  return here || !MODEL_NAME.test(spec) ? "path" : "server";
}

/** A model loaded for the worker, with what the server said of it. */
export interface ServedLoad extends LoadedModel {
  /** The server's model list's entry; null where it has none (a server without the list). */
  served: ServedModel | null;
}

/** What resolving a --model value needs. */
interface ResolveContext {
  /** The server, as an http(s) URL. */
  base: URL;
  token: string;
  device: Device;
  load: Omit<LoadOptions, "executionProviders" | "manifestSha256">;
  /** Lines for the person starting the worker (where a model from the list comes from). */
  log?: (line: string) => void;
}

/**
 * Loads the model a --model value names and makes sure the server serves it. Throws
 * ModelNotServed when the server says it does not, and a UserError (exit code 5) when the
 * model cannot be found or loaded.
 */
export async function loadServedModel(spec: string, ctx: ResolveContext): Promise<ServedLoad> {
  const source = await sourceOf(spec);
  const origin = ctx.base.origin;
  const ask = (id: string) => askServer(ctx.base, ctx.token, id, ctx.load.fetch);
  if (source === "url" || source === "path") {
    const loaded = await load(spec, spec, ctx);
    const id = loaded.embedder.manifest.id;
    const answer = await ask(id);
    if (answer.kind === "not_served") {
      await loaded.embedder.dispose();
      throw new ModelNotServed(origin, id, answer.available);
    }
    const served = servedOf(answer);
    return { ...(await agreeing(loaded, served, origin)), served };
  }
  // Asked first: nothing is converted or downloaded for a model the server does not serve.
  const answer = await ask(spec);
  if (answer.kind === "not_served") throw new ModelNotServed(origin, spec, answer.available);
  if (source === "built-in") {
    const served = servedOf(answer);
    return { ...(await agreeing(await load(spec, spec, ctx), served, origin)), served };
  }
  if (answer.kind === "unknown")
    throw new UserError(
      `unknown model "${spec}": not built in (${[...BUILT_IN].join(", ")}), not a path on this machine, not a manifest URL, and the server at ${origin} does not list it (${answer.why})`,
      "Check --model: a built-in id, a model the server lists, a model folder, or a manifest URL.",
      MODEL_EXIT,
    );
  const listed = answer.model;
  if (!listed.manifest)
    throw new UserError(
      `the server at ${origin} serves model "${spec}" but names no manifest to download it from`,
      "Ask its operator to add the model's manifest, or start with --model <its folder or manifest URL>.",
      MODEL_EXIT,
    );
  // A URL relative to the server resolves against it.
  const manifestUrl = new URL(listed.manifest.url, ctx.base);
  const sha256 = listed.manifest.sha256.toLowerCase();
  const wrongEntry = (what: string) =>
    new UserError(
      `the server at ${origin} lists model "${spec}" with ${what}`,
      "Ask the server's operator to correct the model's entry.",
      MODEL_EXIT,
    );
  if (manifestUrl.protocol !== "https:" && manifestUrl.protocol !== "http:")
    throw wrongEntry(`a manifest at ${manifestUrl.href}, not an http(s) URL`);
  if (!/^[0-9a-f]{64}$/.test(sha256))
    throw wrongEntry(`a manifest SHA-256 that is not 64 hex digits ("${sha256}")`);
  ctx.log?.(`the server names ${manifestUrl.href} for model ${spec}`);
  const loaded = await load(spec, manifestUrl.href, ctx, sha256);
  if (loaded.embedder.manifest.id !== spec) {
    await loaded.embedder.dispose();
    throw wrongEntry(`a manifest for another model, "${loaded.embedder.manifest.id}"`);
  }
  return { ...(await agreeing(loaded, listed, origin)), served: listed };
}

/**
 * The loaded model, if its dimension is the one the server lists (the server refuses a
 * connection whose model returns another); else a UserError, the model released.
 */
async function agreeing(
  loaded: LoadedModel,
  listed: ServedModel | null,
  origin: string,
): Promise<LoadedModel> {
  const { id, dimension } = loaded.embedder.manifest;
  if (!listed || listed.dimension === dimension) return loaded;
  await loaded.embedder.dispose();
  throw new UserError(
    `model ${id} here returns ${dimension} dimensions; the server at ${origin} serves it with ${listed.dimension}`,
    "Start with --model <the model the server serves>, or ask its operator which one that is.",
    MODEL_EXIT,
  );
}

function servedOf(answer: ServerAnswer): ServedModel | null {
  return answer.kind === "served" ? answer.model : null;
}

/**
 * Loads `from` (the value itself, or the manifest URL the server named) on the device, as a
 * pool of sessions each on an inference thread of its own: the worker's main thread stays free
 * for its connection.
 */
async function load(
  spec: string,
  from: string,
  ctx: ResolveContext,
  manifestSha256?: string,
): Promise<LoadedModel> {
  try {
    return await loadOnDevice(
      from,
      ctx.device,
      { ...ctx.load, ...(manifestSha256 ? { manifestSha256 } : {}) },
      loadModelPool,
    );
  } catch (err) {
    throw new UserError(
      `cannot load model ${spec}: ${(err as Error).message}`,
      manifestSha256
        ? `The server's model list names ${from} for it: check that this machine can download from there, or ask the server's operator.`
        : `Check --model and --cache-dir (${ctx.load.cacheDir}).`,
      MODEL_EXIT,
    );
  }
}
