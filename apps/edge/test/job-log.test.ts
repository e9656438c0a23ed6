import { env, runInDurableObject } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import type { Dispatcher } from "../src/dispatch/dispatcher.js";
import { JobLog } from "../src/dispatch/job-log.js";
import { dispatcherAt } from "../src/dispatch/shards.js";

const chunk = (doc: string, i: number) => ({
  kind: "chunk" as const,
  data: { chunkId: `job_a.${i}.0`, documentId: doc, index: 0, status: "done" },
});

/** An object of its own for each test (no other test's events in it). */
const objectNamed = (name: string) => dispatcherAt(env, `job-log-${name}`, 0);

/** Runs `f` against the job log of an object of its own. */
const inShard = (name: string, f: (log: JobLog, sql: SqlStorage) => void) =>
  runInDurableObject(objectNamed(name), (_o: Dispatcher, state) => {
    const sql = state.storage.sql;
    const log = new JobLog(sql);
    log.migrate();
    f(log, sql);
  });

describe("the job event log", () => {
  it("keeps every event's own id when a task's events are stored as one row, and reads from any of them", async () => {
    await inShard("runs", (log, sql) => {
      log.appendEvents("job_a", [
        ...Array.from({ length: 300 }, (_, i) => chunk(`doc-${i % 3}`, i)),
      ]);
      log.appendEvents("job_b", [chunk("other", 0)]);
      log.appendEvents("job_a", [{ kind: "end", data: { status: "completed" } }]);
      const all = log.events("job_a", 0, 1000);
      expect(all).toHaveLength(301);
      const ids = all.map((e) => e.seq);
      // Ids run on one by one within the job's runs; job_b's event took the one between.
      expect(ids.slice(0, 300)).toEqual(ids.slice(0, 300).map((_, i) => (ids[0] as number) + i));
      expect(ids[300]).toBe((ids[299] as number) + 2);
      expect(all.slice(0, 300).map((e) => JSON.parse(e.data).chunkId)).toEqual(
        Array.from({ length: 300 }, (_, i) => `job_a.${i}.0`),
      );
      expect(all[300]).toMatchObject({ kind: "end", data: '{"status":"completed"}' });
      // Two rows for the job, not one an event.
      expect(
        sql
          .exec<{ n: number }>("SELECT count(*) AS n FROM job_event_runs WHERE job_id = 'job_a'")
          .one().n,
      ).toBe(2);

      // Read in slices from inside a run, as a stream resuming from its last id does.
      const seen: number[] = [];
      for (let after = ids[41] as number; ; ) {
        const batch = log.events("job_a", after, 50);
        seen.push(...batch.map((e) => e.seq));
        if (batch.length < 50) break;
        after = batch.at(-1)?.seq as number;
      }
      expect(seen).toEqual(ids.slice(42));

      // A log of many runs, read in slices that end inside runs and across them.
      for (let t = 0; t < 20; t++)
        log.appendEvents(
          "job_d",
          Array.from({ length: 10 }, (_, i) => chunk("d", t * 10 + i)),
        );
      const whole = log.events("job_d", 0, 1000).map((e) => e.seq);
      expect(whole).toHaveLength(200);
      const sliced: number[] = [];
      for (let after = 0; ; ) {
        const batch = log.events("job_d", after, 25);
        sliced.push(...batch.map((e) => e.seq));
        if (batch.length < 25) break;
        after = batch.at(-1)?.seq as number;
      }
      expect(sliced).toEqual(whole);
    });
  });

  it("drops a deleted document's events, the others keeping their ids, and never hands an id out twice", async () => {
    await inShard("forget", (log) => {
      log.appendEvents("job_a", [chunk("doc-1", 0), chunk("doc-2", 1), chunk("doc-1", 2)]);
      log.appendEvents("job_a", [chunk("doc-1", 3)]);
      const before = log.events("job_a", 0, 100);
      log.forgetDocument("job_a", "doc-1");
      const after = log.events("job_a", 0, 100);
      expect(after).toEqual([before[1]]);
      // A stream that had read the first event resumes with the next one left.
      expect(log.events("job_a", before[0]?.seq as number, 1)).toEqual([before[1]]);

      // The job goes with its log; new events get ids above every id handed out before.
      const high = before.at(-1)?.seq as number;
      log.forget("job_a");
      expect(log.events("job_a", 0, 100)).toEqual([]);
      log.appendEvents("job_c", [chunk("doc-9", 0)]);
      expect(log.events("job_c", 0, 10)[0]?.seq).toBe(high + 1);
    });
  });

  it("moves the event log of the previous schema, a row an event, keeping each event's id", async () => {
    await runInDurableObject(objectNamed("old"), (_o, state) => {
      const sql = state.storage.sql;
      // The previous schema, with events of two jobs; the last ones (ids 5 and 6) deleted.
      sql.exec("DROP TABLE IF EXISTS job_event_runs");
      sql.exec("DROP TABLE IF EXISTS job_event_ids");
      sql.exec(
        "CREATE TABLE job_events (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, kind TEXT NOT NULL, data TEXT NOT NULL)",
      );
      sql.exec("UPDATE meta SET value = '5' WHERE key = 'job_log'");
      for (const [job, data] of [
        ["job_x", '{"chunkId":"job_x.0.0","documentId":"a","index":0,"status":"done"}'],
        ["job_y", '{"chunkId":"job_y.0.0","documentId":"b","index":0,"status":"done"}'],
        ["job_x", '{"chunkId":"job_x.1.0","documentId":"c","index":0,"status":"done"}'],
        ["job_x", '{"status":"completed"}'],
        ["job_y", '{"chunkId":"job_y.1.0","documentId":"d","index":0,"status":"done"}'],
        ["job_y", '{"chunkId":"job_y.2.0","documentId":"e","index":0,"status":"done"}'],
      ] as const)
        sql.exec(
          "INSERT INTO job_events (job_id, kind, data) VALUES (?, ?, ?)",
          job,
          data.includes('status":"completed') ? "end" : "chunk",
          data,
        );
      sql.exec("DELETE FROM job_events WHERE seq > 4");

      const log = new JobLog(sql);
      log.migrate();
      expect(log.events("job_x", 0, 10)).toEqual([
        {
          seq: 1,
          kind: "chunk",
          data: '{"chunkId":"job_x.0.0","documentId":"a","index":0,"status":"done"}',
        },
        {
          seq: 3,
          kind: "chunk",
          data: '{"chunkId":"job_x.1.0","documentId":"c","index":0,"status":"done"}',
        },
        { seq: 4, kind: "end", data: '{"status":"completed"}' },
      ]);
      expect(log.events("job_x", 1, 10).map((e) => e.seq)).toEqual([3, 4]);
      expect(
        sql
          .exec<{ n: number }>("SELECT count(*) AS n FROM sqlite_master WHERE name = 'job_events'")
          .one().n,
      ).toBe(0);
      // Ids 5 and 6 were handed out before: the next event takes 7.
      log.appendEvents("job_y", [chunk("f", 3)]);
      expect(log.events("job_y", 2, 10).map((e) => e.seq)).toEqual([7]);
    });
  });
});
