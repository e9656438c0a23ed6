import { env, runInDurableObject } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import type { Dispatcher } from "../src/dispatch/dispatcher.js";
import { dispatcherFor } from "../src/dispatch/shards.js";
import { type QueuedItem, TaskQueue } from "../src/dispatch/task-queue.js";

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
      sql.exec("DROP TABLE task_items");
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
      expect(sql.exec("SELECT count(*) AS n FROM task_items").one().n).toBe(0);
    });
  });
});
