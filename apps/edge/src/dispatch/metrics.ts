import { migrateOnce } from "../lib/do-schema.js";

/**
 * Counters a shard keeps in its SQLite storage, so they survive restarts: frames refused by
 * kind, results stored, duplicated or rejected, leases expired, tasks failed. Exposed through
 * `GET /v1/metrics` in the Prometheus text format.
 */
export class Metrics {
  constructor(private readonly sql: SqlStorage) {}

  /** Creates the table; run once under blockConcurrencyWhile. */
  migrate(): void {
    migrateOnce(this.sql, "metrics", [
      "CREATE TABLE IF NOT EXISTS metrics (name TEXT NOT NULL, label TEXT NOT NULL DEFAULT '', value INTEGER NOT NULL, PRIMARY KEY (name, label))",
    ]);
  }

  /** Adds `by` to a counter, optionally split by one label value. */
  count(name: MetricName, label = "", by = 1): void {
    if (by === 0) return;
    this.sql.exec(
      "INSERT INTO metrics (name, label, value) VALUES (?, ?, ?) ON CONFLICT (name, label) DO UPDATE SET value = value + excluded.value",
      name,
      label,
      by,
    );
  }

  snapshot(): { name: string; label: string; value: number }[] {
    return this.sql
      .exec<{ name: string; label: string; value: number }>(
        "SELECT name, label, value FROM metrics ORDER BY name, label",
      )
      .toArray();
  }
}

export const METRIC_HELP = {
  p2pa_frames_refused_total: "Worker frames refused, by error code",
  p2pa_results_total: "Task results received, by outcome (stored, duplicate, rejected)",
  p2pa_chunks_stored_total: "Chunks whose vectors were stored",
  p2pa_result_writes_total:
    "Group writes of results (one vector upsert and one D1 transaction each, for every result that came in meanwhile)",
  p2pa_index_writer_vectors_total:
    "Vectors the shard handed to its index writers (INDEX_WRITERS) rather than encoding them for the index itself",
  p2pa_chunks_failed_total: "Chunks marked failed after their last attempt",
  p2pa_leases_expired_total: "Leases that passed their deadline and were reassigned",
  p2pa_task_failures_total: "Failed task attempts reported by workers or caused by bad results",
  p2pa_workers_benched_total: "Times a worker was put on cool-down for failing",
  p2pa_worker_connections_total: "Worker connections accepted",
  p2pa_coordinator_starts_total:
    "Times the shard's Durable Object started (first use, after hibernation or eviction, after a crash)",
  p2pa_tasks_recovered_total: "Tasks found mid-write at start and put back in the queue",
  p2pa_progress_reads_total:
    "Reads of a job's record for its live progress streams (one per pass, for all its streams)",
  p2pa_leases_reconciled_total:
    "Leases a worker did not have (lost task frames), requeued without counting an attempt",
  p2pa_results_held_total:
    "Results held for another donor's confirmation (hold), or held after disagreeing with the others (disagree)",
  p2pa_results_confirmed_total: "Results stored after another donor agreed with them",
  p2pa_donors_quarantined_total: "Worker tokens quarantined for results that other donors outvoted",
  p2pa_chunks_recomputed_total:
    "Chunks computed again because their stored result's donor was quarantined",
  p2pa_canaries_total:
    "Known-answer checks answered, by verdict (pass, fail, unknown while no answer is known)",
  p2pa_dispatch_stalls_total:
    "Times the watchdog found ready work beside a worker with room (by who found it); each is repaired at once",
  p2pa_embedding_cache_hits_total:
    "Chunks submitted whose vector the embedding cache already held (no worker computed them)",
  p2pa_embedding_cache_misses_total: "Chunks submitted that the embedding cache did not hold",
  p2pa_jobs_withdrawn_total:
    "New jobs whose tasks went out while their submit wrote them, withdrawn because it never did",
  p2pa_chunks_handed_over_late_total:
    "Chunks written to a job whose hand-over to its shard failed, queued when the job was about to end without them",
} as const;
export type MetricName = keyof typeof METRIC_HELP;
