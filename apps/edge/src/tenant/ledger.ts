import { DurableObject } from "cloudflare:workers";
import { migrateOnce } from "../lib/do-schema.js";
import {
  type AuditEntry,
  type AuditHead,
  ChainVerifier,
  decodeCursor,
  EMPTY_HEAD,
  encodeCursor,
  entryHash,
  type JsonObject,
  type VerifyResult,
} from "./audit.js";
import { purgeJobText } from "./erase.js";

/** What a caller says about an event; the ledger adds seq, time, tenant and the hashes. */
export interface AppendInput {
  /** The key id that acted, or "system". */
  actor: string;
  /** Dotted event name: "job.created", "key.revoked". */
  action: string;
  target?: string | null;
  ip?: string | null;
  userAgent?: string | null;
  /** JSON-compatible; stored as it survives a JSON round trip. */
  details?: Record<string, unknown>;
}

/** Filters and paging for `TenantLedger.list`. */
export interface AuditQuery {
  /** A `nextCursor` from an earlier page (or a bare seq): entries after it in `order`. */
  after?: string | number;
  /** 1..500, default 100. */
  limit?: number;
  /** Exact action, or a prefix ending in "." ("job." matches "job.created"). */
  action?: string;
  actor?: string;
  /** ISO time, inclusive. */
  since?: string;
  /** ISO time, exclusive. */
  until?: string;
  /** By seq; default "asc". */
  order?: "asc" | "desc";
}

/** One page of the audit log. */
export interface AuditPage {
  data: AuditEntry[];
  /** Pass as `after` for the next page; null on the last one. */
  nextCursor: string | null;
}

/** One limit a request counts against, per minute; `limit <= 0` means unlimited. */
export interface RateKey {
  key: string;
  limit: number;
}

/**
 * The verdict for one request, described by its tightest limit (the least remaining; when
 * refused, the limit that refuses longest) so the caller can send `RateLimit-Limit`,
 * `RateLimit-Remaining`, `RateLimit-Reset` and, when refused, `Retry-After`. When no key has a
 * limit, `limit` is 0 and the caller sends no RateLimit headers.
 */
export interface RateDecision {
  allowed: boolean;
  limit: number;
  remaining: number;
  /** Seconds until that limit's full budget is back. */
  resetSeconds: number;
  /** 0 when allowed; else seconds until this same request would be allowed (1..60). */
  retryAfterSeconds: number;
  /** The key that refused, when refused. */
  blockedBy?: string;
}

/** Audit rows as SQLite holds them. */
type AuditRow = {
  seq: number;
  at: string;
  tenant: string;
  actor: string;
  action: string;
  target: string | null;
  ip: string | null;
  user_agent: string | null;
  details: string;
  prev_hash: string;
  hash: string;
};

/** A trailing minute of counts at one-second resolution, for usage reporting. */
type UsageRing = { stamps: number[]; counts: number[] };

const HEAD_KEY = "audit:head";
const WINDOW_MS = 60_000;
const DEFAULT_PAGE = 100;
const MAX_PAGE = 500;
const VERIFY_PAGE = 500;
/** Details are for context, not payloads: a cap keeps rows far under SQLite's 2 MB limit. */
const MAX_DETAILS_CHARS = 32 * 1024;
/** User agents are whatever the client sends; the log keeps a readable prefix. */
const MAX_USER_AGENT_CHARS = 512;
const MAX_FIELD_CHARS = 1024;
/** Float slack for GCRA arithmetic, in ms (limits like 7/min give periods like 8571.43 ms). */
const EPSILON_MS = 1e-6;
/** Rate state is pruned when it holds more keys than this. */
const PRUNE_ABOVE = 1024;

const COLUMNS = "seq, at, tenant, actor, action, target, ip, user_agent, details, prev_hash, hash";

function fromRow(r: AuditRow): AuditEntry {
  return {
    seq: r.seq,
    at: r.at,
    tenant: r.tenant,
    actor: r.actor,
    action: r.action,
    target: r.target,
    ip: r.ip,
    userAgent: r.user_agent,
    details: JSON.parse(r.details) as JsonObject,
    prevHash: r.prev_hash,
    hash: r.hash,
  };
}

function requiredString(v: unknown, name: string): string {
  if (typeof v !== "string" || v.length === 0 || v.length > MAX_FIELD_CHARS)
    throw new TypeError(`${name} must be a non-empty string of at most ${MAX_FIELD_CHARS} chars`);
  return v;
}

function optionalString(v: unknown, name: string, max = MAX_FIELD_CHARS): string | null {
  if (v === undefined || v === null) return null;
  if (typeof v !== "string") throw new TypeError(`${name} must be a string or null`);
  return v.slice(0, max);
}

/** An ISO time normalised to `toISOString` form, so it compares with stored `at` as text. */
function isoOf(v: string, name: string): string {
  const t = Date.parse(v);
  if (Number.isNaN(t)) throw new RangeError(`${name} is not an ISO time`);
  return new Date(t).toISOString();
}

function cursorSeq(after: string | number | undefined): number | null {
  if (after === undefined || after === "") return null;
  if (typeof after === "number") {
    if (!Number.isInteger(after) || after < 0) throw new RangeError("after must be a seq >= 0");
    return after;
  }
  const seq = decodeCursor(after);
  if (seq === null) throw new RangeError("invalid cursor");
  return seq;
}

/**
 * A tenant's ledger: its audit log and its request rate limits. One object per tenant
 * (`env.TENANTS.idFromName(tenant)`), so one tenant's traffic never queues behind another's.
 *
 * The audit log is append-only and hash-chained (see audit.ts for the hash definition). Rows
 * live in SQLite; the head `{seq, hash}` lives in the object's KV storage, written in the same
 * transaction as the row, so truncating the table's tail is detectable too.
 *
 * Rate limits are GCRA buckets held in memory only: when the object is evicted (only after it
 * has been idle for a while, about as long as the window itself) or restarts, every key starts
 * with a full budget. That lets a client through a little early once in a while, which is
 * acceptable for request limits and saves a storage write per request.
 */
export class TenantLedger extends DurableObject<Env> {
  private readonly sql: SqlStorage;
  /** False after `wipe` until the next call needs the tables again. */
  private migrated = false;
  /** Bumped by `wipe`, so a `verify` that spans one starts over. */
  private generation = 0;
  /** Appends and wipes, one at a time: hashing awaits, and the head must not move meanwhile. */
  private queue: Promise<unknown> = Promise.resolve();
  /** Per rate key, the GCRA theoretical arrival time (epoch ms). */
  private readonly buckets = new Map<string, number>();
  private readonly usageRings = new Map<string, UsageRing>();

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    ctx.blockConcurrencyWhile(async () => this.schema());
  }

  private schema(): void {
    if (this.migrated) return;
    migrateOnce(this.sql, "ledger", [
      `
      CREATE TABLE IF NOT EXISTS audit (
        seq INTEGER PRIMARY KEY, at TEXT NOT NULL, tenant TEXT NOT NULL, actor TEXT NOT NULL,
        action TEXT NOT NULL, target TEXT, ip TEXT, user_agent TEXT, details TEXT NOT NULL,
        prev_hash TEXT NOT NULL, hash TEXT NOT NULL
      );
      CREATE INDEX IF NOT EXISTS audit_action ON audit (action, seq);
      CREATE INDEX IF NOT EXISTS audit_actor ON audit (actor, seq);
      CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
    `,
      // Retention: when each job's text is due to be purged.
      "CREATE TABLE IF NOT EXISTS text_purges (job_id TEXT PRIMARY KEY, due INTEGER NOT NULL)",
    ]);
    this.migrated = true;
  }

  /** The tenant is the object's name: every entry names it, so the hash covers it. */
  private tenant(): string {
    const name = this.ctx.id.name;
    if (!name) throw new Error("TenantLedger must be addressed with idFromName(tenant)");
    return name;
  }

  /** Runs `fn` after every earlier queued call has finished, failed or not. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn);
    this.queue = run.catch(() => {});
    return run;
  }

  private readHead(): AuditHead {
    const h = this.ctx.storage.kv.get<AuditHead>(HEAD_KEY);
    return h ? { seq: h.seq, hash: h.hash } : { ...EMPTY_HEAD };
  }

  // ---- audit log ----

  /** Appends an entry after the current head and returns it as stored. */
  async append(input: AppendInput): Promise<AuditEntry> {
    const details = input.details ?? {};
    if (typeof details !== "object" || details === null || Array.isArray(details))
      throw new TypeError("details must be an object");
    const detailsJson = JSON.stringify(details);
    if (detailsJson.length > MAX_DETAILS_CHARS)
      throw new RangeError(`details exceed ${MAX_DETAILS_CHARS} chars of JSON`);
    const fields = {
      actor: requiredString(input.actor, "actor"),
      action: requiredString(input.action, "action"),
      target: optionalString(input.target, "target"),
      ip: optionalString(input.ip, "ip"),
      userAgent: optionalString(input.userAgent, "userAgent", MAX_USER_AGENT_CHARS),
      // The round trip drops what JSON cannot hold (undefined, functions), so the hash is of
      // exactly what a reader gets back.
      details: JSON.parse(detailsJson) as JsonObject,
    };
    const tenant = this.tenant();
    return this.serial(async () => {
      this.schema();
      const prev = this.readHead();
      const body: Omit<AuditEntry, "hash"> = {
        seq: prev.seq + 1,
        at: new Date().toISOString(),
        tenant,
        ...fields,
        prevHash: prev.hash,
      };
      // The only await of an append; the queue keeps every other append (and wipe) out.
      const hash = await entryHash(body);
      this.ctx.storage.transactionSync(() => {
        this.sql.exec(
          `INSERT INTO audit (${COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
          body.seq,
          body.at,
          body.tenant,
          body.actor,
          body.action,
          body.target,
          body.ip,
          body.userAgent,
          detailsJson,
          body.prevHash,
          hash,
        );
        this.ctx.storage.kv.put(HEAD_KEY, { seq: body.seq, hash });
      });
      return { ...body, hash };
    });
  }

  /**
   * A page of entries matching the filters, by seq. Throws RangeError on a bad cursor or time.
   */
  async list(q: AuditQuery = {}): Promise<AuditPage> {
    this.schema();
    const desc = q.order === "desc";
    const limit =
      q.limit === undefined || !Number.isFinite(q.limit)
        ? DEFAULT_PAGE
        : Math.min(MAX_PAGE, Math.max(1, Math.floor(q.limit)));
    const where: string[] = [];
    const args: SqlStorageValue[] = [];
    const after = cursorSeq(q.after);
    if (after !== null) {
      where.push(desc ? "seq < ?" : "seq > ?");
      args.push(after);
    }
    if (q.action) {
      if (q.action.endsWith(".")) {
        // A range, not LIKE: LIKE ignores ASCII case and treats _ and % as wildcards.
        // Everything starting "job." sorts in ["job.", "job/") since "/" follows ".".
        where.push("action >= ? AND action < ?");
        args.push(q.action, `${q.action.slice(0, -1)}/`);
      } else {
        where.push("action = ?");
        args.push(q.action);
      }
    }
    if (q.actor) {
      where.push("actor = ?");
      args.push(q.actor);
    }
    if (q.since) {
      where.push("at >= ?");
      args.push(isoOf(q.since, "since"));
    }
    if (q.until) {
      where.push("at < ?");
      args.push(isoOf(q.until, "until"));
    }
    const rows = this.sql
      .exec<AuditRow>(
        `SELECT ${COLUMNS} FROM audit ${where.length ? `WHERE ${where.join(" AND ")}` : ""} ORDER BY seq ${desc ? "DESC" : "ASC"} LIMIT ?`,
        ...args,
        limit + 1,
      )
      .toArray();
    const data = rows.slice(0, limit).map(fromRow);
    const last = data[data.length - 1];
    return { data, nextCursor: rows.length > limit && last ? encodeCursor(last.seq) : null };
  }

  /** The last entry's seq and hash; `{ seq: 0, hash: 64 zeros }` when the log is empty. */
  async head(): Promise<AuditHead> {
    return this.readHead();
  }

  /**
   * Recomputes every hash, checks the prevHash links and seq continuity from 1, and that the
   * last row is the stored head. Reads page by page, so it works on logs of any length;
   * entries appended meanwhile are checked too.
   */
  async verify(): Promise<VerifyResult> {
    const generation = this.generation;
    const v = new ChainVerifier();
    let after = 0;
    for (;;) {
      this.schema();
      const rows = this.sql
        .exec<AuditRow>(
          `SELECT ${COLUMNS} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?`,
          after,
          VERIFY_PAGE,
        )
        .toArray();
      // The last (empty) page and the head are read in one synchronous step, so an append
      // cannot slip in between them.
      if (rows.length === 0) return v.finish(this.readHead());
      for (const r of rows) await v.add(fromRow(r));
      // A wipe during the awaits replaced the log; verify what is there now.
      if (this.generation !== generation) return this.verify();
      after = (rows[rows.length - 1] as AuditRow).seq;
    }
  }

  /**
   * Deletes everything this object holds for the tenant: audit rows, head, rate and usage
   * state (the tenant is being erased). The tables come back, empty, on the next call.
   */
  async wipe(): Promise<void> {
    await this.serial(async () => {
      // Started before the flags change: SQLite-backed storage applies it at once, and the
      // input gate holds other calls until it is done, so none sees a half-wiped object.
      const done = this.ctx.storage.deleteAll();
      this.migrated = false;
      this.generation++;
      this.buckets.clear();
      this.usageRings.clear();
      await done;
    });
  }

  // ---- retention ----

  /**
   * Schedules the purge of a job's text at `due` (epoch ms): the alarm drops it then, with an
   * audit entry, whether or not anyone is around. Scheduling again moves it.
   */
  async scheduleTextPurge(jobId: string, due: number): Promise<void> {
    this.schema();
    this.sql.exec("INSERT OR REPLACE INTO text_purges (job_id, due) VALUES (?, ?)", jobId, due);
    await this.armPurges();
  }

  /** The job is gone: nothing is left to purge. */
  async unscheduleTextPurge(jobId: string): Promise<void> {
    this.schema();
    this.sql.exec("DELETE FROM text_purges WHERE job_id = ?", jobId);
    await this.armPurges();
  }

  /** Jobs whose text purge is scheduled, soonest first (for the API and tests). */
  async scheduledPurges(): Promise<{ jobId: string; due: number }[]> {
    this.schema();
    return this.sql
      .exec<{ job_id: string; due: number }>("SELECT job_id, due FROM text_purges ORDER BY due")
      .toArray()
      .map((r) => ({ jobId: r.job_id, due: r.due }));
  }

  private async armPurges(): Promise<void> {
    const next = this.sql
      .exec<{ d: number | null }>("SELECT min(due) AS d FROM text_purges")
      .one().d;
    if (next === null) await this.ctx.storage.deleteAlarm();
    else await this.ctx.storage.setAlarm(next);
  }

  /** Purges every job whose text is due; a failed purge stays scheduled and is retried. */
  override async alarm(): Promise<void> {
    this.schema();
    const due = this.sql
      .exec<{ job_id: string }>(
        "SELECT job_id FROM text_purges WHERE due <= ? LIMIT 100",
        Date.now(),
      )
      .toArray();
    const tenant = this.tenant();
    for (const { job_id: jobId } of due) {
      try {
        const purged = await purgeJobText(this.env, tenant, jobId);
        this.sql.exec("DELETE FROM text_purges WHERE job_id = ?", jobId);
        if (purged) {
          await this.append({
            actor: "system",
            action: "text.purged",
            target: jobId,
            details: { reason: "retention" },
          });
        }
      } catch (err) {
        console.error("text purge failed; will retry", jobId, err);
        this.sql.exec(
          "UPDATE text_purges SET due = ? WHERE job_id = ?",
          Date.now() + 60_000,
          jobId,
        );
      }
    }
    await this.armPurges();
  }

  // ---- rate limits ----

  /**
   * Counts one request against every key, per minute, only if all of them allow it: a refused
   * request consumes nothing. `now` (epoch ms) is for tests.
   */
  async hit(keys: RateKey[], now: number = Date.now()): Promise<RateDecision> {
    // The same key twice counts once, under its tighter limit.
    const limits = new Map<string, number>();
    for (const { key, limit } of keys) {
      const l = limit > 0 ? Math.max(1, Math.floor(limit)) : 0;
      const had = limits.get(key);
      limits.set(key, had === undefined ? l : had === 0 ? l : l === 0 ? had : Math.min(had, l));
    }
    type Check = {
      key: string;
      limit: number;
      ok: boolean;
      tat: number;
      remaining: number;
      resetMs: number;
      retryMs: number;
    };
    const checks: Check[] = [];
    for (const [key, limit] of limits) {
      if (limit === 0) continue;
      // GCRA: each request moves the theoretical arrival time one period on; a request is
      // allowed while that time stays within one window of now (a burst of `limit` at most).
      const period = WINDOW_MS / limit;
      const tat = Math.max(this.buckets.get(key) ?? now, now);
      const next = tat + period;
      const ok = next - now <= WINDOW_MS + EPSILON_MS;
      const used = ok ? next : tat;
      checks.push({
        key,
        limit,
        ok,
        tat: next,
        remaining: Math.max(0, Math.floor((WINDOW_MS - (used - now)) / period + EPSILON_MS)),
        resetMs: used - now,
        retryMs: ok ? 0 : next - WINDOW_MS - now,
      });
    }
    const refused = checks.filter((c) => !c.ok);
    if (refused.length) {
      const worst = refused.reduce((a, b) => (b.retryMs > a.retryMs ? b : a));
      return {
        allowed: false,
        limit: worst.limit,
        remaining: 0,
        resetSeconds: Math.ceil(worst.resetMs / 1000),
        retryAfterSeconds: Math.min(60, Math.max(1, Math.ceil(worst.retryMs / 1000))),
        blockedBy: worst.key,
      };
    }
    for (const c of checks) this.buckets.set(c.key, c.tat);
    for (const key of limits.keys()) this.count(key, now);
    if (this.buckets.size > PRUNE_ABOVE || this.usageRings.size > PRUNE_ABOVE) this.prune(now);
    const tightest = checks.reduce<Check | null>(
      (a, b) =>
        a === null ||
        b.remaining < a.remaining ||
        (b.remaining === a.remaining && b.resetMs > a.resetMs)
          ? b
          : a,
      null,
    );
    if (!tightest)
      return { allowed: true, limit: 0, remaining: 0, resetSeconds: 0, retryAfterSeconds: 0 };
    return {
      allowed: true,
      limit: tightest.limit,
      remaining: tightest.remaining,
      resetSeconds: Math.ceil(tightest.resetMs / 1000),
      retryAfterSeconds: 0,
    };
  }

  /** Requests counted (allowed) per key in the trailing 60 s; keys with none are left out. */
  async usage(now: number = Date.now()): Promise<{ requestsLastMinute: Record<string, number> }> {
    const requestsLastMinute: Record<string, number> = {};
    for (const [key, ring] of this.usageRings) {
      const n = this.recent(ring, now);
      if (n > 0) requestsLastMinute[key] = n;
    }
    return { requestsLastMinute };
  }

  private count(key: string, now: number): void {
    let ring = this.usageRings.get(key);
    if (!ring) {
      ring = { stamps: new Array<number>(60).fill(-1), counts: new Array<number>(60).fill(0) };
      this.usageRings.set(key, ring);
    }
    const second = Math.floor(now / 1000);
    const i = ((second % 60) + 60) % 60;
    if (ring.stamps[i] !== second) {
      ring.stamps[i] = second;
      ring.counts[i] = 0;
    }
    ring.counts[i] = (ring.counts[i] ?? 0) + 1;
  }

  private recent(ring: UsageRing, now: number): number {
    const second = Math.floor(now / 1000);
    let n = 0;
    for (let i = 0; i < 60; i++) {
      const s = ring.stamps[i] ?? -1;
      if (s > second - 60 && s <= second) n += ring.counts[i] ?? 0;
    }
    return n;
  }

  /** Drops keys whose budget is full again and whose minute of usage is over: same as absent. */
  private prune(now: number): void {
    for (const [key, tat] of this.buckets) if (tat <= now) this.buckets.delete(key);
    for (const [key, ring] of this.usageRings)
      if (this.recent(ring, now) === 0) this.usageRings.delete(key);
  }
}
