import { env, runInDurableObject } from "cloudflare:test";
import {
  encodeResultFrame,
  encodeVector,
  MAX_TASK_SIZE,
  PROTOCOL_VERSION,
  TASK_SIZE,
} from "@p2pa/shared";
import { describe, expect, it } from "vitest";
import type { Dispatcher } from "../src/dispatch/dispatcher.js";
import { dispatcherFor } from "../src/dispatch/shards.js";
import {
  answerChunks,
  call,
  type Frame,
  job,
  KEYS,
  originalsOf,
  roundTrip,
  submit,
  TestWorker,
  workerToken,
} from "./helpers.js";

const stub = (jobId: string) => dispatcherFor(env, "use-lite", jobId);

/** Runs every lease out and wakes the shard now, rather than racing its own alarm (which may
 * already have fired on a loaded machine, leaving none for the test to run). */
async function expireLeases(jobId: string): Promise<void> {
  await runInDurableObject(stub(jobId), async (o: Dispatcher, state) => {
    state.storage.sql.exec("UPDATE leases SET deadline = 0");
    await o.alarm();
  });
}

describe("Dispatcher", () => {
  it("keeps a worker's open leases within its capacity, stores results once, completes the job", async () => {
    const j = await submit(2 * TASK_SIZE + 8); // 3 tasks
    const w = await TestWorker.connect();
    w.ready(2);
    const t1 = await w.next("task");
    const t2 = await w.next("task");
    // Every frame sent before the probe is handled by its answer: no task came.
    await roundTrip(w);
    expect(w.count("task")).toBe(0); // the third task waits for room
    expect((await job(j.id)).status).toBe("running");
    // Restating the same capacity (a repeated frame) opens no extra room.
    w.ready(2);
    // Every frame sent before the probe is handled by its answer: no task came.
    await roundTrip(w);
    expect(w.count("task")).toBe(0);

    w.send(w.resultFor(t1));
    // The result frees its room: the third task comes without the worker asking again.
    const t3 = await w.next("task");
    expect(await w.next("ack")).toMatchObject({ taskId: t1.taskId, status: "stored" });
    w.send(w.resultFor(t1)); // the same result again
    expect(await w.next("ack")).toMatchObject({ taskId: t1.taskId, status: "duplicate" });
    w.send(w.resultFor(t2));
    await w.next("ack");
    w.send(w.resultFor(t3));
    await w.next("ack");
    expect(await job(j.id)).toMatchObject({
      status: "completed",
      chunks: { total: 2 * TASK_SIZE + 8, done: 2 * TASK_SIZE + 8, failed: 0 },
    });
    w.ws.close();
  });

  it("cuts tasks to each worker's pace: 32 chunks until it is measured, up to 256 once it proves fast, each chunk once", async () => {
    const total = 4 * MAX_TASK_SIZE + 40;
    const j = await submit(total);
    const w = await TestWorker.connect();
    w.ready(2);
    const tasks = await answerChunks(w, total);
    w.ws.close();
    const sizes = tasks.map((t) => (t.items as unknown[]).length);
    // Unmeasured, it gets one default task's worth; answering at once, it soon gets the most.
    expect(sizes.slice(0, 2)).toEqual([TASK_SIZE, TASK_SIZE]);
    expect(Math.max(...sizes)).toBe(MAX_TASK_SIZE);
    expect(sizes.length).toBeLessThan(total / TASK_SIZE / 2);
    expect(sizes.reduce((a, b) => a + b, 0)).toBe(total);
    expect(await job(j.id)).toMatchObject({
      status: "completed",
      chunks: { total, done: total, failed: 0 },
    });
    // Each chunk went out once, in one task.
    const chunkIds = tasks.flatMap((t) => (t.items as { chunkId: string }[]).map((i) => i.chunkId));
    expect(new Set(chunkIds).size).toBe(total);
  });

  it("writes results that come in together in shared writes, each chunk once", async () => {
    const tasks = 8;
    const j = await submit(tasks * TASK_SIZE);
    const writes = async () =>
      Number(
        /^p2pa_result_writes_total (\d+)$/m.exec(
          await (await call("/v1/metrics", { key: KEYS.admin })).text(),
        )?.[1] ?? 0,
      );
    const before = await writes();
    // A new connection holds two tasks until it has earned more: four workers hold all eight.
    const workers = await Promise.all([0, 1, 2, 3].map(() => TestWorker.connect()));
    const leased = [];
    for (const w of workers) {
      w.ready(2);
      leased.push({ w, t: await w.next("task") }, { w, t: await w.next("task") });
    }
    // Every result at once, as a fast fleet sends them; one of them twice.
    for (const { w, t } of leased) w.send(w.resultFor(t));
    const [first] = leased as [(typeof leased)[number]];
    first.w.send(first.w.resultFor(first.t));
    const acks = [];
    for (const { w } of leased) acks.push(await w.next("ack"));
    acks.push(await first.w.next("ack"));
    expect(acks.filter((a) => a.status === "stored")).toHaveLength(tasks);
    expect(acks.filter((a) => a.status === "duplicate")).toHaveLength(1);
    expect(await job(j.id)).toMatchObject({
      status: "completed",
      chunks: { total: tasks * TASK_SIZE, done: tasks * TASK_SIZE, failed: 0 },
    });
    // The results that waited for the first write went in together.
    const shared = (await writes()) - before;
    expect(shared).toBeGreaterThanOrEqual(1);
    expect(shared).toBeLessThan(tasks);
    for (const w of workers) w.ws.close();
  });

  it("takes results as binary float32 frames from a worker that offers them, bit for bit", async () => {
    const j = await submit(TASK_SIZE + 4); // 2 tasks
    const w = await TestWorker.connect({ binaryResults: true });
    expect(w.welcome).toMatchObject({ binaryResults: true });
    w.ready(2);
    const tasks = [await w.next("task"), await w.next("task")];
    const sent = new Map<string, Float32Array>();
    const frameOf = (t: Frame, mangle?: (b: Uint8Array) => Uint8Array) => {
      const vectors = (t.items as { chunkId: string }[]).map(({ chunkId }, i) => {
        // Not an axis: every bit of the mantissas must come through.
        const v = Float32Array.from({ length: 512 }, (_, k) => Math.sin(i * 17 + k * 0.37));
        const n = Math.hypot(...v);
        const values = v.map((x) => x / n);
        sent.set(chunkId, values);
        return { chunkId, values };
      });
      const frame = encodeResultFrame({
        taskId: t.taskId as string,
        leaseId: t.leaseId as string,
        vectors,
      });
      return mangle ? mangle(frame) : frame;
    };
    // A frame cut short is a typed error; the task is not stored and stays this worker's.
    w.send(frameOf(tasks[0] as Frame, (b) => b.subarray(0, b.length - 4)));
    expect(await w.next("error")).toMatchObject({ code: "bad_message" });
    for (const t of tasks) {
      w.send(frameOf(t));
      expect(await w.next("ack")).toMatchObject({ taskId: t.taskId, status: "stored" });
    }
    expect(await job(j.id)).toMatchObject({
      status: "completed",
      chunks: { total: TASK_SIZE + 4, done: TASK_SIZE + 4, failed: 0 },
    });
    const page = (await (
      await call(`/v1/jobs/${j.id}/chunks?limit=1000&includeVectors=true`)
    ).json()) as { data: { id: string; vector: number[] }[] };
    expect(page.data).toHaveLength(TASK_SIZE + 4);
    for (const c of page.data)
      expect(new Uint8Array(Float32Array.from(c.vector).buffer)).toEqual(
        new Uint8Array((sent.get(c.id) as Float32Array).buffer),
      );
    w.ws.close();

    // A worker that did not offer binary frames is told so, and is answered in JSON.
    await submit(1);
    const plain = await TestWorker.connect();
    expect(plain.welcome?.binaryResults).toBeUndefined();
    plain.ready(1);
    const t = await plain.next("task");
    plain.send(frameOf(t));
    expect(await plain.next("error")).toMatchObject({
      code: "bad_message",
      message: expect.stringMatching(/not offered/),
    });
    plain.send(plain.resultFor(t));
    expect(await plain.next("ack")).toMatchObject({ status: "stored" });
    plain.ws.close();
  });

  it("rejects results that do not hold up and requeues the task", async () => {
    const j = await submit(5);
    const w = await TestWorker.connect();
    w.ready(1);
    const t = await w.next("task");
    w.send(w.resultFor(t, () => new Float32Array(384).fill(0.05)));
    expect(await w.next("ack")).toMatchObject({
      status: "rejected",
      reason: expect.stringMatching(/dimension/),
    });
    // The failed attempt put the task back; after its backoff the worker gets it again.
    const again = await w.next("task");
    expect(again.taskId).toBe(t.taskId);
    expect(again.attempt).toBe(2);
    w.send(w.resultFor(again, (v) => v.fill(Number.NaN)));
    expect(await w.next("ack")).toMatchObject({
      status: "rejected",
      reason: expect.stringMatching(/non-finite/),
    });
    const third = await w.next("task");
    w.send({ ...w.resultFor(third), leaseId: "not-a-lease" });
    expect(await w.next("ack")).toMatchObject({
      status: "rejected",
      reason: expect.stringMatching(/lease/),
    });
    w.send(w.resultFor(third));
    expect(await w.next("ack")).toMatchObject({ status: "stored" });
    expect((await job(j.id)).chunks).toEqual({ total: 5, done: 5, failed: 0, cached: 0 });
    w.ws.close();
  });

  it("answers malformed frames with typed errors and keeps serving", async () => {
    const w = await TestWorker.connect();
    w.send("{garbage");
    expect(await w.next("error")).toMatchObject({ code: "bad_json" });
    w.send({ type: "steal", v: PROTOCOL_VERSION });
    expect(await w.next("error")).toMatchObject({ code: "bad_message" });
    w.ready(-5);
    expect(await w.next("error")).toMatchObject({ code: "bad_message" });
    w.send({ type: "credit", v: PROTOCOL_VERSION, n: 1 }); // version 1's frame
    expect(await w.next("error")).toMatchObject({ code: "bad_message" });
    const j = await submit(1);
    w.ready(1);
    const t = await w.next("task");
    w.send(w.resultFor(t));
    expect(await w.next("ack")).toMatchObject({ status: "stored" });
    expect((await job(j.id)).status).toBe("completed");
    w.ws.close();
  });

  it("requeues a disconnected worker's tasks; an expired lease is reassigned but its late result still counts once", async () => {
    const j = await submit(TASK_SIZE + 4); // 2 tasks
    const a = await TestWorker.connect();
    a.ready(2);
    const held = [(await a.next("task")).taskId, (await a.next("task")).taskId];
    a.ws.close(1000, "bye");
    const b = await TestWorker.connect();
    b.ready(1);
    // a's leases wait out a short grace period for a reconnect before anyone else gets them.
    // Every frame sent before the probe is handled by its answer: no task came.
    await roundTrip(b);
    expect(b.count("task")).toBe(0);
    await runInDurableObject(stub(j.id), async (_o: Dispatcher, state) => {
      const d = state.storage.sql
        .exec<{ d: number }>("SELECT max(deadline) AS d FROM leases")
        .one().d;
      expect(d).toBeLessThanOrEqual(Date.now() + 5_000);
    });
    await expireLeases(j.id);
    const tb = await b.next("task");
    expect(held).toContain(tb.taskId);

    // b stalls: its lease runs out, the alarm requeues it (b takes nothing new meanwhile).
    b.ready(0);
    await roundTrip(b);
    await expireLeases(j.id);
    const c = await TestWorker.connect();
    c.ready(2);
    const t1 = await c.next("task");
    const t2 = await c.next("task");
    // b's result arrives late but before the give-up deadline: the first valid result is
    // stored, and c's answer for the same task is a duplicate.
    b.send(b.resultFor(tb));
    expect(await b.next("ack")).toMatchObject({ taskId: tb.taskId, status: "stored" });
    const [same, other] = t1.taskId === tb.taskId ? [t1, t2] : [t2, t1];
    c.send(c.resultFor(same as typeof t1));
    expect(await c.next("ack")).toMatchObject({ taskId: tb.taskId, status: "duplicate" });
    c.send(c.resultFor(other as typeof t1));
    expect(await c.next("ack")).toMatchObject({ status: "stored" });
    expect(await job(j.id)).toMatchObject({
      status: "completed",
      chunks: { total: TASK_SIZE + 4, done: TASK_SIZE + 4, failed: 0 },
    });
    for (const w of [b, c]) w.ws.close();
  });

  it("marks a chunk failed once it has failed on five different donors, with the reasons", async () => {
    const j = await submit(3);
    const workers: TestWorker[] = [];
    for (let attempt = 1; attempt <= 5; attempt++) {
      // Skip the retry backoff so the test need not wait for it.
      await runInDurableObject(stub(j.id), async (_o: Dispatcher, state) => {
        state.storage.sql.exec("UPDATE tasks SET not_before = 0");
      });
      // Each attempt on a different donor: a worker token of its own.
      const token = await workerToken(`donor_${attempt}`);
      const w = await TestWorker.connect({}, token);
      workers.push(w);
      w.ready(1);
      const t = await w.next("task");
      expect(t.attempt).toBe(attempt);
      w.send({
        type: "task_failed",
        v: PROTOCOL_VERSION,
        taskId: t.taskId,
        leaseId: t.leaseId,
        error: { code: "oom", message: "out of memory", retryable: true },
      });
      w.ready(0); // the next attempt must go to a new worker
      // The failure is handled before the next turn clears its backoff.
      await roundTrip(w);
      if (attempt < 5) expect((await job(j.id)).chunks.failed).toBe(0);
    }
    let state = await job(j.id);
    for (let i = 0; i < 50 && state.status === "running"; i++) {
      await new Promise((r) => setTimeout(r, 20));
      state = await job(j.id);
    }
    expect(state).toMatchObject({ status: "failed", chunks: { total: 3, done: 0, failed: 3 } });
    const chunks = (await (await call(`/v1/jobs/${j.id}/chunks`)).json()) as {
      data: { status: string; error?: string }[];
    };
    expect(
      chunks.data.every((c) => c.status === "failed" && /out of memory/.test(c.error ?? "")),
    ).toBe(true);
    for (const w of workers) w.ws.close();
  });

  it("does not let one broken worker fail a chunk: it retries with backoff and benches the worker", async () => {
    const j = await submit(2);
    const bad = await TestWorker.connect();
    for (let i = 0; i < 5; i++) {
      await runInDurableObject(stub(j.id), async (_o: Dispatcher, state) => {
        state.storage.sql.exec("UPDATE tasks SET not_before = 0");
      });
      bad.ready(1);
      const t = await bad.next("task");
      bad.send({
        type: "task_failed",
        v: PROTOCOL_VERSION,
        taskId: t.taskId,
        leaseId: t.leaseId,
        error: { code: "x", message: "broken", retryable: true },
      });
      // The failure is handled (and its backoff set) before the next turn clears it.
      if (i < 4) await roundTrip(bad);
    }
    expect(await bad.next("error")).toMatchObject({ code: "cooldown" });
    await runInDurableObject(stub(j.id), async (_o: Dispatcher, state) => {
      const row = state.storage.sql
        .exec<{ n: number }>("SELECT min(not_before) AS n FROM tasks WHERE state = 'pending'")
        .one();
      expect(row.n).toBeGreaterThan(Date.now()); // backing off before the next try
      state.storage.sql.exec("UPDATE tasks SET not_before = 0");
    });
    const good = await TestWorker.connect();
    good.ready(1);
    const t = await good.next("task");
    good.send(good.resultFor(t));
    await good.next("ack");
    expect(await job(j.id)).toMatchObject({ status: "completed", chunks: { done: 2, failed: 0 } });
    bad.ws.close();
    good.ws.close();
  });

  it("serves real-time embeddings through a connected worker", async () => {
    const w = await TestWorker.connect();
    const pending = call("/v1/embeddings", {
      method: "POST",
      json: { model: "use-lite", input: ["a", "b"] },
    });
    const req = await w.next("embed");
    const unit = new Float32Array(512);
    unit[3] = 1;
    w.send({
      type: "embed_result",
      v: PROTOCOL_VERSION,
      requestId: req.requestId,
      vectors: [encodeVector(unit), encodeVector(unit)],
      tokens: 4,
    });
    const res = await pending;
    expect(res.status).toBe(200);
    const body = (await res.json()) as {
      data: { embedding: number[]; index: number }[];
      usage: { prompt_tokens: number };
    };
    expect(body.data.map((d) => d.index)).toEqual([0, 1]);
    expect(body.data[0]?.embedding[3]).toBe(1);
    expect(body.usage.prompt_tokens).toBe(4);
    w.ws.close();
  });

  it("cancels a job: no more tasks go out, late results are refused, a second cancel is 409", async () => {
    const j = await submit(40);
    const w = await TestWorker.connect();
    w.ready(1);
    const t = await w.next("task");
    const res = await call(`/v1/jobs/${j.id}/cancel`, { method: "POST", json: {} });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ status: "cancelled" });
    w.send(w.resultFor(t));
    expect(await w.next("ack")).toMatchObject({
      status: "rejected",
      reason: expect.stringMatching(/cancelled/),
    });
    w.ready(5);
    // Every frame sent before the probe is handled by its answer: no task came.
    await roundTrip(w);
    expect(w.count("task")).toBe(0);
    expect((await call(`/v1/jobs/${j.id}/cancel`, { method: "POST", json: {} })).status).toBe(409);
    expect((await job(j.id)).status).toBe("cancelled");
    w.ws.close();
  });

  it("deletes a job with its chunks, vectors and raw input", async () => {
    const j = await submit(3);
    const w = await TestWorker.connect();
    w.ready(1);
    const t = await w.next("task");
    w.send(w.resultFor(t));
    await w.next("ack");
    const chunkIds = (
      (await (await call(`/v1/jobs/${j.id}/chunks`)).json()) as { data: { id: string }[] }
    ).data.map((c) => c.id);
    const originals = await originalsOf(j.id);
    expect(originals.length).toBe(3);
    // One sentence each: an original is its chunk's text, kept (sealed) in the chunk's row.
    for (const key of originals) expect(key).toMatch(/\/chunk$/);
    const chunkRows = () =>
      env.DB.prepare("SELECT count(*) AS n FROM chunks WHERE job_id = ?").bind(j.id).first("n");
    expect(await chunkRows()).toBe(3);
    expect((await call(`/v1/jobs/${j.id}`, { method: "DELETE", key: KEYS.other })).status).toBe(
      404,
    );
    expect((await call(`/v1/jobs/${j.id}`, { method: "DELETE" })).status).toBe(204);
    expect((await call(`/v1/jobs/${j.id}`)).status).toBe(404);
    expect((await call(`/v1/jobs/${j.id}`, { method: "DELETE" })).status).toBe(404);
    expect(await chunkRows()).toBe(0);
    const { getVectorIndex } = await import("../src/vector/index.js");
    expect(await getVectorIndex(env, "use-lite").getByIds(chunkIds)).toEqual([]);
    w.ws.close();
  });

  it("benches a worker that keeps failing, and tells it why", async () => {
    await submit(200);
    const w = await TestWorker.connect();
    w.ready(1);
    for (let i = 0; i < 5; i++) {
      const t = await w.next("task");
      w.send(w.resultFor(t, () => new Float32Array(3)));
      await w.next("ack");
    }
    expect(await w.next("error")).toMatchObject({
      code: "cooldown",
      message: expect.stringMatching(/no new tasks/),
    });
    w.ready(4);
    // Every frame sent before the probe is handled by its answer: no task came.
    await roundTrip(w);
    expect(w.count("task")).toBe(0);
    // Another worker is unaffected.
    const other = await TestWorker.connect();
    other.ready(1);
    expect((await other.next("task")).type).toBe("task");
    w.ws.close();
    other.ws.close();
  });

  it("rate-limits a flood of messages and closes a peer that keeps sending garbage", async () => {
    const w = await TestWorker.connect();
    const closed = new Promise<number>((r) => w.ws.addEventListener("close", (e) => r(e.code)));
    for (let i = 0; i < 1000; i++)
      w.send({ type: "heartbeat", v: PROTOCOL_VERSION, leaseIds: [], capacity: 0 });
    for (let i = 0; i < 25; i++) w.send("not json");
    expect(await closed).toBe(4429);
    expect(w.frames.some((f) => f.type === "error" && f.code === "rate_limited")).toBe(true);
  });

  it("lets a worker that reconnects with its session deliver a result computed while it was away", async () => {
    await submit(10);
    const session = "sess_0123456789abcdef";
    const first = await TestWorker.connect({ session });
    first.ready(1);
    const t = await first.next("task");
    first.ws.close(1000, "network dropped");
    const again = await TestWorker.connect({ session });
    // Earlier tests in this file share the shard: the task may be another job's, so the
    // check is on the task's own job.
    const owner = String(t.taskId).split(".")[0] as string;
    const done = (await job(owner)).chunks.done;
    again.send(again.resultFor(t));
    expect(await again.next("ack")).toMatchObject({ taskId: t.taskId, status: "stored" });
    expect((await job(owner)).chunks.done).toBe(done + (t.items as unknown[]).length);
    again.ws.close();
  });

  it("counts refused frames and result outcomes in /v1/metrics", async () => {
    /** The counters as /v1/metrics shows them, by `name{labels}`. */
    const counters = async () => {
      const res = await call("/v1/metrics", { key: KEYS.admin });
      expect(res.status).toBe(200);
      expect(res.headers.get("Content-Type")).toMatch(/text\/plain/);
      const out = new Map<string, number>();
      for (const m of (await res.text()).matchAll(/^(\w+(?:\{[^}]*\})?) (\d+)$/gm))
        out.set(m[1] as string, Number(m[2]));
      return out;
    };
    const before = await counters();
    await submit(1);
    const w = await TestWorker.connect();
    w.send("{bad");
    await w.next("error");
    w.ready(1);
    // This test's own frames: one refused, one result rejected (wrong dimension), one stored.
    const t = await w.next("task");
    w.send(w.resultFor(t, () => new Float32Array(384).fill(0.05)));
    expect(await w.next("ack")).toMatchObject({ status: "rejected" });
    w.send(w.resultFor(await w.next("task")));
    expect(await w.next("ack")).toMatchObject({ status: "stored" });
    const after = await counters();
    const moved = (name: string) => (after.get(name) ?? 0) - (before.get(name) ?? 0);
    expect(moved('p2pa_frames_refused_total{kind="bad_json"}')).toBe(1);
    expect(moved('p2pa_results_total{kind="rejected"}')).toBe(1);
    expect(moved('p2pa_results_total{kind="stored"}')).toBe(1);
    expect(after.get('p2pa_workers_connected{model="use-lite"}')).toBeGreaterThanOrEqual(1);
    expect((await call("/v1/metrics", { key: null })).status).toBe(401);
    w.ws.close();
  });

  it("refuses an oversized frame with a typed error and counts it", async () => {
    const w = await TestWorker.connect();
    w.send(
      JSON.stringify({
        type: "ready",
        v: PROTOCOL_VERSION,
        capacity: 1,
        pad: "x".repeat(5 * 1024 * 1024),
      }),
    );
    const closed = new Promise<number>((r) => w.ws.addEventListener("close", (e) => r(e.code)));
    const outcome = await Promise.race([
      w.next("error").then((f) => f.code),
      closed.then((c) => `closed ${c}`),
    ]);
    expect(outcome).toBe("too_large");
    const metrics = await (await call("/v1/metrics", { key: KEYS.admin })).text();
    expect(metrics).toMatch(/^p2pa_frames_refused_total\{kind="too_large"\} [1-9]/m);
    w.ws.close();
  });
});
