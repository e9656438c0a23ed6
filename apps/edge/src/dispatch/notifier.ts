import type { MetadataStore } from "../db/store.js";
import { settings } from "../lib/settings.js";
import { ledger } from "../tenant/limits.js";
import { terminalEvent, webhookHub } from "../webhooks/index.js";
import type { JobLog } from "./job-log.js";

/** How long a failed hand-over to the webhook hub waits before the next try. */
const NOTIFY_RETRY_MS = 5_000;

/** Hands a shard's job events to the tenants' webhook hubs. */
export class JobNotifier {
  /** When each job last sent job.progress; throttling only, so memory is enough. */
  private readonly progressSentAt = new Map<string, number>();
  /** Jobs whose terminal event is being handed over now: one hand-over at a time each. */
  private readonly handing = new Set<string>();

  constructor(
    private readonly env: Env,
    private readonly jobs: JobLog,
    private readonly store: MetadataStore,
  ) {}

  /**
   * Hands the job's terminal event to the tenant's webhook hub, and its text purge (if the
   * job keeps text for a period only) to the tenant's ledger. Until both have it, the job
   * stays marked with its next try (a wake source of the shard's alarm), so the event is
   * delivered at least once.
   */
  async notifyEnd(jobId: string): Promise<void> {
    // A wake while this hand-over is on its way (the alarm, set for anything) must not start a
    // second one: the try counts as due again only after NOTIFY_RETRY_MS (so a shard that stops
    // mid-try retries then), and this object skips a job it is handing over already.
    if (this.handing.has(jobId)) return;
    this.handing.add(jobId);
    this.jobs.setNotifyPending(jobId, true, Date.now() + NOTIFY_RETRY_MS);
    try {
      const tenant = this.jobs.jobTenant(jobId);
      const job = await this.store.getJobById(jobId);
      const type = job ? terminalEvent(job.status) : null;
      // Retention counts from the job's end: its text is purged by the tenant's alarm.
      const days = job?.retention.textDays;
      if (tenant && job && days !== null && days !== undefined) {
        const end = Date.parse(job.completedAt ?? "") || Date.now();
        await ledger(this.env, tenant).scheduleTextPurge(jobId, end + days * 86_400_000);
      }
      if (tenant && job && type) await webhookHub(this.env, tenant).emit(type, jobId, job);
      this.jobs.setNotifyPending(jobId, false);
    } catch (err) {
      console.error("webhook hand-over failed; will retry", jobId, err);
      this.jobs.setNotifyPending(jobId, true, Date.now() + NOTIFY_RETRY_MS);
    } finally {
      this.handing.delete(jobId);
    }
  }

  /** At most one job.progress event per job per WEBHOOK_PROGRESS_SECONDS. */
  async maybeNotifyProgress(jobId: string): Promise<void> {
    const every = settings(this.env).WEBHOOK_PROGRESS_SECONDS * 1000;
    const last = this.progressSentAt.get(jobId) ?? 0;
    if (Date.now() - last < every) return;
    this.progressSentAt.set(jobId, Date.now());
    const tenant = this.jobs.jobTenant(jobId);
    const job = await this.store.getJobById(jobId);
    if (!tenant || !job) return;
    // Progress is best effort by design: the next one supersedes a lost one.
    await webhookHub(this.env, tenant)
      .emit("job.progress", jobId, job)
      .catch(() => {});
  }
}
