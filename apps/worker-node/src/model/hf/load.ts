// Where HF-layout models come from: a local folder, or a manifest URL whose files are
// downloaded into the cache and verified. Either way the files are checked against their
// SHA-256 before a session opens, so a corrupted cache is never run.
import { mkdir, stat } from "node:fs/promises";
import path from "node:path";
import {
  downloadVerified,
  fileVerifies,
  ModelIntegrityError,
  readJsonIfPresent,
  sha256File,
  sha256Hex,
  writeFileAtomic,
} from "../files.js";
import { MANIFEST_FILE, parseManifest } from "../manifest.js";
import { createSession } from "../session.js";
import type { Embedder, LoadInfo, LoadOptions, ModelManifest } from "../types.js";
import {
  DEFAULT_HF_MAX_TOKENS,
  declaredDimension,
  hfEmbedder,
  loadHfTokenizer,
  pickOutput,
  runBertBatch,
} from "./embedder.js";

const MODEL_FILE = "model.onnx";
const TOKENIZER_FILE = "tokenizer.json";
const OPTIONAL_FILES = ["tokenizer_config.json"];

function onnxFileOf(manifest: ModelManifest): string {
  return manifest.files.find((f) => f.name.endsWith(".onnx"))?.name ?? MODEL_FILE;
}

function requireHf(manifest: ModelManifest, origin: string): void {
  if (manifest.inputFormat !== "hf-bert" || manifest.tokenizer !== "hf-tokenizer-json") {
    throw new Error(
      `${origin}: only hf-bert models with a tokenizer.json load from a folder or URL (use-lite is built in)`,
    );
  }
  for (const need of [TOKENIZER_FILE, onnxFileOf(manifest)]) {
    if (!manifest.files.some((f) => f.name === need))
      throw new Error(`${origin}: files must list ${need}`);
  }
}

async function open(
  dir: string,
  manifest: ModelManifest,
  info: LoadInfo,
  opts: LoadOptions,
): Promise<Embedder> {
  const [session, tokenizer] = await Promise.all([
    createSession(info.modelPath, opts.threads, opts.executionProviders),
    loadHfTokenizer(dir),
  ]);
  try {
    return hfEmbedder(session, tokenizer, manifest, info, opts);
  } catch (err) {
    await session.release();
    throw err;
  }
}

function infoFor(dir: string, manifest: ModelManifest, reused: boolean): LoadInfo {
  const onnx = onnxFileOf(manifest);
  const sha256 = manifest.files.find((f) => f.name === onnx)?.sha256 ?? "";
  return { modelPath: path.join(dir, onnx), sha256, reused };
}

const exists = (p: string) =>
  stat(p).then(
    (s) => s.isFile(),
    () => false,
  );

/**
 * Loads a model folder. With a p2pa-model.json, every listed file must match its SHA-256.
 * Without one, the folder must hold model.onnx + tokenizer.json and the manifest is inferred:
 * dimension from the graph's output shape (or one probe run), maxTokens from the tokenizer
 * files (else 512), mean pooling and L2 normalisation (the sentence-transformers recipe).
 */
export async function loadHfFromFolder(dir: string, opts: LoadOptions): Promise<Embedder> {
  const manifestPath = path.join(dir, MANIFEST_FILE);
  if (await exists(manifestPath)) {
    const manifest = parseManifest(await readJsonIfPresent(manifestPath), manifestPath);
    requireHf(manifest, manifestPath);
    for (const f of manifest.files) {
      const file = path.join(dir, f.name);
      const actual = (await exists(file)) ? await sha256File(file) : "(missing)";
      if (actual !== f.sha256) throw new ModelIntegrityError(file, f.sha256, actual, manifestPath);
    }
    return open(dir, manifest, infoFor(dir, manifest, true), opts);
  }

  for (const need of [MODEL_FILE, TOKENIZER_FILE]) {
    if (!(await exists(path.join(dir, need)))) {
      throw new Error(`${dir} has no ${MANIFEST_FILE} and no ${need}: not a model folder`);
    }
  }
  const names = [MODEL_FILE, TOKENIZER_FILE];
  for (const opt of OPTIONAL_FILES) if (await exists(path.join(dir, opt))) names.push(opt);
  const files = await Promise.all(
    names.map(async (name) => ({ name, sha256: await sha256File(path.join(dir, name)) })),
  );
  const [session, tokenizer] = await Promise.all([
    createSession(path.join(dir, MODEL_FILE), opts.threads, opts.executionProviders),
    loadHfTokenizer(dir),
  ]);
  try {
    const output = pickOutput(session, "mean");
    const dimension =
      declaredDimension(session, output) ??
      (
        await runBertBatch(
          session,
          output,
          "mean",
          [tokenizer.encode("dimension probe")],
          tokenizer.padId,
        )
      ).width;
    const id =
      path
        .basename(dir)
        .replace(/[^A-Za-z0-9._-]/g, "-")
        .replace(/^[^A-Za-z0-9]+/, "") || "local-model";
    const manifest = parseManifest(
      {
        id,
        dimension,
        inputFormat: "hf-bert",
        tokenizer: "hf-tokenizer-json",
        pooling: "mean",
        normalize: true,
        maxTokens: tokenizer.declaredMaxTokens ?? DEFAULT_HF_MAX_TOKENS,
        files,
      },
      dir,
    );
    return hfEmbedder(session, tokenizer, manifest, infoFor(dir, manifest, true), opts);
  } catch (err) {
    await session.release();
    throw err;
  }
}

/**
 * Loads a model from a manifest URL into `<cacheDir>/<id>/`. Files already there that verify
 * are not downloaded again. The manifest itself is remembered per URL in
 * `<cacheDir>/manifests/`, so once everything is cached a load makes no HTTP request at all:
 * a manifest URL is treated as immutable (publish a new URL for a new model version).
 * With `opts.manifestSha256` the manifest's bytes must hash to it, or nothing is downloaded.
 */
export async function loadHfFromUrl(url: string, opts: LoadOptions): Promise<Embedder> {
  const fetchImpl = opts.fetch ?? globalThis.fetch;
  const expected = opts.manifestSha256;
  // A manifest checked against a stated SHA-256 is remembered under that hash too: a copy
  // remembered without the check, or against another hash, is not trusted in its place.
  const key = expected ? `${url}#sha256=${expected}` : url;
  const pointer = path.join(opts.cacheDir, "manifests", `${sha256Hex(key).slice(0, 32)}.json`);

  const remembered = await readJsonIfPresent(pointer);
  if (remembered !== undefined) {
    const manifest = parseManifest(remembered, `${pointer} (cached copy of ${url})`);
    const dir = path.join(opts.cacheDir, manifest.id);
    const ok = await Promise.all(
      manifest.files.map((f) => fileVerifies(path.join(dir, f.name), f.sha256)),
    );
    if (ok.every(Boolean)) return open(dir, manifest, infoFor(dir, manifest, true), opts);
  }

  const res = await fetchImpl(url);
  if (!res.ok) throw new Error(`Fetching model manifest ${url} failed: HTTP ${res.status}`);
  const bytes = new Uint8Array(await res.arrayBuffer());
  if (expected) {
    const actual = sha256Hex(bytes);
    if (actual !== expected) throw new ModelIntegrityError(MANIFEST_FILE, expected, actual, url);
  }
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder().decode(bytes));
  } catch (err) {
    throw new Error(`Model manifest ${url} is not JSON: ${(err as Error).message}`);
  }
  const manifest = parseManifest(json, url);
  requireHf(manifest, url);
  const dir = path.join(opts.cacheDir, manifest.id);
  await mkdir(dir, { recursive: true });
  let downloaded = 0;
  for (const f of manifest.files) {
    const dest = path.join(dir, f.name);
    if (await fileVerifies(dest, f.sha256)) continue;
    await downloadVerified(new URL(f.url ?? f.name, url).href, dest, f.sha256, fetchImpl);
    downloaded++;
  }
  const text = `${JSON.stringify(manifest, null, 2)}\n`;
  await writeFileAtomic(path.join(dir, MANIFEST_FILE), text); // the folder now loads by path too
  await mkdir(path.dirname(pointer), { recursive: true });
  await writeFileAtomic(pointer, text);
  return open(dir, manifest, infoFor(dir, manifest, downloaded === 0), opts);
}
