import { env, runInDurableObject } from "cloudflare:test";
import { encodeVector, PROTOCOL_VERSION, TASK_SIZE } from "@p2pa/shared";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { CANARY_TEXTS } from "../src/dispatch/canary.js";
import type { Dispatcher } from "../src/dispatch/dispatcher.js";
import { dispatcherFor } from "../src/dispatch/shards.js";
import { call, type Frame, job, KEYS, TestWorker, workerToken } from "./helpers.js";

// Known-answer checks with donors that answer by text (a deterministic "model": a unit
// vector from a hash of the text), so two honest donors agree on a canary wherever it sits.
const shard = () => dispatcherFor(env, "use-lite", "any");
const open: TestWorker[] = [];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const honest = (text: string) => {
  const v = new Float32Array(512);
  let h = 2166136261;
  for (const ch of text) h = Math.imul(h ^ ch.charCodeAt(0), 16777619) >>> 0;
  v[h % 512] = 1;
  return v;
};
type Item = { chunkId: string; text: string };
function answer(w: TestWorker, t: Frame, wrongOn?: (text: string) => boolean) {
  const items = t.items as Item[];
  w.send({
    type: "result",
    v: PROTOCOL_VERSION,
    taskId: t.taskId,
    leaseId: t.leaseId,
    vectors: items.map((it) => {
      const v = honest(it.text);
      if (wrongOn?.(it.text)) v.reverse();
      return { chunkId: it.chunkId, vector: encodeVector(v) };
    }),
  });
}
const isCanary = (text: string) => CANARY_TEXTS.includes(text);

beforeEach(() => {
  (env as unknown as Record<string, string>).VERIFY_CANARY_RATE = "1";
});
afterEach(async () => {
  (env as unknown as Record<string, string>).VERIFY_CANARY_RATE = "0";
  for (const w of open.splice(0)) w.ws.close();
  await sleep(20);
  await runInDurableObject(shard(), async (_o: Dispatcher, state) => {
    state.storage.sql.exec(
      "UPDATE tasks SET state = 'cancelled' WHERE state IN ('pending', 'leased')",
    );
    state.storage.sql.exec("DELETE FROM leases");
  });
});

async function donor(name: string) {
  const w = await TestWorker.connect({}, await workerToken(name));
  open.push(w);
  w.ready(1);
  return w;
}

async function submit(n: number) {
  const documents = Array.from({ length: n }, (_, i) => ({ text: `Checked document ${i}.` }));
  const res = await call("/v1/jobs", { method: "POST", json: { documents, verification: "auto" } });
  expect(res.status).toBe(202);
  return (await res.json()) as { id: string };
}

describe("known-answer checks", () => {
  it("rides along as one more item shaped like the task's own, and is never stored", async () => {
    const j = await submit(3);
    const w = await donor("canary_shape");
    const t = await w.next("task");
    const items = t.items as Item[];
    expect(items.length).toBe(4);
    const extra = items[3] as Item;
    expect(isCanary(extra.text)).toBe(true);
    expect(extra.chunkId).toMatch(new RegExp(`^${j.id}\\.\\d{5}\\.\\d{5}$`));
    answer(w, t);
    expect(await w.next("ack")).toMatchObject({ status: "stored" });
    expect(await job(j.id)).toMatchObject({ status: "completed", chunks: { total: 3, done: 3 } });
    const stored = (await (await call(`/v1/jobs/${j.id}/chunks`)).json()) as {
      data: { id: string }[];
    };
    expect(stored.data.map((c) => c.id)).not.toContain(extra.chunkId);
  });

  it("learns a canary's answer from two donors, then catches a third that answers it wrongly", async () => {
    // One canary in the pool, so both honest donors are asked the same one.
    await runInDurableObject(shard(), async (_o: Dispatcher, state) => {
      state.storage.sql.exec("DELETE FROM canaries WHERE id != 0");
    });
    const [a, b] = [await donor("canary_a"), await donor("canary_b")];
    await submit(4 * TASK_SIZE);
    // Honest donors answer everything by text; their canary answers agree and become known.
    const knownCount = () =>
      runInDurableObject(
        shard(),
        async (_o: Dispatcher, state) =>
          state.storage.sql
            .exec<{ n: number }>("SELECT count(*) AS n FROM canaries WHERE vector IS NOT NULL")
            .one().n,
      );
    let known = 0;
    for (let n = 0; n < 40 && known === 0; n++) {
      for (const w of [a, b]) {
        const t = await w.next("task", 200).catch(() => null);
        if (t) answer(w, t);
      }
      known = await knownCount();
    }
    expect(known).toBeGreaterThan(0);
    // Make every canary known (as a long-running shard would have them), then a donor that
    // is honest on real items but wrong on canaries is caught at once.
    await runInDurableObject(shard(), async (_o: Dispatcher, state) => {
      for (const [id, text] of CANARY_TEXTS.entries())
        state.storage.sql.exec(
          "INSERT OR REPLACE INTO canaries (id, text, vector) VALUES (?, ?, ?)",
          id,
          text,
          honest(text).buffer,
        );
    });
    for (const w of [a, b]) w.ready(0);
    const sly = await donor("canary_sly");
    await submit(2 * TASK_SIZE);
    const t = await sly.next("task");
    answer(sly, t, isCanary);
    expect(await sly.next("ack")).toMatchObject({ status: "rejected" });
    expect(await sly.next("error")).toMatchObject({ code: "quarantined" });
    const metrics = await (await call("/v1/metrics", { key: KEYS.admin })).text();
    expect(metrics).toMatch(/^p2pa_canaries_total\{kind="fail"\} 1$/m);
    expect(metrics).toMatch(/^p2pa_canaries_total\{kind="pass"\} [1-9]/m);
  }, 30_000);
});
