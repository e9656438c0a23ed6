import { env, runInDurableObject } from "cloudflare:test";
import { describe, expect, it, vi } from "vitest";
import { keyringFor, openStore } from "../src/db/open.js";
import { D1Store } from "../src/db/store.js";
import { Dispatcher } from "../src/dispatch/dispatcher.js";
import { sealTask } from "../src/dispatch/sealed-items.js";
import { dispatcherFor } from "../src/dispatch/shards.js";
import { chunkIdOf } from "../src/lib/chunk-ids.js";
import { getVectorIndex } from "../src/vector/index.js";
import { answerChunks, call, type Frame, job, newJob, roundTrip, TestWorker } from "./helpers.js";

/**
 * A new job's tasks go to its shard while its submit still prepares and writes it
 * (`Ingestion.add`): the shard leases them at once and holds what they bring in until the
 * submit confirms the job written, or withdraws it. These tests drive the shard the way a
 * submit does, with a worker answering over a real WebSocket.
 */

const stub = (jobId: string) => dispatcherFor(env, "use-lite", jobId);
const newId = () => `job_${crypto.randomUUID().replaceAll("-", "").slice(0, 20)}`;
const chunkIds = (id: string, n: number) =>
  Array.from({ length: n }, (_, i) => chunkIdOf(id, 0, i));

/**
 * Sends a job's tasks (of `per` chunks, one task by default) to its shard as a submit does
 * before it writes the job: their vectors' metadata without the document's language yet.
 */
async function sendAhead(id: string, n: number, per = n): Promise<void> {
  const items = newJob(id, n, "t1").chunks.map((c) => ({
    chunkId: c.id,
    documentId: c.documentId,
    index: c.index,
    text: c.text,
    meta: { collection: "default" },
  }));
  const tasks = [];
  for (let i = 0; i < n; i += per)
    tasks.push({
      id: `${id}.t${i / per}`,
      ...(await sealTask(keyringFor(env), "t1", items.slice(i, i + per))),
    });
  await stub(id).enqueue(id, "t1", "use-lite", tasks, {
    unconfirmed: true,
    verify: "off",
    accepting: true,
  });
}

/** The metadata each of a job's vectors carries, in chunk order. */
const vectorMeta = async (id: string, n: number) =>
  (await getVectorIndex(env, "use-lite").getByIds(chunkIds(id, n)))
    .sort((a, b) => a.id.localeCompare(b.id))
    .map((v) => v.metadata);

/** The shard's task rows of a job. */
const taskRows = (id: string) =>
  runInDurableObject(
    stub(id),
    (_o: Dispatcher, state) =>
      state.storage.sql
        .exec<{ n: number }>("SELECT count(*) AS n FROM tasks WHERE job_id = ?", id)
        .one().n,
  );

/** Runs the shard's wait for a job's confirmation out, and wakes it now. */
const waitRunsOut = (id: string) =>
  runInDurableObject(stub(id), async (o: Dispatcher, state) => {
    state.storage.sql.exec("UPDATE jobs SET confirm_by = 1 WHERE id = ?", id);
    await o.alarm();
  });

/** The job completed with all `n` of its chunks done, none failed. */
const expectCompleted = async (id: string, n: number) =>
  expect(await job(id)).toMatchObject({
    status: "completed",
    chunks: { total: n, done: n, failed: 0 },
  });

/** Leases the job's task to `w`, which answers it at once. */
async function computed(w: TestWorker): Promise<Frame> {
  const t = await w.next("task");
  w.send(w.resultFor(t));
  // The result is in (the probe is answered after it), but nothing says it was stored.
  await roundTrip(w);
  expect(w.count("ack")).toBe(0);
  return t;
}

describe("tasks sent ahead of their job's write", () => {
  it("are computed at once, and stored, each chunk once, when the submit confirms the job", async () => {
    const id = newId();
    const w = await TestWorker.connect();
    w.ready(1);
    await sendAhead(id, 5);
    const t = await computed(w);
    expect((await call(`/v1/jobs/${id}`)).status).toBe(404);
    expect(await getVectorIndex(env, "use-lite").getByIds(chunkIds(id, 5))).toEqual([]);

    await openStore(env).createJob(newJob(id, 5, "t1"));
    expect(await stub(id).confirm(id, { accepting: false })).toBe("confirmed");
    expect(await w.next("ack")).toMatchObject({ taskId: t.taskId, status: "stored" });
    await expectCompleted(id, 5);
    expect(await getVectorIndex(env, "use-lite").getByIds(chunkIds(id, 5))).toHaveLength(5);
    // A second confirmation (a retried submit) changes nothing.
    expect(await stub(id).confirm(id, { accepting: false })).toBe("known");
    expect((await job(id)).chunks.done).toBe(5);
    w.ws.close();
  });

  it("carry the metadata their documents were found to have after they went out: held results and later ones", async () => {
    const id = newId();
    const w = await TestWorker.connect();
    w.ready(1);
    await sendAhead(id, 6, 3);
    // The first task is computed before the job is written, and held.
    const first = await computed(w);
    await openStore(env).createJob(newJob(id, 6, "t1"));
    const meta = { doc: { collection: "default", lang: "fr" } };
    expect(await stub(id).confirm(id, { accepting: false, meta })).toBe("confirmed");
    expect(await w.next("ack")).toMatchObject({ taskId: first.taskId, status: "stored" });
    // The second is leased and answered after.
    w.ready(1);
    await answerChunks(w, 3);
    expect(await job(id)).toMatchObject({ status: "completed", chunks: { done: 6, failed: 0 } });
    const stored = await vectorMeta(id, 6);
    expect(stored).toHaveLength(6);
    for (const m of stored)
      expect(m).toEqual({
        collection: "default",
        lang: "fr",
        tenant: "t1",
        jobId: id,
        documentId: "doc",
        index: expect.any(Number),
      });
    w.ws.close();
  });

  it("go, with what they brought in, when the submit withdraws the job; the worker is told", async () => {
    const id = newId();
    const w = await TestWorker.connect();
    w.ready(1);
    await sendAhead(id, 4);
    const t = await computed(w);
    await stub(id).withdraw(id);
    expect(await w.next("ack")).toMatchObject({
      taskId: t.taskId,
      status: "rejected",
      reason: expect.stringMatching(/withdrawn/),
    });
    expect(await taskRows(id)).toBe(0);
    expect(await getVectorIndex(env, "use-lite").getByIds(chunkIds(id, 4))).toEqual([]);
    // Its submit, finding them gone, would enqueue them again.
    expect(await stub(id).confirm(id, { accepting: false })).toBe("missing");
    w.ws.close();
  });

  it("are never withdrawn once the job is confirmed", async () => {
    const id = newId();
    await sendAhead(id, 3);
    await openStore(env).createJob(newJob(id, 3, "t1"));
    expect(await stub(id).confirm(id, { accepting: false })).toBe("confirmed");
    await stub(id).withdraw(id);
    expect(await taskRows(id)).toBe(1);
    const w = await TestWorker.connect();
    w.ready(1);
    await answerChunks(w, 3);
    expect((await job(id)).chunks.done).toBe(3);
    w.ws.close();
  });

  it("are settled by what D1 holds when their submit never says: kept if the job was written, withdrawn if not", async () => {
    const written = newId();
    const lost = newId();
    const w = await TestWorker.connect();
    w.ready(1);
    await sendAhead(written, 3);
    const first = await computed(w);
    // Its document as written has a language its tasks did not carry.
    const made = newJob(written, 3, "t1");
    await openStore(env).createJob({
      ...made,
      documents: made.documents.map((d) => ({ ...d, metadata: { lang: "de", year: 1999 } })),
    });
    await waitRunsOut(written);
    expect(await w.next("ack")).toMatchObject({ taskId: first.taskId, status: "stored" });
    expect(await job(written)).toMatchObject({
      status: "completed",
      chunks: { total: 3, done: 3, failed: 0 },
    });
    for (const m of await vectorMeta(written, 3))
      expect(m).toMatchObject({ collection: "default", lang: "de", year: 1999 });

    await sendAhead(lost, 3);
    const second = await computed(w);
    await waitRunsOut(lost);
    expect(await w.next("ack")).toMatchObject({ taskId: second.taskId, status: "rejected" });
    expect(await taskRows(lost)).toBe(0);
    expect(await getVectorIndex(env, "use-lite").getByIds(chunkIds(lost, 3))).toEqual([]);
    w.ws.close();
  });
});

describe("a submit with a worker connected", () => {
  it("hands out a request's tasks while it writes the job, and stores every chunk once", async () => {
    const w = await TestWorker.connect();
    w.ready(4);
    const nonce = crypto.randomUUID().slice(0, 8);
    const total = 700;
    const documents = Array.from({ length: total }, (_, i) => ({
      text: `Sentence ${i} of a request answered while it is written (${nonce}).`,
    }));
    // The worker answers whatever comes while the request is still being taken.
    const answering = answerChunks(w, total);
    const res = await call("/v1/jobs", { method: "POST", json: { documents } });
    expect(res.status).toBe(202);
    const { id } = (await res.json()) as { id: string };
    const tasks = await answering;
    const sent = tasks.flatMap((t) => (t.items as { chunkId: string }[]).map((i) => i.chunkId));
    expect(new Set(sent).size).toBe(total);
    expect(sent).toHaveLength(total);
    expect(await job(id)).toMatchObject({
      status: "completed",
      chunks: { total, done: total, failed: 0 },
    });
    w.ws.close();
  });

  it("hands out the first documents' tasks before the rest's; a text repeated across them is stored for each", async () => {
    const w = await TestWorker.connect();
    w.ready(4);
    const nonce = crypto.randomUUID().slice(0, 8);
    const total = 600;
    const texts = Array.from(
      { length: total },
      (_, i) => `Sentence ${i} of a request handed out in two rounds (${nonce}).`,
    );
    // Repeated across the two rounds (each computed), and within the second (computed once).
    texts[500] = texts[3] as string;
    texts[551] = texts[550] as string;
    const seqOf = (chunkId: string) => Number(chunkId.split(".")[1]);
    const answering = answerChunks(w, total - 1);
    const res = await call("/v1/jobs", {
      method: "POST",
      json: { documents: texts.map((text) => ({ text })) },
    });
    expect(res.status).toBe(202);
    const { id } = (await res.json()) as { id: string };
    const tasks = await answering;
    const sent = tasks.map((t) => (t.items as { chunkId: string }[]).map((i) => i.chunkId));
    // The first task a worker gets is of the first documents: the rest were still being made.
    expect(Math.max(...(sent[0] as string[]).map(seqOf))).toBeLessThan(256);
    expect(sent.flat()).toHaveLength(total - 1);
    expect(sent.flat()).not.toContain(chunkIdOf(id, 551, 0));
    expect(await job(id)).toMatchObject({
      status: "completed",
      chunks: { total, done: total, failed: 0 },
    });
    const stored = await getVectorIndex(env, "use-lite").getByIds(
      [3, 500, 550, 551].map((seq) => chunkIdOf(id, seq, 0)),
    );
    expect(stored.map((v) => v.metadata?.documentId).sort()).toEqual(
      [3, 500, 550, 551].map((seq) => `${id}-${seq}`).sort(),
    );
    w.ws.close();
  });

  it("gives the vectors of the tasks it handed out each document's language, found after they went out", async () => {
    const w = await TestWorker.connect();
    w.ready(4);
    const nonce = crypto.randomUUID().slice(0, 8);
    const english = `The harbour (${nonce}) was quiet this morning, and the fishing boats stayed tied up along the old stone quay until the tide turned.`;
    const french = `Il pleut depuis trois jours (${nonce}) et la rivière a débordé sur la route du vieux moulin, disent les voisins.`;
    const documents = [
      { id: "en", text: english },
      { id: "fr", text: french },
      // The same text: computed once, each document's vector with its own metadata.
      { id: "given", text: french, metadata: { lang: "de" } },
      { id: "short", text: `A note (${nonce}).` },
    ];
    const answering = answerChunks(w, 3);
    const res = await call("/v1/jobs", {
      method: "POST",
      json: { collection: `lang-${nonce}`, documents },
    });
    expect(res.status).toBe(202);
    const { id } = (await res.json()) as { id: string };
    await answering;
    expect(await job(id)).toMatchObject({ status: "completed", chunks: { total: 4, done: 4 } });
    const vectors = await getVectorIndex(env, "use-lite").getByIds(
      documents.map((_, seq) => chunkIdOf(id, seq, 0)),
    );
    const langOf = Object.fromEntries(
      vectors.map((v) => [v.metadata?.documentId, v.metadata?.lang]),
    );
    expect(langOf).toEqual({ en: "en", fr: "fr", given: "de", short: undefined });
    w.ws.close();
  });

  it("writes nothing when the coordinator cannot take its tasks: a 503, and the same request again makes the job", async () => {
    const nonce = crypto.randomUUID().slice(0, 8);
    const documents = Array.from({ length: 40 }, (_, i) => ({
      text: `Line ${i} of a request whose coordinator was away (${nonce}).`,
    }));
    const headers = { "Idempotency-Key": `away-${nonce}` };
    const down = vi
      .spyOn(Dispatcher.prototype, "enqueue")
      .mockRejectedValueOnce(new Error("coordinator unavailable"));
    const first = await call("/v1/jobs", { method: "POST", json: { documents }, headers });
    down.mockRestore();
    expect(first.status).toBe(503);
    const jobsOfKey = () =>
      env.DB.prepare("SELECT count(*) AS n FROM jobs WHERE idempotency_key = ?")
        .bind(headers["Idempotency-Key"])
        .first("n");
    expect(await jobsOfKey()).toBe(0);
    const again = await call("/v1/jobs", { method: "POST", json: { documents }, headers });
    expect(again.status).toBe(202);
    expect(again.headers.get("Idempotent-Replayed")).toBeNull();
    expect(await jobsOfKey()).toBe(1);
    const { id } = (await again.json()) as { id: string };
    const w = await TestWorker.connect();
    w.ready(2);
    await answerChunks(w, 40);
    await expectCompleted(id, 40);
    w.ws.close();
  });

  it("completes a job whose write committed though D1's answer was lost: the shard asks D1, and keeps it", async () => {
    const nonce = crypto.randomUUID().slice(0, 8);
    const collection = `lost-answer-${nonce}`;
    const documents = Array.from({ length: 30 }, (_, i) => ({
      text: `Line ${i} of a request whose write was answered by an error (${nonce}).`,
    }));
    const createJob = D1Store.prototype.createJob;
    const lost = vi.spyOn(D1Store.prototype, "createJob").mockImplementationOnce(async function (
      this: D1Store,
      input,
    ) {
      await createJob.call(this, input);
      throw new Error("D1_ERROR: Network connection lost.");
    });
    const res = await call("/v1/jobs", { method: "POST", json: { collection, documents } });
    lost.mockRestore();
    expect(res.status).toBe(500);
    const id = (await env.DB.prepare("SELECT id FROM jobs WHERE collection = ?")
      .bind(collection)
      .first("id")) as string;
    expect(id).toMatch(/^job_/);
    // Its tasks stay on the shard until the shard has asked D1 (not withdrawn on the error).
    expect(await taskRows(id)).toBeGreaterThan(0);
    await waitRunsOut(id);
    const w = await TestWorker.connect();
    w.ready(2);
    const tasks = await answerChunks(w, 30);
    expect(tasks.flatMap((t) => t.items as unknown[])).toHaveLength(30);
    await expectCompleted(id, 30);
    w.ws.close();
  });

  it("queues an append written whose hand-over failed once the job closes: it completes, every chunk once", async () => {
    const nonce = crypto.randomUUID().slice(0, 8);
    const w = await TestWorker.connect();
    w.ready(2);
    const opened = await call("/v1/jobs", {
      method: "POST",
      json: { open: true, documents: [{ id: "first", text: `The first line (${nonce}).` }] },
    });
    expect(opened.status).toBe(202);
    const { id } = (await opened.json()) as { id: string };
    await answerChunks(w, 1);
    const documents = Array.from({ length: 20 }, (_, i) => ({
      id: `later-${i}`,
      text: `Line ${i} of an append its coordinator never got (${nonce}).`,
    }));
    const away = vi
      .spyOn(Dispatcher.prototype, "enqueue")
      .mockRejectedValueOnce(new Error("coordinator unavailable"));
    const append = await call(`/v1/jobs/${id}/documents`, { method: "POST", json: { documents } });
    away.mockRestore();
    expect(append.status).toBe(503);
    // Written all the same; sent again, the documents are the job's already.
    expect(await job(id)).toMatchObject({ accepting: true, documents: 21, chunks: { done: 1 } });
    const again = await call(`/v1/jobs/${id}/documents`, { method: "POST", json: { documents } });
    expect(again.status).toBe(422);
    expect(await again.text()).toMatch(/this job already has this document/);

    expect((await call(`/v1/jobs/${id}/close`, { method: "POST" })).status).toBe(200);
    const tasks = await answerChunks(w, 20);
    const sent = tasks.flatMap((t) => (t.items as { chunkId: string }[]).map((i) => i.chunkId));
    expect(new Set(sent).size).toBe(20);
    expect(await job(id)).toMatchObject({
      status: "completed",
      documents: 21,
      chunks: { total: 21, done: 21, failed: 0 },
    });
    w.ws.close();
  });

  it("leaves no task on the shard for a job it did not write (two submits racing on one Idempotency-Key)", async () => {
    const nonce = crypto.randomUUID().slice(0, 8);
    const documents = Array.from({ length: 600 }, (_, i) => ({
      text: `Line ${i} of a request sent twice at once (${nonce}).`,
    }));
    const post = () =>
      call("/v1/jobs", {
        method: "POST",
        json: { documents },
        headers: { "Idempotency-Key": `race-${nonce}` },
      });
    const [a, b] = await Promise.all([post(), post()]);
    const ids = new Set(
      await Promise.all([a, b].map(async (r) => ((await r.json()) as { id: string }).id)),
    );
    expect([a.status, b.status]).toEqual([202, 202]);
    expect(ids.size).toBe(1);
    const [id] = [...ids] as [string];
    // Every job with tasks on the shard is one D1 holds: none was left by the request that lost.
    const onShard = await runInDurableObject(stub(id), (_o: Dispatcher, state) =>
      state.storage.sql
        .exec<{ job: string }>("SELECT DISTINCT job_id AS job FROM tasks")
        .toArray()
        .map((r) => r.job),
    );
    expect(onShard).toContain(id);
    for (const j of onShard)
      expect(await env.DB.prepare("SELECT id FROM jobs WHERE id = ?").bind(j).first("id")).toBe(j);
  });
});
