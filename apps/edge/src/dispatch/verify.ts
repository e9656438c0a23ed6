import { cosine } from "@p2pa/shared";
import { migrateOnce } from "../lib/do-schema.js";

/**
 * Verification of untrusted results (BOINC's redundant computing, adapted to vectors).
 *
 * A result is stored at once when its task's policy allows it; otherwise it is held as a
 * candidate and the task goes to another donor (a different worker token). Two results agree
 * when every vector pair has cosine >= `agreeCosine`; the first result that agrees with a held
 * candidate is stored (confirmed), the donors that agreed gain a record, and held candidates
 * that did not agree with the winners are outvoted. A donor outvoted `quarantineAfterLosses`
 * times is quarantined (the Dispatcher acts on that). Agreement only ever counts between
 * different donors, so one donor with many connections cannot confirm itself.
 *
 * `auto` (the default) replicates a donor's results until it has `trustedAfter` agreements in
 * a row, then spot-checks `spotRate` of them; a disagreement starts the count again. While no
 * other donor that could confirm is connected, `auto` stores the result unconfirmed and keeps
 * the task's chunk ids, so the result is recomputed if its donor is later quarantined.
 */
export interface VerifyPolicy {
  agreeCosine: number;
  trustedAfter: number;
  spotRate: number;
  /** Donors a task may go to before it is given up as one whose results never agree. */
  maxDonors: number;
  quarantineAfterLosses: number;
}

export const DEFAULT_VERIFY_POLICY: VerifyPolicy = {
  agreeCosine: 0.99999,
  trustedAfter: 10,
  spotRate: 0.05,
  maxDonors: 4,
  quarantineAfterLosses: 2,
};

/** What a donor has done, as this shard has seen it. */
export interface DonorRecord {
  donor: string;
  /** Results of its that another donor confirmed. */
  agreed: number;
  /** Times it was outvoted: its result disagreed with two donors that agreed. */
  disagreed: number;
  /** Agreements since its last disagreement. */
  streak: number;
  quarantinedAt: number | null;
  reason: string | null;
}

export type Verdict =
  /** Store this result; `confirmed` when another donor agreed with it. */
  | { kind: "store"; confirmed: boolean; agreed: string[]; outvoted: string[] }
  /** Held until another donor computes the task. */
  | { kind: "hold" }
  /** Held, and it disagrees with every other held result; `exhausted` when no donor is left to ask. */
  | { kind: "disagree"; exhausted: boolean };

/** Lowest cosine over vector pairs, or -1 when the shapes differ. */
function minCosine(a: Float32Array[], b: Float32Array[]): number {
  if (a.length !== b.length) return -1;
  let min = 1;
  for (let i = 0; i < a.length; i++) {
    const x = a[i] as Float32Array;
    const y = b[i] as Float32Array;
    if (x.length !== y.length) return -1;
    min = Math.min(min, cosine(x, y));
  }
  return min;
}

const pack = (vectors: Float32Array[]): ArrayBuffer => {
  const dim = vectors[0]?.length ?? 0;
  const out = new Float32Array(vectors.length * dim);
  for (const [i, v] of vectors.entries()) out.set(v, i * dim);
  return out.buffer;
};

const unpack = (blob: ArrayBuffer, count: number): Float32Array[] => {
  const all = new Float32Array(blob.slice(0));
  const dim = count ? all.length / count : 0;
  return Array.from({ length: count }, (_, i) => all.subarray(i * dim, (i + 1) * dim));
};

export class Verifier {
  constructor(
    private readonly sql: SqlStorage,
    readonly policy: VerifyPolicy = DEFAULT_VERIFY_POLICY,
    private readonly random: () => number = Math.random,
  ) {}

  /** Creates the tables; run once under blockConcurrencyWhile. */
  migrate(): void {
    migrateOnce(this.sql, "verify", [
      `
      -- results held until another donor confirms them (vectors as packed float32)
      CREATE TABLE IF NOT EXISTS candidates (
        task_id TEXT NOT NULL,
        donor TEXT NOT NULL,
        worker_id TEXT NOT NULL,
        count INTEGER NOT NULL,
        vectors BLOB NOT NULL,
        PRIMARY KEY (task_id, donor)
      );
      CREATE INDEX IF NOT EXISTS candidates_donor ON candidates (donor);
      CREATE TABLE IF NOT EXISTS donors (
        donor TEXT PRIMARY KEY,
        agreed INTEGER NOT NULL DEFAULT 0,
        disagreed INTEGER NOT NULL DEFAULT 0,
        streak INTEGER NOT NULL DEFAULT 0,
        quarantined_at INTEGER,
        reason TEXT
      );
    `,
    ]);
  }

  record(donor: string): DonorRecord {
    const r = this.sql
      .exec<{
        donor: string;
        agreed: number;
        disagreed: number;
        streak: number;
        quarantined_at: number | null;
        reason: string | null;
      }>("SELECT * FROM donors WHERE donor = ?", donor)
      .toArray()[0];
    return r
      ? {
          donor,
          agreed: r.agreed,
          disagreed: r.disagreed,
          streak: r.streak,
          quarantinedAt: r.quarantined_at,
          reason: r.reason,
        }
      : { donor, agreed: 0, disagreed: 0, streak: 0, quarantinedAt: null, reason: null };
  }

  /** Every donor this shard has a record of. */
  records(): DonorRecord[] {
    return this.sql
      .exec<{ donor: string }>("SELECT donor FROM donors ORDER BY donor")
      .toArray()
      .map((r) => this.record(r.donor));
  }

  trusted(donor: string): boolean {
    const r = this.record(donor);
    return r.quarantinedAt === null && r.streak >= this.policy.trustedAfter;
  }

  /**
   * Judges a checked result of `donor` for a task under its policy. `othersAvailable`: some
   * other donor that could confirm is connected now.
   */
  judge(
    task: { id: string; verify: string },
    donor: string,
    workerId: string,
    vectors: Float32Array[],
    othersAvailable: boolean,
  ): Verdict {
    if (task.verify === "off") return { kind: "store", confirmed: false, agreed: [], outvoted: [] };
    const held = this.candidates(task.id).filter((c) => c.donor !== donor);
    if (held.length === 0) {
      const wanted =
        task.verify === "always" || !this.trusted(donor) || this.random() < this.policy.spotRate;
      if (!wanted || (task.verify === "auto" && !othersAvailable))
        return { kind: "store", confirmed: false, agreed: [], outvoted: [] };
      this.hold(task.id, donor, workerId, vectors);
      return { kind: "hold" };
    }
    const agreeing = held.filter((c) => minCosine(c.vectors, vectors) >= this.policy.agreeCosine);
    if (agreeing.length > 0) {
      const agreed = [donor, ...agreeing.map((c) => c.donor)];
      const outvoted = held.filter((c) => !agreeing.includes(c)).map((c) => c.donor);
      this.sql.exec("DELETE FROM candidates WHERE task_id = ?", task.id);
      for (const d of agreed) this.bump(d, "agreed");
      for (const d of outvoted) this.bump(d, "disagreed");
      return { kind: "store", confirmed: true, agreed, outvoted };
    }
    this.hold(task.id, donor, workerId, vectors);
    return { kind: "disagree", exhausted: held.length + 1 >= this.policy.maxDonors };
  }

  /** Donors now due for quarantine among these (outvoted too often). */
  dueForQuarantine(donors: string[]): string[] {
    return donors.filter((d) => {
      const r = this.record(d);
      return r.quarantinedAt === null && r.disagreed >= this.policy.quarantineAfterLosses;
    });
  }

  /** Marks a donor quarantined and drops the results it has held; returns the tasks they were for. */
  quarantine(donor: string, reason: string, now: number): string[] {
    this.sql.exec(
      `INSERT INTO donors (donor, quarantined_at, reason) VALUES (?, ?, ?)
       ON CONFLICT (donor) DO UPDATE SET quarantined_at = excluded.quarantined_at, reason = excluded.reason`,
      donor,
      now,
      reason,
    );
    const tasks = this.sql
      .exec<{ task_id: string }>("SELECT task_id FROM candidates WHERE donor = ?", donor)
      .toArray()
      .map((r) => r.task_id);
    this.sql.exec("DELETE FROM candidates WHERE donor = ?", donor);
    return tasks;
  }

  /** Drops the held results of a job's tasks (cancelled or deleted). */
  forgetJob(jobId: string): void {
    this.sql.exec(
      "DELETE FROM candidates WHERE task_id IN (SELECT id FROM tasks WHERE job_id = ?)",
      jobId,
    );
  }

  /** Drops a task's held results (the task was stored some other way, cancelled or deleted). */
  forget(taskId: string): void {
    this.sql.exec("DELETE FROM candidates WHERE task_id = ?", taskId);
  }

  private candidates(taskId: string) {
    return this.sql
      .exec<{ donor: string; worker_id: string; count: number; vectors: ArrayBuffer }>(
        "SELECT donor, worker_id, count, vectors FROM candidates WHERE task_id = ?",
        taskId,
      )
      .toArray()
      .map((r) => ({ donor: r.donor, workerId: r.worker_id, vectors: unpack(r.vectors, r.count) }));
  }

  private hold(taskId: string, donor: string, workerId: string, vectors: Float32Array[]): void {
    this.sql.exec(
      "INSERT OR REPLACE INTO candidates (task_id, donor, worker_id, count, vectors) VALUES (?, ?, ?, ?, ?)",
      taskId,
      donor,
      workerId,
      vectors.length,
      pack(vectors),
    );
  }

  private bump(donor: string, what: "agreed" | "disagreed"): void {
    const streak = what === "agreed" ? "streak + 1" : "0";
    this.sql.exec(
      `INSERT INTO donors (donor, ${what}, streak) VALUES (?, 1, ?)
       ON CONFLICT (donor) DO UPDATE SET ${what} = ${what} + 1, streak = ${streak}`,
      donor,
      what === "agreed" ? 1 : 0,
    );
  }
}
