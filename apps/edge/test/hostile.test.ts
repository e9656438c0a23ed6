import { env, runInDurableObject } from "cloudflare:test";
import { encodeVector, PROTOCOL_VERSION, TASK_SIZE } from "@p2pa/shared";
import { afterEach, describe, expect, it } from "vitest";
import type { Dispatcher } from "../src/dispatch/dispatcher.js";
import { INITIAL_EARNED } from "../src/dispatch/peers.js";
import { dispatcherFor } from "../src/dispatch/shards.js";
import { call, job, KEYS, roundTrip, submit, TestWorker, workerToken } from "./helpers.js";

// A scripted hostile worker speaking the real protocol against the real edge (workerd).
const shard = () => dispatcherFor(env, "use-lite", "any");
const open: TestWorker[] = [];
const connect = async (hello: Parameters<typeof TestWorker.connect>[0] = {}, token?: string) => {
  const w = await TestWorker.connect(hello, token);
  open.push(w);
  return w;
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const closedWith = (w: TestWorker) =>
  new Promise<{ code: number; reason: string }>((r) =>
    w.ws.addEventListener("close", (e) => r({ code: e.code, reason: e.reason })),
  );
const sql = <T>(f: (s: SqlStorage) => T) =>
  runInDurableObject(shard(), async (_o: Dispatcher, state) => f(state.storage.sql));

afterEach(async () => {
  for (const w of open.splice(0)) w.ws.close();
  await sleep(20);
  await sql((s) => {
    s.exec("UPDATE tasks SET state = 'cancelled' WHERE state IN ('pending', 'leased')");
    s.exec("DELETE FROM leases");
  });
});

describe("hostile workers", () => {
  it("1. closes a live connection within a heartbeat once its token is revoked", async () => {
    const token = await workerToken("revoked");
    const w = await connect({}, token);
    w.ready(1);
    const closed = closedWith(w);
    await env.DB.prepare(
      "UPDATE credentials SET revoked_at = '2026-01-01T00:00:00Z' WHERE id LIKE 'cred_revoked_%'",
    ).run();
    // The shard checks tokens at most every 10 s; pretend that long has passed.
    await runInDurableObject(shard(), async (o: Dispatcher) => {
      (o as unknown as { lastRevalidation: number }).lastRevalidation = 0;
    });
    w.send({ type: "heartbeat", v: PROTOCOL_VERSION, leaseIds: [], capacity: 1 });
    expect(await closed).toMatchObject({
      code: 4401,
      reason: expect.stringMatching(/worker token revoked/),
    });
    // The submit answers once the shard has enqueued and leased what it could: the revoked
    // connection is no longer a peer with room, so nothing of the job was leased to it.
    const j = await submit(3);
    expect(w.count("task")).toBe(0);
    expect(
      (await shard().stats()).workers.filter((x) => x.token === `cred_revoked_${token.slice(-8)}`),
    ).toEqual([]);
    expect(
      await sql(
        (s) =>
          s
            .exec<{ n: number }>(
              "SELECT count(*) AS n FROM tasks WHERE job_id = ? AND state = 'pending'",
              j.id,
            )
            .one().n,
      ),
    ).toBe(1);
  });

  it("1b. lets an operator revoke a worker token through the API, closing its connections at once", async () => {
    const token = await workerToken("by_api");
    const id = `cred_by_api_${token.slice(-8)}`;
    const w = await connect({}, token);
    const closed = closedWith(w);
    expect(
      (await call(`/v1/workers/tokens/${id}`, { method: "DELETE", key: KEYS.api })).status,
    ).toBe(403);
    const res = await call(`/v1/workers/tokens/${id}`, { method: "DELETE", key: KEYS.admin });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ id, revoked: true, connectionsClosed: 1 });
    expect(await closed).toMatchObject({ code: 4401 });
    expect(
      (await call(`/v1/workers/tokens/${id}`, { method: "DELETE", key: KEYS.admin })).status,
    ).toBe(404);
  });

  it("2a. ends a lease at its maximum life however often it is renewed", async () => {
    await submit(3);
    const w = await connect();
    w.ready(1);
    const t = await w.next("task");
    // The lease was granted longer ago than LEASE_MAX_MS (5 min).
    await sql((s) => s.exec("UPDATE leases SET leased_at = ?", Date.now() - 5 * 60_000 - 1000));
    w.send({ type: "heartbeat", v: PROTOCOL_VERSION, leaseIds: [t.leaseId], capacity: 1 });
    // The renewal is refused, the lease lapses, and the task goes out again (to whoever has room).
    const again = await w.next("task");
    expect(again.taskId).toBe(t.taskId);
    expect(again.leaseId).not.toBe(t.leaseId);
    const old = await sql(
      (s) =>
        s.exec<{ expired: number }>("SELECT expired FROM leases WHERE id = ?", t.leaseId).one()
          .expired,
    );
    expect(old).toBe(1);
  });

  it("2b. trusts a new connection with few tasks, and more as it finishes them", async () => {
    await submit(20 * TASK_SIZE);
    const w = await connect();
    w.ready(64); // asks for everything it may
    // Whatever that ready leased has come before the answer to a frame sent after it.
    await roundTrip(w);
    expect(w.count("task")).toBe(INITIAL_EARNED);
    const first = await w.next("task");
    w.send(w.resultFor(first));
    await w.next("ack");
    await roundTrip(w);
    // One finished task earned room for two more: the one it freed and one on top.
    expect(w.count("task")).toBe(INITIAL_EARNED + 1);
    const [me] = (await shard().stats()).workers;
    expect(me).toMatchObject({ capacity: 64, limit: INITIAL_EARNED + 1, held: INITIAL_EARNED + 1 });
  });

  it("2c. limits the connections one token may hold", async () => {
    const token = await workerToken("many");
    for (let i = 0; i < 16; i++) await connect({}, token);
    const res = await call("/v1/workers/connect", {
      key: token,
      headers: { Upgrade: "websocket" },
    });
    const ws = res.webSocket as WebSocket;
    const closed = new Promise<{ code: number; reason: string }>((r) =>
      ws.addEventListener("close", (e) => r({ code: e.code, reason: e.reason })),
    );
    ws.accept();
    expect(await closed).toMatchObject({ code: 4430, reason: expect.stringMatching(/16/) });
  });

  it("3. counts one donor's many connections as one worker: it cannot fail a chunk alone", async () => {
    const j = await submit(3);
    const token = await workerToken("one_donor");
    for (let attempt = 1; attempt <= 6; attempt++) {
      await sql((s) => s.exec("UPDATE tasks SET not_before = 0"));
      const w = await connect({}, token);
      w.ready(1);
      const t = await w.next("task");
      w.send({
        type: "task_failed",
        v: PROTOCOL_VERSION,
        taskId: t.taskId,
        leaseId: t.leaseId,
        error: { code: "oom", message: "out of memory", retryable: true },
      });
      w.ready(0);
      // The failure is handled before the socket closes (a close can overtake frames still
      // queued at the shard on a loaded machine) and before the next turn skips its backoff.
      await roundTrip(w);
      w.ws.close();
    }
    expect(await job(j.id)).toMatchObject({ status: "running", chunks: { failed: 0 } });
    const recorded = await sql((s) =>
      s
        .exec<{ donors: number; failures: number }>(
          "SELECT count(DISTINCT json_extract(e.value, '$.worker')) AS donors, count(*) AS failures FROM tasks, json_each(tasks.errors) e WHERE tasks.job_id = ?",
          j.id,
        )
        .one(),
    );
    // Every connection's failure was recorded, none lost, all as one donor's.
    expect(recorded).toEqual({ donors: 1, failures: 6 });
  }, 30_000); // six connections in turn: slow on a loaded machine, not wrong

  it("4. binds a session to its token: another token cannot take over a worker's leases", async () => {
    await submit(5);
    const session = "victim_session_0123456789";
    const victim = await connect({ session });
    victim.ready(1);
    const t = await victim.next("task");
    const stolenToken = await workerToken("thief");
    const thief = await connect({ session }, stolenToken);
    // The victim keeps its connection and its lease; the thief's result for it is refused.
    thief.send(thief.resultFor(t));
    expect(await thief.next("ack")).toMatchObject({ status: "rejected" });
    victim.send(victim.resultFor(t));
    // Taken (stored, or held for a second donor's confirmation now that one is connected).
    expect(["stored", "accepted"]).toContain((await victim.next("ack")).status);
    // The ids the API shows do not carry the session that would claim them.
    const list = (await (await call("/v1/workers")).json()) as {
      shards: { workers: { id: string }[] }[];
    };
    const ids = list.shards.flatMap((s) => s.workers.map((w) => w.id));
    expect(ids.length).toBeGreaterThan(0);
    expect(ids.some((id) => id.includes(session))).toBe(false);
  });

  it("5. bounds what a heartbeat costs by what the peer holds", async () => {
    await submit(3);
    const victim = await connect();
    victim.ready(1);
    const t = await victim.next("task");
    const before = await sql(
      (s) =>
        s.exec<{ d: number }>("SELECT deadline AS d FROM leases WHERE id = ?", t.leaseId).one().d,
    );
    const flooder = await connect();
    const many = Array.from({ length: 1024 }, (_, i) => `lease-${i}`);
    flooder.send({ type: "heartbeat", v: PROTOCOL_VERSION, leaseIds: many, capacity: 0 });
    expect(await flooder.next("error")).toMatchObject({ code: "bad_message" });
    // Another worker's lease ids renew nothing, however often they are sent.
    for (let i = 0; i < 50; i++)
      flooder.send({
        type: "heartbeat",
        v: PROTOCOL_VERSION,
        leaseIds: [t.leaseId, ...many.slice(0, 100)],
        capacity: 0,
      });
    // Every heartbeat before it is handled (renewals are made before a handler's first await).
    await roundTrip(flooder);
    const after = await sql(
      (s) =>
        s.exec<{ d: number }>("SELECT deadline AS d FROM leases WHERE id = ?", t.leaseId).one().d,
    );
    expect(after).toBe(before);
  });

  it("6. checks real-time answers: a NaN answer is refused, charged, and served by another worker", async () => {
    const liar = await connect();
    const pending = call("/v1/embeddings", {
      method: "POST",
      json: { model: "use-lite", input: ["a"] },
    });
    const req = await liar.next("embed");
    liar.send({
      type: "embed_result",
      v: PROTOCOL_VERSION,
      requestId: req.requestId,
      vectors: [encodeVector(new Float32Array(512).fill(Number.NaN))],
      tokens: 1,
    });
    // Alone on the shard, the liar's refusal leaves nobody: a clear 503, never null vectors.
    const alone = await pending;
    expect(alone.status).toBe(503);
    const honest = await connect();
    const again = call("/v1/embeddings", {
      method: "POST",
      json: { model: "use-lite", input: ["a"] },
    });
    // Whoever is asked first, the liar answers wrongly again and the honest worker rightly.
    let answered = false;
    while (!answered) {
      for (const w of [liar, honest]) {
        const r = await w.next("embed", 100).catch(() => null);
        if (!r) continue;
        const unit = new Float32Array(512);
        unit[7] = 1;
        w.send({
          type: "embed_result",
          v: PROTOCOL_VERSION,
          requestId: r.requestId,
          vectors: [encodeVector(w === liar ? new Float32Array(512).fill(Number.NaN) : unit)],
          tokens: 1,
        });
        if (w === honest) answered = true;
      }
    }
    const res = await again;
    expect(res.status).toBe(200);
    const body = (await res.json()) as { data: { embedding: number[] }[] };
    expect(body.data[0]?.embedding[7]).toBe(1);
    const metrics = await (await call("/v1/metrics", { key: KEYS.admin })).text();
    expect(metrics).toMatch(/^p2pa_results_total\{kind="rejected"\} [1-9]/m);
  });

  it("7. keeps what a worker says as plain, escaped text with a bounded code", async () => {
    await submit(3);
    const w = await connect();
    w.ready(1);
    const t = await w.next("task");
    w.send({
      type: "task_failed",
      v: PROTOCOL_VERSION,
      taskId: t.taskId,
      leaseId: t.leaseId,
      error: { code: "<b>x</b>", message: "x", retryable: true },
    });
    expect(await w.next("error")).toMatchObject({ code: "bad_message" });
    w.send({
      type: "task_failed",
      v: PROTOCOL_VERSION,
      taskId: t.taskId,
      leaseId: t.leaseId,
      error: { code: "oom", message: "<script>alert(1)</script>\u0007", retryable: true },
    });
    await sleep(50);
    const reasons = await sql((s) =>
      s.exec<{ errors: string }>("SELECT errors FROM tasks WHERE id = ?", t.taskId).one(),
    );
    const [err] = JSON.parse(reasons.errors) as { reason: string }[];
    expect(err?.reason).toBe("worker reported oom: &lt;script&gt;alert(1)&lt;/script&gt;");
  });

  it("10. leaves no text, errors, events or webhook of a deleted job behind", async () => {
    const documents = Array.from({ length: 2 * TASK_SIZE }, (_, i) => ({ text: `Doc ${i}.` }));
    const created = await call("/v1/jobs", {
      method: "POST",
      json: { documents, webhook: { url: "https://hooks.example.com/p2pa" } },
    });
    expect(created.status).toBe(202);
    const j = (await created.json()) as { id: string; webhook: { id: string } };
    const w = await connect();
    w.ready(2);
    const t1 = await w.next("task");
    const t2 = await w.next("task");
    w.send(w.resultFor(t1));
    await w.next("ack");
    w.send({
      type: "task_failed",
      v: PROTOCOL_VERSION,
      taskId: t2.taskId,
      leaseId: t2.leaseId,
      error: { code: "oom", message: "out of memory", retryable: true },
    });
    await sleep(50);
    expect((await call(`/v1/webhooks/${j.webhook.id}/deliveries`)).status).toBe(200);
    expect((await call(`/v1/jobs/${j.id}`, { method: "DELETE" })).status).toBe(204);
    const left = await sql((s) => ({
      tasks: s.exec<{ n: number }>("SELECT count(*) AS n FROM tasks WHERE job_id = ?", j.id).one()
        .n,
      events: s
        .exec<{ n: number }>("SELECT count(*) AS n FROM job_event_runs WHERE job_id = ?", j.id)
        .one().n,
    }));
    expect(left).toEqual({ tasks: 0, events: 0 });
    // The job's own endpoint is gone, with its deliveries.
    expect((await call(`/v1/webhooks/${j.webhook.id}/deliveries`)).status).toBe(404);
  });

  it("11. shows fleet-wide metrics to operators only, and each tenant only its own workers", async () => {
    expect((await call("/v1/metrics")).status).toBe(403);
    expect((await call("/v1/metrics", { key: KEYS.admin })).status).toBe(200);
    await connect(); // tenant t1's worker
    const other = (await (await call("/v1/workers", { key: KEYS.other })).json()) as {
      vectors?: number;
      shards: { workers: unknown[]; tasks?: unknown }[];
    };
    expect(other.vectors).toBeUndefined();
    expect(other.shards.flatMap((s) => s.workers)).toEqual([]);
    expect(other.shards[0]?.tasks).toBeUndefined();
    const mine = (await (await call("/v1/workers")).json()) as {
      shards: { workers: unknown[] }[];
    };
    expect(mine.shards.flatMap((s) => s.workers).length).toBe(1);
    const ops = (await (await call("/v1/workers", { key: KEYS.admin })).json()) as {
      vectors: number;
    };
    expect(typeof ops.vectors).toBe("number");
  });
});
