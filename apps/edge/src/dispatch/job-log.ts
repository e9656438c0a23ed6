import { tombstone } from "../lib/crypto.js";
import { migrateOnce } from "../lib/do-schema.js";
/**
 * What the coordinator remembers about each job beside its tasks, in the same Durable Object
 * SQLite: its tenant, whether it started, ended or was deleted, whether its terminal webhook
 * event is still to be handed over, whether its submit has written it yet (see `unconfirmed`),
 * and its event log (what live progress streams replay).
 *
 * The event log keeps one row per run of events of one kind appended together (a stored
 * task's chunk events are one run, hundreds of them), not one per event: each event still has
 * an id of its own (the run's `first`, plus its place in the run), ids only ever grow
 * (`job_event_ids` holds the highest handed out, so a deleted run's ids are not handed out
 * again), and a run's payloads are its events' JSON, one a line (JSON holds no line break).
 * A row a chunk cost a stored chunk about a tenth of the shard's CPU.
 */

export type JobEventKind = "chunk" | "end";

/** Runs read per query when reading the log (see `events`). */
const RUNS_PER_READ = 8;

/** One entry of a job's event log; `seq` is the SSE event id, `data` its JSON payload. */
export interface JobEvent {
  seq: number;
  kind: JobEventKind;
  data: string;
}

export class JobLog {
  private readonly listeners: ((jobId: string) => void)[] = [];

  constructor(private readonly sql: SqlStorage) {}

  /** Calls `fn` with a job's id whenever its log grows or the job is deleted. */
  listen(fn: (jobId: string) => void): void {
    this.listeners.push(fn);
  }

  private changed(jobId: string): void {
    for (const fn of this.listeners) fn(jobId);
  }

  /** Creates the tables; run once under blockConcurrencyWhile. */
  migrate(): void {
    migrateOnce(this.sql, "job_log", [
      `
      CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        started INTEGER NOT NULL DEFAULT 0,
        tenant TEXT NOT NULL DEFAULT '',
        deleted INTEGER NOT NULL DEFAULT 0,
        ended INTEGER NOT NULL DEFAULT 0,
        -- 1 while the job's terminal webhook event has not reached the tenant's hub
        notify_pending INTEGER NOT NULL DEFAULT 0
      );
      CREATE TABLE IF NOT EXISTS job_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL
      );
      CREATE INDEX IF NOT EXISTS job_events_job ON job_events (job_id, seq);
    `,
      // When to retry handing a job's terminal event over (0: now, or nothing pending).
      "ALTER TABLE jobs ADD COLUMN notify_at INTEGER NOT NULL DEFAULT 0",
      // Deleted jobs are remembered by a one-way hash of their id, never the id itself.
      `CREATE TABLE IF NOT EXISTS deleted_jobs (hash TEXT PRIMARY KEY);
       DELETE FROM jobs WHERE deleted = 1;`,
      // 1 while the job takes more documents: it cannot end, whatever its tasks say.
      "ALTER TABLE jobs ADD COLUMN accepting INTEGER NOT NULL DEFAULT 0",
      // While its submit has not written the job (epoch ms): when to ask D1 whether it did. 0:
      // written.
      "ALTER TABLE jobs ADD COLUMN confirm_by INTEGER NOT NULL DEFAULT 0",
      // The event log in runs (see above); an event logged before keeps its id.
      `CREATE TABLE job_event_runs (
        last INTEGER PRIMARY KEY,
        first INTEGER NOT NULL,
        job_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL
      );
      CREATE INDEX job_event_runs_job ON job_event_runs (job_id, last);
      CREATE TABLE job_event_ids (id INTEGER PRIMARY KEY CHECK (id = 0), high INTEGER NOT NULL);
      INSERT INTO job_event_runs (last, first, job_id, kind, data)
        SELECT seq, seq, job_id, kind, data FROM job_events;
      INSERT INTO job_event_ids (id, high) VALUES (0, max(
        coalesce((SELECT max(seq) FROM job_events), 0),
        coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'job_events'), 0)));
      DROP TABLE job_events;`,
    ]);
  }

  /**
   * Records a job the first time its tasks arrive, and whether it takes more documents.
   * `confirmBy`: the tasks came before the submit wrote the job (see `unconfirmed`); a job
   * known already keeps what it was.
   */
  register(jobId: string, tenant: string, accepting = false, confirmBy = 0): void {
    this.sql.exec(
      "INSERT INTO jobs (id, tenant, accepting, confirm_by) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET accepting = excluded.accepting",
      jobId,
      tenant,
      accepting ? 1 : 0,
      confirmBy,
    );
  }

  /** True when the shard has the job (its tasks arrived, and it was not withdrawn since). */
  known(jobId: string): boolean {
    return this.sql.exec("SELECT 1 FROM jobs WHERE id = ?", jobId).toArray().length > 0;
  }

  /**
   * True while the job's tasks are out but its submit has not written its rows yet: they may
   * be leased and computed, but nothing of them is stored until `confirm` (the submit wrote
   * the job) or the job is withdrawn (it did not).
   */
  unconfirmed(jobId: string): boolean {
    const [row] = this.sql
      .exec<{ c: number }>("SELECT confirm_by AS c FROM jobs WHERE id = ?", jobId)
      .toArray();
    return (row?.c ?? 0) > 0;
  }

  /** The job was written: true exactly once, for a job that was unconfirmed. */
  confirm(jobId: string): boolean {
    return (
      this.sql.exec("UPDATE jobs SET confirm_by = 0 WHERE id = ? AND confirm_by > 0", jobId)
        .rowsWritten > 0
    );
  }

  /** Asks again at `at` whether an unconfirmed job was written (D1 did not answer). */
  confirmLater(jobId: string, at: number): void {
    this.sql.exec("UPDATE jobs SET confirm_by = ? WHERE id = ? AND confirm_by > 0", at, jobId);
  }

  /** Unconfirmed jobs whose deadline has come: their submit stopped before it said. */
  confirmDue(now: number): string[] {
    return this.sql
      .exec<{ id: string }>("SELECT id FROM jobs WHERE confirm_by > 0 AND confirm_by <= ?", now)
      .toArray()
      .map((r) => r.id);
  }

  /** The earliest deadline of an unconfirmed job, or null when there is none. */
  nextConfirmBy(): number | null {
    return this.sql
      .exec<{ t: number | null }>("SELECT min(confirm_by) AS t FROM jobs WHERE confirm_by > 0")
      .one().t;
  }

  /** A withdrawn job (never written): nothing of it stays, not even a tombstone. */
  forget(jobId: string): void {
    this.sql.exec("DELETE FROM jobs WHERE id = ?", jobId);
    this.sql.exec("DELETE FROM job_event_runs WHERE job_id = ?", jobId);
  }

  setAccepting(jobId: string, accepting: boolean): void {
    this.sql.exec("UPDATE jobs SET accepting = ? WHERE id = ?", accepting ? 1 : 0, jobId);
  }

  /** True while the job takes more documents. */
  accepting(jobId: string): boolean {
    return (
      this.sql
        .exec<{ a: number }>("SELECT accepting AS a FROM jobs WHERE id = ?", jobId)
        .toArray()[0]?.a === 1
    );
  }

  /**
   * The job was deleted: its row and event log go, and results still being stored are
   * removed once written. Only a one-way hash of its id stays, so a late result is
   * recognised while the id itself is kept nowhere.
   */
  async markDeleted(jobId: string): Promise<void> {
    const hash = await tombstone(jobId);
    this.sql.exec("DELETE FROM jobs WHERE id = ?", jobId);
    this.sql.exec("DELETE FROM job_event_runs WHERE job_id = ?", jobId);
    this.sql.exec("INSERT OR IGNORE INTO deleted_jobs (hash) VALUES (?)", hash);
    this.changed(jobId);
  }

  /**
   * A document of the job was deleted: its chunk events go (an empty line keeps the place, and
   * so the ids, of the run's others; a run left empty goes), the rest of the log stays.
   */
  forgetDocument(jobId: string, documentId: string): void {
    const runs = this.sql
      .exec<{ last: number; data: string }>(
        "SELECT last, data FROM job_event_runs WHERE job_id = ? AND kind = 'chunk'",
        jobId,
      )
      .toArray();
    for (const run of runs) {
      let changed = false;
      const kept = run.data.split("\n").map((d) => {
        if (d === "" || (JSON.parse(d) as { documentId?: string }).documentId !== documentId)
          return d;
        changed = true;
        return "";
      });
      if (!changed) continue;
      if (kept.every((d) => d === ""))
        this.sql.exec("DELETE FROM job_event_runs WHERE last = ?", run.last);
      else
        this.sql.exec(
          "UPDATE job_event_runs SET data = ? WHERE last = ?",
          kept.join("\n"),
          run.last,
        );
    }
  }

  /** True when the job was deleted while some of its results were being stored. */
  async isDeleted(jobId: string): Promise<boolean> {
    const hash = await tombstone(jobId);
    return this.sql.exec("SELECT 1 FROM deleted_jobs WHERE hash = ?", hash).toArray().length > 0;
  }

  /**
   * Appends to a job's event log (what live progress streams replay and resume from), in
   * order: each run of consecutive events of one kind is one row, its ids the next ones.
   */
  appendEvents(jobId: string, events: { kind: JobEventKind; data: unknown }[]): void {
    if (events.length === 0) return;
    for (let at = 0; at < events.length; ) {
      const kind = (events[at] as { kind: JobEventKind }).kind;
      let end = at + 1;
      while (end < events.length && events[end]?.kind === kind) end++;
      const n = end - at;
      const { high } = this.sql
        .exec<{ high: number }>("UPDATE job_event_ids SET high = high + ? RETURNING high", n)
        .one();
      this.sql.exec(
        "INSERT INTO job_event_runs (last, first, job_id, kind, data) VALUES (?, ?, ?, ?, ?)",
        high,
        high - n + 1,
        jobId,
        kind,
        events
          .slice(at, end)
          .map((e) => JSON.stringify(e.data))
          .join("\n"),
      );
      at = end;
    }
    this.changed(jobId);
  }

  /**
   * Up to `limit` of a job's events after `afterSeq`, oldest first. Runs are read a few at a
   * time: a run holds up to a task's events, so a slice of a long log reads only what it needs.
   */
  events(jobId: string, afterSeq: number, limit: number): JobEvent[] {
    const out: JobEvent[] = [];
    const rows = Math.min(limit, RUNS_PER_READ);
    for (let after = afterSeq; out.length < limit; ) {
      const runs = this.sql
        .exec<{ first: number; last: number; kind: JobEventKind; data: string }>(
          "SELECT first, last, kind, data FROM job_event_runs WHERE job_id = ? AND last > ? ORDER BY last LIMIT ?",
          jobId,
          after,
          rows,
        )
        .toArray();
      for (const run of runs) {
        const lines = run.data.split("\n");
        const from = Math.max(0, afterSeq + 1 - run.first);
        for (let i = from; i < lines.length && out.length < limit; i++) {
          const data = lines[i] as string;
          if (data !== "") out.push({ seq: run.first + i, kind: run.kind, data });
        }
        after = run.last;
        if (out.length >= limit) break;
      }
      if (runs.length < rows) break;
    }
    return out;
  }

  /** True once the job's terminal event is recorded. */
  isEnded(jobId: string): boolean {
    return (
      this.sql.exec<{ e: number }>("SELECT ended AS e FROM jobs WHERE id = ?", jobId).toArray()[0]
        ?.e === 1
    );
  }

  /** True exactly once per job: the caller records its terminal event. */
  markEnded(jobId: string): boolean {
    return (
      this.sql.exec("UPDATE jobs SET ended = 1 WHERE id = ? AND ended = 0", jobId).rowsWritten > 0
    );
  }

  jobTenant(jobId: string): string | null {
    return (
      this.sql.exec<{ tenant: string }>("SELECT tenant FROM jobs WHERE id = ?", jobId).toArray()[0]
        ?.tenant ?? null
    );
  }

  /**
   * Marks whether a job's terminal notification still has to be handed over, and when the
   * next try is due (`retryAt`, default now).
   */
  setNotifyPending(jobId: string, pending: boolean, retryAt = 0): void {
    this.sql.exec(
      "UPDATE jobs SET notify_pending = ?, notify_at = ? WHERE id = ?",
      pending ? 1 : 0,
      pending ? retryAt : 0,
      jobId,
    );
  }

  /** Jobs whose terminal notification is due for a try at `now`. */
  notifyDue(now: number): string[] {
    return this.sql
      .exec<{ id: string }>("SELECT id FROM jobs WHERE notify_pending = 1 AND notify_at <= ?", now)
      .toArray()
      .map((r) => r.id);
  }

  /** When the next notification retry is due, or null when none is pending. */
  nextNotifyAt(): number | null {
    return this.sql
      .exec<{ t: number | null }>("SELECT min(notify_at) AS t FROM jobs WHERE notify_pending = 1")
      .one().t;
  }

  /** True once a task of the job was leased. */
  isStarted(jobId: string): boolean {
    return (
      this.sql.exec<{ s: number }>("SELECT started AS s FROM jobs WHERE id = ?", jobId).toArray()[0]
        ?.s === 1
    );
  }

  /** True the first time a job's task is leased: the job has started. */
  markJobStarted(jobId: string): boolean {
    return (
      this.sql.exec("UPDATE jobs SET started = 1 WHERE id = ? AND started = 0", jobId).rowsWritten >
      0
    );
  }
}
