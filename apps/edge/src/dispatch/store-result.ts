import type { MetadataStore } from "../db/store.js";
import { getVectorIndex } from "../vector/index.js";
import type { JobLog } from "./job-log.js";
import type { Metrics } from "./metrics.js";
import type { JobNotifier } from "./notifier.js";
import type { LeaseRow, TaskQueue, TaskRow } from "./task-queue.js";

/** What storing a checked result came to. */
export type StoreOutcome =
  /** Written now: exactly one stored result for each of the task's chunks. */
  | "stored"
  /** Another result for the task was stored, or is being stored, first. */
  | "duplicate"
  /** A store was unreachable; the task went back to the queue. */
  | "unavailable";

/**
 * The one path by which a task's outcome reaches the stores, exactly once per chunk.
 *
 * A result: `leased -> storing` (only one result can win that step), vectors upserted under
 * their chunk ids, D1 marks the chunks done (counters moved by rows changed), `storing ->
 * done`. Every write is idempotent, so a crash between any two of them re-runs the task
 * without doubling a chunk; a task found in `storing` at start is put back by
 * `TaskQueue.recoverStoring`. After each outcome the job is settled: its terminal event is
 * recorded once no task of it can change, and handed to the webhook notifier.
 */
export class ResultStore {
  constructor(
    private readonly env: Env,
    private readonly queue: TaskQueue,
    private readonly jobs: JobLog,
    private readonly store: MetadataStore,
    private readonly metrics: Metrics,
    private readonly notifier: JobNotifier,
  ) {}

  /** Stores a task's checked vectors (one per item, in item order). */
  async storeVectors(
    task: TaskRow,
    lease: LeaseRow,
    vectors: Float32Array[],
  ): Promise<StoreOutcome> {
    if (!this.queue.beginStoring(task.id, lease.expired)) return "duplicate";
    const items = task.items ?? [];
    const index = getVectorIndex(this.env, task.model);
    try {
      await index.upsert(
        items.map((it, i) => ({
          id: it.chunkId,
          values: vectors[i] as Float32Array,
          metadata: {
            tenant: task.tenant,
            jobId: task.jobId,
            documentId: it.documentId,
            index: it.index,
          },
        })),
      );
      await this.store.recordDone(
        task.jobId,
        items.map((it) => it.chunkId),
      );
    } catch (err) {
      this.queue.abortStoring(task.id);
      console.error("storing task failed; requeued", task.id, err);
      return "unavailable";
    }
    this.queue.finishStoring(task.id);
    if (this.jobs.isDeleted(task.jobId)) {
      // The job was deleted while this result was being written: take the vectors back out.
      await index.deleteByIds(items.map((it) => it.chunkId));
    }
    this.jobs.appendEvents(
      task.jobId,
      items.map((it) => ({
        kind: "chunk" as const,
        data: { chunkId: it.chunkId, documentId: it.documentId, index: it.index, status: "done" },
      })),
    );
    this.metrics.count("p2pa_chunks_stored_total", "", items.length);
    await this.settleJob(task.jobId);
    return "stored";
  }

  /** A task used all its attempts: its chunks are marked failed with the reasons collected. */
  async storeFailure(taskId: string): Promise<void> {
    const task = this.queue.getTask(taskId);
    if (!task?.items) return;
    const reasons = this.queue.errors(taskId).map((e) => e.reason);
    const reason = `failed after ${task.attempts} attempts: ${reasons.at(-1) ?? ""}`;
    this.metrics.count("p2pa_chunks_failed_total", "", task.items.length);
    await this.store.recordFailed(
      task.jobId,
      task.items.map((i) => i.chunkId),
      reason,
    );
    this.jobs.appendEvents(
      task.jobId,
      task.items.map((it) => ({
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

  /** Records the job's terminal event once no task of it can change any more. */
  private async settleJob(jobId: string): Promise<void> {
    if (this.queue.jobOpen(jobId)) {
      await this.notifier.maybeNotifyProgress(jobId);
      return;
    }
    if (!this.jobs.markEnded(jobId)) return;
    const job = await this.store.getJobById(jobId);
    this.jobs.appendEvents(jobId, [
      { kind: "end", data: { status: job?.status ?? "completed", chunks: job?.chunks } },
    ]);
    await this.notifier.notifyEnd(jobId);
  }
}
