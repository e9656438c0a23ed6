// Runs USE-lite: converts the npm package's TF.js graph to ONNX once per cache dir, then embeds
// with one onnxruntime session. The graph takes a sparse batch (sentence, position) -> token id
// and returns L2-normalised [B,512] vectors, so no pooling happens here.
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { type InferenceSession, Tensor } from "onnxruntime-node";
import { fileVerifies, readJsonIfPresent, sha256Hex, writeFileAtomic } from "../files.js";
import { USE_LITE_MANIFEST } from "../manifest.js";
import { createSession } from "../session.js";
import type { Embedder, EmbedderStats, LoadInfo, LoadOptions } from "../types.js";
import {
  CONVERTER_VERSION,
  convertUseLite,
  resolveUseLiteSource,
  USE_LITE_PACKAGE,
  type UseLiteSource,
} from "./convert.js";
import { loadUseVocabulary, UseTokenizer } from "./tokenizer.js";

// Any valid id works for the probe's second sentence; it only gives the batch its size.
const UNKNOWN_PROBE_ID = 0;

/** Sidecar written next to the converted model: what it was converted from and its hash. */
interface ConversionRecord {
  source: string;
  converter: number;
  sha256: string;
}

/**
 * Returns the cached `<cacheDir>/use-lite/model.onnx` if its recorded SHA-256 still matches
 * (and it came from the same package version and converter), else converts and caches anew.
 */
async function ensureUseLiteOnnx(
  cacheDir: string,
  source: UseLiteSource = resolveUseLiteSource(),
): Promise<{ info: LoadInfo; bytes?: Uint8Array }> {
  const dir = path.join(cacheDir, USE_LITE_MANIFEST.id);
  const modelPath = path.join(dir, "model.onnx");
  const recordPath = path.join(dir, "model.onnx.json");
  const key = { source: `${USE_LITE_PACKAGE}@${source.version}`, converter: CONVERTER_VERSION };

  const record = (await readJsonIfPresent(recordPath)) as Partial<ConversionRecord> | undefined;
  if (
    record?.source === key.source &&
    record.converter === key.converter &&
    typeof record.sha256 === "string" &&
    (await fileVerifies(modelPath, record.sha256))
  ) {
    return { info: { modelPath, sha256: record.sha256, reused: true } };
  }
  // Missing, stale or corrupted (hash mismatch): convert again. Conversion is deterministic, so
  // processes racing here write identical bytes and the renames are harmless.
  const bytes = await convertUseLite(source);
  const sha256 = sha256Hex(bytes);
  await mkdir(dir, { recursive: true });
  await writeFileAtomic(modelPath, bytes);
  await writeFileAtomic(recordPath, `${JSON.stringify({ ...key, sha256 }, null, 2)}\n`);
  return { info: { modelPath, sha256, reused: false }, bytes };
}

/** The sparse input of a batch: [sentence, position] pairs and their token ids. */
function sparseBatch(batch: number[][]): { indices: Int32Array; values: Int32Array } {
  const n = batch.reduce((a, ids) => a + ids.length, 0);
  const indices = new Int32Array(2 * n);
  const values = new Int32Array(n);
  let k = 0;
  batch.forEach((ids, sentence) => {
    for (let pos = 0; pos < ids.length; pos++, k++) {
      indices[2 * k] = sentence;
      indices[2 * k + 1] = pos;
      values[k] = ids[pos] as number;
    }
  });
  return { indices, values };
}

async function runSparse(session: InferenceSession, batch: number[][]): Promise<Float32Array> {
  const { indices, values } = sparseBatch(batch);
  const out = await session.run({
    indices: new Tensor("int32", indices, [values.length, 2]),
    values: new Tensor("int32", values, [values.length]),
  });
  const emb = out.embeddings;
  if (!emb || emb.dims[0] !== batch.length || emb.dims[1] !== USE_LITE_MANIFEST.dimension) {
    throw new Error(`use-lite: unexpected output shape [${emb?.dims.join(",")}]`);
  }
  return emb.data as Float32Array;
}

/** Loads USE-lite (see {@link ensureUseLiteOnnx} for the cache). */
export async function loadUseLite(opts: LoadOptions): Promise<Embedder> {
  const source = resolveUseLiteSource();
  const [{ info, bytes }, vocab] = await Promise.all([
    ensureUseLiteOnnx(opts.cacheDir, source),
    loadUseVocabulary(source.dir),
  ]);
  const session = await createSession(
    bytes ?? info.modelPath,
    opts.threads,
    opts.executionProviders,
  );
  const tokenizer = new UseTokenizer(vocab);
  const dim = USE_LITE_MANIFEST.dimension;
  const maxTokens = USE_LITE_MANIFEST.maxTokens;
  const manifest = {
    ...USE_LITE_MANIFEST,
    files: [{ name: "model.onnx", sha256: info.sha256 }],
  };

  // The graph sizes the batch by the largest sentence index that has a token, so a text with
  // no tokens ("" or only spaces) at the end of a batch would get no row, and an all-empty batch
  // has no input at all. Empty texts are therefore left out of the run and get the vector the
  // graph gives an empty sentence, computed once here with an empty sentence 0 beside a dummy.
  let emptyVector: Float32Array;
  try {
    emptyVector = (await runSparse(session, [[], [UNKNOWN_PROBE_ID]])).slice(0, dim);
  } catch (err) {
    await session.release();
    throw err;
  }

  const stats: EmbedderStats = { texts: 0, batches: 0, truncated: 0 };
  return {
    manifest,
    info,
    stats,
    parallelism: 1,
    countTokens: (text) => tokenizer.encode(text).length,
    async embed(texts) {
      const ids = texts.map((text, index) => {
        const all = tokenizer.encode(text);
        if (all.length <= maxTokens) return all;
        // The graph itself ignores positions >= 128; cutting here only makes it explicit.
        stats.truncated++;
        opts.onTruncate?.({ index, tokens: all.length, maxTokens });
        return all.slice(0, maxTokens);
      });
      stats.texts += texts.length;
      const nonEmpty = ids.filter((x) => x.length > 0);
      const flat = nonEmpty.length > 0 ? await runSparse(session, nonEmpty) : undefined;
      if (flat) stats.batches++;
      let row = 0;
      return ids.map((x) => {
        if (x.length === 0 || !flat) return emptyVector.slice();
        const v = flat.slice(row * dim, (row + 1) * dim);
        row++;
        return v;
      });
    },
    dispose: () => session.release(),
  };
}
