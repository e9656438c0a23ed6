import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { decodeVector, PROTOCOL_VERSION } from "@p2pa/shared";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sha256Hex } from "../src/model/files.js";
import { type Embedder, loadModel } from "../src/model/index.js";
import {
  type EdgeConnection,
  type Frame,
  type ScriptedEdge,
  scriptedEdge,
} from "./fixtures/scripted-edge.js";
import { tinyManifest, writeTinyModelFolder } from "./fixtures/tiny-bert.js";

// `p2pa-worker` started as a process, as a donor starts it, against a scripted edge on real
// HTTP and WebSocket, with the real models: several models in one process (one connection
// each), a model the server does not serve, and a model known only by the server's model list.

const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
const CLI = fileURLToPath(new URL("../src/cli.ts", import.meta.url));

let work: string;
let cacheDir: string;
let tinyDir: string;
let useLite: Embedder;
let tiny: Embedder;
const edges: ScriptedEdge[] = [];
const children: ChildProcess[] = [];

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), "p2pa-serve-models-"));
  cacheDir = path.join(work, "cache");
  tinyDir = await writeTinyModelFolder(path.join(work, "tiny-bert"), "tiny-bert");
  // The models called in-process, as the worker's answers must match them (this also converts
  // use-lite into the cache the worker processes then find it in).
  useLite = await loadModel("use-lite", { cacheDir, threads: 1 });
  tiny = await loadModel(tinyDir, { cacheDir, threads: 1 });
}, 120_000);

afterAll(async () => {
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
  await Promise.all(edges.map((e) => e.close()));
  await Promise.all([useLite?.dispose(), tiny?.dispose()]);
  await rm(work, { recursive: true, force: true });
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
type Maybe<T> = T | undefined | false;
async function until<T>(
  f: () => Maybe<T> | Promise<Maybe<T>>,
  what: string,
  ms = 30_000,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

async function edge(opts: Parameters<typeof scriptedEdge>[0]): Promise<ScriptedEdge> {
  const e = await scriptedEdge(opts);
  edges.push(e);
  return e;
}

interface Running {
  child: ChildProcess;
  /** Everything the worker wrote to stderr so far. */
  log(): string;
  /** The exit code, once it exits. */
  exited: Promise<number | null>;
}

/** Starts the worker CLI from source, with the token in the environment and nothing else set. */
function startWorker(server: string, args: string[], env: NodeJS.ProcessEnv = {}): Running {
  const clean = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith("P2PA_")),
  );
  const child = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      CLI,
      "--server",
      server,
      "--threads",
      "1",
      "--device",
      "cpu",
      "--batch-size",
      "8",
      "--name",
      "test",
      ...args,
    ],
    {
      cwd: ROOT,
      env: { ...clean, P2PA_TOKEN: "wt_test", P2PA_CACHE_DIR: cacheDir, CI: "true", ...env },
      stdio: ["ignore", "ignore", "pipe"],
    },
  );
  children.push(child);
  let text = "";
  child.stderr?.on("data", (d: Buffer) => {
    text += d.toString();
  });
  const exited = once(child, "exit").then(([code]) => code as number | null);
  return { child, log: () => text, exited };
}

let taskNo = 0;
function task(model: string, texts: string[]) {
  taskNo++;
  return {
    type: "task",
    v: PROTOCOL_VERSION,
    taskId: `job_m.t${taskNo}`,
    leaseId: `lease-${taskNo}`,
    model,
    attempt: 1,
    items: texts.map((text, i) => ({
      chunkId: `job_m.${String(taskNo).padStart(5, "0")}.${String(i).padStart(5, "0")}`,
      text,
    })),
  };
}

/** Sends a task on the connection; returns the vectors of the result that comes back. */
async function roundTrip(conn: EdgeConnection, texts: string[]): Promise<Float32Array[]> {
  const t = task(conn.model, texts);
  conn.ws.send(JSON.stringify(t));
  const result = await until(
    () => conn.frames.find((f) => f.type === "result" && f.leaseId === t.leaseId),
    `the ${conn.model} result`,
  );
  conn.ws.send(
    JSON.stringify({
      type: "ack",
      v: PROTOCOL_VERSION,
      taskId: t.taskId,
      leaseId: t.leaseId,
      status: "stored",
    }),
  );
  return (result.vectors as { chunkId: string; vector: string }[]).map((v) => {
    const vector = decodeVector(v.vector);
    if (!vector) throw new Error(`the ${conn.model} result holds a vector that does not decode`);
    return vector;
  });
}

const hello = (conn: EdgeConnection) =>
  until(() => conn.frames.find((f) => f.type === "hello"), `the ${conn.model} hello`);

async function freePort(): Promise<number> {
  const s = createServer().listen(0, "127.0.0.1");
  await once(s, "listening");
  const { port } = s.address() as AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

const notServedLine = (url: string, model: string, available: string) =>
  `p2pa-worker: the server at ${url} does not serve model "${model}"; it serves: ${available}. Start with --model <one of them>, or ask its operator to add it\n`;

describe("a worker serving several models", () => {
  it("opens one connection per model, each with its own hello, and answers each with that model's vectors", async () => {
    const e = await edge({ serves: { "use-lite": 512, "tiny-bert": 32 } });
    const port = await freePort();
    const w = startWorker(e.url, [
      "--model",
      "use-lite",
      "--model",
      tinyDir,
      "--status-port",
      String(port),
    ]);
    const conns = await until(
      () => (e.connections.length === 2 ? e.connections : undefined),
      "two connections",
      60_000,
    );
    expect(conns.map((c) => c.model).sort()).toEqual(["tiny-bert", "use-lite"]);
    const byModel = (m: string) => conns.find((c) => c.model === m) as EdgeConnection;
    const [lite, bert] = [byModel("use-lite"), byModel("tiny-bert")];
    const [helloLite, helloBert] = [await hello(lite), await hello(bert)];
    expect(helloLite).toMatchObject({
      models: [{ id: "use-lite", dimension: 512 }],
      name: "test",
      device: "cpu",
      threads: 1,
      batchSize: 8,
    });
    expect(helloBert).toMatchObject({ models: [{ id: "tiny-bert", dimension: 32 }], name: "test" });
    // Each connection is a worker of its own on the server.
    expect(helloLite.session).not.toBe(helloBert.session);

    const texts = ["the quick brown fox", "hello world", "cats sat on the mat"];
    const [gotLite, gotBert] = await Promise.all([roundTrip(lite, texts), roundTrip(bert, texts)]);
    const [wantLite, wantBert] = [await useLite.embed(texts), await tiny.embed(texts)];
    expect(gotLite.map((v) => v.length)).toEqual([512, 512, 512]);
    expect(gotBert.map((v) => v.length)).toEqual([32, 32, 32]);
    gotLite.forEach((v, i) => {
      expect(Array.from(v)).toEqual(Array.from(wantLite[i] as Float32Array));
    });
    gotBert.forEach((v, i) => {
      expect(Array.from(v)).toEqual(Array.from(wantBert[i] as Float32Array));
    });

    // --status-port: the sums, and each model's own connection and credit.
    type Status = {
      model: string;
      stats: { state: string; chunksDone: number; tasksDone: number; workerId: string | null };
      models: { model: string; stats: { chunksDone: number; workerId: string } }[];
    };
    const status = await until(async () => {
      const res = await fetch(`http://127.0.0.1:${port}/status`).catch(() => null);
      const s = (await res?.json()) as Status | undefined;
      return s?.stats.chunksDone === 6 ? s : undefined;
    }, "both results credited");
    expect(status.model).toBe("use-lite,tiny-bert");
    expect(status.stats).toMatchObject({ state: "connected", tasksDone: 2, workerId: null });
    expect(status.models).toMatchObject([
      {
        model: "use-lite",
        stats: { chunksDone: 3, workerId: expect.stringMatching(/^wkr_use-lite_/) },
      },
      {
        model: "tiny-bert",
        stats: { chunksDone: 3, workerId: expect.stringMatching(/^wkr_tiny-bert_/) },
      },
    ]);

    // Stopping drains every connection and sums up per model.
    w.child.kill("SIGTERM");
    expect(await w.exited).toBe(0);
    for (const c of conns) expect(c.frames.some((f: Frame) => f.type === "draining")).toBe(true);
    expect(w.log()).toContain("stopped: 2 tasks, 6 chunks, 0 queries; model busy ");
    expect(w.log()).toContain(
      "(use-lite: 1 tasks, 3 chunks, 0 queries; tiny-bert: 1 tasks, 3 chunks, 0 queries)",
    );
  }, 120_000);

  it("takes the models as a comma-separated P2PA_MODEL too", async () => {
    const e = await edge({ serves: { "use-lite": 512, "tiny-bert": 32 } });
    const w = startWorker(e.url, [], { P2PA_MODEL: `use-lite, ${tinyDir}` });
    const conns = await until(
      () => (e.connections.length === 2 ? e.connections : undefined),
      "two connections",
      60_000,
    );
    const models = await Promise.all(conns.map(async (c) => (await hello(c)).models));
    expect(
      models
        .flat()
        .map((m) => (m as { id: string }).id)
        .sort(),
    ).toEqual(["tiny-bert", "use-lite"]);
    w.child.kill("SIGTERM");
    expect(await w.exited).toBe(0);
  }, 120_000);
});

describe("a model the server does not serve", () => {
  for (const refuseWith of [404, 422] as const) {
    it(`ends the worker at connect (HTTP ${refuseWith}) with one clear line and exit code 6, asking once`, async () => {
      // No model list (an older server): the verdict comes with the upgrade.
      const e = await edge({ serves: { "use-lite": 512 }, listed: false, refuseWith });
      const w = startWorker(e.url, ["--model", `use-lite,${tinyDir}`]);
      expect(await w.exited).toBe(6);
      expect(w.log()).toContain(notServedLine(e.url, "tiny-bert", "use-lite"));
      // The line is the last thing said, with no hint after it.
      expect(w.log().endsWith(notServedLine(e.url, "tiny-bert", "use-lite"))).toBe(true);
      expect(w.log()).not.toMatch(/tiny-bert: disconnected|reconnecting/);
      // Asked once: no retry loop.
      await sleep(1500);
      expect(e.upgrades.filter((m) => m === "tiny-bert")).toEqual(["tiny-bert"]);
    }, 120_000);
  }

  it("ends the worker before loading anything when the model list says so", async () => {
    const e = await edge({ serves: { "tiny-bert": 32, minilm: 384 } });
    const w = startWorker(e.url, []);
    expect(await w.exited).toBe(6);
    expect(w.log()).toContain(notServedLine(e.url, "use-lite", "tiny-bert, minilm"));
    expect(w.log()).not.toContain("model ready");
    expect(e.requests).toContain("/v1/models/use-lite");
    expect(e.upgrades).toEqual([]);
  }, 60_000);
});

describe("a model known by the server's model list", () => {
  /** A cache of its own, so the model is downloaded from the edge, not found. */
  async function listedEdge(sha256?: string) {
    const files = Object.fromEntries(
      await Promise.all(
        ["model.onnx", "tokenizer.json"].map(async (n) => [
          n,
          await readFile(path.join(tinyDir, n)),
        ]),
      ),
    ) as Record<string, Buffer>;
    const manifest = JSON.stringify(
      tinyManifest(
        "tiny-reg",
        Object.entries(files).map(([name, data]) => ({ name, sha256: sha256Hex(data) })),
      ),
    );
    const manifests: Record<string, { url: string; sha256: string }> = {};
    const e = await edge({
      serves: { "tiny-reg": 32 },
      manifests,
      files: { ...files, "tiny-reg.json": manifest },
    });
    manifests["tiny-reg"] = {
      url: `${e.url}/files/tiny-reg.json`,
      sha256: sha256 ?? sha256Hex(manifest),
    };
    return e;
  }

  it("loads it from the manifest the server names and serves it", async () => {
    const e = await listedEdge();
    const w = startWorker(e.url, ["--model", "tiny-reg", "--cache-dir", path.join(work, "reg")]);
    const conn = await until(() => e.connections[0], "a connection", 60_000);
    expect(conn.model).toBe("tiny-reg");
    expect(await hello(conn)).toMatchObject({ models: [{ id: "tiny-reg", dimension: 32 }] });
    expect(e.requests).toEqual(
      expect.arrayContaining([
        "/v1/models/tiny-reg",
        "/files/tiny-reg.json",
        "/files/model.onnx",
        "/files/tokenizer.json",
      ]),
    );
    const texts = ["hello world", "a lazy dog"];
    const got = await roundTrip(conn, texts);
    const want = await tiny.embed(texts);
    got.forEach((v, i) => {
      expect(Array.from(v)).toEqual(Array.from(want[i] as Float32Array));
    });
    expect(w.log()).toContain(`the server names ${e.url}/files/tiny-reg.json for model tiny-reg`);
    w.child.kill("SIGTERM");
    expect(await w.exited).toBe(0);
  }, 120_000);

  it("refuses a manifest whose SHA-256 differs from the one the server lists", async () => {
    const e = await listedEdge("0".repeat(64));
    const w = startWorker(e.url, [
      "--model",
      "tiny-reg",
      "--cache-dir",
      path.join(work, "reg-bad"),
    ]);
    expect(await w.exited).toBe(5);
    expect(w.log()).toMatch(
      /p2pa-worker: cannot load model tiny-reg: SHA-256 mismatch for model file p2pa-model\.json from http:\/\/127\.0\.0\.1:\d+\/files\/tiny-reg\.json: expected 0{64}, got [0-9a-f]{64}/,
    );
    // Nothing the manifest lists was fetched, and no connection was opened.
    expect(e.requests).not.toContain("/files/model.onnx");
    expect(e.upgrades).toEqual([]);
  }, 60_000);

  it("refuses a model whose dimension differs from the one the server lists, before connecting", async () => {
    const e = await edge({ serves: { "tiny-bert": 384 } });
    const w = startWorker(e.url, ["--model", tinyDir]);
    expect(await w.exited).toBe(5);
    expect(w.log()).toContain(
      `p2pa-worker: model tiny-bert here returns 32 dimensions; the server at ${e.url} serves it with 384\n`,
    );
    expect(e.upgrades).toEqual([]);
  }, 60_000);

  it("says what is wrong with a name neither built in, nor here, nor on the server's list", async () => {
    const e = await edge({ serves: { "use-lite": 512 }, listed: false });
    const w = startWorker(e.url, ["--model", "minilm"]);
    expect(await w.exited).toBe(5);
    expect(w.log()).toContain(
      `p2pa-worker: unknown model "minilm": not built in (use-lite), not a path on this machine, not a manifest URL, and the server at ${e.url} does not list it (${e.url}/v1/models/minilm answered HTTP 404)`,
    );
  }, 60_000);
});
