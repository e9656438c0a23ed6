import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import type { Job, ModelList, SearchResponse } from "@p2pa/shared";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sha256Hex } from "../../apps/worker-node/src/model/files.js";
import { type Embedder, loadModel } from "../../apps/worker-node/src/model/index.js";
import { tinyManifest, writeTinyBert } from "../../apps/worker-node/test/fixtures/tiny-bert.js";
import { generatedPassages } from "../../scripts/lib/corpus.js";
import { ROOT, WORKER_BIN } from "../../scripts/lib/local-edge.js";
import {
  allChunks,
  cosine,
  DEV_CREDENTIALS,
  type System,
  startSystem,
  waitForJob,
} from "./harness.js";

/** A second donor, so each model's results are confirmed by another donor as usual. */
const SECOND = "p2pa_test_models_2";
const TINY = "tiny-bert";

let sys: System;
let dir: string;
let files: Server;
let manifestUrl: string;
const models = new Map<string, Embedder>();

/** Serves a folder over HTTP, as a model host would (the manifest and the files it lists). */
async function serveFolder(folder: string): Promise<Server> {
  const server = createServer((req, res) => {
    const name = path.basename(new URL(req.url ?? "/", "http://x").pathname);
    try {
      res.end(readFileSync(path.join(folder, name)));
    } catch {
      res.statusCode = 404;
      res.end();
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return server;
}

beforeAll(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), "p2pa-models-"));
  const manifest = `${JSON.stringify(tinyManifest(TINY, await writeTinyBert(dir), 32))}\n`;
  writeFileSync(path.join(dir, "p2pa-model.json"), manifest);
  files = await serveFolder(dir);
  manifestUrl = `http://127.0.0.1:${(files.address() as AddressInfo).port}/p2pa-model.json`;
  const registration = {
    id: TINY,
    dimension: 32,
    maxTokens: 32,
    manifest: { url: manifestUrl, sha256: sha256Hex(manifest) },
  };
  sys = await startSystem({
    workerTokens: [SECOND],
    vars: { MODELS: JSON.stringify([registration]) },
  });
  // Each worker serves both models; the tiny one is found through the deployment's registry.
  await sys.addWorker(["--threads", "1", "--model", `use-lite,${TINY}`]);
  await sys.addWorker(["--threads", "1", "--model", "use-lite", "--model", TINY], SECOND);
  // A worker says "connected" once per model: wait until the edge counts both on each.
  const deadline = Date.now() + 60_000;
  for (;;) {
    const { body } = await sys.api<ModelList>("/v1/models");
    if (body.data.every((m) => m.workers === 2)) break;
    if (Date.now() > deadline) throw new Error(`workers did not connect: ${JSON.stringify(body)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
  const cacheDir = path.join(ROOT, ".cache", "models");
  models.set("use-lite", await loadModel("use-lite", { cacheDir, threads: 1 }));
  models.set(TINY, await loadModel(dir, { cacheDir, threads: 1 }));
}, 240_000);

afterAll(async () => {
  for (const m of models.values()) await m.dispose();
  await sys?.stop();
  files?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("two models on one deployment", () => {
  const jobs = new Map<string, Job>();

  it("lists both models with the workers connected for each", async () => {
    const { status, body } = await sys.api<ModelList>("/v1/models");
    expect(status).toBe(200);
    expect(body.data.map((m) => [m.id, m.dimension, m.workers])).toEqual([
      ["use-lite", 512, 2],
      [TINY, 32, 2],
    ]);
    expect(body.data[1]?.manifest?.url).toBe(manifestUrl);
  });

  it("embeds each job with its own model: every vector equals that model called in-process", async () => {
    const texts = generatedPassages(40, 150, 900);
    const submitted = await Promise.all(
      ["use-lite", TINY].map((model) =>
        sys.api<Job>("/v1/jobs", {
          json: {
            model,
            collection: `docs-${model}`,
            documents: texts.map((text, i) => ({ id: `${model}-${i}`, text })),
          },
        }),
      ),
    );
    for (const s of submitted) expect(s.status).toBe(202);
    for (const s of submitted) {
      const job = await waitForJob<Job>(sys, s.body.id, 240_000);
      expect(job).toMatchObject({ status: "completed", chunks: { failed: 0 } });
      jobs.set(job.model, job);
    }
    const [lite, tiny] = [jobs.get("use-lite") as Job, jobs.get(TINY) as Job];
    // The tiny model's 32-token window cuts the same texts into more chunks.
    expect(tiny.chunks.total).toBeGreaterThan(lite.chunks.total);
    for (const job of [lite, tiny]) {
      const chunks = await allChunks(sys, job.id);
      const model = models.get(job.model) as Embedder;
      const reference = await model.embed(chunks.map((c) => c.text ?? ""));
      chunks.forEach((c, i) => {
        expect(c.vector).toHaveLength(model.manifest.dimension);
        expect(cosine(c.vector ?? [], reference[i] ?? [])).toBeGreaterThan(0.99999);
      });
    }
  }, 300_000);

  it("searches each model's own index: a query finds its own model's chunks only", async () => {
    for (const model of ["use-lite", TINY]) {
      const job = jobs.get(model) as Job;
      const chunk = (await allChunks(sys, job.id, false))[3];
      const { status, body } = await sys.api<SearchResponse>("/v1/search", {
        json: { model, query: chunk?.text, topK: 5, mode: "vector" },
      });
      expect(status).toBe(200);
      expect(body.results[0]?.chunk.id).toBe(chunk?.id);
      for (const r of body.results) expect(r.chunk.jobId).toBe(job.id);
    }
  }, 60_000);

  it("shows the models and searches one of them from the command line", async () => {
    const p2pa = (args: string[]) =>
      new Promise<string>((resolve, reject) => {
        const child = spawn(
          process.execPath,
          [path.join(ROOT, "apps", "worker-node", "bin", "p2pa.js"), ...args],
          {
            env: {
              ...process.env,
              P2PA_SERVER: sys.edge.url,
              P2PA_API_KEY: DEV_CREDENTIALS.apiKey,
              NO_COLOR: "1",
            },
            stdio: ["ignore", "pipe", "pipe"],
          },
        );
        let out = "";
        child.stdout.on("data", (d) => (out += d));
        child.stderr.on("data", (d) => (out += d));
        child.on("close", (code) => (code === 0 ? resolve(out) : reject(new Error(out))));
      });
    const table = await p2pa(["models"]);
    expect(table).toMatch(/use-lite\s+512\s+128\s+600\s+2\s+built in/);
    expect(table).toContain(manifestUrl);
    const job = jobs.get(TINY) as Job;
    const chunk = (await allChunks(sys, job.id, false))[5];
    const found = JSON.parse(
      await p2pa(["search", "--json", "--model", TINY, "--mode", "vector", chunk?.text ?? ""]),
    ) as SearchResponse;
    expect(found.results[0]?.chunk.id).toBe(chunk?.id);
  }, 60_000);

  it("tells a worker started with a model the deployment does not serve, and it stops", async () => {
    const child = spawn(
      process.execPath,
      [WORKER_BIN, "--server", sys.edge.url, "--model", "nope-model"],
      {
        env: {
          ...process.env,
          P2PA_TOKEN: DEV_CREDENTIALS.workerToken,
          P2PA_CACHE_DIR: path.join(ROOT, ".cache", "models"),
        },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (out += d));
    const code = await new Promise<number | null>((r) => child.on("exit", r));
    expect(code).not.toBe(0);
    expect(out).toContain("nope-model");
    expect(out).toContain("use-lite");
    expect(out).toContain(TINY);
  }, 60_000);
});
