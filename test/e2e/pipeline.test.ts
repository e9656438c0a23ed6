import type { Job, SearchResponse } from "@p2pa/shared";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generatedPassages, TOPICS } from "../../scripts/lib/corpus.js";
import {
  allChunks,
  cosine,
  DEV_CREDENTIALS,
  type FleetStats,
  type System,
  startSystem,
  waitForJob,
} from "./harness.js";

let sys: System;

/**
 * The same pipeline on each metadata and vector backend: D1 with the local index (what
 * `npm start` runs), and Postgres with pgvector (`npm start -- --postgres`).
 */
describe.each([
  { backend: "D1 and the local index", postgres: false },
  { backend: "Postgres and pgvector", postgres: true },
])("the whole pipeline on real parts, on $backend", ({ postgres }) => {
  let job: Job;

  beforeAll(async () => {
    await sys?.stop();
    sys = await startSystem({ postgres });
    await sys.addWorker();
    await sys.addWorker();
  }, 120_000);

  it("embeds a few hundred documents on two real workers, one vector per chunk", async () => {
    const documents = [
      ...TOPICS.map((t) => ({ id: t.id, text: t.text, metadata: { topic: t.id } })),
      ...generatedPassages(290, 200, 1800).map((text, i) => ({
        id: `gen-${i}`,
        text,
        metadata: { generated: true },
      })),
    ];
    const submitted = await sys.api<Job>("/v1/jobs", { json: { documents } });
    expect(submitted.status).toBe(202);
    job = await waitForJob<Job>(sys, submitted.body.id);
    expect(job.status).toBe("completed");
    expect(job.chunks.done).toBe(job.chunks.total);
    expect(job.chunks.failed).toBe(0);
    expect(job.chunks.total).toBeGreaterThan(documents.length);
    expect(job.completedAt).toBeTruthy();

    const chunks = await allChunks(sys, job.id);
    expect(chunks.length).toBe(job.chunks.total);
    expect(new Set(chunks.map((c) => c.id)).size).toBe(chunks.length);
    for (const c of chunks) {
      expect(c.status).toBe("done");
      expect(c.vector?.length).toBe(512);
      expect(Math.abs(Math.hypot(...(c.vector ?? [])) - 1)).toBeLessThan(1e-3);
    }
    // Nothing else was written: the index holds exactly one vector per chunk.
    const stats = await sys.api<FleetStats>("/v1/workers", { admin: true });
    expect(stats.body.vectors).toBe(job.chunks.total);
  }, 180_000);

  it("finds the source document first when searching for a paraphrase", async () => {
    for (const t of TOPICS) {
      const { status, body } = await sys.api<SearchResponse>("/v1/search", {
        json: { query: t.paraphrase, topK: 3, filter: { jobId: job.id } },
      });
      expect(status).toBe(200);
      expect(body.results[0]?.chunk.documentId, `query "${t.paraphrase}"`).toBe(t.id);
      expect(body.results[0]?.chunk.jobId).toBe(job.id);
    }
    const byDoc = await sys.api<SearchResponse>("/v1/search", {
      json: { query: "bread", topK: 5, filter: { documentId: "volcano" } },
    });
    expect(byDoc.body.results.map((r) => r.chunk.documentId)).toEqual(["volcano"]);
  }, 60_000);

  it("serves OpenAI-compatible embeddings equal to the job's vectors for the same text", async () => {
    const client = new OpenAI({ baseURL: `${sys.edge.url}/v1`, apiKey: DEV_CREDENTIALS.apiKey });
    const chunks = (await allChunks(sys, job.id)).filter((c) =>
      TOPICS.some((t) => t.id === c.documentId),
    );
    const res = await client.embeddings.create({
      model: "use-lite",
      input: chunks.map((c) => c.text ?? ""),
    });
    expect(res.data.length).toBe(chunks.length);
    expect(res.model).toBe("use-lite");
    expect(res.usage.prompt_tokens).toBeGreaterThan(0);
    res.data.forEach((d, i) => {
      expect(d.index).toBe(i);
      expect(cosine(d.embedding, chunks[i]?.vector ?? [])).toBeGreaterThan(0.9999);
    });
    const floats = await client.embeddings.create({
      model: "use-lite",
      input: "hello world",
      encoding_format: "float",
    });
    expect(floats.data[0]?.embedding.length).toBe(512);
    await expect(
      client.embeddings.create({ model: "no-such-model", input: "x" }),
    ).rejects.toMatchObject({ status: 404, code: "model_not_found" });
  }, 60_000);
});

afterAll(async () => {
  await sys?.stop();
});

describe("the p2pa-worker command", () => {
  const exitOf = async (args: string[]) => {
    const { spawn } = await import("node:child_process");
    const { WORKER_BIN } = await import("../../scripts/lib/local-edge.js");
    const child = spawn(process.execPath, [WORKER_BIN, ...args], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let err = "";
    child.stderr.on("data", (d) => (err += d));
    const code = await new Promise<number | null>((r) => child.on("exit", r));
    return { code, err };
  };

  it("refuses a wrong token, an API key and an unreachable server with clear messages", async () => {
    const bad = await exitOf(["--server", sys.edge.url, "--token", "wrong"]);
    expect(bad.code).toBe(4);
    expect(bad.err).toMatch(/rejected the token/);
    const apiKey = await exitOf(["--server", sys.edge.url, "--token", DEV_CREDENTIALS.apiKey]);
    expect(apiKey.code).toBe(4);
    expect(apiKey.err).toMatch(/API key, not a worker token/);
    // Tried again while the wait lasts (60 s unless told), then given up on.
    const down = await exitOf([
      "--server",
      "http://127.0.0.1:9",
      "--token",
      "x",
      "--wait-for-server",
      "2",
    ]);
    expect(down.code).toBe(3);
    expect(down.err).toMatch(/cannot reach http:\/\/127\.0\.0\.1:9 yet .* trying again in 0\.5 s/);
    expect(down.err).toMatch(/cannot reach the server at http:\/\/127\.0\.0\.1:9/);
    const flags = await exitOf(["--server", sys.edge.url, "--token", "x", "--threads", "-1"]);
    expect(flags.code).toBe(2);
    expect(flags.err).toMatch(/--threads/);
  });

  it("stops on SIGINT with exit code 0 after handing back its work", async () => {
    const w = await sys.addWorker();
    const exited = new Promise<number | null>((r) => w.on("exit", r));
    w.kill("SIGINT");
    expect(await exited).toBe(0);
  }, 60_000);
});
