import { DurableObject } from "cloudflare:workers";
import type { WebhookDelivery, WebhookEndpoint, WebhookEventType } from "@p2pa/shared";
import { newId, sha256Hex, tombstone } from "../lib/crypto.js";
import { migrateOnce } from "../lib/do-schema.js";
import { settings } from "../lib/settings.js";
import { delayBefore, parseSchedule } from "./schedule.js";
import { sign } from "./signing.js";
import { checkTarget, parsePrivateTargets } from "./targets.js";

/** An endpoint as the hub lists it: its signing secret is shown only when it is created. */
export type Endpoint = Omit<WebhookEndpoint, "secret">;

/** How an attempt failed, and no more: see WebhookHub.attempt. */
export type AttemptError = NonNullable<WebhookDelivery["attemptLog"][number]["error"]>;

const BATCH = 25;
/** How long a deleted job's id keeps late events for it out. */
const DELETED_JOB_TTL_MS = 7 * 24 * 3600 * 1000;

/** Latency as the log keeps it: enough to see a slow receiver, no finer timing than that. */
function coarseLatency(ms: number): number {
  return Math.round(ms / 10) * 10;
}

/**
 * A tenant's webhooks: endpoints and every delivery with its attempts, in Durable Object
 * SQLite, driven by one alarm set for the earliest due attempt, so deliveries survive
 * restarts. One object per tenant: a tenant's deliveries never wait behind another's.
 */
export class WebhookHub extends DurableObject<Env> {
  private readonly sql: SqlStorage;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    ctx.blockConcurrencyWhile(async () => this.migrate());
  }

  private migrate(): void {
    migrateOnce(this.sql, "webhooks", [
      `
      CREATE TABLE IF NOT EXISTS endpoints (
        id TEXT PRIMARY KEY, url TEXT NOT NULL, secret TEXT NOT NULL, events TEXT NOT NULL,
        job_id TEXT, created_at TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0
      );
      CREATE TABLE IF NOT EXISTS deliveries (
        id TEXT PRIMARY KEY, endpoint_id TEXT NOT NULL, event_type TEXT NOT NULL, job_id TEXT,
        payload TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER, created_at TEXT NOT NULL,
        last_response_code INTEGER, last_latency_ms INTEGER
      );
      CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_attempt_at);
      CREATE INDEX IF NOT EXISTS deliveries_endpoint ON deliveries (endpoint_id, created_at);
      CREATE TABLE IF NOT EXISTS attempts (
        delivery_id TEXT NOT NULL, at TEXT NOT NULL, response_code INTEGER,
        latency_ms INTEGER NOT NULL, error TEXT
      );
      CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts (delivery_id);
    `,
      // Attempts keep a coarse outcome: latency only when a response came (so the column
      // becomes nullable, which SQLite does by copying the table) and an error class, never
      // exception text. Existing rows are rewritten the same way.
      `
      CREATE TABLE attempts_v2 (
        delivery_id TEXT NOT NULL, at TEXT NOT NULL, response_code INTEGER,
        latency_ms INTEGER, error TEXT
      );
      INSERT INTO attempts_v2 (delivery_id, at, response_code, latency_ms, error)
        SELECT delivery_id, at, response_code,
          CASE WHEN response_code IS NULL THEN NULL
            ELSE CAST(round(latency_ms / 10.0) AS INTEGER) * 10 END,
          CASE WHEN response_code BETWEEN 200 AND 299 THEN NULL
            WHEN response_code IS NOT NULL THEN 'http_error'
            WHEN lower(error) LIKE '%timeout%' OR lower(error) LIKE '%abort%' THEN 'timeout'
            ELSE 'connection_failed' END
        FROM attempts ORDER BY rowid;
      DROP TABLE attempts;
      ALTER TABLE attempts_v2 RENAME TO attempts;
      CREATE INDEX attempts_delivery ON attempts (delivery_id);
      UPDATE deliveries SET last_latency_ms = NULL WHERE last_response_code IS NULL;
      UPDATE deliveries SET last_latency_ms = CAST(round(last_latency_ms / 10.0) AS INTEGER) * 10
        WHERE last_latency_ms IS NOT NULL;
      CREATE TABLE IF NOT EXISTS deleted_jobs (job_id TEXT PRIMARY KEY, at INTEGER NOT NULL);
    `,
    ]);
  }

  // ---- endpoints ----

  async createEndpoint(input: {
    url: string;
    events: WebhookEventType[];
    jobId: string | null;
    secret: string;
  }): Promise<Endpoint> {
    const ep: Endpoint = {
      id: newId("whep"),
      url: input.url,
      events: input.events,
      jobId: input.jobId,
      createdAt: new Date().toISOString(),
    };
    this.sql.exec(
      "INSERT INTO endpoints (id, url, secret, events, job_id, created_at) VALUES (?, ?, ?, ?, ?, ?)",
      ep.id,
      ep.url,
      input.secret,
      JSON.stringify(ep.events),
      ep.jobId,
      ep.createdAt,
    );
    return ep;
  }

  async listEndpoints(): Promise<Endpoint[]> {
    return this.sql
      .exec<{ id: string; url: string; events: string; job_id: string | null; created_at: string }>(
        "SELECT id, url, events, job_id, created_at FROM endpoints WHERE deleted = 0 AND job_id IS NULL ORDER BY created_at",
      )
      .toArray()
      .map((r) => ({
        id: r.id,
        url: r.url,
        events: JSON.parse(r.events) as WebhookEventType[],
        jobId: r.job_id,
        createdAt: r.created_at,
      }));
  }

  /** Changes an account endpoint's URL or events; null when there is no such endpoint. */
  async updateEndpoint(
    id: string,
    patch: { url?: string; events?: WebhookEventType[] },
  ): Promise<{ before: Endpoint; after: Endpoint } | null> {
    const before = (await this.listEndpoints()).find((e) => e.id === id);
    if (!before) return null;
    const after = { ...before, ...patch };
    this.sql.exec(
      "UPDATE endpoints SET url = ?, events = ? WHERE id = ? AND deleted = 0",
      after.url,
      JSON.stringify(after.events),
      id,
    );
    return { before, after };
  }

  /**
   * Deletes an endpoint and cancels its pending deliveries; false when there is none. The row
   * stays for its deliveries' history, without its URL or signing secret.
   */
  async deleteEndpoint(id: string): Promise<boolean> {
    const n = this.sql.exec(
      "UPDATE endpoints SET deleted = 1, url = '', secret = '' WHERE id = ? AND deleted = 0",
      id,
    ).rowsWritten;
    this.sql.exec(
      "UPDATE deliveries SET status = 'cancelled', next_attempt_at = NULL WHERE endpoint_id = ? AND status = 'pending'",
      id,
    );
    return n > 0;
  }

  /**
   * A job's own endpoint's signing secret, for the answer to a retry of the request that made
   * it (the first answer showed it); null once the endpoint is deleted.
   */
  async jobEndpointSecret(id: string, jobId: string): Promise<string | null> {
    const row = this.sql
      .exec<{ secret: string }>(
        "SELECT secret FROM endpoints WHERE id = ? AND job_id = ? AND deleted = 0",
        id,
        jobId,
      )
      .toArray()[0];
    return row?.secret || null;
  }

  async hasEndpoint(id: string): Promise<boolean> {
    return (
      this.sql.exec("SELECT 1 FROM endpoints WHERE id = ? AND deleted = 0", id).toArray().length > 0
    );
  }

  // ---- events and deliveries ----

  /**
   * Queues one delivery per subscribed endpoint; the alarm sends them. Returns how many were
   * queued. A job ends once, so its terminal event is queued once per endpoint however often it
   * is handed over (a hand-over is retried until it is known to have arrived, and may arrive
   * twice): its delivery id comes from the endpoint, the job and the event, and a second one is
   * ignored. Progress events are each their own.
   */
  async emit(type: WebhookEventType, jobId: string, data: unknown): Promise<number> {
    // A job deleted while its events were on the way must not leave a delivery behind.
    const gone = await tombstone(jobId);
    if (this.sql.exec("SELECT 1 FROM deleted_jobs WHERE job_id = ?", gone).toArray().length)
      return 0;
    const endpoints = this.sql
      .exec<{ id: string; events: string }>(
        "SELECT id, events FROM endpoints WHERE deleted = 0 AND (job_id IS NULL OR job_id = ?)",
        jobId,
      )
      .toArray()
      .filter((e) => (JSON.parse(e.events) as string[]).includes(type));
    const now = Date.now();
    const timestamp = new Date(now).toISOString();
    let queued = 0;
    for (const ep of endpoints) {
      const id =
        type === "job.progress"
          ? newId("msg")
          : `msg_${(await sha256Hex(`${ep.id}\u0000${jobId}\u0000${type}`)).slice(0, 24)}`;
      // The payload is frozen now: every retry sends the same bytes under the same id.
      const payload = JSON.stringify({ type, timestamp, data });
      const written = this.sql.exec(
        "INSERT OR IGNORE INTO deliveries (id, endpoint_id, event_type, job_id, payload, status, next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
        id,
        ep.id,
        type,
        jobId,
        payload,
        now + (delayBefore(this.schedule(), 0) ?? 0),
        timestamp,
      ).rowsWritten;
      if (written > 0) queued++;
    }
    if (queued) await this.arm();
    return queued;
  }

  async deliveries(endpointId: string, limit = 100): Promise<WebhookDelivery[]> {
    const rows = this.sql
      .exec<{
        id: string;
        endpoint_id: string;
        event_type: string;
        job_id: string | null;
        status: WebhookDelivery["status"];
        attempts: number;
        next_attempt_at: number | null;
        created_at: string;
        last_response_code: number | null;
        last_latency_ms: number | null;
      }>(
        "SELECT id, endpoint_id, event_type, job_id, status, attempts, next_attempt_at, created_at, last_response_code, last_latency_ms FROM deliveries WHERE endpoint_id = ? ORDER BY created_at DESC, id LIMIT ?",
        endpointId,
        limit,
      )
      .toArray();
    return rows.map((r) => ({
      id: r.id,
      endpointId: r.endpoint_id,
      eventType: r.event_type,
      jobId: r.job_id,
      status: r.status,
      attempts: r.attempts,
      nextAttemptAt: r.next_attempt_at === null ? null : new Date(r.next_attempt_at).toISOString(),
      createdAt: r.created_at,
      lastResponseCode: r.last_response_code,
      lastLatencyMs: r.last_latency_ms,
      attemptLog: this.sql
        .exec<{
          at: string;
          response_code: number | null;
          latency_ms: number | null;
          error: AttemptError | null;
        }>(
          "SELECT at, response_code, latency_ms, error FROM attempts WHERE delivery_id = ? ORDER BY rowid",
          r.id,
        )
        .toArray()
        .map((a) => ({
          at: a.at,
          responseCode: a.response_code,
          latencyMs: a.latency_ms,
          error: a.error,
        })),
    }));
  }

  /** Sends a delivery again from the start of the schedule, under the same webhook-id. */
  async redeliver(endpointId: string, deliveryId: string): Promise<boolean> {
    const n = this.sql.exec(
      "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ? WHERE id = ? AND endpoint_id = ? AND endpoint_id IN (SELECT id FROM endpoints WHERE deleted = 0)",
      Date.now(),
      deliveryId,
      endpointId,
    ).rowsWritten;
    if (n) await this.arm();
    return n > 0;
  }

  /**
   * Removes what the hub holds for a deleted job: the job's own endpoints with their secrets,
   * and every delivery of its events (to any endpoint, pending ones included) with the payload,
   * which is a copy of the job, and its attempts. Events for the job emitted later are
   * dropped. Counts what was removed; calling it again removes nothing.
   */
  async deleteJob(
    jobId: string,
  ): Promise<{ endpoints: number; pendingDeliveries: number; deliveries: number }> {
    const count = (query: string) =>
      this.sql.exec<{ n: number }>(query, jobId).toArray()[0]?.n ?? 0;
    const endpoints = count("SELECT count(*) AS n FROM endpoints WHERE job_id = ? AND deleted = 0");
    const pendingDeliveries = count(
      "SELECT count(*) AS n FROM deliveries WHERE job_id = ? AND status = 'pending'",
    );
    const deliveries = count("SELECT count(*) AS n FROM deliveries WHERE job_id = ?");
    const now = Date.now();
    const gone = await tombstone(jobId);
    this.sql.exec(
      "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE job_id = ?)",
      jobId,
    );
    this.sql.exec("DELETE FROM deliveries WHERE job_id = ?", jobId);
    this.sql.exec("DELETE FROM endpoints WHERE job_id = ?", jobId);
    this.sql.exec("DELETE FROM deleted_jobs WHERE at < ?", now - DELETED_JOB_TTL_MS);
    // Only a one-way hash of the id is kept, to drop the job's late events.
    this.sql.exec("INSERT OR REPLACE INTO deleted_jobs (job_id, at) VALUES (?, ?)", gone, now);
    return { endpoints, pendingDeliveries, deliveries };
  }

  /** The tenant is erased: every endpoint, secret, delivery and attempt goes. */
  async wipe(): Promise<void> {
    await this.ctx.storage.deleteAlarm();
    await this.ctx.storage.deleteAll();
    // Empty tables again, so the same tenant name can start over.
    this.migrate();
  }

  override async alarm(): Promise<void> {
    const due = this.sql
      .exec<{ id: string; endpoint_id: string; payload: string; attempts: number }>(
        "SELECT id, endpoint_id, payload, attempts FROM deliveries WHERE status = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
        Date.now(),
        BATCH,
      )
      .toArray();
    await Promise.all(due.map((d) => this.attempt(d)));
    await this.arm();
  }

  private schedule(): number[] {
    return parseSchedule(this.env.WEBHOOK_SCHEDULE);
  }

  private async attempt(d: {
    id: string;
    endpoint_id: string;
    payload: string;
    attempts: number;
  }): Promise<void> {
    const ep = this.sql
      .exec<{ url: string; secret: string }>(
        "SELECT url, secret FROM endpoints WHERE id = ? AND deleted = 0",
        d.endpoint_id,
      )
      .toArray()[0];
    if (!ep) {
      this.sql.exec(
        "UPDATE deliveries SET status = 'cancelled', next_attempt_at = NULL WHERE id = ?",
        d.id,
      );
      return;
    }
    const started = Date.now();
    const attempts = d.attempts + 1;
    // Registration checked the target under the policy of that day; a tightened policy (or a
    // fixed classifier) must stop deliveries to endpoints registered before it.
    if (checkTarget(ep.url, parsePrivateTargets(this.env.WEBHOOK_ALLOW_PRIVATE)) !== null) {
      this.record(d.id, started, null, null, "target_not_allowed");
      this.sql.exec(
        "UPDATE deliveries SET status = 'cancelled', attempts = ?, next_attempt_at = NULL, last_response_code = NULL, last_latency_ms = NULL WHERE id = ? AND status = 'pending'",
        attempts,
        d.id,
      );
      return;
    }
    const timestamp = Math.floor(started / 1000);
    const signal = AbortSignal.timeout(settings(this.env).WEBHOOK_TIMEOUT_MS);
    let res: Response | null = null;
    let failure: AttemptError = "connection_failed";
    try {
      res = await fetch(ep.url, {
        method: "POST",
        headers: {
          "Content-Type": "application/json",
          "User-Agent": "p2pa-webhooks/1",
          "webhook-id": d.id,
          "webhook-timestamp": String(timestamp),
          "webhook-signature": await sign(ep.secret, d.id, timestamp, d.payload),
        },
        body: d.payload,
        redirect: "manual",
        signal,
      });
    } catch {
      // Only the class of failure is kept. The exception text (refused, reset, DNS, TLS) and
      // the time a refusal took would tell a tenant what listens on which host and port,
      // turning the attempt log into a port scanner.
      if (signal.aborted) failure = "timeout";
    }
    const code = res?.status ?? null;
    const latency = res ? coarseLatency(Date.now() - started) : null;
    await res?.body?.cancel().catch(() => {});
    const ok = code !== null && code >= 200 && code < 300;
    this.record(d.id, started, code, latency, res ? (ok ? null : "http_error") : failure);
    const delay = ok ? null : delayBefore(this.schedule(), attempts);
    const status = ok ? "delivered" : delay === null ? "exhausted" : "pending";
    this.sql.exec(
      "UPDATE deliveries SET status = ?, attempts = ?, next_attempt_at = ?, last_response_code = ?, last_latency_ms = ? WHERE id = ? AND status = 'pending'",
      status,
      attempts,
      delay === null ? null : Date.now() + delay,
      code,
      latency,
      d.id,
    );
  }

  /** Logs an attempt, unless its delivery was removed while the attempt was in flight. */
  private record(
    deliveryId: string,
    started: number,
    code: number | null,
    latency: number | null,
    error: AttemptError | null,
  ): void {
    this.sql.exec(
      "INSERT INTO attempts (delivery_id, at, response_code, latency_ms, error) SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM deliveries WHERE id = ?)",
      deliveryId,
      new Date(started).toISOString(),
      code,
      latency,
      error,
      deliveryId,
    );
  }

  private async arm(): Promise<void> {
    const next = this.sql
      .exec<{ t: number | null }>(
        "SELECT min(next_attempt_at) AS t FROM deliveries WHERE status = 'pending'",
      )
      .toArray()[0]?.t;
    if (next === null || next === undefined) return;
    const current = await this.ctx.storage.getAlarm();
    if (current === null || next < current) await this.ctx.storage.setAlarm(next);
  }
}
