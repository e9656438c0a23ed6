import { MODELS, type ModelInfo, ModelRegistration } from "@p2pa/shared";
import { z } from "zod";
import { AppError } from "./errors.js";
import { SettingsInvalid } from "./settings.js";

/**
 * The models this deployment serves: the built-in ones (use-lite) and those its operator adds
 * with the `MODELS` variable, a JSON array of `ModelRegistration`s. Jobs, search and
 * `/v1/embeddings` name one; each has its own Dispatcher shards and its own vector index, so
 * vectors of different models never mix; workers connect for one model at a time.
 */
export interface RegisteredModel extends ModelInfo {
  /** Where workers fetch it (absent for built-in models, which workers carry). */
  manifest?: { url: string; sha256: string };
  /** How the edge counts its tokens to cut chunks within its window. */
  tokenizer: "use-lite" | "hf-tokenizer-json";
  /** The Vectorize binding its vectors go to in production. */
  vectorize: string;
}

/** The binding name a registered model's index has by default: VECTORIZE_<ID>. */
function defaultVectorizeBinding(id: string): string {
  return `VECTORIZE_${id.toUpperCase().replace(/[^A-Z0-9]/g, "_")}`;
}

const BUILT_IN: readonly RegisteredModel[] = Object.values(MODELS).map((m) => ({
  ...m,
  tokenizer: "use-lite",
  vectorize: "VECTORIZE",
}));

/** Registries by the raw variable they came from (a test may change it at run time). */
const parsed = new Map<string, ReadonlyMap<string, RegisteredModel>>();

function parse(raw: string): ReadonlyMap<string, RegisteredModel> {
  let json: unknown;
  try {
    json = raw.trim() === "" ? [] : JSON.parse(raw);
  } catch {
    throw new SettingsInvalid(["MODELS: not JSON"]);
  }
  const r = z.array(ModelRegistration).max(32).safeParse(json);
  if (!r.success)
    throw new SettingsInvalid(
      r.error.issues.map((i) => `MODELS.${i.path.join(".")}: ${i.message}`),
    );
  const out = new Map(BUILT_IN.map((m) => [m.id, m]));
  for (const m of r.data) {
    if (out.has(m.id)) throw new SettingsInvalid([`MODELS: ${m.id} is listed twice or built in`]);
    // About four characters a token in English; never past the model's window.
    const defaultChunkChars = m.defaultChunkChars ?? Math.min(2000, m.maxTokens * 4);
    out.set(m.id, {
      id: m.id,
      dimension: m.dimension,
      maxTokens: m.maxTokens,
      defaultChunkChars,
      maxChunkChars: Math.max(m.maxChunkChars ?? 4000, defaultChunkChars),
      manifest: m.manifest,
      tokenizer: "hf-tokenizer-json",
      vectorize: m.vectorize ?? defaultVectorizeBinding(m.id),
    });
  }
  return out;
}

/** Every model of the deployment, by id; throws `SettingsInvalid` for a malformed `MODELS`. */
export function modelRegistry(env: Pick<Env, "MODELS">): ReadonlyMap<string, RegisteredModel> {
  const raw = typeof env.MODELS === "string" ? env.MODELS : "";
  let hit = parsed.get(raw);
  if (!hit) {
    hit = parse(raw);
    if (parsed.size > 20) parsed.clear();
    parsed.set(raw, hit);
  }
  return hit;
}

/** The ids of every model of the deployment. */
export function modelIds(env: Pick<Env, "MODELS">): string[] {
  return [...modelRegistry(env).keys()];
}

/** A model of the deployment, or undefined. */
export function findModel(env: Pick<Env, "MODELS">, id: string): RegisteredModel | undefined {
  return modelRegistry(env).get(id);
}

/** The model named `id`, or a 404 `model_not_found` that lists the models this deployment has. */
export function requireModel(env: Pick<Env, "MODELS">, id: string): RegisteredModel {
  const info = findModel(env, id);
  if (!info) {
    const available = modelIds(env);
    throw new AppError(
      404,
      "model_not_found",
      `this deployment does not serve model ${JSON.stringify(id)}; it serves: ${available.join(", ")}`,
      { available },
    );
  }
  return info;
}
