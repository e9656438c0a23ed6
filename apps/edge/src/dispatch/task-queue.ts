import { MAX_TASK_SIZE, TASK_SIZE } from "@p2pa/shared";
import { migrateOnce } from "../lib/do-schema.js";
import { slices } from "../lib/slices.js";
import { type TaskState, transition } from "./task-state.js";

/** One chunk inside a task, with what the vector index needs to know about it. */
export interface QueuedItem {
  chunkId: string;
  documentId: string;
  index: number;
  text: string;
  /** Filterable metadata its vector carries (collection, document keys); never sent to workers. */
  meta?: Record<string, string | number | boolean>;
  /** Its name in the embedding cache: a verified result is cached under it. */
  cacheKey?: string;
  /** Chunks of the same job with exactly this text: they get this item's vector, uncomputed. */
  copies?: ItemCopy[];
  /** Its version replaces a current one: its vector is held until the version is complete. */
  pending?: true;
}

/** A chunk that takes another item's vector (same text, same job). */
export interface ItemCopy {
  chunkId: string;
  documentId: string;
  index: number;
  meta?: Record<string, string | number | boolean>;
  pending?: true;
}

/**
 * An item as the queue keeps it: its text sealed in one of its task's blocks (`b`, see
 * sealed-items.ts), or, for tasks queued before blocks, its own sealed `text`.
 */
export interface StoredItem extends Omit<QueuedItem, "text"> {
  text?: string;
  b?: number;
}

/** Search metadata by document id: what each of the document's vectors carries. */
export type DocumentMeta = Record<string, Record<string, string | number | boolean>>;

/**
 * Gives items, and the copies they stand for, their document's search metadata where `meta`
 * names their document. Whether any item changed.
 */
export function applyMeta(
  items: readonly (StoredItem | QueuedItem)[],
  meta: DocumentMeta,
): boolean {
  let changed = false;
  for (const item of items)
    for (const it of [item, ...(item.copies ?? [])]) {
      const m = meta[it.documentId];
      if (m === undefined) continue;
      it.meta = m;
      changed = true;
    }
  return changed;
}

/** A task's sealed blocks of text, by block number. */
export type TaskTexts = [block: number, sealed: string][];

/** A task as the API makes it, its text in the clear. */
export interface NewTask {
  id: string;
  items: QueuedItem[];
}

/**
 * Work in tasks of up to MAX_TASK_SIZE items (cut to each worker's pace when leased), named
 * `<prefix><n>` from `first` on (deterministic, so retries match).
 */
export function tasksOf(prefix: string, work: QueuedItem[], first = 0): NewTask[] {
  return slices(work, MAX_TASK_SIZE).map((items, n) => ({ id: `${prefix}${first + n}`, items }));
}

/** A task as the queue takes it: items and their sealed blocks. */
export interface StoredTask {
  id: string;
  items: StoredItem[];
  texts?: TaskTexts;
}

/** How a job's tasks are handled: verification policy and who may compute them. */
export interface TaskOptions {
  verify: "auto" | "always" | "off";
  pool: "any" | "own";
}

export interface LeasedTask {
  taskId: string;
  leaseId: string;
  jobId: string;
  tenant: string;
  model: string;
  attempt: number;
  items: StoredItem[];
  texts: TaskTexts | null;
  verify: TaskOptions["verify"];
}

export interface TaskRow {
  id: string;
  jobId: string;
  tenant: string;
  model: string;
  state: TaskState;
  attempts: number;
  items: StoredItem[] | null;
  verify: TaskOptions["verify"];
  pool: TaskOptions["pool"];
  /** Donors whose results for it are held or were outvoted: it never goes to them again. */
  answered: string[];
  /** A stored task run again because its unconfirmed result's donor was quarantined. */
  recompute: boolean;
}

export interface LeaseRow {
  id: string;
  taskId: string;
  workerId: string;
  deadline: number;
  /** The deadline passed and the task was reassigned; results count until `giveUpAt`. */
  expired: boolean;
  giveUpAt: number | null;
  /** A canary sent as the lease's last item, if one was. */
  canary: { id: number; chunkId: string } | null;
}

/**
 * Which tasks a worker may lease (bind: model, now, the worker's tenant, its donor): ready,
 * visible to its tenant, and not already answered by its donor.
 */
const LEASABLE = `state = 'pending' AND model = ? AND not_before <= ?
  AND (pool = 'any' OR tenant = ?)
  AND NOT EXISTS (SELECT 1 FROM json_each(tasks.answered) WHERE value = ?)`;

/**
 * A task_blocks row's SET without its text: its sealed block, and any text sealed on its items
 * (tasks queued before blocks).
 */
const WITHOUT_TEXT = `text = NULL, items = CASE WHEN instr(items, '"text":') > 0
  THEN (SELECT json_group_array(json_remove(value, '$.text')) FROM json_each(task_blocks.items))
  ELSE items END`;

/** Backoff before retrying a failed task: 0.5 s doubling per failure, at most 30 s. */
function retryDelay(failures: number): number {
  return Math.min(30_000, 500 * 2 ** Math.max(0, failures - 1));
}

/**
 * Tasks and leases in Durable Object SQLite. Synchronous: every method runs inside one
 * storage transaction of the calling event, so no two events see half a change.
 *
 * Leases are rows of their own, so a later quorum step can hold several leases on one task
 * and compare answers while the task is still stored once.
 */
export class TaskQueue {
  constructor(
    private readonly sql: SqlStorage,
    private readonly maxAttempts: number,
    /** How long after reassignment a late result still counts (the give-up deadline). */
    private readonly giveUpMs = 10 * 60_000,
  ) {}

  /** Creates the tables; run once under blockConcurrencyWhile. */
  migrate(): void {
    migrateOnce(this.sql, "task_queue", [
      `
      CREATE TABLE IF NOT EXISTS tasks (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        job_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        model TEXT NOT NULL,
        items TEXT,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        errors TEXT NOT NULL DEFAULT '[]',
        -- a failed task waits until then before it is leased again (retry backoff)
        not_before INTEGER NOT NULL DEFAULT 0
      );
      CREATE INDEX IF NOT EXISTS tasks_ready ON tasks (state, model, seq);
      CREATE INDEX IF NOT EXISTS tasks_job ON tasks (job_id, state);
      CREATE TABLE IF NOT EXISTS leases (
        id TEXT PRIMARY KEY,
        task_id TEXT NOT NULL,
        worker_id TEXT NOT NULL,
        deadline INTEGER NOT NULL,
        -- 1 once the deadline passed and the task went back to the queue; the worker's
        -- result is still taken until give_up_at
        expired INTEGER NOT NULL DEFAULT 0,
        give_up_at INTEGER
      );
      CREATE INDEX IF NOT EXISTS leases_worker ON leases (worker_id);
      CREATE INDEX IF NOT EXISTS leases_deadline ON leases (deadline);
    `,
      `
      -- when the task last became pending: how long work has waited (stall watchdog, metrics)
      ALTER TABLE tasks ADD COLUMN queued_at INTEGER NOT NULL DEFAULT 0;
      -- when the lease was granted: a lease the worker does not list after that is lost
      ALTER TABLE leases ADD COLUMN leased_at INTEGER NOT NULL DEFAULT 0;
    `,
      `
      ALTER TABLE tasks ADD COLUMN verify TEXT NOT NULL DEFAULT 'auto';
      ALTER TABLE tasks ADD COLUMN pool TEXT NOT NULL DEFAULT 'any';
      -- 0: awaiting confirmation or recomputation, leased before new work (1)
      ALTER TABLE tasks ADD COLUMN lane INTEGER NOT NULL DEFAULT 1;
      ALTER TABLE tasks ADD COLUMN answered TEXT NOT NULL DEFAULT '[]';
      -- the donor whose result was stored, and whether another donor confirmed it
      ALTER TABLE tasks ADD COLUMN stored_by TEXT;
      ALTER TABLE tasks ADD COLUMN confirmed INTEGER NOT NULL DEFAULT 0;
      ALTER TABLE tasks ADD COLUMN recompute INTEGER NOT NULL DEFAULT 0;
      DROP INDEX IF EXISTS tasks_ready;
      CREATE INDEX tasks_ready ON tasks (state, model, lane, seq);
      CREATE INDEX tasks_stored_by ON tasks (stored_by, confirmed);
    `,
      `
      -- a known-answer check sent with this lease: which canary, under which chunk id
      ALTER TABLE leases ADD COLUMN canary_id INTEGER;
      ALTER TABLE leases ADD COLUMN canary_chunk TEXT;
    `,
      `
      -- every pump asks when the next retry comes due: without this it reads every queued
      -- task (1.2 ms at 10,000 tasks, on every result). Partial, so that leasing (not_before
      -- <= now) keeps tasks_ready, whose order it needs.
      CREATE INDEX IF NOT EXISTS tasks_retry ON tasks (not_before)
        WHERE state = 'pending' AND not_before > 0;
    `,
      `
      -- a task's chunks: tasks are cut to each worker's pace when leased (see lease)
      ALTER TABLE tasks ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
      UPDATE tasks SET size = json_array_length(items) WHERE items IS NOT NULL;
      -- leases are found by task when a task is stored, failed or cancelled, and joined to
      -- their task on every pump (which worker holds how many)
      CREATE INDEX IF NOT EXISTS leases_task ON leases (task_id);
      -- the next lease deadline, without walking expired leases kept until their give-up time
      CREATE INDEX IF NOT EXISTS leases_live ON leases (deadline) WHERE expired = 0;
    `,
      `
      -- a task's items (its chunks, with their sealed text: some 50 KB for 167 chunks) in a row
      -- of their own: SQLite rewrites a row whole, overflow pages and all, whenever its size
      -- changes, so each change of a task's state rewrote its text (about 100 KB of log a step)
      CREATE TABLE task_items (task_id TEXT PRIMARY KEY, items TEXT NOT NULL);
      INSERT INTO task_items (task_id, items) SELECT id, items FROM tasks WHERE items IS NOT NULL;
      ALTER TABLE tasks DROP COLUMN items;
    `,
      `
      -- a task's text sealed in blocks of TASK_SIZE chunks (sealed-items.ts), one AES-GCM
      -- operation a block rather than one a chunk; its items name their block
      ALTER TABLE task_items ADD COLUMN texts TEXT;
    `,
      `
      -- a task's items in rows of a block each (TASK_SIZE chunks and their sealed text): a
      -- task is cut for a worker's pace by handing whole blocks to the new task, where cutting
      -- one JSON document of 256 items and their text in SQL took some 2 ms
      CREATE TABLE task_blocks (
        task_id TEXT NOT NULL,
        block INTEGER NOT NULL,
        items TEXT NOT NULL,
        size INTEGER NOT NULL,
        text TEXT
      );
      CREATE UNIQUE INDEX task_blocks_task ON task_blocks (task_id, block);
      -- items by the block they name, else (text sealed item by item) 32 to a block in order
      INSERT INTO task_blocks (task_id, block, items, size, text)
        SELECT ti.task_id, coalesce(j.value ->> 'b', j.key / 32) AS blk,
          json_group_array(json(j.value) ORDER BY j.key), count(*),
          (SELECT t.value ->> 1 FROM json_each(ti.texts) t
            WHERE t.value ->> 0 = coalesce(j.value ->> 'b', j.key / 32))
        FROM task_items ti, json_each(ti.items) j
        GROUP BY ti.task_id, blk;
      DROP TABLE task_items;
    `,
    ]);
  }

  /**
   * A task's items in rows of a block each, with the block's sealed text: by the block each
   * item names, else (text in the clear or sealed item by item) TASK_SIZE to a block.
   */
  private putBlocks(taskId: string, task: Omit<StoredTask, "id">): void {
    const blocks = new Map<number, StoredItem[]>();
    task.items.forEach((item, i) => {
      const b = item.b ?? Math.floor(i / TASK_SIZE);
      const list = blocks.get(b);
      if (list) list.push(item);
      else blocks.set(b, [item]);
    });
    const texts = new Map(task.texts ?? []);
    for (const [b, items] of blocks)
      this.sql.exec(
        "INSERT INTO task_blocks (task_id, block, items, size, text) VALUES (?, ?, ?, ?, ?)",
        taskId,
        b,
        JSON.stringify(items),
        items.length,
        texts.get(b) ?? null,
      );
  }

  /** A task's items in order (their text not read); null when it holds no rows. */
  private itemsOf(taskId: string): StoredItem[] | null {
    const rows = this.sql
      .exec<{ items: string }>(
        "SELECT items FROM task_blocks WHERE task_id = ? ORDER BY block",
        taskId,
      )
      .toArray();
    if (rows.length === 0) return null;
    return rows.length === 1
      ? (JSON.parse((rows[0] as { items: string }).items) as StoredItem[])
      : rows.flatMap((r) => JSON.parse(r.items) as StoredItem[]);
  }

  /** A task's items and sealed blocks, in order; null when it holds no rows. */
  private blocksOf(taskId: string): { items: StoredItem[]; texts: TaskTexts } | null {
    const rows = this.sql
      .exec<{ block: number; items: string; text: string | null }>(
        "SELECT block, items, text FROM task_blocks WHERE task_id = ? ORDER BY block",
        taskId,
      )
      .toArray();
    if (rows.length === 0) return null;
    const items: StoredItem[] = [];
    const texts: TaskTexts = [];
    for (const r of rows) {
      for (const item of JSON.parse(r.items) as StoredItem[]) items.push(item);
      if (r.text !== null) texts.push([r.block, r.text]);
    }
    return { items, texts };
  }

  /**
   * A job's documents' search metadata, found after its tasks were queued (a new job's
   * languages, see `Ingestion.add`): its items carry it from now on.
   */
  setMeta(jobId: string, meta: DocumentMeta): void {
    const rows = this.sql.exec<{ task_id: string; block: number; items: string }>(
      "SELECT task_id, block, items FROM task_blocks WHERE task_id IN (SELECT id FROM tasks WHERE job_id = ?)",
      jobId,
    );
    for (const r of rows.toArray()) {
      const items = JSON.parse(r.items) as StoredItem[];
      if (!applyMeta(items, meta)) continue;
      this.sql.exec(
        "UPDATE task_blocks SET items = ? WHERE task_id = ? AND block = ?",
        JSON.stringify(items),
        r.task_id,
        r.block,
      );
    }
  }

  /** Adds a job's tasks; replays of the same task ids are ignored. Returns how many were new. */
  enqueue(
    jobId: string,
    tenant: string,
    model: string,
    tasks: StoredTask[],
    opts: TaskOptions = { verify: "auto", pool: "any" },
  ): number {
    let added = 0;
    for (const t of tasks) {
      const { rowsWritten } = this.sql.exec(
        "INSERT OR IGNORE INTO tasks (id, job_id, tenant, model, size, queued_at, verify, pool) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        t.id,
        jobId,
        tenant,
        model,
        t.items.length,
        Date.now(),
        opts.verify,
        opts.pool,
      );
      if (rowsWritten === 0) continue;
      this.putBlocks(t.id, t);
      added++;
    }
    return added;
  }

  /**
   * Leases up to `n` ready tasks of `model` to a worker: confirmations and recomputations
   * first, then oldest first; never a task its donor already answered, and an `own`-pool task
   * only to a worker of the task's tenant.
   *
   * A new task longer than `size` chunks is cut: its first `size` chunks become a task of their
   * own (`<id>~<chunks left>`), leased now, and the rest stays queued under the task's id, so
   * each worker gets work in the size its pace calls for. Only tasks never leased are cut: a
   * late result, a held result awaiting confirmation and a recomputation all name the task as
   * it was sent.
   */
  lease(
    worker: { workerId: string; donor: string; tenant: string },
    model: string,
    n: number,
    now: number,
    leaseMs: number,
    size = Number.POSITIVE_INFINITY,
  ): LeasedTask[] {
    if (n <= 0) return [];
    const { workerId } = worker;
    const rows = this.sql
      .exec<{
        id: string;
        job_id: string;
        tenant: string;
        attempts: number;
        verify: TaskOptions["verify"];
        lane: number;
        size: number;
      }>(
        `SELECT id, job_id, tenant, attempts, verify, lane, size FROM tasks WHERE ${LEASABLE}
         ORDER BY lane, seq LIMIT ?`,
        model,
        now,
        worker.tenant,
        worker.donor,
        n,
      )
      .toArray();
    return rows.map((r) => {
      const leaseId = crypto.randomUUID();
      const cut = r.attempts === 0 && r.lane === 1 && r.size > size;
      const taskId = cut ? this.cut(r.id, size) : r.id;
      this.setState(taskId, "pending", { type: "lease" });
      this.sql.exec("UPDATE tasks SET attempts = attempts + 1 WHERE id = ?", taskId);
      const { items, texts } = this.blocksOf(taskId) ?? { items: [], texts: [] };
      this.sql.exec(
        "INSERT INTO leases (id, task_id, worker_id, deadline, leased_at) VALUES (?, ?, ?, ?, ?)",
        leaseId,
        taskId,
        workerId,
        now + leaseMs,
        now,
      );
      return {
        taskId,
        leaseId,
        jobId: r.job_id,
        tenant: r.tenant,
        model,
        attempt: r.attempts + 1,
        items,
        texts,
        verify: r.verify,
      };
    });
  }

  /**
   * Cuts the first blocks of pending task `id` that hold at least `size` chunks into a pending
   * task of their own (`<id>~<chunks left>`) and returns its id; the rest stays queued under
   * `id`. Pace sizes are whole blocks, so the new task holds `size` chunks; the blocks move
   * with their sealed text as they are. When no block is left over, the task goes whole.
   */
  private cut(id: string, size: number): string {
    const blocks = this.sql
      .exec<{ block: number; size: number }>(
        "SELECT block, size FROM task_blocks WHERE task_id = ? ORDER BY block",
        id,
      )
      .toArray();
    let taken = 0;
    let k = 0;
    while (k < blocks.length && taken < size) taken += (blocks[k++] as { size: number }).size;
    if (k === blocks.length) return id;
    const left = blocks.slice(k).reduce((n, b) => n + b.size, 0);
    const piece = `${id}~${left}`;
    this.sql.exec(
      `INSERT INTO tasks (id, job_id, tenant, model, size, queued_at, verify, pool)
       SELECT ?, job_id, tenant, model, ?, queued_at, verify, pool FROM tasks WHERE id = ?`,
      piece,
      taken,
      id,
    );
    this.sql.exec(
      "UPDATE task_blocks SET task_id = ? WHERE task_id = ? AND block <= ?",
      piece,
      id,
      (blocks[k - 1] as { block: number }).block,
    );
    this.sql.exec("UPDATE tasks SET size = ? WHERE id = ?", left, id);
    return piece;
  }

  /** Cancels every task of a job that is not stored yet; their leases end, so late results are refused. */
  cancelJob(jobId: string): number {
    const rows = this.sql
      .exec<{ id: string; state: TaskState }>(
        "SELECT id, state FROM tasks WHERE job_id = ? AND state IN ('pending', 'leased')",
        jobId,
      )
      .toArray();
    let n = 0;
    for (const r of rows) {
      if (this.setState(r.id, r.state, { type: "cancel" })) {
        this.sql.exec("DELETE FROM task_blocks WHERE task_id = ?", r.id);
        this.sql.exec("DELETE FROM leases WHERE task_id = ?", r.id);
        n++;
      }
    }
    return n;
  }

  /** True while any task of the job can still change. */
  jobOpen(jobId: string): boolean {
    const r = this.sql
      .exec<{ n: number }>(
        "SELECT count(*) AS n FROM tasks WHERE job_id = ? AND state IN ('pending', 'leased', 'storing')",
        jobId,
      )
      .toArray()[0];
    return (r?.n ?? 0) > 0;
  }

  getTask(id: string): TaskRow | null {
    const r = this.sql
      .exec<{
        id: string;
        job_id: string;
        tenant: string;
        model: string;
        state: TaskState;
        attempts: number;
        verify: TaskOptions["verify"];
        pool: TaskOptions["pool"];
        answered: string;
        recompute: number;
      }>(
        `SELECT id, job_id, tenant, model, state, attempts, verify, pool, answered, recompute
         FROM tasks WHERE id = ?`,
        id,
      )
      .toArray()[0];
    if (!r) return null;
    return {
      id: r.id,
      jobId: r.job_id,
      tenant: r.tenant,
      model: r.model,
      state: r.state,
      attempts: r.attempts,
      items: this.itemsOf(r.id),
      verify: r.verify,
      pool: r.pool,
      answered: JSON.parse(r.answered) as string[],
      recompute: r.recompute === 1,
    };
  }

  getLease(id: string): LeaseRow | null {
    const r = this.sql
      .exec<{
        id: string;
        task_id: string;
        worker_id: string;
        deadline: number;
        expired: number;
        give_up_at: number | null;
        canary_id: number | null;
        canary_chunk: string | null;
      }>("SELECT * FROM leases WHERE id = ?", id)
      .toArray()[0];
    return r
      ? {
          id: r.id,
          taskId: r.task_id,
          workerId: r.worker_id,
          deadline: r.deadline,
          expired: r.expired === 1,
          giveUpAt: r.give_up_at,
          canary:
            r.canary_id !== null && r.canary_chunk
              ? { id: r.canary_id, chunkId: r.canary_chunk }
              : null,
        }
      : null;
  }

  /** Whether a result on this lease still counts at `now`. */
  static leaseLive(lease: LeaseRow, now: number): boolean {
    return !lease.expired || (lease.giveUpAt !== null && now < lease.giveUpAt);
  }

  /**
   * Moves a task to `storing` for a result on a live lease, or on an expired one before its
   * give-up deadline (`late`); false when the task is already stored or gone.
   */
  beginStoring(taskId: string, late = false): boolean {
    const storing = late
      ? this.setState(taskId, "pending", { type: "late_result" }) ||
        this.setState(taskId, "leased", { type: "late_result" })
      : this.setState(taskId, "leased", { type: "result" });
    // Its leases end with the result: any other answer now is a duplicate (the task's state
    // says so), and no lease of a task being written is left for the pumps to walk past.
    if (storing) this.sql.exec("DELETE FROM leases WHERE task_id = ?", taskId);
    return storing;
  }

  /**
   * The result is stored: the task is done, its leases gone and its text dropped. An
   * unconfirmed result keeps its chunk ids (not their text) and its donor, so it can be
   * recomputed should that donor be caught lying later.
   */
  finishStoring(taskId: string, donor: string, confirmed: boolean): void {
    if (this.setState(taskId, "storing", { type: "stored" })) {
      if (confirmed) this.sql.exec("DELETE FROM task_blocks WHERE task_id = ?", taskId);
      else this.sql.exec(`UPDATE task_blocks SET ${WITHOUT_TEXT} WHERE task_id = ?`, taskId);
      this.sql.exec(
        "UPDATE tasks SET stored_by = ?, confirmed = ?, recompute = 0, answered = '[]', lane = 1 WHERE id = ?",
        donor,
        confirmed ? 1 : 0,
        taskId,
      );
      this.sql.exec("DELETE FROM leases WHERE task_id = ?", taskId);
    }
  }

  /**
   * A result was held for confirmation (or outvoted nothing yet): the lease ends without
   * counting as a failure, and the task goes back to the queue, ahead of new work, for a
   * donor that has not answered it.
   */
  awaitAnother(taskId: string, leaseId: string, donor: string): boolean {
    if (!this.setState(taskId, "storing", { type: "await_confirmation" })) return false;
    this.sql.exec("DELETE FROM leases WHERE id = ?", leaseId);
    this.sql.exec(
      "UPDATE tasks SET lane = 0, answered = json_insert(answered, '$[#]', ?) WHERE id = ?",
      donor,
      taskId,
    );
    return true;
  }

  /** Records the canary sent with a lease (as its last item). */
  setCanary(leaseId: string, canaryId: number, chunkId: string): void {
    this.sql.exec(
      "UPDATE leases SET canary_id = ?, canary_chunk = ? WHERE id = ?",
      canaryId,
      chunkId,
      leaseId,
    );
  }

  /** The donors' results never agreed: the task fails with that reason. */
  giveUp(taskId: string, reason: string): void {
    if (this.setState(taskId, "storing", { type: "give_up" })) {
      this.sql.exec(
        "UPDATE tasks SET errors = json_insert(errors, '$[#]', json_object('worker', 'verification', 'reason', ?)) WHERE id = ?",
        reason,
        taskId,
      );
      this.sql.exec("DELETE FROM leases WHERE task_id = ?", taskId);
    }
  }

  /** Stored tasks whose result came from `donor` and was never confirmed, with their items (no text). */
  unconfirmedBy(donor: string): { taskId: string; items: StoredItem[] }[] {
    return this.sql
      .exec<{ id: string }>(
        "SELECT id FROM tasks WHERE stored_by = ? AND confirmed = 0 AND state = 'done'",
        donor,
      )
      .toArray()
      .map((r) => ({ taskId: r.id, items: this.itemsOf(r.id) ?? [] }));
  }

  /**
   * Runs a stored task again (its donor was quarantined): its items with their text back,
   * ahead of new work, never to `donor`. Returns false when the task is not done.
   */
  recompute(taskId: string, sealed: Omit<StoredTask, "id">, donor: string): boolean {
    if (!this.setState(taskId, "done", { type: "recompute" })) return false;
    this.sql.exec("DELETE FROM task_blocks WHERE task_id = ?", taskId);
    this.putBlocks(taskId, sealed);
    this.sql.exec(
      "UPDATE tasks SET recompute = 1, lane = 0, answered = json_array(?), stored_by = NULL, attempts = 0, errors = '[]' WHERE id = ?",
      donor,
      taskId,
    );
    return true;
  }

  /** Storing failed (the store was unavailable): the task goes back to the queue. */
  abortStoring(taskId: string): void {
    if (this.setState(taskId, "storing", { type: "store_error" })) {
      this.sql.exec("DELETE FROM leases WHERE task_id = ?", taskId);
    }
  }

  /**
   * Records a failed attempt, charged to `donor` (the worker's token: however many
   * connections one donor opens, its failures count as one worker's). Returns "failed" when
   * the task has used all its attempts (its chunks must then be marked failed), else "retry".
   */
  fail(
    leaseId: string,
    reason: string,
    now: number,
    donor: string,
  ): { taskId: string; outcome: "retry" | "failed" } | null {
    const lease = this.getLease(leaseId);
    if (!lease || lease.expired) return null;
    const task = this.getTask(lease.taskId);
    if (task?.state !== "leased") return null;
    this.sql.exec("DELETE FROM leases WHERE id = ?", leaseId);
    this.sql.exec(
      "UPDATE tasks SET errors = json_insert(errors, '$[#]', json_object('worker', ?, 'reason', ?)) WHERE id = ?",
      donor,
      reason,
      task.id,
    );
    const { workers, failures } = this.sql
      .exec<{ workers: number; failures: number }>(
        "SELECT count(DISTINCT json_extract(e.value, '$.worker')) AS workers, count(*) AS failures FROM tasks, json_each(tasks.errors) AS e WHERE tasks.id = ?",
        task.id,
      )
      .one();
    // Give up once the task has failed on maxAttempts different donors (one broken or
    // hostile donor cannot fail a chunk), or on far more attempts than that on fewer.
    const exhausted = workers >= this.maxAttempts || failures >= this.maxAttempts * 3;
    this.setState(task.id, "leased", { type: "fail", exhausted });
    if (!exhausted) {
      this.sql.exec(
        "UPDATE tasks SET not_before = ? WHERE id = ?",
        now + retryDelay(failures),
        task.id,
      );
    }
    return { taskId: task.id, outcome: exhausted ? "failed" : "retry" };
  }

  /** Hands leases back to the queue without counting an attempt against the task. */
  release(leaseIds: string[], workerId: string): number {
    let n = 0;
    for (const id of leaseIds) {
      const lease = this.getLease(id);
      if (!lease || lease.workerId !== workerId) continue;
      if (lease.expired) {
        this.sql.exec("DELETE FROM leases WHERE id = ?", id);
        continue;
      }
      if (this.setState(lease.taskId, "leased", { type: "release" })) {
        this.sql.exec(
          "UPDATE tasks SET attempts = max(attempts - 1, 0) WHERE id = ?",
          lease.taskId,
        );
        this.sql.exec("DELETE FROM leases WHERE id = ?", id);
        n++;
      }
    }
    return n;
  }

  /** Returns tasks whose lease deadline has passed to the queue; gives the workers that let them lapse. */
  requeueExpired(now: number): string[] {
    // Leases past their give-up deadline are gone for good.
    this.sql.exec("DELETE FROM leases WHERE expired = 1 AND give_up_at <= ?", now);
    const ids = this.sql
      .exec<{ id: string }>("SELECT id FROM leases WHERE expired = 0 AND deadline <= ?", now)
      .toArray()
      .map((r) => r.id);
    const workers: string[] = [];
    for (const id of ids) {
      const lease = this.getLease(id);
      if (!lease) continue;
      // A task being stored keeps its lease until the write settles.
      if (this.setState(lease.taskId, "leased", { type: "expire" })) {
        this.sql.exec(
          "UPDATE leases SET expired = 1, give_up_at = ? WHERE id = ?",
          now + this.giveUpMs,
          id,
        );
        workers.push(lease.workerId);
      }
    }
    return workers;
  }

  /** Gives a disconnected worker's leases at most `deadline` to be reclaimed by a reconnect. */
  graceWorker(workerId: string, deadline: number): void {
    this.sql.exec(
      "UPDATE leases SET deadline = min(deadline, ?) WHERE worker_id = ? AND expired = 0",
      deadline,
      workerId,
    );
  }

  /** A reconnected worker takes its leases back, with fresh deadlines within their life. */
  reclaim(workerId: string, deadline: number, maxLifeMs: number): number {
    return this.sql.exec(
      "UPDATE leases SET deadline = min(?, leased_at + ?) WHERE worker_id = ? AND expired = 0",
      deadline,
      maxLifeMs,
      workerId,
    ).rowsWritten;
  }

  /**
   * Tasks each worker holds now (worker id -> count): live leases on tasks still waiting for
   * its result. A task whose result arrived (being stored) no longer takes room, so a
   * worker's window opens the moment its result is in, as the worker itself counts it.
   */
  heldByWorker(): Map<string, number> {
    const out = new Map<string, number>();
    for (const r of this.sql.exec<{ w: string; n: number }>(
      `SELECT l.worker_id AS w, count(*) AS n FROM leases l JOIN tasks t ON t.id = l.task_id
       WHERE l.expired = 0 AND t.state = 'leased' GROUP BY l.worker_id`,
    ))
      out.set(r.w, r.n);
    return out;
  }

  /**
   * Hands back the worker's leases that it does not list (`leaseIds`, from its heartbeat)
   * although they were granted before `grantedBefore`: the task frame never reached it (a
   * connection that died under the send). Not counted as an attempt. Returns how many.
   */
  reconcile(workerId: string, leaseIds: string[], grantedBefore: number): number {
    const listed = new Set(leaseIds);
    const lost = this.sql
      .exec<{ id: string }>(
        `SELECT l.id FROM leases l JOIN tasks t ON t.id = l.task_id
         WHERE l.worker_id = ? AND l.expired = 0 AND t.state = 'leased' AND l.leased_at < ?`,
        workerId,
        grantedBefore,
      )
      .toArray()
      .map((r) => r.id)
      .filter((id) => !listed.has(id));
    let n = 0;
    // The task goes back to the queue at once, but the lease lives on as an expired one: a
    // worker that did have it after all (its heartbeat left before it read the task frame)
    // still gets its result stored, as for any late result, instead of computing it for
    // nothing.
    for (const id of lost) {
      const lease = this.getLease(id);
      if (!lease || lease.expired) continue;
      if (this.setState(lease.taskId, "leased", { type: "release" })) {
        this.sql.exec(
          "UPDATE tasks SET attempts = max(attempts - 1, 0) WHERE id = ?",
          lease.taskId,
        );
        this.sql.exec(
          "UPDATE leases SET expired = 1, give_up_at = ? WHERE id = ?",
          Date.now() + this.giveUpMs,
          id,
        );
        n++;
      }
    }
    return n;
  }

  /**
   * On start: a task left in `storing` was being written when the object stopped (a crash or
   * a deploy). Every write of the store path is idempotent, so it goes back to the queue; its
   * leases turn into expired ones, so the worker's re-sent result is still taken until the
   * give-up deadline, as any late result. Returns how many tasks were recovered.
   */
  recoverStoring(now: number): number {
    const ids = this.sql
      .exec<{ id: string }>("SELECT id FROM tasks WHERE state = 'storing'")
      .toArray()
      .map((r) => r.id);
    for (const id of ids) {
      if (this.setState(id, "storing", { type: "recover" })) {
        this.sql.exec(
          "UPDATE leases SET expired = 1, give_up_at = ? WHERE task_id = ? AND expired = 0",
          now + this.giveUpMs,
          id,
        );
      }
    }
    return ids.length;
  }

  /**
   * Since when the oldest task this worker could lease now has been ready, or null when there
   * is none: the watchdog's question, asked with the lease's own rule.
   */
  oldestLeasable(
    worker: { donor: string; tenant: string },
    model: string,
    now: number,
  ): number | null {
    return this.sql
      .exec<{ t: number | null }>(
        `SELECT min(max(queued_at, not_before)) AS t FROM tasks WHERE ${LEASABLE}`,
        model,
        now,
        worker.tenant,
        worker.donor,
      )
      .one().t;
  }

  /**
   * Tasks that could be leased now (pending and past their retry backoff), per model: how
   * many, and since when the oldest of them has been ready.
   */
  ready(now: number): Map<string, { tasks: number; since: number }> {
    const out = new Map<string, { tasks: number; since: number }>();
    for (const r of this.sql.exec<{ model: string; n: number; since: number }>(
      `SELECT model, count(*) AS n, min(max(queued_at, not_before)) AS since FROM tasks
       WHERE state = 'pending' AND not_before <= ? GROUP BY model`,
      now,
    ))
      out.set(r.model, { tasks: r.n, since: r.since });
    return out;
  }

  /**
   * Extends the worker's live leases that it lists, but never past `maxLifeMs` after each was
   * granted: a worker that keeps a task alive without ever answering loses it then. One
   * statement over the worker's own leases, so a frame costs what the worker holds, not what
   * it lists.
   */
  heartbeat(workerId: string, leaseIds: string[], deadline: number, maxLifeMs: number): void {
    if (leaseIds.length === 0) return;
    this.sql.exec(
      `UPDATE leases SET deadline = min(?, leased_at + ?)
       WHERE worker_id = ? AND expired = 0 AND id IN (SELECT value FROM json_each(?))`,
      deadline,
      maxLifeMs,
      workerId,
      JSON.stringify(leaseIds),
    );
  }

  /**
   * A document of an ended job was deleted: its items leave the job's tasks, with the text a
   * failed task still holds: every block that held some of its text loses its sealed text
   * whole (the other texts in it went with their failed task's end; a failed task is not run
   * again).
   */
  forgetDocument(jobId: string, documentId: string): void {
    // Every SET reads the row as it was.
    this.sql.exec(
      `UPDATE task_blocks SET
         text = CASE WHEN EXISTS (SELECT 1 FROM json_each(task_blocks.items) i
           WHERE i.value ->> 'documentId' IS ?) THEN NULL ELSE text END,
         items = (SELECT json_group_array(json(value) ORDER BY key) FROM json_each(task_blocks.items)
           WHERE value ->> 'documentId' IS NOT ?),
         size = (SELECT count(*) FROM json_each(task_blocks.items) WHERE value ->> 'documentId' IS NOT ?)
       WHERE task_id IN (SELECT id FROM tasks WHERE job_id = ?)`,
      documentId,
      documentId,
      documentId,
      jobId,
    );
  }

  /** The job's text retention ended: its tasks (failed ones hold their text) drop it. */
  dropText(jobId: string): void {
    this.sql.exec(
      `UPDATE task_blocks SET ${WITHOUT_TEXT} WHERE task_id IN (SELECT id FROM tasks WHERE job_id = ?)`,
      jobId,
    );
  }

  /**
   * The job was deleted: nothing of its text or history stays. Finished and cancelled tasks go
   * with their leases; a task being written keeps its row until the write settles (the store
   * path then removes its vectors), without its text.
   */
  purgeJob(jobId: string): void {
    this.sql.exec(
      "DELETE FROM task_blocks WHERE task_id IN (SELECT id FROM tasks WHERE job_id = ?)",
      jobId,
    );
    this.sql.exec("UPDATE tasks SET errors = '[]' WHERE job_id = ?", jobId);
    this.sql.exec(
      "DELETE FROM leases WHERE task_id IN (SELECT id FROM tasks WHERE job_id = ? AND state != 'storing')",
      jobId,
    );
    this.sql.exec("DELETE FROM tasks WHERE job_id = ? AND state != 'storing'", jobId);
  }

  /**
   * When something next needs the coordinator: a lease deadline or a retry coming due. A task
   * being stored is settled by its own write, not by its lease deadline.
   */
  nextWake(now: number): number | null {
    // In deadline order, stopping at the first lease still out (leases whose result is being
    // stored come and go beside them): no scan of every lease on every pump.
    const lease =
      this.sql
        .exec<{ d: number }>(
          `SELECT l.deadline AS d FROM leases l WHERE l.expired = 0
           AND EXISTS (SELECT 1 FROM tasks t WHERE t.id = l.task_id AND t.state = 'leased')
           ORDER BY l.deadline LIMIT 1`,
        )
        .toArray()[0]?.d ?? null;
    const retry = this.sql
      .exec<{ d: number | null }>(
        "SELECT min(not_before) AS d FROM tasks INDEXED BY tasks_retry WHERE state = 'pending' AND not_before > 0 AND not_before > ?",
        now,
      )
      .one().d;
    const times = [lease, retry].filter((t): t is number => t !== null);
    return times.length ? Math.min(...times) : null;
  }

  /**
   * Work waiting for a worker, in tasks of TASK_SIZE chunks (the unit MAX_BACKLOG_TASKS counts
   * in, whatever size the queued tasks are cut to later).
   */
  pendingUnits(): number {
    const { n } = this.sql
      .exec<{ n: number }>(
        "SELECT coalesce(sum((size + ? - 1) / ?), 0) AS n FROM tasks WHERE state = 'pending'",
        TASK_SIZE,
        TASK_SIZE,
      )
      .one();
    return n;
  }

  counts(): Record<TaskState, number> {
    const out: Record<TaskState, number> = {
      pending: 0,
      leased: 0,
      storing: 0,
      done: 0,
      cancelled: 0,
      failed: 0,
    };
    for (const r of this.sql.exec<{ state: TaskState; n: number }>(
      "SELECT state, count(*) AS n FROM tasks GROUP BY state",
    )) {
      out[r.state] = r.n;
    }
    return out;
  }

  errors(taskId: string): { worker: string; reason: string }[] {
    const r = this.sql
      .exec<{ errors: string }>("SELECT errors FROM tasks WHERE id = ?", taskId)
      .toArray()[0];
    return r ? (JSON.parse(r.errors) as { worker: string; reason: string }[]) : [];
  }

  /** Applies a transition if the task is in `from`; false when it is not. */
  private setState(
    taskId: string,
    from: TaskState,
    event: Parameters<typeof transition>[1],
  ): boolean {
    const to = transition(from, event);
    if (!to) return false;
    const queuedAt = to === "pending" ? Date.now() : null;
    return (
      this.sql.exec(
        "UPDATE tasks SET state = ?, queued_at = coalesce(?, queued_at) WHERE id = ? AND state = ?",
        to,
        queuedAt,
        taskId,
        from,
      ).rowsWritten > 0
    );
  }
}
