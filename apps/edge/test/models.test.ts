import { env } from "cloudflare:test";
import { encodeVector, PROTOCOL_VERSION } from "@p2pa/shared";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { tinyTokenizerJson } from "../../worker-node/test/fixtures/tiny-tokenizer.js";
import { sha256Hex } from "../src/lib/crypto.js";
import { tokenCounter } from "../src/lib/tokens.js";
import { getVectorIndex } from "../src/vector/index.js";
import { call, errorOf, job, KEYS, roundTrip, TestWorker } from "./helpers.js";

const vars = env as unknown as Record<string, string>;
const BASE = "https://models.example.test/tiny/";

/** What the model's server publishes: the manifest and the tokenizer it lists. */
async function published(tokenizer = tinyTokenizerJson()) {
  const manifest = JSON.stringify({
    id: "tiny",
    dimension: 4,
    inputFormat: "hf-bert",
    tokenizer: "hf-tokenizer-json",
    pooling: "mean",
    normalize: true,
    maxTokens: 16,
    files: [
      { name: "model.onnx", sha256: "0".repeat(64) },
      { name: "tokenizer.json", sha256: await sha256Hex(tinyTokenizerJson()) },
    ],
  });
  return {
    files: new Map([
      [`${BASE}p2pa-model.json`, manifest],
      [`${BASE}tokenizer.json`, tokenizer],
    ]),
    registration: {
      id: "tiny",
      dimension: 4,
      maxTokens: 16,
      manifest: { url: `${BASE}p2pa-model.json`, sha256: await sha256Hex(manifest) },
    },
  };
}

/** Serves `files` to the edge's outbound fetches; everything else goes out as usual. */
function serve(files: Map<string, string>) {
  const real = globalThis.fetch;
  return vi.spyOn(globalThis, "fetch").mockImplementation(async (input, init) => {
    const url = input instanceof Request ? input.url : String(input);
    const body = files.get(url);
    if (body !== undefined) return new Response(body);
    if (url.startsWith(BASE)) return new Response("not found", { status: 404 });
    return real(input, init);
  });
}

describe("the model list", () => {
  it("lists the built-in model to keys and worker tokens alike, OpenAI's way", async () => {
    for (const key of [KEYS.api, KEYS.worker, KEYS.admin]) {
      const res = await call("/v1/models", { key });
      expect(res.status).toBe(200);
      const body = (await res.json()) as { object: string; data: Record<string, unknown>[] };
      expect(body.object).toBe("list");
      expect(body.data.find((m) => m.id === "use-lite")).toMatchObject({
        object: "model",
        dimension: 512,
        maxTokens: 128,
        owned_by: "p2pa",
      });
    }
    expect((await call("/v1/models", { key: null })).status).toBe(401);
  });

  it("answers a model it does not serve with 404 model_not_found, everywhere a model is named", async () => {
    const notFound = async (res: Response) => {
      const e = await errorOf(res);
      expect(e).toMatchObject({ status: 404, code: "model_not_found" });
      expect(e.details).toMatchObject({ available: expect.arrayContaining(["use-lite"]) });
      expect(e.message).toContain("nope");
    };
    await notFound(await call("/v1/models/nope"));
    await notFound(
      await call("/v1/jobs", {
        method: "POST",
        json: { model: "nope", documents: [{ text: "never stored" }] },
      }),
    );
    await notFound(
      await call("/v1/search", { method: "POST", json: { model: "nope", query: "x" } }),
    );
    await notFound(
      await call("/v1/embeddings", { method: "POST", json: { model: "nope", input: "x" } }),
    );
    await notFound(
      await call("/v1/workers/connect?model=nope", {
        key: KEYS.worker,
        headers: { Upgrade: "websocket" },
      }),
    );
    // Nothing was accepted on the way.
    const jobs = (await (await call("/v1/jobs?limit=100")).json()) as {
      data: { model: string }[];
    };
    expect(jobs.data.some((j) => j.model === "nope")).toBe(false);
  });

  it("refuses a malformed MODELS variable with 503 naming it, and serves again once fixed", async () => {
    const before = vars.MODELS;
    vars.MODELS = '[{"id":"x","dimension":-1}]';
    try {
      const e = await errorOf(await call("/v1/models"));
      expect(e.status).toBe(503);
      expect(e.message).toContain("MODELS");
    } finally {
      vars.MODELS = before as string;
    }
    expect((await call("/v1/models")).status).toBe(200);
  });
});

describe("a registered model", () => {
  let fetches: ReturnType<typeof serve>;
  let registration: Awaited<ReturnType<typeof published>>["registration"];
  const before = vars.MODELS;

  beforeAll(async () => {
    const p = await published();
    registration = p.registration;
    fetches = serve(p.files);
    vars.MODELS = JSON.stringify([registration]);
  });
  afterAll(() => {
    vars.MODELS = before as string;
    fetches.mockRestore();
  });

  it("is listed with its manifest and its own figures", async () => {
    const body = (await (await call("/v1/models")).json()) as { data: Record<string, unknown>[] };
    expect(body.data.map((m) => m.id)).toEqual(["use-lite", "tiny"]);
    const res = await call("/v1/models/tiny", { key: KEYS.worker });
    expect(await res.json()).toMatchObject({
      id: "tiny",
      dimension: 4,
      maxTokens: 16,
      defaultChunkChars: 64,
      manifest: registration.manifest,
      owned_by: "operator",
    });
  });

  it("counts tokens with the model's own tokenizer, fetched from its manifest", async () => {
    const count = await tokenCounter(env, "tiny");
    // [CLS] the quick brown fox [SEP]; an unknown word is pieced from letters.
    expect(count("The quick brown fox")).toBe(6);
    expect(count("zq")).toBe(4);
    const useLite = await tokenCounter(env, "use-lite");
    expect(useLite("The quick brown fox")).not.toBe(6);
  });

  it("goes only to its own workers, stores vectors in its own index, and cuts chunks to its window", {
    timeout: 20_000,
  }, async () => {
    const mine = await TestWorker.connect(
      { models: [{ id: "tiny", dimension: 4 }] },
      KEYS.worker,
      "tiny",
    );
    const other = await TestWorker.connect();
    other.ready(4);
    mine.ready(4);
    const text = Array.from({ length: 12 }, (_, i) => `the quick brown fox ${i} sat`).join(". ");
    const res = await call("/v1/jobs", {
      method: "POST",
      // One donor: nobody to confirm its results with.
      json: { model: "tiny", verification: "off", documents: [{ text }] },
    });
    expect(res.status).toBe(202);
    const submitted = (await res.json()) as { id: string; model: string };
    expect(submitted.model).toBe("tiny");

    const count = await tokenCounter(env, "tiny");
    const chunks = (await (await call(`/v1/jobs/${submitted.id}/chunks?limit=100`)).json()) as {
      data: { id: string; text: string }[];
    };
    expect(chunks.data.length).toBeGreaterThan(3);
    for (const c of chunks.data) expect(count(c.text)).toBeLessThanOrEqual(16);

    const ids: string[] = [];
    while (ids.length < chunks.data.length) {
      const task = await mine.next("task");
      const items = task.items as { chunkId: string }[];
      mine.send({
        type: "result",
        v: PROTOCOL_VERSION,
        taskId: task.taskId,
        leaseId: task.leaseId,
        vectors: items.map((it, i) => {
          ids.push(it.chunkId);
          const unit = new Float32Array(4);
          unit[i % 4] = 1;
          return { chunkId: it.chunkId, vector: encodeVector(unit) };
        }),
      });
      expect(await mine.next("ack")).toMatchObject({ status: "stored" });
    }
    await roundTrip(other);
    expect(other.count("task")).toBe(0);
    await vi.waitFor(async () => expect((await job(submitted.id)).status).toBe("completed"), {
      timeout: 10_000,
    });
    const stored = await getVectorIndex(env, "tiny").getByIds(ids.slice(0, 5));
    expect(stored).toHaveLength(Math.min(5, ids.length));
    for (const v of stored) expect(v.values).toHaveLength(4);
    expect(await getVectorIndex(env, "use-lite").getByIds(ids.slice(0, 5))).toEqual([]);
    mine.ws.close();
    other.ws.close();
  });

  it("refuses a worker whose model has another dimension than registered, or another model", {
    timeout: 20_000,
  }, async () => {
    const w = await TestWorker.connect(
      { models: [{ id: "tiny", dimension: 8 }] },
      KEYS.worker,
      "tiny",
    ).catch((e: Error) => e);
    // The edge answers the hello with an error frame (model_mismatch) and closes: no welcome.
    expect(w).toBeInstanceOf(Error);
    expect((w as Error).message).toMatch(/no welcome frame; have \["error"\]/);
    // Nor is a worker that connected for the model but offers another one.
    const wrong = await TestWorker.connect({}, KEYS.worker, "tiny").catch((e: Error) => e);
    expect((wrong as Error).message).toMatch(/no welcome frame; have \["error"\]/);
  });

  it("writes each model to its own Vectorize binding in production, and names a missing one", () => {
    const backend = vars.VECTOR_BACKEND;
    vars.VECTOR_BACKEND = "vectorize";
    try {
      expect(getVectorIndex(env, "use-lite")).toBe(env.VECTORIZE);
      expect(() => getVectorIndex(env, "tiny")).toThrow(/bind a Vectorize index as VECTORIZE_TINY/);
      expect(() => getVectorIndex(env, "nope")).toThrow(/does not serve model "nope"/);
    } finally {
      vars.VECTOR_BACKEND = backend as string;
    }
  });

  it("answers 503 naming the tokenizer when its files do not match their SHA-256", async () => {
    const p = await published(`${tinyTokenizerJson()} `);
    fetches.mockRestore();
    fetches = serve(p.files);
    vars.MODELS = JSON.stringify([{ ...p.registration, id: "tiny2" }]);
    const e = await errorOf(
      await call("/v1/jobs", {
        method: "POST",
        json: { model: "tiny2", documents: [{ text: "the quick brown fox" }] },
      }),
    );
    expect(e).toMatchObject({ status: 503, code: "not_configured" });
    expect(e.message).toMatch(/tokenizer of model tiny2.*SHA-256/);
  });
});
