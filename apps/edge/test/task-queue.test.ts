import { env, runInDurableObject } from "cloudflare:test";
import { TASK_SIZE } from "@p2pa/shared";
import { describe, expect, it } from "vitest";
import { keyringFor } from "../src/db/open.js";
import type { Dispatcher } from "../src/dispatch/dispatcher.js";
import { openTask, sealTask } from "../src/dispatch/sealed-items.js";
import { dispatcherFor } from "../src/dispatch/shards.js";
import { type QueuedItem, TaskQueue } from "../src/dispatch/task-queue.js";
import { DecryptError } from "../src/lib/keyring.js";

const item = (i: number): QueuedItem => ({
  chunkId: `job_old.${i}.0`,
  documentId: `doc-${i}`,
  index: 0,
  text: `sealed text ${i} `.repeat(20),
});
const worker = { workerId: "w1", tenant: "t", donor: "d" };

describe("TaskQueue storage", () => {
  it("moves tasks written by the previous schema, text inline, to rows of their own, and leases them whole", async () => {
    // A shard of its own, so no other test's tasks are in it.
    await runInDurableObject(dispatcherFor(env, "use-lite", "migrate"), (_o: Dispatcher, state) => {
      const sql = state.storage.sql;
      // The previous schema: the items inline in each task's row.
      sql.exec("DROP TABLE task_blocks");
      sql.exec("ALTER TABLE tasks ADD COLUMN items TEXT");
      sql.exec("UPDATE meta SET value = '6' WHERE key = 'task_queue'");
      const items = Array.from({ length: 64 }, (_, i) => item(i));
      sql.exec(
        "INSERT INTO tasks (id, job_id, tenant, model, items, size, queued_at) VALUES ('job_old.t0', 'job_old', 't', 'use-lite', ?, 64, 1)",
        JSON.stringify(items),
      );
      sql.exec(
        "INSERT INTO tasks (id, job_id, tenant, model, items, size, state) VALUES ('job_old.t1', 'job_old', 't', 'use-lite', NULL, 0, 'done')",
      );

      const queue = new TaskQueue(sql, 3);
      queue.migrate();
      const columns = sql
        .exec<{ name: string }>("SELECT name FROM pragma_table_info('tasks')")
        .toArray()
        .map((c) => c.name);
      expect(columns).not.toContain("items");
      expect(queue.getTask("job_old.t0")?.items).toEqual(items);
      expect(queue.getTask("job_old.t1")?.items).toBeNull();

      // Leased in pieces of 32: each piece holds its own chunks, in order, text included.
      const first = queue.lease(worker, "use-lite", 1, Date.now(), 60_000, 32);
      const second = queue.lease(worker, "use-lite", 1, Date.now(), 60_000, 32);
      expect(first[0]?.items).toEqual(items.slice(0, 32));
      expect(second[0]?.items).toEqual(items.slice(32));
      // A stored result drops the text, and a confirmed one its items: nothing is left behind.
      const [a, b] = [first[0]?.taskId as string, second[0]?.taskId as string];
      expect(queue.beginStoring(a)).toBe(true);
      queue.finishStoring(a, "d", false);
      expect(queue.getTask(a)?.items).toEqual(
        items.slice(0, 32).map(({ text: _, ...rest }) => rest),
      );
      expect(queue.beginStoring(b)).toBe(true);
      queue.finishStoring(b, "d", true);
      expect(queue.getTask(b)?.items).toBeNull();
      queue.purgeJob("job_old");
      expect(sql.exec("SELECT count(*) AS n FROM task_blocks").one().n).toBe(0);
    });
  });
  it("keeps a task's text sealed in blocks of TASK_SIZE chunks that go with the pieces it is cut into", async () => {
    const keyring = keyringFor(env);
    const tenant = `t-blocks-${crypto.randomUUID()}`;
    const texts = (n: number, job: string) =>
      Array.from({ length: n }, (_, i) => ({
        chunkId: `${job}.${i}.0`,
        documentId: `doc-${i % 3}`,
        index: 0,
        text: `words of chunk ${i} in ${job}: ${"x".repeat(i)}`,
      }));
    const big = texts(100, "job_blk");
    const odd = texts(40, "job_odd");
    const [sealedBig, sealedOdd] = [
      await sealTask(keyring, tenant, big),
      await sealTask(keyring, tenant, odd),
    ];
    // One sealing a block of TASK_SIZE chunks, not one a chunk.
    expect(sealedBig.texts.map(([b]) => b)).toEqual([0, 1, 2, 3]);
    expect(sealedBig.items.map((i) => i.b)).toEqual(big.map((_, i) => Math.floor(i / TASK_SIZE)));
    const open = (t: {
      items: Parameters<typeof openTask>[2];
      texts: Parameters<typeof openTask>[3];
    }) => openTask(keyring, tenant, t.items, t.texts);

    await runInDurableObject(
      dispatcherFor(env, "use-lite", "blocks"),
      async (_o: Dispatcher, state) => {
        const sql = state.storage.sql;
        const queue = new TaskQueue(sql, 3);
        queue.enqueue("job_blk", tenant, "use-lite", [{ id: "job_blk.0", ...sealedBig }]);
        queue.enqueue("job_odd", tenant, "use-lite", [{ id: "job_odd.0", ...sealedOdd }]);
        const rows = sql
          .exec<{ block: number; items: string; size: number; text: string }>(
            "SELECT block, items, size, text FROM task_blocks WHERE task_id = 'job_blk.0' ORDER BY block",
          )
          .toArray();
        // A row a block, its sealed text beside its items; no text in the clear, and none
        // sealed item by item.
        expect(rows.map((r) => [r.block, r.size])).toEqual([
          [0, 32],
          [1, 32],
          [2, 32],
          [3, 4],
        ]);
        for (const r of rows) {
          for (const c of big) expect(`${r.items}${r.text}`).not.toContain(c.text);
          expect(r.items).not.toContain('"text"');
        }

        // Cut for workers' paces in whole blocks: each piece holds its own blocks and opens to
        // exactly its chunks' texts.
        const now = Date.now();
        const [a] = queue.lease(worker, "use-lite", 1, now, 60_000, 32);
        const [b] = queue.lease(worker, "use-lite", 1, now, 60_000, 64);
        if (!a || !b) throw new Error("nothing leased");
        expect(a.texts?.map(([n]) => n)).toEqual([0]);
        expect(b.texts?.map(([n]) => n)).toEqual([1, 2]);
        expect(await open(a)).toEqual(
          big.slice(0, 32).map(({ chunkId, text }) => ({ chunkId, text })),
        );
        expect(await open(b)).toEqual(
          big.slice(32, 96).map(({ chunkId, text }) => ({ chunkId, text })),
        );
        // A size inside a block (no pace size asks for one) takes that block whole.
        const more = [1, 2, 3].flatMap(() => queue.lease(worker, "use-lite", 1, now, 60_000, 20));
        const ofOdd = more.filter((t) => t.jobId === "job_odd");
        expect(ofOdd.map((t) => t.items.length)).toEqual([32, 8]);
        expect(ofOdd.map((t) => t.texts?.map(([n]) => n))).toEqual([[0], [1]]);
        expect(ofOdd.map((t) => queue.getTask(t.taskId)?.items?.length)).toEqual([32, 8]);
        for (const [n, t] of ofOdd.entries()) {
          const want = n === 0 ? odd.slice(0, 32) : odd.slice(32);
          expect(await open(t)).toEqual(want.map(({ chunkId, text }) => ({ chunkId, text })));
        }
        // A block opens only for the chunks sealed in it: another task's blocks do not serve.
        await expect(open({ items: a.items, texts: b.texts })).rejects.toBeInstanceOf(DecryptError);

        // A stored result takes its blocks with it.
        expect(queue.beginStoring(a.taskId)).toBe(true);
        queue.finishStoring(a.taskId, "d", false);
        expect(
          sql
            .exec<{ text: string | null }>(
              "SELECT text FROM task_blocks WHERE task_id = ?",
              a.taskId,
            )
            .one().text,
        ).toBeNull();
        expect(queue.getTask(a.taskId)?.items?.map((i) => i.chunkId)).toEqual(
          big.slice(0, 32).map((i) => i.chunkId),
        );

        // A deleted document takes every block that held its text.
        queue.forgetDocument("job_blk", "doc-1");
        const rest = sql
          .exec<{ items: string; size: number; text: string | null }>(
            "SELECT items, size, text FROM task_blocks WHERE task_id = 'job_blk.0'",
          )
          .one();
        const left = JSON.parse(rest.items) as { chunkId: string; documentId: string }[];
        expect(left.map((i) => i.chunkId)).toEqual(
          big
            .slice(96)
            .filter((i) => i.documentId !== "doc-1")
            .map((i) => i.chunkId),
        );
        expect(rest.size).toBe(left.length);
        expect(rest.text).toBeNull();
        // Every block of the job held some of its text; another job's blocks keep theirs.
        const sealed = (job: string) =>
          sql
            .exec<{ n: number }>(
              "SELECT count(*) AS n FROM task_blocks WHERE text IS NOT NULL AND task_id LIKE ?",
              `${job}.%`,
            )
            .one().n;
        expect([sealed("job_blk"), sealed("job_odd")]).toEqual([0, 2]);
        queue.purgeJob("job_blk");
        queue.purgeJob("job_odd");
      },
    );
  });
});
