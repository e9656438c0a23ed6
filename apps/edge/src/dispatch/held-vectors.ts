import { versionOf } from "../lib/chunk-ids.js";
import { migrateOnce } from "../lib/do-schema.js";
import { slices } from "../lib/slices.js";

/** Durable Object SQL binds at most 100 parameters per statement. */
const IDS_PER_STATEMENT = 99;

/**
 * Vectors of document versions that are still being computed, kept on the coordinator until
 * the version is complete. Search reads the index, and a version's vectors in the index before
 * it is current would only crowd the current version's out of the nearest matches; so a
 * version's vectors enter the index together, just before the version becomes current (or
 * fails, when they stay readable through the chunks API). What a version never settled leaves
 * (it was superseded or cancelled while pending) goes with its job's end.
 */
export class HeldVectors {
  constructor(private readonly sql: SqlStorage) {}

  /** Creates the table; run once under blockConcurrencyWhile. */
  migrate(): void {
    migrateOnce(this.sql, "held_vectors", [
      `CREATE TABLE IF NOT EXISTS held_vectors (
        chunk_id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        version TEXT NOT NULL,
        vector BLOB NOT NULL,
        metadata TEXT NOT NULL
      );
      CREATE INDEX IF NOT EXISTS held_vectors_version ON held_vectors (version);
      CREATE INDEX IF NOT EXISTS held_vectors_job ON held_vectors (job_id);`,
    ]);
  }

  /** Keeps a job's vectors until their versions settle; a chunk held again takes the new vector. */
  hold(jobId: string, vectors: VectorizeVector[]): void {
    for (const v of vectors) {
      const values =
        v.values instanceof Float32Array ? v.values : Float32Array.from(v.values as number[]);
      this.sql.exec(
        "INSERT OR REPLACE INTO held_vectors (chunk_id, job_id, version, vector, metadata) VALUES (?, ?, ?, ?, ?)",
        v.id,
        jobId,
        versionOf(v.id),
        values.buffer.slice(values.byteOffset, values.byteOffset + values.byteLength),
        JSON.stringify(v.metadata ?? {}),
      );
    }
  }

  /** The held vectors of these versions, ready for the index. */
  of(versions: string[]): VectorizeVector[] {
    const out: VectorizeVector[] = [];
    for (const slice of slices(versions, IDS_PER_STATEMENT)) {
      const rows = this.sql.exec<{ chunk_id: string; vector: ArrayBuffer; metadata: string }>(
        `SELECT chunk_id, vector, metadata FROM held_vectors WHERE version IN (${slice.map(() => "?").join(", ")})`,
        ...slice,
      );
      for (const r of rows)
        out.push({
          id: r.chunk_id,
          values: new Float32Array(r.vector),
          metadata: JSON.parse(r.metadata) as VectorizeVector["metadata"],
        });
    }
    return out;
  }

  /** Forgets these versions' vectors (they are in the index now, or never will be). */
  release(versions: string[]): void {
    for (const slice of slices(versions, IDS_PER_STATEMENT))
      this.sql.exec(
        `DELETE FROM held_vectors WHERE version IN (${slice.map(() => "?").join(", ")})`,
        ...slice,
      );
  }

  /** Forgets everything held for a job (it ended, was cancelled or deleted). */
  dropJob(jobId: string): void {
    this.sql.exec("DELETE FROM held_vectors WHERE job_id = ?", jobId);
  }

  /** How many vectors are held (for the metrics). */
  count(): number {
    return this.sql.exec<{ n: number }>("SELECT count(*) AS n FROM held_vectors").one().n;
  }
}
