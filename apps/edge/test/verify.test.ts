import { env, runInDurableObject } from "cloudflare:test";
import { TASK_SIZE } from "@p2pa/shared";
import { afterEach, describe, expect, it } from "vitest";
import type { Dispatcher } from "../src/dispatch/dispatcher.js";
import { dispatcherFor } from "../src/dispatch/shards.js";
import { getVectorIndex } from "../src/vector/index.js";
import { call, type Frame, job, KEYS, roundTrip, TestWorker, workerToken } from "./helpers.js";

// Verification against scripted donors speaking the real protocol, inside workerd. Honest
// donors answer e_(i mod 512) for item i (so they agree exactly); a liar answers a plausible
// wrong vector: unit norm, right dimension, cosine 0.99 to the honest one.
const shard = () => dispatcherFor(env, "use-lite", "any");
const open: TestWorker[] = [];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Tasks whose id is like `pattern` that are out on a lease now (recorded when leased). */
const leasedTasks = (pattern: string) =>
  runInDurableObject(
    shard(),
    async (_o: Dispatcher, state) =>
      state.storage.sql
        .exec<{ n: number }>(
          "SELECT count(*) AS n FROM tasks WHERE id LIKE ? AND state = 'leased'",
          pattern,
        )
        .one().n,
  );
let donors = 0;
async function donor(capacity = 1, tenant = "t1"): Promise<TestWorker> {
  const token = tenant === "t1" ? await workerToken(`d${++donors}`) : KEYS.otherWorker;
  const w = await TestWorker.connect({}, token);
  open.push(w);
  w.ready(capacity);
  return w;
}
const lie = (_honest: Float32Array, i: number) => {
  const out = new Float32Array(512);
  out[i % 512] = 1;
  out[(i + 1) % 512] = 0.15;
  const n = Math.hypot(1, 0.15);
  return out.map((x) => x / n);
};

async function submitWith(n: number, extra: Record<string, unknown> = {}, key = KEYS.api) {
  const documents = Array.from({ length: n }, (_, i) => ({ text: `Verified document ${i}.` }));
  const res = await call("/v1/jobs", { method: "POST", json: { documents, ...extra }, key });
  expect(res.status).toBe(202);
  return (await res.json()) as { id: string; verification: string; pool: string };
}

/** Waits for a task frame on any of these workers. */
async function nextTask(ws: TestWorker[], timeoutMs = 5000): Promise<{ w: TestWorker; t: Frame }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (const w of ws) {
      const t = await w.next("task", 20).catch(() => null);
      if (t) return { w, t };
    }
    if (Date.now() > deadline) throw new Error("no task came");
  }
}

/**
 * Answers every task each worker gets, by its role, until `done` (or fails after a while).
 * Returns each chunk's index within the task an honest donor answered it in (the position its
 * vector marks: see resultFor).
 */
async function drive(
  roles: Map<TestWorker, "honest" | "liar">,
  done: () => Promise<boolean>,
  timeoutMs = 20_000,
): Promise<Map<string, number>> {
  const honest = new Map<string, number>();
  const deadline = Date.now() + timeoutMs;
  while (!(await done())) {
    for (const [w, role] of roles) {
      for (let i = w.frames.findIndex((f) => f.type === "task"); i >= 0; ) {
        const [t] = w.frames.splice(i, 1) as [Frame];
        if (role === "honest")
          (t.items as { chunkId: string }[]).forEach((it, at) => {
            honest.set(it.chunkId, at);
          });
        try {
          w.send(role === "liar" ? w.resultFor(t, lie) : w.resultFor(t));
        } catch {
          // Closed (quarantined).
        }
        i = w.frames.findIndex((f) => f.type === "task");
      }
    }
    if (Date.now() > deadline) throw new Error("the donors did not finish in time");
    await sleep(20);
  }
  return honest;
}

afterEach(async () => {
  for (const w of open.splice(0)) w.ws.close();
  await sleep(20);
  await runInDurableObject(shard(), async (_o: Dispatcher, state) => {
    state.storage.sql.exec(
      "UPDATE tasks SET state = 'cancelled' WHERE state IN ('pending', 'leased')",
    );
    state.storage.sql.exec("DELETE FROM leases");
    state.storage.sql.exec("DELETE FROM candidates");
  });
});

describe("verified results", () => {
  it("holds a new donor's result until a second donor agrees, then stores one result", async () => {
    const j = await submitWith(5);
    expect(j.verification).toBe("auto");
    const [a, b] = [await donor(), await donor()];
    const first = await nextTask([a, b]);
    first.w.send(first.w.resultFor(first.t));
    expect(await first.w.next("ack")).toMatchObject({ status: "accepted" });
    // The same task goes to the other donor, never back to the first.
    const other = first.w === a ? b : a;
    const second = await other.next("task");
    expect(second.taskId).toBe(first.t.taskId);
    other.send(other.resultFor(second));
    expect(await other.next("ack")).toMatchObject({ status: "stored" });
    expect(await job(j.id)).toMatchObject({ status: "completed", chunks: { done: 5 } });
    const stats = await shard().stats();
    const records = stats.donors ?? [];
    expect(records.filter((r) => r.agreed === 1 && r.disagreed === 0).length).toBe(2);
  });

  it("outvotes a plausible liar, stores only honest vectors, and quarantines it", async () => {
    const [liar, h1, h2] = [await donor(), await donor(), await donor()];
    const closed = new Promise<number>((r) => liar.ws.addEventListener("close", (e) => r(e.code)));
    const j = await submitWith(8 * TASK_SIZE);
    const roles = new Map([
      [liar, "liar"],
      [h1, "honest"],
      [h2, "honest"],
    ] as const);
    const honest = await drive(roles, async () => (await job(j.id)).status === "completed");
    // Every stored vector is the honest one: e_(item index within its task), as the honest
    // donors were sent it (tasks are cut to each donor's pace, so not always 32 a task).
    const ids = Array.from(
      { length: 8 * TASK_SIZE },
      (_, i) => `${j.id}.${String(i).padStart(5, "0")}.00000`,
    );
    const stored = await getVectorIndex(env, "use-lite").getByIds(ids);
    expect(stored.length).toBe(8 * TASK_SIZE);
    for (const v of stored) expect(Array.from(v.values).indexOf(1)).toBe(honest.get(v.id));
    // The liar was outvoted, told why, closed with 4403; no honest donor was ever marked wrong.
    expect(liar.frames.find((f) => f.type === "error" && f.code === "quarantined")).toMatchObject({
      message: expect.stringMatching(/disagreed/),
    });
    expect(await closed).toBe(4403);
    const records = (await shard().stats()).donors ?? [];
    const caught = records.filter((r) => r.quarantinedAt !== null);
    expect(caught.length).toBe(1);
    expect(caught[0]?.disagreed).toBeGreaterThanOrEqual(2);
    expect(records.filter((r) => r.quarantinedAt === null && r.disagreed > 0)).toEqual([]);
    // The token is refused from now on: in D1, and at the door with the reason.
    const row = await env.DB.prepare(
      "SELECT count(*) AS n FROM credentials WHERE quarantined_at IS NOT NULL",
    ).first<{ n: number }>();
    expect(row?.n).toBe(1);
  });

  it("recomputes what a donor stored unconfirmed once it is caught", async () => {
    // Alone, a donor's results are stored unconfirmed: nobody could confirm them.
    const liar = await donor(2);
    const early = await submitWith(TASK_SIZE);
    const t = await liar.next("task");
    liar.send(liar.resultFor(t, lie));
    expect(await liar.next("ack")).toMatchObject({ status: "stored" });
    expect((await job(early.id)).status).toBe("completed");
    // Honest donors join; the liar is outvoted and quarantined, and its early task is redone.
    const [h1, h2] = [await donor(), await donor()];
    const later = await submitWith(8 * TASK_SIZE);
    const roles = new Map([
      [liar, "liar"],
      [h1, "honest"],
      [h2, "honest"],
    ] as const);
    const index = getVectorIndex(env, "use-lite");
    const honestAgain = async () => {
      const [v] = await index.getByIds([`${early.id}.00003.00000`]);
      return Array.from(v?.values ?? []).indexOf(1) === 3;
    };
    await drive(
      roles,
      async () => (await job(later.id)).status === "completed" && (await honestAgain()),
    );
    expect(await job(early.id)).toMatchObject({ status: "completed", chunks: { done: TASK_SIZE } });
    const metrics = await (await call("/v1/metrics", { key: KEYS.admin })).text();
    expect(metrics).toMatch(/^p2pa_chunks_recomputed_total [1-9]/m);
  });

  it("never lets one donor confirm itself, however many connections it opens", async () => {
    const token = await workerToken("twice");
    const one = await TestWorker.connect({}, token);
    const two = await TestWorker.connect({}, token);
    open.push(one, two);
    await submitWith(3, { verification: "always" });
    one.ready(1);
    two.ready(1);
    const { w, t } = await nextTask([one, two]);
    w.send(w.resultFor(t));
    expect(await w.next("ack")).toMatchObject({ status: "accepted" });
    // Neither connection of the same donor gets the task again: not before the edge has
    // answered a frame sent on each after the result, nor is it leased to either meanwhile.
    await roundTrip(one);
    await roundTrip(two);
    expect(one.count("task") + two.count("task")).toBe(0);
    expect(await leasedTasks(t.taskId as string)).toBe(0);
    // A different donor confirms it.
    const other = await donor();
    const again = await other.next("task");
    expect(again.taskId).toBe(t.taskId);
    other.send(other.resultFor(again));
    expect(await other.next("ack")).toMatchObject({ status: "stored" });
  });

  it("stores the first valid result when a job turns verification off", async () => {
    const j = await submitWith(4, { verification: "off" });
    const [a, b] = [await donor(), await donor()];
    const { w, t } = await nextTask([a, b]);
    w.send(w.resultFor(t));
    expect(await w.next("ack")).toMatchObject({ status: "stored" });
    expect(await job(j.id)).toMatchObject({ status: "completed" });
  });

  it("keeps an own-pool job on its tenant's workers", async () => {
    const mine = await donor(1, "t1");
    const j = await submitWith(3, { pool: "own", verification: "off" }, KEYS.other);
    expect(j.pool).toBe("own");
    // The submit answers once the shard has leased what it could; the probe's answer comes
    // after any task frame that went to `mine`.
    await roundTrip(mine);
    expect(mine.count("task")).toBe(0);
    expect(await leasedTasks(`${j.id}.%`)).toBe(0);
    const theirs = await donor(1, "t2");
    const t = await theirs.next("task");
    expect(String(t.taskId).startsWith(j.id)).toBe(true);
    theirs.send(theirs.resultFor(t));
    await theirs.next("ack");
    expect(mine.count("task")).toBe(0);
    const done = (await (await call(`/v1/jobs/${j.id}`, { key: KEYS.other })).json()) as {
      status: string;
    };
    expect(done.status).toBe("completed");
  });
});
