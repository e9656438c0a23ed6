// A pool of sessions of one model (pool.ts) against the same model loaded in-process: the same
// vectors to the bit however calls are spread over the sessions, real-time calls before the
// batch calls waiting, and the share of threads and memory each session gets.
import { readdirSync, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { type Embedder, loadModel } from "../../src/model/index.js";
import { defaultSessions, loadModelPool, sessionsMemoryAllows } from "../../src/model/pool.js";
import { LONG, SENTENCES } from "../fixtures/texts.js";
import { writeTinyModelFolder } from "../fixtures/tiny-bert.js";

const bytes = (v: Float32Array) => new Uint8Array(v.buffer, v.byteOffset, v.byteLength);

let work: string;
let cacheDir: string;
let tinyDir: string;
const open: Embedder[] = [];
let local: Embedder;
let pool: Embedder;

async function track(e: Promise<Embedder>): Promise<Embedder> {
  const loaded = await e;
  open.push(loaded);
  return loaded;
}

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), "p2pa-pool-"));
  cacheDir = path.join(work, "cache");
  tinyDir = await writeTinyModelFolder(path.join(work, "tiny"), "tiny");
  // The pool first: its first session converts use-lite into the empty cache, alone.
  pool = await track(loadModelPool("use-lite", { cacheDir, threads: 2, sessions: 2 }));
  local = await track(loadModel("use-lite", { cacheDir, threads: 1 }));
});

afterAll(async () => {
  await Promise.all(open.map((e) => e.dispose()));
  await rm(work, { recursive: true, force: true });
});

describe("a pool of sessions", () => {
  test("runs as many calls at once as it has sessions, and loads the model once", () => {
    expect(pool.parallelism).toBe(2);
    expect(pool.manifest).toEqual(local.manifest);
    expect(pool.info).toEqual({ ...local.info, reused: false });
  });

  test("gives every call the in-process model's vectors to the bit, in the order of its texts", async () => {
    const batches = [
      SENTENCES.slice(0, 3),
      [LONG],
      SENTENCES,
      ["one more", ""],
      SENTENCES.slice(2),
      [],
    ];
    const before = pool.stats.texts;
    // All in flight at once: spread over both sessions and the queue between them.
    const got = await Promise.all(batches.map((b) => pool.embed(b)));
    for (const [i, batch] of batches.entries()) {
      const want = await local.embed(batch);
      expect(got[i]).toHaveLength(batch.length);
      for (const [j, v] of (got[i] ?? []).entries())
        expect(bytes(v)).toEqual(bytes(want[j] as Float32Array));
    }
    expect(pool.stats.texts - before).toBe(batches.reduce((n, b) => n + b.length, 0));
    expect(pool.countTokens(LONG)).toBe(local.countTokens(LONG));
  });

  test("starts a real-time call before the batch calls waiting for a session", async () => {
    const one = await track(loadModelPool(tinyDir, { cacheDir, threads: 1, sessions: 1 }));
    const done: string[] = [];
    const call = (name: string, urgent: boolean) =>
      one.embed(Array(16).fill(`text for ${name}`), { urgent }).then(() => void done.push(name));
    // batch-1 runs at once; the others wait for the one session, the query ahead of them.
    await Promise.all([
      call("batch-1", false),
      call("batch-2", false),
      call("batch-3", false),
      call("query", true),
    ]);
    expect(done).toEqual(["batch-1", "query", "batch-2", "batch-3"]);
  });

  test("answers every call, running or waiting, with an error when disposed, and refuses new ones", async () => {
    const one = await loadModelPool(tinyDir, { cacheDir, threads: 1, sessions: 1 });
    const running = expect(one.embed(["hello world"])).rejects.toThrow(/disposed/);
    const waiting = expect(one.embed(["hello again"])).rejects.toThrow(/disposed/);
    await one.dispose();
    await Promise.all([running, waiting]);
    await expect(one.embed(["too late"])).rejects.toThrow(/disposed/);
  });

  // Linux keeps a nice value per thread, so the lowered threads can be counted.
  test.runIf(process.platform === "linux")(
    "runs its sessions at the lowest priority when asked, and leaves the caller's thread as it was",
    async () => {
      /** The nice value of each of this process's threads (field 19 of its stat line). */
      const nices = () =>
        readdirSync("/proc/self/task").map((tid) => {
          const stat = readFileSync(`/proc/self/task/${tid}/stat`, "utf8");
          return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[16]);
        });
      const lowered = () => nices().filter((n) => n === 19).length;
      const before = lowered();
      const low = await track(
        loadModelPool(tinyDir, { cacheDir, threads: 2, sessions: 2, priority: "low" }),
      );
      expect(lowered() - before).toBe(2);
      expect(nices()[0]).toBe(0);
      // The lowered sessions still answer.
      expect(await low.embed(["hello world"])).toHaveLength(1);
      await track(loadModelPool(tinyDir, { cacheDir, threads: 2, sessions: 2 }));
      expect(lowered() - before).toBe(2);
    },
  );

  test("refuses a count of sessions that is not a positive whole number", async () => {
    await expect(loadModelPool(tinyDir, { cacheDir, sessions: 0 })).rejects.toThrow(/sessions/);
    await expect(loadModel(tinyDir, { cacheDir, sessions: 2 })).rejects.toThrow(/loadModelPool/);
  });
});

describe("how many sessions", () => {
  test("on the CPU one per thread up to four; on a GPU one", () => {
    expect(defaultSessions({ threads: 1 })).toBe(1);
    expect(defaultSessions({ threads: 2, executionProviders: ["cpu"] })).toBe(2);
    expect(defaultSessions({ threads: 16 })).toBe(4);
    expect(defaultSessions({ threads: 16, executionProviders: ["cuda", "cpu"] })).toBe(1);
  });

  test("no more than a quarter of the memory holds, at twice the model file each", () => {
    const GB = 2 ** 30;
    // use-lite's file (about 26 MB) on an 8 GB laptop: memory is no limit.
    expect(sessionsMemoryAllows(26e6, 8 * GB)).toBeGreaterThan(4);
    // A 440 MB model: two sessions on 8 GB, one on 2 GB, never none.
    expect(sessionsMemoryAllows(440e6, 8 * GB)).toBe(2);
    expect(sessionsMemoryAllows(440e6, 2 * GB)).toBe(1);
    expect(sessionsMemoryAllows(4e9, 2 * GB)).toBe(1);
  });
});
