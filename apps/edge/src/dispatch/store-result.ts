import type { Job } from "@p2pa/shared";
import { keyringFor } from "../db/open.js";
import type { MetadataStore } from "../db/store.js";
import { pendingChunks, pendingWork } from "../ingest/search-metadata.js";
import { pruneSuperseded } from "../ingest/versions.js";
import { versionName } from "../lib/chunk-ids.js";
import { getVectorIndex } from "../vector/index.js";
import { writeVectors } from "../vector/index-writer.js";
import type { HeldVectors } from "./held-vectors.js";
import type { JobLog } from "./job-log.js";
import type { Metrics } from "./metrics.js";
import type { JobNotifier } from "./notifier.js";
import { sealTask } from "./sealed-items.js";
import {
  applyMeta,
  type DocumentMeta,
  type ItemCopy,
  type LeaseRow,
  type QueuedItem,
  type StoredItem,
  type StoredTask,
  type TaskQueue,
  type TaskRow,
  tasksOf,
} from "./task-queue.js";
import type { Verifier } from "./verify.js";

/**
 * What a chunk's vector carries: its search metadata (collection, filterable document keys)
 * with the product's keys last, so a document key of the same name never replaces one.
 */
export function vectorMetadata(
  item: Pick<QueuedItem, "documentId" | "index" | "meta">,
  tenant: string,
  jobId: string,
): Record<string, string | number | boolean> {
  return { ...item.meta, tenant, jobId, documentId: item.documentId, index: item.index };
}

/** Most tasks, and vectors, one group write takes (D1's statements, the index's upserts). */
const MAX_WRITE_TASKS = 64;
const MAX_WRITE_VECTORS = 2048;

/** A judged result waiting for its group write. */
interface PendingWrite {
  task: TaskRow;
  donor: string;
  vectors: Float32Array[];
  confirmed: boolean;
  resolve(outcome: StoreOutcome): void;
}

/** What a checked result came to. */
export type StoreOutcome =
  /** Written now: exactly one stored result for each of the task's chunks. */
  | "stored"
  /** Held until another donor confirms it; the task went to another donor. */
  | "accepted"
  /** Another result for the task was stored, or is being stored, first. */
  | "duplicate"
  /** A store was unreachable; the task went back to the queue. */
  | "unavailable"
  /** The job was withdrawn: its submit never wrote it, so nothing of it is stored. */
  | "withdrawn";

/** The outcome, with the donors verification found agreeing or outvoted. */
export interface Received {
  outcome: StoreOutcome;
  confirmed: boolean;
  agreed: string[];
  outvoted: string[];
}

/**
 * The one path by which a task's outcome reaches the stores, exactly once per chunk.
 *
 * A result: `leased -> storing` (only one result can win that step), vectors upserted under
 * their chunk ids, D1 marks the chunks done (counters moved by rows changed), `storing ->
 * done`. Every write is idempotent, so a crash between any two of them re-runs the task
 * without doubling a chunk; a task found in `storing` at start is put back by
 * `TaskQueue.recoverStoring`. After each outcome the job is settled: its terminal event is
 * recorded once no task of it can change, and handed to the webhook notifier.
 *
 * A job whose tasks came before its submit wrote it (`JobLog.unconfirmed`) has its results
 * and failures held, in memory, until `release` (the job is written: they are stored as if
 * they had just come) or `withdraw` (it never will be: its tasks go back, to be purged).
 */
export class ResultStore {
  constructor(
    private readonly env: Env,
    private readonly queue: TaskQueue,
    private readonly jobs: JobLog,
    private readonly store: MetadataStore,
    private readonly metrics: Metrics,
    private readonly notifier: JobNotifier,
    private readonly verifier: Verifier,
    private readonly held: HeldVectors,
    /** This shard's name for its index writers (vector/index-writer.ts). */
    private readonly route: string,
  ) {}

  /** What came in for unconfirmed jobs: results to write, and tasks whose chunks failed. */
  private readonly unconfirmed = new Map<string, { writes: PendingWrite[]; failures: string[] }>();

  private heldFor(jobId: string) {
    let held = this.unconfirmed.get(jobId);
    if (!held) {
      held = { writes: [], failures: [] };
      this.unconfirmed.set(jobId, held);
    }
    return held;
  }

  /**
   * The job is written: what was held for it is stored now, in the order it came, with the
   * search metadata its documents were found to have after their tasks went out (`meta`).
   */
  async release(jobId: string, meta?: DocumentMeta): Promise<void> {
    const held = this.unconfirmed.get(jobId);
    this.unconfirmed.delete(jobId);
    if (!held) return;
    if (meta) for (const w of held.writes) applyMeta(w.task.items ?? [], meta);
    if (held.writes.length) {
      this.waiting.push(...held.writes);
      this.startWriting();
    }
    for (const taskId of held.failures) await this.storeFailure(taskId);
  }

  /** The job will never be written: results held for it are answered, their tasks put back. */
  withdraw(jobId: string): void {
    const held = this.unconfirmed.get(jobId);
    this.unconfirmed.delete(jobId);
    for (const w of held?.writes ?? []) {
      this.queue.abortStoring(w.task.id);
      w.resolve("withdrawn");
    }
  }

  /** Prune passes running per tenant, and whether another was asked for meanwhile. */
  private readonly pruning = new Map<string, { again: boolean; done: Promise<void> }>();

  /**
   * Takes a task's checked vectors (one per item, in item order) from `donor`: judged under the
   * task's verification policy, then stored, or held for another donor's confirmation. The
   * judging and the hand-back run in one synchronous step, so no other event sees half of it.
   */
  async receive(
    task: TaskRow,
    lease: LeaseRow,
    donor: string,
    vectors: Float32Array[],
    othersAvailable: boolean,
  ): Promise<Received> {
    const none = { confirmed: false, agreed: [], outvoted: [] };
    if (!this.queue.beginStoring(task.id, lease.expired)) return { outcome: "duplicate", ...none };
    const verdict = this.verifier.judge(task, donor, lease.workerId, vectors, othersAvailable);
    if (verdict.kind === "hold" || (verdict.kind === "disagree" && !verdict.exhausted)) {
      this.queue.awaitAnother(task.id, lease.id, donor);
      this.metrics.count("p2pa_results_held_total", verdict.kind);
      return { outcome: "accepted", ...none };
    }
    if (verdict.kind === "disagree") {
      // No two donors agreed, and no donor is left to ask: the chunks fail, saying why.
      this.queue.giveUp(task.id, `the results of ${task.answered.length + 1} donors never agreed`);
      this.verifier.forget(task.id);
      await this.storeFailure(task.id);
      return { outcome: "accepted", ...none };
    }
    const outcome = await this.write(task, donor, vectors, verdict.confirmed);
    return {
      outcome,
      confirmed: verdict.confirmed,
      agreed: verdict.agreed,
      outvoted: verdict.outvoted,
    };
  }

  /**
   * Writes a judged result: vectors, then D1, then the task is done. Results that come in while
   * a write is on its way wait for it and then go together, in one vector upsert and one D1
   * transaction (group commit): one result alone is written at once, and under load the
   * writes grow instead of queueing one round trip per task.
   */
  private write(
    task: TaskRow,
    donor: string,
    vectors: Float32Array[],
    confirmed: boolean,
  ): Promise<StoreOutcome> {
    return new Promise((resolve) => {
      const w = { task, donor, vectors, confirmed, resolve };
      if (this.jobs.unconfirmed(task.jobId)) {
        this.heldFor(task.jobId).writes.push(w);
        return;
      }
      this.waiting.push(w);
      this.startWriting();
    });
  }

  private startWriting(): void {
    this.writing ??= this.writeAll().finally(() => {
      this.writing = null;
    });
  }

  /** Results judged and waiting for the next group write. */
  private readonly waiting: PendingWrite[] = [];
  /** The group writes running now, while results keep coming in. */
  private writing: Promise<void> | null = null;

  private async writeAll(): Promise<void> {
    while (this.waiting.length) {
      const group: PendingWrite[] = [];
      let vectors = 0;
      while (this.waiting.length && group.length < MAX_WRITE_TASKS && vectors < MAX_WRITE_VECTORS) {
        const w = this.waiting.shift() as PendingWrite;
        group.push(w);
        vectors += w.vectors.length;
      }
      this.metrics.count("p2pa_result_writes_total");
      const outcome = await this.writeGroup(group);
      for (const w of group) w.resolve(outcome);
    }
  }

  /** One group write. Any failure puts every task of the group back: each write is idempotent. */
  private async writeGroup(group: PendingWrite[]): Promise<StoreOutcome> {
    const writes = group.map((w) => ({ w, ...this.vectorsOf(w) }));
    try {
      const direct = new Map<string, VectorizeVector[]>();
      for (const { w, direct: d, held } of writes) {
        if (d.length) direct.set(w.task.model, [...(direct.get(w.task.model) ?? []), ...d]);
        if (held.length) this.held.hold(w.task.jobId, held);
      }
      for (const [model, vs] of direct) await this.writeVectors(model, vs);
      const byJob = new Map<string, string[]>();
      for (const { w, ids } of writes)
        byJob.set(w.task.jobId, [...(byJob.get(w.task.jobId) ?? []), ...ids]);
      const settled = await this.store.recordDoneAll(
        [...byJob].map(([jobId, chunkIds]) => ({ jobId, chunkIds })),
      );
      for (const [jobId, seqs] of settled) {
        const t = group.find((w) => w.task.jobId === jobId)?.task as TaskRow;
        await this.promote(jobId, t.tenant, t.model, seqs);
      }
    } catch (err) {
      for (const { task } of group) this.queue.abortStoring(task.id);
      console.error(
        "storing tasks failed; requeued",
        group.map((w) => w.task.id),
        err,
      );
      return "unavailable";
    }
    for (const { w, ids, stored } of writes) await this.written(w, ids, stored);
    for (const jobId of new Set(group.map((w) => w.task.jobId))) await this.settleJob(jobId);
    return "stored";
  }

  /** Writes vectors to the model's index, through this shard's index writers where it has them. */
  private async writeVectors(model: string, vectors: VectorizeVector[]): Promise<void> {
    if (await writeVectors(this.env, model, vectors, this.route))
      this.metrics.count("p2pa_index_writer_vectors_total", "", vectors.length);
  }

  /** A result's vectors: those written to the index now, and those held for their version. */
  private vectorsOf({ task, vectors }: PendingWrite) {
    const items = task.items ?? [];
    // Copies (the same text elsewhere in the job) take their item's vector.
    const stored: { item: ItemCopy; vector: Float32Array }[] = items.flatMap((it, i) => {
      const vector = vectors[i] as Float32Array;
      return [it, ...(it.copies ?? [])].map((item) => ({ item, vector }));
    });
    const toVector = ({ item, vector }: (typeof stored)[number]): VectorizeVector => ({
      id: item.chunkId,
      values: vector,
      metadata: vectorMetadata(item, task.tenant, task.jobId),
    });
    // A version that replaces a current one is held until it is complete, then written to the
    // index whole, just before it becomes current. A first version is current from the start:
    // its chunks become searchable as they arrive. A recomputed task's versions are settled:
    // its corrected vectors replace the stored ones.
    const pending = (x: (typeof stored)[number]) => !task.recompute && x.item.pending === true;
    return {
      stored,
      ids: stored.map(({ item }) => item.chunkId),
      direct: stored.filter((x) => !pending(x)).map(toVector),
      held: stored.filter(pending).map(toVector),
    };
  }

  /** What follows a task's write: the cache, the task done, its events and counters. */
  private async written(
    { task, donor, vectors, confirmed }: PendingWrite,
    ids: string[],
    stored: { item: ItemCopy }[],
  ): Promise<void> {
    // A vector two donors agreed on is known from now on. One accepted on a donor's record
    // alone is not cached: if that donor is caught later, its stored results are recomputed,
    // but copies handed out from a cache would not be.
    if (confirmed) await this.cache(task, task.items ?? [], vectors);
    this.queue.finishStoring(task.id, donor, confirmed);
    if (confirmed) this.metrics.count("p2pa_results_confirmed_total");
    if (await this.jobs.isDeleted(task.jobId)) {
      // The job was deleted while this result was being written: take the vectors back out.
      this.held.dropJob(task.jobId);
      await getVectorIndex(this.env, task.model).deleteByIds(ids);
    }
    // A recomputed task's chunks were reported done already; only their vectors changed.
    if (!task.recompute)
      this.jobs.appendEvents(
        task.jobId,
        stored.map(({ item: it }) => ({
          kind: "chunk" as const,
          data: { chunkId: it.chunkId, documentId: it.documentId, index: it.index, status: "done" },
        })),
      );
    this.metrics.count(
      task.recompute ? "p2pa_chunks_recomputed_total" : "p2pa_chunks_stored_total",
      "",
      stored.length,
    );
  }

  /**
   * Settles versions with nothing left to compute: their held vectors go to the index first,
   * then D1 makes each current (superseding the old) or failed in one step, so search, which
   * shows current versions only, never sees a version without its vectors. What the new
   * versions superseded is pruned soon after (its vectors would crowd the index's answers).
   */
  private async promote(jobId: string, tenant: string, model: string, seqs: number[]) {
    if (seqs.length === 0) return;
    const versions = seqs.map((q) => versionName(jobId, q));
    await this.writeVectors(model, this.held.of(versions));
    const { superseded } = await this.store.promote(jobId, seqs);
    this.held.release(versions);
    if (superseded > 0) this.prune(tenant);
  }

  /**
   * Prunes a tenant's superseded versions off the result path, one pass at a time; promotions
   * during a pass ask for one more after it.
   */
  private prune(tenant: string): Promise<void> {
    const running = this.pruning.get(tenant);
    if (running) {
      running.again = true;
      return running.done;
    }
    const state = { again: false, done: Promise.resolve() };
    state.done = (async () => {
      try {
        do {
          state.again = false;
          await pruneSuperseded(this.env, this.store, tenant);
        } while (state.again);
      } finally {
        this.pruning.delete(tenant);
      }
    })();
    this.pruning.set(tenant, state);
    return state.done;
  }

  /** Caches a stored result's vectors; a cache that cannot be written costs only a later miss. */
  private async cache(task: TaskRow, items: StoredItem[], vectors: Float32Array[]) {
    const entries = items.flatMap((it, i) =>
      it.cacheKey ? [{ key: it.cacheKey, vector: vectors[i] as Float32Array }] : [],
    );
    if (entries.length === 0) return;
    try {
      await this.store.cachePut(task.tenant, task.model, task.jobId, entries);
    } catch (err) {
      console.warn("embedding cache write failed", task.id, err);
    }
  }

  /** A task used all its attempts: its chunks are marked failed with the reasons collected. */
  async storeFailure(taskId: string): Promise<void> {
    const task = this.queue.getTask(taskId);
    if (!task?.items) return;
    if (this.jobs.unconfirmed(task.jobId)) {
      this.heldFor(task.jobId).failures.push(taskId);
      return;
    }
    const reasons = this.queue.errors(taskId).map((e) => e.reason);
    const reason = `failed after ${task.attempts} attempts: ${reasons.at(-1) ?? ""}`;
    const all: ItemCopy[] = task.items.flatMap((it) => [it, ...(it.copies ?? [])]);
    this.metrics.count("p2pa_chunks_failed_total", "", all.length);
    const { settled } = await this.store.recordFailed(
      task.jobId,
      all.map((i) => i.chunkId),
      reason,
    );
    await this.promote(task.jobId, task.tenant, task.model, settled);
    this.jobs.appendEvents(
      task.jobId,
      all.map((it) => ({
        kind: "chunk" as const,
        data: {
          chunkId: it.chunkId,
          documentId: it.documentId,
          index: it.index,
          status: "failed",
          error: reason,
        },
      })),
    );
    await this.settleJob(task.jobId);
  }

  /**
   * Chunks the job's rows still wait for though no task of the job is left here: a batch that
   * was written but whose hand-over to this shard failed (a later batch is written first and
   * enqueued after; its submit answered 503, and the same documents sent again are this job's
   * already). They become tasks now, named after the first of them, so a second look finds the
   * same tasks. True when there were any: the job goes on.
   */
  private async handOverMissing(job: Job, tenant: string): Promise<boolean> {
    const jobId = job.id;
    if (job.status !== "queued" && job.status !== "running") return false;
    if (job.chunks.done + job.chunks.failed >= job.chunks.total) return false;
    const pending = await pendingChunks(this.env, this.store, tenant, job);
    const first = pending[0]?.chunk.id;
    if (!first) return false;
    const work = await pendingWork(this.store, tenant, job, pending);
    const keyring = keyringFor(this.env);
    const tasks: StoredTask[] = [];
    for (const t of tasksOf(`${first}.h`, work))
      tasks.push({ id: t.id, ...(await sealTask(keyring, tenant, t.items)) });
    // Cancelled or handed over meanwhile (the queue takes a task id once).
    if (this.jobs.isEnded(jobId) || this.queue.jobOpen(jobId)) return true;
    this.queue.enqueue(jobId, tenant, job.model, tasks, {
      verify: job.verification,
      pool: job.pool,
    });
    console.warn("chunks written but never handed over; queued now", jobId, pending.length);
    this.metrics.count("p2pa_chunks_handed_over_late_total", "", pending.length);
    return true;
  }

  /**
   * Records the job's terminal event once no task of it can change any more and it takes no
   * more documents.
   */
  async settleJob(jobId: string): Promise<void> {
    if (this.jobs.unconfirmed(jobId)) return;
    if (this.queue.jobOpen(jobId) || this.jobs.accepting(jobId)) {
      await this.notifier.maybeNotifyProgress(jobId);
      return;
    }
    if (this.jobs.isEnded(jobId)) return;
    const tenant = this.jobs.jobTenant(jobId);
    const written = await this.store.getJobById(jobId);
    if (written && tenant && (await this.handOverMissing(written, tenant))) return;
    // Versions a cut-off write left complete but pending settle now (their vectors are held).
    const seqs = await this.store.settledVersions(jobId);
    if (seqs.length && tenant && written) await this.promote(jobId, tenant, written.model, seqs);
    if (!this.jobs.markEnded(jobId)) return;
    this.held.dropJob(jobId);
    const job = await this.store.getJobById(jobId);
    this.jobs.appendEvents(jobId, [
      { kind: "end", data: { status: job?.status ?? "completed", chunks: job?.chunks } },
    ]);
    await this.notifier.notifyEnd(jobId);
    // What is left of the versions this job replaced, and of those superseded while it ran.
    if (tenant) await this.prune(tenant);
  }
}
