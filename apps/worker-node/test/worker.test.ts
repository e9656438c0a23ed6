import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { decodeResultFrame, decodeVector, PROTOCOL_VERSION } from "@p2pa/shared";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type WebSocket, WebSocketServer } from "ws";
import { type Embedder, loadModel, loadModelPool } from "../src/model/index.js";
import { Worker } from "../src/worker.js";
import { writeTinyModelFolder } from "./fixtures/tiny-bert.js";

// The worker's own bookkeeping (its window, its outbox, its session) against a scripted edge
// on a real WebSocket, with a real (tiny) ONNX model: the side of the flow control that the
// edge's tests cannot see.
type Frame = { type: string; [k: string]: unknown };

let work: string;
let embedder: Embedder;
let wss: WebSocketServer;
let url: string;
/** Whether the scripted edge takes binary results (as edges before them did not). */
let edgeTakesBinary = false;
/** Set: the scripted edge refuses every hello with this reason, as a shard refuses another model. */
let refuseHello: string | null = null;
/** Every connection the scripted edge accepted, with what it received. */
const conns: { ws: WebSocket; frames: Frame[] }[] = [];

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), "p2pa-worker-test-"));
  const dir = await writeTinyModelFolder(path.join(work, "tiny"), "tiny");
  embedder = await loadModel(dir, { cacheDir: path.join(work, "cache"), threads: 1 });
  wss = new WebSocketServer({ port: 0, host: "127.0.0.1" });
  await once(wss, "listening");
  url = `ws://127.0.0.1:${(wss.address() as AddressInfo).port}/v1/workers/connect`;
  wss.on("connection", (ws) => {
    const conn = { ws, frames: [] as Frame[] };
    conns.push(conn);
    ws.on("message", (raw: Buffer, isBinary: boolean) => {
      // A binary frame is a result as raw float32: kept decoded, marked as such.
      const decoded = isBinary ? decodeResultFrame(new Uint8Array(raw).slice().buffer) : null;
      const f = decoded
        ? ({ ...(decoded.ok ? decoded.message : decoded.error), binary: true } as Frame)
        : (JSON.parse(String(raw)) as Frame);
      conn.frames.push(f);
      if (f.type === "hello" && refuseHello) {
        ws.send(
          JSON.stringify({
            type: "error",
            v: PROTOCOL_VERSION,
            code: "model_mismatch",
            message: refuseHello,
          }),
        );
        ws.close(4400, "model mismatch");
      } else if (f.type === "hello")
        ws.send(
          JSON.stringify({
            type: "welcome",
            v: PROTOCOL_VERSION,
            workerId: `wkr_${conns.length}`,
            leaseMs: 60_000,
            heartbeatMs: 100,
            ...(edgeTakesBinary && f.binaryResults ? { binaryResults: true } : {}),
          }),
        );
    });
  });
});

afterAll(async () => {
  wss?.close();
  await embedder?.dispose();
  await rm(work, { recursive: true, force: true });
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until<T>(f: () => T | undefined, what: string, ms = 5000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}
const task = (n: number, items = 3) => ({
  type: "task",
  v: PROTOCOL_VERSION,
  taskId: `job_t.t${n}`,
  leaseId: `lease-${n}-${Math.random().toString(36).slice(2)}`,
  model: "tiny",
  attempt: 1,
  items: Array.from({ length: items }, (_, i) => ({
    chunkId: `job_t.${String(n).padStart(5, "0")}.${String(i).padStart(5, "0")}`,
    text: `hello world ${n} ${i}`,
  })),
});
/** The edge's answer to a result: what it made of the task's lease. */
const ackFrame = (t: { taskId: string; leaseId: string }, status: string, extra = {}) =>
  JSON.stringify({
    type: "ack",
    v: PROTOCOL_VERSION,
    taskId: t.taskId,
    leaseId: t.leaseId,
    status,
    ...extra,
  });
/**
 * The real model, each call `ms` slower: time for a test to act mid-batch. One session, as a
 * loaded model is: calls run one after another, in the order made.
 */
const slowed = (ms: number): Embedder => {
  let queue: Promise<unknown> = Promise.resolve();
  return Object.create(embedder, {
    embed: {
      value: (texts: string[]) => {
        const call = queue.then(async () => {
          await sleep(ms);
          return embedder.embed(texts);
        });
        queue = call.catch(() => {});
        return call;
      },
    },
  });
};
/** The first connection the scripted edge accepts after it had `before`. */
const newConnection = (before: number) =>
  until(() => (conns.length > before ? conns.at(-1) : undefined), "a connection");
const newWorker = (more: Partial<ConstructorParameters<typeof Worker>[0]> = {}) =>
  new Worker({
    url,
    token: "t",
    embedder,
    batchSize: 8,
    threads: 1,
    device: "cpu",
    name: "test",
    version: "test",
    ...more,
  });

describe("the worker's window, outbox and session", () => {
  it("states its window absolutely, and its picture matches the leases the edge handed it", async () => {
    const w = newWorker();
    const conn = await until(() => conns.at(-1), "a connection");
    const hello = await until(() => conn.frames.find((f) => f.type === "hello"), "hello");
    expect(hello.capacity).toBe(2);
    expect(w.window()).toMatchObject({ capacity: 2, room: 2, leaseIds: [] });
    const [t1, t2] = [task(1), task(2)];
    conn.ws.send(JSON.stringify(t1));
    conn.ws.send(JSON.stringify(t2));
    // Both computed and sent, not yet acknowledged: room is back, the leases still held.
    const results = await until(
      () => (conn.frames.filter((f) => f.type === "result").length === 2 ? true : undefined),
      "two results",
    );
    expect(results).toBe(true);
    expect(w.window()).toMatchObject({ room: 2, queued: 0, computing: 0, awaitingAck: 2 });
    expect([...w.window().leaseIds].sort()).toEqual([t1.leaseId, t2.leaseId].sort());
    // Heartbeats restate the window and list every lease held.
    const beat = await until(
      () => conn.frames.filter((f) => f.type === "heartbeat").at(-1),
      "a heartbeat",
    );
    expect(beat.capacity).toBe(2);
    expect((beat.leaseIds as string[]).sort()).toEqual([t1.leaseId, t2.leaseId].sort());
    // No credit frames exist any more: room is never granted as an increment.
    expect(conn.frames.some((f) => f.type === "credit")).toBe(false);
    for (const t of [t1, t2]) conn.ws.send(ackFrame(t, "stored"));
    await until(() => (w.window().leaseIds.length === 0 ? true : undefined), "acks to land");
    expect(w.stats.chunksDone).toBe(6);
    await w.stop(2000);
  });

  it("re-sends unacknowledged results after a dropped connection, under the same session", async () => {
    const before = conns.length;
    const w = newWorker();
    const first = await newConnection(before);
    const hello1 = await until(() => first.frames.find((f) => f.type === "hello"), "hello");
    const t = task(3);
    first.ws.send(JSON.stringify(t));
    await until(() => first.frames.find((f) => f.type === "result"), "a result");
    // The link drops before the ack: the result must not be lost.
    first.ws.terminate();
    const second = await until(
      () => (conns.length > before + 1 ? conns.at(-1) : undefined),
      "a reconnection",
      10_000,
    );
    const hello2 = await until(() => second.frames.find((f) => f.type === "hello"), "hello again");
    expect(hello2.session).toBe(hello1.session);
    const resent = await until(
      () => second.frames.find((f) => f.type === "result"),
      "the re-sent result",
    );
    expect(resent.leaseId).toBe(t.leaseId);
    expect(w.window().leaseIds).toEqual([t.leaseId]);
    second.ws.send(ackFrame(t, "duplicate"));
    await until(() => (w.window().awaitingAck === 0 ? true : undefined), "the ack");
    await w.stop(2000);
  }, 20_000);

  it("drains: says so, hands back what it has not started, finishes the rest, and states a window of 0", async () => {
    const before = conns.length;
    // The real model, slowed down so the test can stop the worker mid-batch.
    const slow = slowed(400);
    const w = new Worker({
      url,
      token: "t",
      embedder: slow,
      batchSize: 3,
      threads: 1,
      device: "cpu",
      name: "test",
      version: "test",
    });
    const conn = await newConnection(before);
    await until(() => conn.frames.find((f) => f.type === "hello"), "hello");
    // One session: the worker keeps one call running and the next one made, so of three tasks
    // of a batch each, two are computing and one waits.
    const [busy, next, waiting] = [task(5), task(6), task(7)];
    for (const t of [busy, next, waiting]) conn.ws.send(JSON.stringify(t));
    await until(
      () => (w.window().computing === 2 && w.window().queued === 1 ? true : undefined),
      "two computing, one queued",
    );
    const stopping = w.stop(5000);
    expect(w.window().capacity).toBe(0);
    await until(() => conn.frames.find((f) => f.type === "draining"), "draining");
    const release = await until(() => conn.frames.find((f) => f.type === "release"), "a release");
    expect(release.leaseIds).toEqual([waiting.leaseId]);
    // The calls made are finished and delivered, then acknowledged before it exits.
    const results = await until(() => {
      const r = conn.frames.filter((f) => f.type === "result");
      return r.length === 2 ? r : undefined;
    }, "the results");
    expect(results.map((r) => r.leaseId)).toEqual([busy.leaseId, next.leaseId]);
    conn.ws.send(ackFrame(busy, "stored"));
    conn.ws.send(ackFrame(next, "stored"));
    await stopping;
    expect(w.stats.state).toBe("stopped");
    expect(w.window().leaseIds).toEqual([]);
  });

  it("counts the model's time while a batch runs, and every task it holds until acked", async () => {
    const before = conns.length;
    const slow = slowed(400);
    const w = newWorker({ embedder: slow, batchSize: 3 });
    const conn = await newConnection(before);
    await until(() => conn.frames.find((f) => f.type === "hello"), "hello");
    const [busy, waiting] = [task(12), task(13)];
    conn.ws.send(JSON.stringify(busy));
    conn.ws.send(JSON.stringify(waiting));
    // Both taken: the first call runs, the second waits for it.
    await until(() => (w.window().computing === 2 ? true : undefined), "a batch under way");
    await sleep(200);
    // Mid-batch: counted only as calls start and end, but the model has been busy all along.
    expect(w.stats.inferenceMs).toBeLessThan(50);
    expect(w.inferenceMsAt()).toBeGreaterThanOrEqual(150);
    expect(w.tasksHeld()).toBe(2);
    await until(
      () => (conn.frames.filter((f) => f.type === "result").length === 2 ? true : undefined),
      "both results",
    );
    // Results sent but not acknowledged are still held: the edge has not taken them yet.
    expect(w.tasksHeld()).toBe(2);
    expect(w.stats.inferenceMs).toBeGreaterThanOrEqual(800);
    expect(w.inferenceMsAt()).toBe(w.stats.inferenceMs);
    conn.ws.send(ackFrame(busy, "stored"));
    await until(() => (w.tasksHeld() === 1 ? true : undefined), "one ack");
    conn.ws.send(ackFrame(waiting, "accepted"));
    await until(() => (w.tasksHeld() === 0 ? true : undefined), "both acks");
    await w.stop(2000);
  });

  it("counts as done only what the edge stored or accepted, as the edge credits it", async () => {
    const before = conns.length;
    const events: [string, Record<string, unknown> | undefined][] = [];
    const w = newWorker({ onEvent: (e, d) => events.push([e, d]) });
    const conn = await newConnection(before);
    await until(() => conn.frames.find((f) => f.type === "hello"), "hello");
    const ts = [task(7, 2), task(8, 3), task(9, 4), task(10, 5)];
    for (const t of ts) conn.ws.send(JSON.stringify(t));
    await until(
      () => (conn.frames.filter((f) => f.type === "result").length === 4 ? true : undefined),
      "four results",
    );
    // Nothing is credited before the edge says what it made of each result.
    expect(w.stats).toMatchObject({ tasksDone: 0, chunksDone: 0 });
    const ack = (t: (typeof ts)[number], status: string, extra = {}) =>
      conn.ws.send(ackFrame(t, status, extra));
    const [stored, accepted, duplicate, rejected] = ts as [
      (typeof ts)[number],
      (typeof ts)[number],
      (typeof ts)[number],
      (typeof ts)[number],
    ];
    ack(stored, "stored");
    ack(accepted, "accepted");
    ack(duplicate, "duplicate");
    ack(rejected, "rejected", { reason: "vector dimension 384, expected 512" });
    // An ack for a lease it does not hold, and a second ack for one it did: no effect.
    ack({ ...stored, leaseId: "lease-unknown" }, "stored");
    ack(stored, "stored");
    // Frames are handled in order: once the next task's result is out, those acks were read.
    const last = task(11, 1);
    conn.ws.send(JSON.stringify(last));
    await until(() => conn.frames.find((f) => f.leaseId === last.leaseId), "the last result");
    ack(last, "stored");
    await until(() => (w.window().leaseIds.length === 0 ? true : undefined), "the acks");
    expect(w.stats).toMatchObject({ tasksDone: 3, chunksDone: 2 + 3 + 1, rejected: 1 });
    expect(events).toContainEqual([
      "rejected",
      { taskId: rejected.taskId, reason: "vector dimension 384, expected 512" },
    ]);
    expect(w.window()).toMatchObject({ room: 2, awaitingAck: 0, leaseIds: [] });
    await w.stop(2000);
  });
});

describe("a hello the edge refuses", () => {
  it("ends the worker when the edge refuses its model, without reconnecting", async () => {
    refuseHello = "model tiny returns 32 dimensions; this deployment registered it with 384";
    const before = conns.length;
    const events: [string, Record<string, unknown> | undefined][] = [];
    const w = newWorker({ onEvent: (e, d) => events.push([e, d]) });
    try {
      const fatal = await until(() => events.find(([e]) => e === "fatal"), "the end");
      expect(fatal[1]).toEqual({ code: 4400, reason: "model mismatch" });
      expect(events).toContainEqual([
        "edge_error",
        { code: "model_mismatch", message: refuseHello },
      ]);
      expect(w.stats.state).toBe("stopped");
      // Longer than the first reconnection delay: no second attempt.
      await sleep(1200);
      expect(conns.length).toBe(before + 1);
    } finally {
      refuseHello = null;
      await w.stop(1000);
    }
  });
});

describe("results on the wire", () => {
  it("sends each result as one binary float32 frame to an edge that takes them, JSON to one that does not", async () => {
    const embedded = await embedder.embed(task(9).items.map((i) => i.text));
    for (const binary of [true, false]) {
      edgeTakesBinary = binary;
      const before = conns.length;
      const w = newWorker();
      const conn = await newConnection(before);
      const hello = await until(() => conn.frames.find((f) => f.type === "hello"), "hello");
      // The worker always offers; the edge decides.
      expect(hello.binaryResults).toBe(true);
      const t = task(9);
      conn.ws.send(JSON.stringify(t));
      const r = await until(() => conn.frames.find((f) => f.type === "result"), "a result");
      expect(r.binary === true).toBe(binary);
      expect(r).toMatchObject({ taskId: t.taskId, leaseId: t.leaseId });
      const vectors = (
        r.vectors as { chunkId: string; values?: Float32Array; vector?: string }[]
      ).map((v) => v.values ?? decodeVector(v.vector as string));
      // Either way, exactly the model's numbers.
      vectors.forEach((v, i) => {
        expect(Array.from(v as Float32Array)).toEqual(Array.from(embedded[i] as Float32Array));
      });
      conn.ws.send(ackFrame(t, "stored"));
      await until(() => (w.stats.chunksDone === 3 ? true : undefined), "the ack");
      await w.stop(2000);
    }
    edgeTakesBinary = false;
  });
});

describe("a model of two sessions", () => {
  it("keeps a call per session and one more in flight, cutting queued tasks into full batches across their boundaries", async () => {
    const dir = path.join(work, "tiny");
    const pool = await loadModelPool(dir, {
      cacheDir: path.join(work, "cache"),
      threads: 2,
      sessions: 2,
    });
    // Every call is held until `release`, so the test decides when tasks arrive.
    let release!: () => void;
    const held = new Promise<void>((r) => {
      release = r;
    });
    const calls: number[] = [];
    const model: Embedder = Object.create(pool, {
      embed: {
        value: async (texts: string[], options?: { urgent?: boolean }) => {
          calls.push(texts.length);
          await held;
          return pool.embed(texts, options);
        },
      },
    });
    const before = conns.length;
    const started = performance.now();
    const w = newWorker({ embedder: model, batchSize: 4 });
    try {
      const conn = await newConnection(before);
      await until(() => conn.frames.find((f) => f.type === "hello"), "hello");
      // A batch per session and two more waiting, against three for one session.
      expect(w.window().capacity).toBe(2);
      for (const [other, capacity] of [
        [newWorker({ embedder: model, batchSize: 32 }), 4],
        [newWorker({ batchSize: 32 }), 3],
      ] as const) {
        expect(other.window().capacity).toBe(capacity);
        await other.stop(100);
      }
      const tasks = [1, 2, 3, 4, 5].map((n) => task(100 + n, 3));
      // Three calls in flight (two sessions and one waiting), one task each as they came.
      for (const [i, t] of tasks.slice(0, 3).entries()) {
        conn.ws.send(JSON.stringify(t));
        await until(
          () => (w.window().computing === i + 1 ? true : undefined),
          `task ${i + 1} taken`,
        );
      }
      for (const [i, t] of tasks.slice(3).entries()) {
        conn.ws.send(JSON.stringify(t));
        await until(() => (w.window().queued === i + 1 ? true : undefined), `task ${i + 4} queued`);
      }
      expect(calls).toEqual([3, 3, 3]);
      release();
      const results = await until(() => {
        const r = conn.frames.filter((f) => f.type === "result");
        return r.length === 5 ? r : undefined;
      }, "five results");
      // The last two tasks went as one full batch (the fourth's three texts and one of the
      // fifth's), then the fifth's last two.
      expect(calls).toEqual([3, 3, 3, 4, 2]);
      for (const t of tasks) {
        const r = results.find((x) => x.leaseId === t.leaseId) as Frame;
        const got = (r.vectors as { chunkId: string; vector: string }[]).map((v) => ({
          chunkId: v.chunkId,
          values: decodeVector(v.vector),
        }));
        expect(got.map((v) => v.chunkId)).toEqual(t.items.map((i) => i.chunkId));
        // Each text's vector whatever batch it went in (padding aside, the same numbers).
        for (const [i, item] of t.items.entries()) {
          const [alone] = await embedder.embed([item.text]);
          Array.from(got[i]?.values as Float32Array).forEach((x, k) => {
            expect(x).toBeCloseTo((alone as Float32Array)[k] as number, 5);
          });
        }
        conn.ws.send(ackFrame(t, "stored"));
      }
      await until(() => (w.stats.chunksDone === 15 ? true : undefined), "the acks");
      // Busy is counted in whole models: never more than the time that passed.
      expect(w.inferenceMsAt()).toBeLessThanOrEqual(performance.now() - started);
      expect(w.window()).toMatchObject({ queued: 0, computing: 0, awaitingAck: 0 });
    } finally {
      await w.stop(2000);
      await pool.dispose();
    }
  });
});
