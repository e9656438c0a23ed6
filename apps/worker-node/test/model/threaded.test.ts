// The threaded Embedder (the model on an inference thread of its own) against the same model
// loaded in-process: the same vectors to the bit, the same token counts and counters, calls in
// flight answered in order, and failures that end calls rather than leave them waiting.
import { spawnSync } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { Worker } from "node:worker_threads";
import { afterAll, beforeAll, describe, expect, test, vi } from "vitest";
import { type Embedder, loadModel } from "../../src/model/index.js";
import { loadModelThreaded } from "../../src/model/threaded.js";
import type { LoadOptions } from "../../src/model/types.js";
import { LONG, SENTENCES as SHARED } from "../fixtures/texts.js";
import { writeTinyModelFolder } from "../fixtures/tiny-bert.js";

// Every inference thread started, so a test can end one as a crash would.
const started = vi.hoisted(() => [] as Worker[]);
vi.mock("node:worker_threads", async (importOriginal) => {
  const real = await importOriginal<typeof import("node:worker_threads")>();
  class Recorded extends real.Worker {
    constructor(...args: ConstructorParameters<typeof real.Worker>) {
      super(...args);
      started.push(this);
    }
  }
  return { ...real, Worker: Recorded };
});

/** The model tests' texts, and an empty one (an empty text is embedded too). */
const SENTENCES = [...SHARED, ""];

/** Words the tiny model's tokenizer knows, and some it does not. */
const TINY_TEXTS = [
  "hello world",
  "how old are you?",
  "the quick brown fox jumps over the lazy dog.",
  "cats sat on the mat",
  "zzz unknown wordsmithing",
  "",
];

const bytes = (v: Float32Array) => new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
const sameBits = (a: Float32Array[], b: Float32Array[]) => {
  expect(a).toHaveLength(b.length);
  a.forEach((v, i) => {
    expect(v).toBeInstanceOf(Float32Array);
    expect(bytes(v), `vector ${i}`).toEqual(bytes(b[i] as Float32Array));
  });
};

let work: string;
let cacheDir: string;
let tinyDir: string;
/** The tiny model with a window (200) wider than its positions (64): longer texts fail to run. */
let wideDir: string;
const open: Embedder[] = [];
let useLite: { local: Embedder; threaded: Embedder };
let tiny: { local: Embedder; threaded: Embedder };
type Side = "local" | "threaded";
const truncations: { side: Side; index: number; tokens: number; maxTokens: number }[] = [];
const reportTruncations = (side: Side): Partial<LoadOptions> => ({
  onTruncate: (e) => truncations.push({ side, ...e }),
});

async function pair(idOrPath: string, extra: (side: Side) => Partial<LoadOptions> = () => ({})) {
  // In-process first: it fills the cache (use-lite's conversion) the thread then reuses.
  const local = await loadModel(idOrPath, { cacheDir, threads: 1, ...extra("local") });
  open.push(local);
  const threaded = await threadedModel(idOrPath, extra("threaded"));
  return { local, threaded };
}

async function threadedModel(idOrPath: string, extra: Partial<LoadOptions> = {}) {
  const e = await loadModelThreaded(idOrPath, { cacheDir, threads: 1, ...extra });
  open.push(e);
  return e;
}

async function tinyFolder(name: string, maxTokens?: number): Promise<string> {
  return writeTinyModelFolder(path.join(work, name), name, maxTokens);
}

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), "p2pa-threaded-"));
  cacheDir = path.join(work, "cache");
  [tinyDir, wideDir] = await Promise.all([tinyFolder("tiny-bert"), tinyFolder("tiny-wide", 200)]);
  useLite = await pair("use-lite", reportTruncations);
  tiny = await pair(tinyDir);
});

afterAll(async () => {
  await Promise.all(open.map((e) => e.dispose()));
  await rm(work, { recursive: true, force: true });
});

describe("a threaded model", () => {
  test("loads the same model: manifest, file and hash, from the cache", () => {
    expect(useLite.threaded.manifest).toEqual(useLite.local.manifest);
    expect(useLite.threaded.info).toEqual({ ...useLite.local.info, reused: true });
    expect(tiny.threaded.manifest).toEqual(tiny.local.manifest);
    expect(tiny.threaded.info).toEqual(tiny.local.info);
  });

  test("gives the in-process model's vectors to the bit, batch for batch", async () => {
    for (const [model, texts] of [
      [useLite, SENTENCES],
      [tiny, TINY_TEXTS],
    ] as const) {
      for (const batch of [texts, texts.slice(0, 1), texts.slice(2, 5)]) {
        const [mine, theirs] = await Promise.all([
          model.threaded.embed(batch),
          model.local.embed(batch),
        ]);
        sameBits(mine, theirs);
        for (const v of mine) expect(v).toHaveLength(model.local.manifest.dimension);
      }
      expect(await model.threaded.embed([])).toEqual([]);
    }
  });

  test("answers several calls in flight in the order they were made, each with its vectors", async () => {
    const batches = [
      SENTENCES.slice(0, 4),
      [LONG, LONG],
      SENTENCES.slice(4),
      ["one more"],
      SENTENCES,
      [],
    ];
    const order: number[] = [];
    const calls = batches.map((b, i) =>
      useLite.threaded.embed(b).then((vectors) => {
        order.push(i);
        return vectors;
      }),
    );
    const answers = await Promise.all(calls);
    expect(order).toEqual(batches.map((_, i) => i));
    for (const [i, b] of batches.entries())
      sameBits(answers[i] as Float32Array[], await useLite.local.embed(b));
  });

  test("counts tokens as the in-process model does, without a round trip", () => {
    for (const s of [...SENTENCES, "a", "🎉".repeat(50)])
      expect(useLite.threaded.countTokens(s), s).toBe(useLite.local.countTokens(s));
    for (const s of [...TINY_TEXTS, LONG.toLowerCase()])
      expect(tiny.threaded.countTokens(s), s).toBe(tiny.local.countTokens(s));
    expect(useLite.threaded.countTokens(LONG)).toBeGreaterThan(useLite.local.manifest.maxTokens);
  });

  test("keeps the counters and reports truncated texts on the caller's side", async () => {
    const calls = [["short", LONG, "also short", LONG], ["", ""], ["Hello world"]];
    const counted = async (e: Embedder) => {
      const before = { ...e.stats };
      for (const texts of calls) await e.embed(texts);
      const { texts, batches, truncated } = e.stats;
      return {
        texts: texts - before.texts,
        batches: batches - before.batches,
        truncated: truncated - before.truncated,
      };
    };
    truncations.length = 0;
    const threaded = await counted(useLite.threaded);
    // The all-empty call runs no batch, here as in-process.
    expect(threaded).toEqual({ texts: 7, batches: 2, truncated: 2 });
    expect(threaded).toEqual(await counted(useLite.local));
    const tokens = useLite.local.countTokens(LONG);
    const seen = (side: Side) => [
      { side, index: 1, tokens, maxTokens: 128 },
      { side, index: 3, tokens, maxTokens: 128 },
    ];
    expect(truncations).toEqual([...seen("threaded"), ...seen("local")]);
  });
});

describe("when something fails", () => {
  test("a text the model cannot run fails its call only, with the in-process message", async () => {
    const wide = await pair(wideDir);
    const tooLong = "hello world ".repeat(40); // 80 tokens: past the model's 64 positions
    const expected = await wide.local.embed([tooLong]).then(
      () => "no error",
      (err: Error) => err.message,
    );
    expect(expected).not.toBe("no error");
    const [before, failing, after] = await Promise.allSettled([
      wide.threaded.embed(["hello world"]),
      wide.threaded.embed(["cats sat", tooLong]),
      wide.threaded.embed(["the dog ran"]),
    ]);
    expect(failing).toEqual({ status: "rejected", reason: expect.any(Error) });
    expect((failing as PromiseRejectedResult).reason.message).toBe(expected);
    sameBits(
      (before as PromiseFulfilledResult<Float32Array[]>).value,
      await wide.local.embed(["hello world"]),
    );
    sameBits(
      (after as PromiseFulfilledResult<Float32Array[]>).value,
      await wide.local.embed(["the dog ran"]),
    );
  });

  test("a text that cannot cross to the thread fails its call only", async () => {
    await expect(tiny.threaded.embed([Symbol("not text") as unknown as string])).rejects.toThrow();
    sameBits(await tiny.threaded.embed(["hello"]), await tiny.local.embed(["hello"]));
  });

  test("a model that cannot load rejects with the loader's message, and its thread ends", async () => {
    const missing = path.join(work, "no-such-model");
    const expected = await loadModel(missing, { cacheDir }).then(
      () => "loaded",
      (err: Error) => err.message,
    );
    const count = started.length;
    await expect(loadModelThreaded(missing, { cacheDir })).rejects.toThrow(expected);
    expect(started).toHaveLength(count + 1);
    expect(started.at(-1)?.threadId).toBe(-1);
  });

  test("dispose fails the calls still waiting, ends the thread, and refuses later calls", async () => {
    const model = await threadedModel(tinyDir);
    const thread = started.at(-1) as Worker;
    const waiting = Promise.allSettled([model.embed(TINY_TEXTS), model.embed(["hello"])]);
    await model.dispose();
    for (const outcome of await waiting) {
      expect(outcome.status).toBe("rejected");
      expect((outcome as PromiseRejectedResult).reason).toEqual(
        new Error("model tiny-bert was disposed"),
      );
    }
    expect(thread.threadId).toBe(-1);
    await expect(model.embed(["hello"])).rejects.toThrow("model tiny-bert was disposed");
    await model.dispose(); // twice is harmless
  });

  test("a thread that dies fails every call waiting on it, and every later one", async () => {
    const model = await threadedModel(tinyDir);
    const thread = started.at(-1) as Worker;
    const waiting = Promise.allSettled([
      model.embed(TINY_TEXTS),
      model.embed(["hello"]),
      model.embed(["world"]),
    ]);
    await thread.terminate();
    for (const outcome of await waiting) {
      expect(outcome.status).toBe("rejected");
      expect((outcome as PromiseRejectedResult).reason.message).toMatch(
        /^the inference thread stopped \(exit code \d+\)$/,
      );
    }
    await expect(model.embed(["hello"])).rejects.toThrow(/the inference thread stopped/);
    await model.dispose();
  });

  test("a program that loads a threaded model ends on its own once its calls are answered", () => {
    const threaded = fileURLToPath(new URL("../../src/model/threaded.ts", import.meta.url));
    const program = `
      const { loadModelThreaded } = await import(${JSON.stringify(threaded)});
      const model = await loadModelThreaded(${JSON.stringify(tinyDir)}, { cacheDir: ${JSON.stringify(cacheDir)}, threads: 1 });
      const [v] = await model.embed(["hello world"]);
      console.log(v.length);
    `;
    const run = spawnSync(
      process.execPath,
      ["--import", "tsx", "--input-type=module", "-e", program],
      {
        encoding: "utf8",
        timeout: 30_000,
      },
    );
    expect(run.stderr).toBe("");
    expect({ status: run.status, out: run.stdout }).toEqual({ status: 0, out: "32\n" });
  });
});
