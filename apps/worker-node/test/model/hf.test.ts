// HF-layout models: a generated tiny BERT-shaped model served over local HTTP with a manifest,
// loaded into a temp cache, verified, pooled, cached, and rejected when tampered with.

import { createHash } from "node:crypto";
import { once } from "node:events";
import { mkdir as mkdirFs, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import {
  type Embedder,
  loadModel,
  MANIFEST_FILE,
  ModelIntegrityError,
} from "../../src/model/index.js";
import { tinyBertReference, tinyManifest, writeTinyBert } from "../fixtures/tiny-bert.js";

const cos = (a: Float32Array, b: Float32Array) =>
  a.reduce((s, x, i) => s + x * (b[i] as number), 0);
const norm = (a: Float32Array) => Math.sqrt(cos(a, a));

let work: string;
let served: string;
let server: http.Server;
let base: string;
const requests: string[] = [];
const open: Embedder[] = [];

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), "p2pa-hf-"));
  served = path.join(work, "served");
  await mkdir(served);
  const files = await writeTinyBert(served);
  await writeFile(path.join(served, "tiny.json"), JSON.stringify(tinyManifest("tiny-bert", files)));
  // Same files, but the manifest's hash for model.onnx is wrong (as if the file were tampered).
  const bad = files.map((f) => (f.name === "model.onnx" ? { ...f, sha256: "0".repeat(64) } : f));
  await writeFile(path.join(served, "bad.json"), JSON.stringify(tinyManifest("tiny-bad", bad)));

  server = http.createServer(async (req, res) => {
    requests.push(req.url ?? "");
    const name = path.basename(new URL(req.url ?? "/", "http://x").pathname);
    try {
      res.end(await readFile(path.join(served, name)));
    } catch {
      res.statusCode = 404;
      res.end();
    }
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/models`;
});

afterAll(async () => {
  await Promise.all(open.map((e) => e.dispose()));
  server.close();
  await rm(work, { recursive: true, force: true });
});

const mkdir = (dir: string) => mkdirFs(dir, { recursive: true });

async function load(idOrPath: string, cacheDir: string, extra = {}) {
  const e = await loadModel(idOrPath, { cacheDir, threads: 1, ...extra });
  open.push(e);
  return e;
}

describe("HF model from a manifest URL", () => {
  test("downloads, verifies, embeds, and reuses the cache without any request", async () => {
    const cacheDir = path.join(work, "cache-url");
    const e = await load(`${base}/tiny.json`, cacheDir);
    expect(requests).toEqual(["/models/tiny.json", "/models/model.onnx", "/models/tokenizer.json"]);
    expect(e.info.reused).toBe(false);

    // Files landed in <cacheDir>/<id>/ with the manifest's hashes.
    const dir = path.join(cacheDir, "tiny-bert");
    expect((await readdir(dir)).sort()).toEqual(["model.onnx", MANIFEST_FILE, "tokenizer.json"]);
    for (const f of e.manifest.files) {
      const actual = createHash("sha256")
        .update(await readFile(path.join(dir, f.name)))
        .digest("hex");
      expect(actual).toBe(f.sha256);
    }

    const texts = ["hello world", "the quick brown fox jumped over the lazy dog", "cats"];
    const vecs = await e.embed(texts);
    expect(vecs).toHaveLength(3);
    for (const v of vecs) {
      expect(v).toHaveLength(32);
      expect(norm(v)).toBeCloseTo(1, 5);
    }
    expect(e.stats).toMatchObject({ texts: 3, batches: 1, truncated: 0 });

    // Second load: everything verifies from the cache, so not a single HTTP request.
    const before = requests.length;
    const again = await load(`${base}/tiny.json`, cacheDir);
    expect(requests.length).toBe(before);
    expect(again.info.reused).toBe(true);
    const vecs2 = await again.embed(texts);
    vecs2.forEach((v, i) => {
      expect(cos(v, vecs[i] as Float32Array)).toBeGreaterThan(0.999999);
    });
  });

  test("a file whose SHA-256 differs from the manifest fails clearly and leaves nothing", async () => {
    const cacheDir = path.join(work, "cache-bad");
    const err = await load(`${base}/bad.json`, cacheDir).catch((x: unknown) => x);
    expect(err).toBeInstanceOf(ModelIntegrityError);
    expect(String((err as Error).message)).toMatch(/SHA-256 mismatch for model file .*model\.onnx/);
    const left = await readdir(path.join(cacheDir, "tiny-bad"));
    expect(left.filter((f) => f.startsWith("model.onnx"))).toEqual([]); // no file, no .part
    expect(left).not.toContain(MANIFEST_FILE);
  });
});

describe("HF model from a manifest URL with a stated SHA-256", () => {
  test("loads when the manifest's bytes match, and refuses one that differs before any file", async () => {
    const manifest = await readFile(path.join(served, "tiny.json"));
    const sha256 = createHash("sha256").update(manifest).digest("hex");
    const cacheDir = path.join(work, "cache-stated");
    const url = `${base}/tiny.json`;

    const before = requests.length;
    const wrong = "f".repeat(64);
    const err = await load(url, cacheDir, { manifestSha256: wrong }).catch((x: unknown) => x);
    expect(err).toBeInstanceOf(ModelIntegrityError);
    expect(String((err as Error).message)).toContain(
      `SHA-256 mismatch for model file ${MANIFEST_FILE} from ${url}: expected ${wrong}, got ${sha256}`,
    );
    // Only the manifest was asked for; nothing it lists was fetched or kept.
    expect(requests.slice(before)).toEqual(["/models/tiny.json"]);
    await expect(readdir(path.join(cacheDir, "tiny-bert"))).rejects.toThrow(/ENOENT/);

    const e = await load(url, cacheDir, { manifestSha256: sha256 });
    expect(e.manifest.id).toBe("tiny-bert");
    expect(e.info.reused).toBe(false);
    const [v] = await e.embed(["hello world"]);
    expect(v).toHaveLength(32);

    // A copy remembered after the check stands in for it, with no request at all...
    const cached = requests.length;
    expect((await load(url, cacheDir, { manifestSha256: sha256 })).info.reused).toBe(true);
    expect(requests.length).toBe(cached);
    // ...but never for another stated hash: that manifest is fetched and checked again.
    await expect(load(url, cacheDir, { manifestSha256: wrong })).rejects.toThrow(
      ModelIntegrityError,
    );
    expect(requests.slice(cached)).toEqual(["/models/tiny.json"]);
  });
});

describe("HF model from a local folder", () => {
  test("with a p2pa-model.json", async () => {
    const dir = path.join(work, "folder-manifest");
    await mkdir(dir);
    const files = await writeTinyBert(dir);
    await writeFile(
      path.join(dir, MANIFEST_FILE),
      JSON.stringify(tinyManifest("tiny-local", files)),
    );
    const e = await load(dir, path.join(work, "unused-cache"));
    expect(e.manifest.id).toBe("tiny-local");
    const [v] = await e.embed(["hello world"]);
    expect(v).toHaveLength(32);

    // The same folder with a corrupted model refuses to load.
    await writeFile(path.join(dir, "model.onnx"), "not a model");
    await expect(load(dir, work)).rejects.toThrow(ModelIntegrityError);
  });

  test("without a manifest: dimension read from the graph", async () => {
    const dir = path.join(work, "folder-bare");
    await mkdir(dir);
    await writeTinyBert(dir);
    const e = await load(dir, work);
    expect(e.manifest).toMatchObject({
      dimension: 32,
      pooling: "mean",
      normalize: true,
      maxTokens: 512,
    });
    const [v] = await e.embed(["a sentence"]);
    expect(norm(v as Float32Array)).toBeCloseTo(1, 5);
  });
});

describe("HF tokenisation, pooling and truncation", () => {
  let e: Embedder;
  const truncations: unknown[] = [];
  beforeAll(async () => {
    const dir = path.join(work, "folder-small");
    await mkdir(dir);
    const files = await writeTinyBert(dir);
    await writeFile(
      path.join(dir, MANIFEST_FILE),
      JSON.stringify(tinyManifest("tiny-8", files, 8)),
    );
    e = await load(dir, work, { onTruncate: (t: unknown) => truncations.push(t) });
  });

  test("tokenizer.json is applied (lower-casing, WordPiece, [CLS]/[SEP])", () => {
    expect(e.countTokens("Hello World")).toBe(4);
    expect(e.countTokens("cats")).toBe(3); // [CLS] cats [SEP]
    expect(e.countTokens("dogged")).toBe(5); // [CLS] dog ##g ##ed [SEP]
  });

  test("the loaded model returns the fixture graph's own vectors, worked out without it", async () => {
    // One padded batch: the shorter text's padding must change nothing.
    const [hello, dogged] = await e.embed(["Hello World", "dogged"]);
    const want = {
      hello: tinyBertReference(["[CLS]", "hello", "world", "[SEP]"]),
      dogged: tinyBertReference(["[CLS]", "dog", "##g", "##ed", "[SEP]"]),
    };
    for (const [got, expected] of [
      [hello, want.hello],
      [dogged, want.dogged],
    ] as const) {
      expect(got).toHaveLength(32);
      for (const [k, x] of expected.entries()) expect(got?.[k]).toBeCloseTo(x, 5);
    }
  });

  test("mean pooling respects the attention mask: a padded batch equals single runs", async () => {
    const texts = ["hello", "the quick brown fox", "cats sat", "a"];
    const batch = await e.embed(texts);
    for (const [i, t] of texts.entries()) {
      const [single] = await e.embed([t]);
      expect(cos(single as Float32Array, batch[i] as Float32Array)).toBeGreaterThan(0.99999);
    }
    // Different texts give different vectors (the pooling is not degenerate).
    expect(cos(batch[0] as Float32Array, batch[1] as Float32Array)).toBeLessThan(0.999);
  });

  test("texts over maxTokens are truncated as a last resort and reported", async () => {
    const long = "the cat sat on the mat and the dog ran in the park";
    expect(e.countTokens(long)).toBeGreaterThan(8);
    const before = e.stats.truncated;
    const [v] = await e.embed(["hello", long]);
    expect(v).toHaveLength(32);
    expect(e.stats.truncated).toBe(before + 1);
    expect(truncations.at(-1)).toEqual({ index: 1, tokens: e.countTokens(long), maxTokens: 8 });
  });
});
