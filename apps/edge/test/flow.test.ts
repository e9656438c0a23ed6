import { env, runDurableObjectAlarm, runInDurableObject } from "cloudflare:test";
import { PROTOCOL_VERSION, TASK_SIZE } from "@p2pa/shared";
import { afterEach, describe, expect, it } from "vitest";
import { Dispatcher, type DispatcherStats } from "../src/dispatch/dispatcher.js";
import { dispatcherFor } from "../src/dispatch/shards.js";
import { answerChunks, call, job, KEYS, submit, TestWorker } from "./helpers.js";

// Every job of this file lands on the same (only) shard.
const shard = () => dispatcherFor(env, "use-lite", "any");
const stats = (): Promise<DispatcherStats> => shard().stats();
const open: TestWorker[] = [];
const connect = async (hello?: Parameters<typeof TestWorker.connect>[0]) => {
  const w = await TestWorker.connect(hello);
  open.push(w);
  return w;
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

afterEach(async () => {
  for (const w of open.splice(0)) w.ws.close();
  // Leave no ready work behind for the next test.
  await runInDurableObject(shard(), async (_o: Dispatcher, state) => {
    state.storage.sql.exec(
      "UPDATE tasks SET state = 'cancelled' WHERE state IN ('pending', 'leased')",
    );
    state.storage.sql.exec("DELETE FROM leases");
  });
});

/** Answers the worker's tasks until `chunks` are done, interleaving other frames. */
async function workThrough(w: TestWorker, chunks: number, capacity: number) {
  await answerChunks(w, chunks, () => {
    // Frames of the same socket that the edge handles while the result is being written.
    w.ready(capacity);
    w.send({ type: "heartbeat", v: PROTOCOL_VERSION, leaseIds: [], capacity });
    w.ready(capacity);
  });
}

describe("flow control", () => {
  it("keeps the worker's picture and the Dispatcher's in step across many jobs and interleaved frames", async () => {
    const w = await connect();
    const capacity = 3;
    w.ready(capacity);
    let chunks = 0;
    // Job after job on one worker: the shape that used to stop a shard within a few jobs.
    for (const docs of [200, 200, 1, 50, 7, 130]) {
      const j = await submit(docs);
      await workThrough(w, docs, capacity);
      chunks += docs;
      expect(await job(j.id)).toMatchObject({ status: "completed", chunks: { done: docs } });
      const [me] = (await stats()).workers;
      // Nothing is held, so the edge's room is the whole window, as the worker counts it.
      expect(me).toMatchObject({ capacity, held: 0, room: capacity, chunksDone: chunks });
    }
  });

  it("lists each connected worker with what it said about itself and what it has done lately", async () => {
    const w = await connect({ name: "lab-gpu", device: "cuda", threads: 8, version: "9.9.9" });
    w.ready(2);
    const j = await submit(96);
    await workThrough(w, 96, 2);
    expect(await job(j.id)).toMatchObject({ status: "completed" });
    const list = (await (await call("/v1/workers")).json()) as {
      shards: { workers: Record<string, unknown>[] }[];
    };
    const [me] = list.shards.flatMap((s) => s.workers);
    expect(me).toMatchObject({
      name: "lab-gpu",
      device: "cuda",
      threads: 8,
      version: "9.9.9",
      models: ["use-lite"],
      held: 0,
      failures: 0,
      chunksDone: 96,
    });
    // 96 chunks within the last minute, over at least the one second the rate is taken over.
    expect(me?.chunksPerSecond).toBeGreaterThan(1);
    expect(me?.chunksPerSecond).toBeLessThanOrEqual(96);
    expect(Date.parse(String(me?.connectedAt))).toBeLessThanOrEqual(Date.now());
  });

  it("hands back a lease the worker never got (a lost task frame) without charging an attempt", async () => {
    const j = await submit(2 * TASK_SIZE);
    const w = await connect();
    w.ready(2);
    const t1 = await w.next("task");
    const t2 = await w.next("task");
    // Make both leases old enough to be judged, then list only t1: t2's frame was "lost".
    await runInDurableObject(shard(), async (_o: Dispatcher, state) => {
      // Granted more than two heartbeat intervals (2 x 15 s) ago.
      state.storage.sql.exec("UPDATE leases SET leased_at = ?", Date.now() - 31_000);
    });
    w.send({ type: "heartbeat", v: PROTOCOL_VERSION, leaseIds: [t1.leaseId], capacity: 2 });
    const again = await w.next("task");
    expect(again.taskId).toBe(t2.taskId);
    expect(again.leaseId).not.toBe(t2.leaseId);
    expect(again.attempt).toBe(1); // a lost frame is not the task's failure
    for (const t of [t1, again]) w.send(w.resultFor(t));
    await w.next("ack");
    await w.next("ack");
    expect((await job(j.id)).status).toBe("completed");
    const metrics = await (await call("/v1/metrics", { key: KEYS.admin })).text();
    expect(metrics).toMatch(/^p2pa_leases_reconciled_total 1$/m);
  });

  it("wakes a benched worker at the end of its cool-down even after another wake fired first", async () => {
    const w = await connect();
    w.ready(1);
    await submit(3 * TASK_SIZE);
    for (let i = 0; i < 5; i++) {
      await runInDurableObject(shard(), async (_o: Dispatcher, state) => {
        state.storage.sql.exec("UPDATE tasks SET not_before = 0");
      });
      w.ready(1);
      const t = await w.next("task");
      w.send(w.resultFor(t, () => new Float32Array(3)));
      await w.next("ack");
    }
    expect(await w.next("error")).toMatchObject({ code: "cooldown" });
    await sleep(50);
    expect((await stats()).workers[0]).toMatchObject({ coolingDown: true, room: 0 });
    // A webhook hand-over retry comes due before the cool-down ends: its wake fires first.
    await runInDurableObject(shard(), async (o: Dispatcher, state) => {
      state.storage.sql.exec("UPDATE tasks SET not_before = 0");
      state.storage.sql.exec(
        "INSERT INTO jobs (id, tenant, notify_pending, notify_at) VALUES ('job_gone', 't1', 1, ?)",
        Date.now() + 300,
      );
      await (o as unknown as { pump(): Promise<void> }).pump();
      const at = await state.storage.getAlarm();
      expect(at).toBeGreaterThan(Date.now());
      expect(at).toBeLessThanOrEqual(Date.now() + 300);
    });
    await sleep(350);
    expect(await runDurableObjectAlarm(shard())).toBe(true);
    // After that wake the cool-down's end is still armed: nothing else would wake the worker.
    const coolEnd = await runInDurableObject(shard(), async (o: Dispatcher, state) => {
      const at = await state.storage.getAlarm();
      // Let the cool-down run out, as 60 s would.
      const peers = (o as unknown as { peers: import("../src/dispatch/peers.js").Peers }).peers;
      for (const { ws } of peers.all())
        peers.update(ws, (p) => {
          p.budget = { ...p.budget, coolUntil: Date.now() - 1 };
        });
      return at;
    });
    expect(coolEnd).toBeGreaterThan(Date.now() + 50_000);
    expect(await runDurableObjectAlarm(shard())).toBe(true);
    expect((await w.next("task")).type).toBe("task");
  });

  it("puts a task cut off mid-write back on start, and takes the worker's re-sent result", async () => {
    const j = await submit(5);
    const w = await connect({ session: "sess_crash_0123456789" });
    w.ready(1);
    const t = await w.next("task");
    // The object stopped while the task was being written (crash, deploy).
    await runInDurableObject(shard(), async (_o: Dispatcher, state) => {
      state.storage.sql.exec("UPDATE tasks SET state = 'storing' WHERE id = ?", t.taskId);
      // A fresh instance on the same storage: what the runtime starts after the crash.
      const restarted = new Dispatcher(state, env);
      await state.blockConcurrencyWhile(async () => {});
      expect(restarted).toBeInstanceOf(Dispatcher);
      const row = state.storage.sql
        .exec<{ state: string }>("SELECT state FROM tasks WHERE id = ?", t.taskId)
        .one();
      expect(row.state).toBe("pending");
      // No wake is left pointing at a time already past.
      const at = await state.storage.getAlarm();
      expect(at === null || at > Date.now()).toBe(true);
    });
    // The worker reconnects and re-sends its result (as it does after any drop): stored once.
    w.send(w.resultFor(t));
    expect(await w.next("ack")).toMatchObject({ status: "stored" });
    expect(await job(j.id)).toMatchObject({ status: "completed", chunks: { done: 5 } });
    const metrics = await (await call("/v1/metrics", { key: KEYS.admin })).text();
    expect(metrics).toMatch(/^p2pa_tasks_recovered_total 1$/m);
  });

  it("reports a stall in /healthz and /v1/metrics, and the watchdog repairs it", async () => {
    const w = await connect();
    w.ready(2);
    await sleep(50);
    expect((await call("/healthz", { key: null })).status).toBe(200);
    // Work that some path forgot to dispatch: ready for a minute beside a worker with room.
    await runInDurableObject(shard(), async (_o: Dispatcher, state) => {
      state.storage.sql.exec(
        "INSERT INTO jobs (id, tenant) VALUES ('job_forgotten', 't1') ON CONFLICT DO NOTHING",
      );
      state.storage.sql.exec(
        `INSERT INTO tasks (id, job_id, tenant, model, size, queued_at)
         VALUES ('job_forgotten.0', 'job_forgotten', 't1', 'use-lite', 1, ?)`,
        Date.now() - 60_000,
      );
      state.storage.sql.exec(
        "INSERT INTO task_blocks (task_id, block, items, size) VALUES ('job_forgotten.0', 0, ?, 1)",
        JSON.stringify([{ chunkId: "job_forgotten.c0", documentId: "d", index: 0, text: "x" }]),
      );
    });
    const health = await call("/healthz", { key: null });
    expect(health.status).toBe(503);
    expect(await health.json()).toMatchObject({
      status: "degraded",
      checks: { dispatch: "stalled" },
      stalled: [{ model: "use-lite", shard: 0, readyTasks: 1, workersWithRoom: 1 }],
    });
    const metrics = await (await call("/v1/metrics", { key: KEYS.admin })).text();
    expect(metrics).toMatch(/^p2pa_shard_stalled\{model="use-lite",shard="0"\} 1$/m);
    expect(metrics).toMatch(
      /^p2pa_oldest_ready_task_age_seconds\{model="use-lite",shard="0"\} (5\d|6\d)\.\d+$/m,
    );
    // The next heartbeat finds it, logs it, counts it and dispatches.
    w.send({ type: "heartbeat", v: PROTOCOL_VERSION, leaseIds: [], capacity: 2 });
    expect((await w.next("task")).taskId).toBe("job_forgotten.0");
    expect((await call("/healthz", { key: null })).status).toBe(200);
    const after = await (await call("/v1/metrics", { key: KEYS.admin })).text();
    expect(after).toMatch(/^p2pa_dispatch_stalls_total\{kind="heartbeat"\} 1$/m);
    expect(after).toMatch(/^p2pa_shard_stalled\{model="use-lite",shard="0"\} 0$/m);
  });

  it("tells a worker on another protocol version so, and closes with 4426", async () => {
    const res = await call("/v1/workers/connect", {
      key: KEYS.worker,
      headers: { Upgrade: "websocket" },
    });
    const ws = res.webSocket as WebSocket;
    ws.accept();
    const frames: { type: string; code?: string; message?: string }[] = [];
    ws.addEventListener("message", (e) => frames.push(JSON.parse(e.data as string)));
    const closed = new Promise<{ code: number; reason: string }>((r) =>
      ws.addEventListener("close", (e) => r({ code: e.code, reason: e.reason })),
    );
    ws.send(
      JSON.stringify({
        type: "hello",
        v: 1,
        version: "0.0.1",
        models: [{ id: "use-lite", dimension: 512 }],
        device: "cpu",
        threads: 1,
        batchSize: 32,
      }),
    );
    expect(await closed).toMatchObject({ code: 4426 });
    expect(frames[0]).toMatchObject({
      type: "error",
      code: "unsupported_version",
      message: expect.stringMatching(/version 1 .*speaks 2.*upgrade p2pa-worker/),
    });
  });
});
