import {
  type ApiKey,
  type Chunk,
  type Collection,
  type Job,
  type JobStatus,
  type PiiKind,
  type Pool,
  type Quotas,
  SCOPES,
  type Scope,
  type Verification,
} from "@p2pa/shared";
import {
  and,
  asc,
  desc,
  eq,
  getTableColumns,
  gt,
  inArray,
  isNull,
  ne,
  sql,
  type Table,
} from "drizzle-orm";
import { type DrizzleD1Database, drizzle } from "drizzle-orm/d1";
import * as schema from "./schema.js";

/**
 * The metadata store: the one module that knows the database. Routes and Durable Objects
 * speak to this interface only, so a second backend (Postgres through Neon) is a second
 * implementation of `MetadataStore`, not a change to its callers.
 */
export interface MetadataStore {
  findCredential(hash: string): Promise<Credential | null>;
  /** Whether each credential id is usable; ids not in the map are unknown (deleted). */
  credentialStates(ids: string[]): Promise<Map<string, "active" | "revoked" | "quarantined">>;
  /** Quarantines a worker token: it is refused from now on, with the reason. */
  quarantineCredential(id: string, reason: string): Promise<void>;
  /** Revokes a credential of a kind; false when there is none to revoke. */
  revokeCredential(id: string, kind: Credential["kind"]): Promise<boolean>;
  /** Revokes one of a tenant's keys or worker tokens; false when it has none such. */
  revokeTenantCredential(tenant: string, id: string): Promise<boolean>;
  createCredential(c: NewCredential): Promise<void>;
  /** A tenant's keys and worker tokens, newest first, without their hashes. */
  listCredentials(tenant: string): Promise<ApiKey[]>;
  getCredential(tenant: string, id: string): Promise<ApiKey | null>;
  updateCredential(
    tenant: string,
    id: string,
    patch: { label?: string; quotas?: Quotas },
  ): Promise<boolean>;
  /** Records that a credential was used now. */
  touchCredential(id: string): Promise<void>;
  tenantSettings(tenant: string): Promise<TenantSettings | null>;
  putTenantSettings(
    tenant: string,
    patch: Partial<Omit<TenantSettings, "updatedAt">>,
  ): Promise<TenantSettings>;
  /** Chunks submitted in the last 24 hours (by the tenant and by one key) and vectors kept. */
  chunkUsage(tenant: string, keyId: string): Promise<ChunkUsage>;
  /** Chunks submitted in the last 24 hours per key of the tenant. */
  chunksByKey(tenant: string): Promise<Map<string, number>>;
  /** A tenant's job ids (every status), for erasure. */
  tenantJobs(tenant: string): Promise<{ id: string; model: string }[]>;
  /** Drops a job's chunk text (retention): chunks then read as `text: null`. */
  purgeText(jobId: string): Promise<void>;
  /** A document of a job, with its chunk ids. */
  getDocument(
    tenant: string,
    jobId: string,
    documentId: string,
  ): Promise<{ seq: number; id: string; chunkIds: string[] } | null>;
  /** Removes one document with its chunks, and takes them off the job's counters. */
  deleteDocument(jobId: string, seq: number): Promise<void>;
  /** Erases a tenant's credentials and settings (its jobs are deleted one by one first). */
  eraseTenant(tenant: string): Promise<void>;
  createJob(
    input: NewJob,
  ): Promise<{ job: Job; created: boolean; requestHash: string | null; dispatched: boolean }>;
  findJobByIdempotencyKey(
    tenant: string,
    key: string,
  ): Promise<{ job: Job; requestHash: string | null; dispatched: boolean } | null>;
  markDispatched(jobId: string): Promise<void>;
  getJob(tenant: string, id: string): Promise<Job | null>;
  /** A job by id alone, for the coordinator (which has no tenant in hand). */
  getJobById(id: string): Promise<Job | null>;
  listChunks(
    tenant: string,
    jobId: string,
    after: string | null,
    limit: number,
  ): Promise<ChunkRow[]>;
  getChunks(tenant: string, ids: string[]): Promise<ChunkRow[]>;
  /** Marks chunks done (once each) and moves the job's counters and status. Idempotent. */
  recordDone(jobId: string, chunkIds: string[]): Promise<void>;
  /** Marks chunks failed (once each) with a reason and moves the job's counters and status. Idempotent. */
  recordFailed(jobId: string, chunkIds: string[], reason: string): Promise<void>;
  markStarted(jobId: string): Promise<void>;
  /** Moves a queued or running job to cancelled; false when it had already ended. */
  cancelJob(tenant: string, id: string): Promise<boolean>;
  /** Ids of all of a job's chunks (they are also its vector ids). */
  chunkIds(jobId: string): Promise<string[]>;
  /** Removes a job with its documents and chunks. */
  deleteJob(jobId: string): Promise<void>;
  /** Chunks whose keyword-index terms match, best BM25 first (see KeywordQuery). */
  keywordSearch(q: KeywordQuery): Promise<{ id: string; score: number; terms: string }[]>;
  /** A tenant's collections with what they hold, by name. */
  listCollections(tenant: string): Promise<Collection[]>;
  upsertWorker(w: WorkerInfo): Promise<void>;
  workerSeen(id: string, chunksDone: number, disconnected: boolean): Promise<void>;
}

export interface Credential {
  id: string;
  /** api: a tenant's key; admin: an operator's key (an API key that also sees the fleet). */
  kind: "api" | "worker" | "admin";
  /** Set on a worker token caught returning wrong results: why it was quarantined. */
  quarantined?: string;
  tenant: string;
  scopes: Scope[];
  /** The key's own limits (the tenant's apply as well). */
  quotas: Quotas;
  expiresAt: string | null;
  /** Set by the lookup when `expiresAt` has passed. */
  expired?: boolean;
}

export interface NewCredential {
  id: string;
  kind: "api" | "worker";
  tenant: string;
  hash: string;
  label: string;
  prefix: string;
  scopes: Scope[] | null;
  expiresAt: string | null;
  quotas: Quotas | null;
}

export interface TenantSettings {
  textRetentionDays: number | null;
  quotas: Quotas;
  updatedAt: string;
}

export interface ChunkUsage {
  tenantLast24h: number;
  keyLast24h: number;
  tenantOldestAt: string | null;
  keyOldestAt: string | null;
  storedVectors: number;
}

/** Seals and opens document text at rest; the store never holds a key itself. */
export interface TextSealer {
  encrypt(tenant: string, plaintext: string, context: string): Promise<string>;
  decrypt(tenant: string, ciphertext: string, context: string): Promise<string>;
}

export interface NewJob {
  id: string;
  tenant: string;
  model: string;
  collection: string;
  chunking: { maxChars: number; overlap: number };
  verification: Verification;
  pool: Pool;
  /** Personal data masked in the text workers get. */
  piiMask: PiiKind[];
  textRetentionDays: number | null;
  createdBy: string | null;
  idempotencyKey: string | null;
  requestHash: string | null;
  createdAt: string;
  webhook?: { id: string; url: string } | null;
  documents: { seq: number; id: string; metadata: Record<string, unknown> | null; chars: number }[];
  chunks: {
    id: string;
    documentSeq: number;
    documentId: string;
    index: number;
    text: string;
    start: number;
    end: number;
    /** The chunk's keyword-index document (hashed words, search/terms.ts); none: not indexed. */
    terms?: string;
  }[];
}

/**
 * A keyword search. `match` is an FTS5 expression over hashed terms; `filter` a SQL condition
 * over `FILTER_METADATA` (the chunk's document metadata with jobId, documentId and collection
 * set by the product), compiled from the request's filter by vector/filter.ts.
 */
export interface KeywordQuery {
  tenant: string;
  model: string;
  match: string;
  filter?: { sql: string; params: (string | number | null)[] };
  limit: number;
}

/**
 * The metadata a keyword search filters on, the same object the vector index filters on:
 * document metadata, with the product's keys over any document keys of the same name.
 */
export const FILTER_METADATA =
  "json_patch(coalesce(d.metadata, '{}'), json_object('jobId', c.job_id, 'documentId', c.document_id, 'collection', j.collection))";

export type ChunkRow = Omit<Chunk, "vector">;

type ChunkSelect = {
  id: string;
  jobId: string;
  documentId: string;
  collection: string;
  index: number;
  text: string;
  status: "pending" | "done" | "failed";
  error: string | null;
  start: number;
  end: number;
  metadata: Record<string, unknown> | null;
};

export interface WorkerInfo {
  id: string;
  name: string | null;
  version: string;
  device: string;
  threads: number;
  models: string[];
  connectedAt: string;
}

// D1 binds at most 100 parameters per statement.
const MAX_PARAMS = 99;
/** Terms per keyword-index statement: well under D1's 100 KB statement limit. */
const KEYWORD_STATEMENT_BYTES = 80_000;

/**
 * A string as a quoted SQL literal. Only for raw statements that go into a `batch`: drizzle's
 * D1 batch cannot bind the parameters of a raw `sql` statement (it binds only those of query
 * builders), so these carry their values inline, quotes doubled.
 */
function literal(s: string) {
  return sql.raw(`'${s.replaceAll("'", "''")}'`);
}

/** A compiled filter's SQL with its `?` placeholders bound, in order, as a drizzle fragment. */
function boundCondition(c: { sql: string; params: (string | number | null)[] }) {
  const parts = c.sql.split("?");
  if (parts.length !== c.params.length + 1)
    throw new Error("filter SQL and its parameters do not line up");
  const chunks = [sql.raw(parts[0] as string)];
  c.params.forEach((p, i) => {
    chunks.push(sql`${p}`, sql.raw(parts[i + 1] as string));
  });
  return sql.join(chunks, sql``);
}

/** Rows per multi-row INSERT: drizzle binds every column of the table, defaults included. */
function rowsPerStatement(table: Table): number {
  return Math.floor(MAX_PARAMS / Object.keys(getTableColumns(table)).length);
}

function toJob(r: typeof schema.jobs.$inferSelect): Job {
  return {
    id: r.id,
    status: r.status,
    model: r.model,
    collection: r.collection,
    documents: r.documents,
    chunks: { total: r.chunksTotal, done: r.chunksDone, failed: r.chunksFailed },
    chunking: { maxChars: r.chunkMaxChars, overlap: r.chunkOverlap },
    verification: r.verification,
    pool: r.pool,
    privacy: { mask: r.piiMask },
    retention: {
      textDays: r.textRetentionDays,
      ...(r.textPurgedAt ? { textPurgedAt: r.textPurgedAt } : {}),
    },
    createdAt: r.createdAt,
    ...(r.completedAt ? { completedAt: r.completedAt } : {}),
    ...(r.webhookId && r.webhookUrl ? { webhook: { id: r.webhookId, url: r.webhookUrl } } : {}),
  };
}

/** Settles a job's status from its counters; applied after every counter change. */
const SETTLED_STATUS = sql<JobStatus>`CASE
  WHEN chunks_done + chunks_failed < chunks_total THEN status
  WHEN chunks_failed = 0 THEN 'completed'
  WHEN chunks_done = 0 THEN 'failed'
  ELSE 'completed_with_errors' END`;
const SETTLED_AT = sql<string | null>`CASE
  WHEN chunks_done + chunks_failed >= chunks_total THEN strftime('%Y-%m-%dT%H:%M:%fZ','now')
  ELSE completed_at END`;

/** D1 implementation of the metadata store (drizzle-orm). */
export class D1Store implements MetadataStore {
  private readonly db: DrizzleD1Database<typeof schema>;

  /**
   * `sealer` encrypts chunk text on the way in and decrypts it on the way out; without one,
   * reading chunk text fails (routes and the coordinator always pass one).
   */
  constructor(
    d1: D1Database,
    private readonly sealer?: TextSealer,
  ) {
    this.db = drizzle(d1, { schema });
  }

  private get seal(): TextSealer {
    if (!this.sealer)
      throw new Error("this store was opened without a sealer; it cannot touch text");
    return this.sealer;
  }

  async findCredential(hash: string): Promise<Credential | null> {
    const row = await this.db
      .select({
        id: schema.credentials.id,
        kind: schema.credentials.kind,
        tenant: schema.credentials.tenant,
        quarantined: schema.credentials.quarantineReason,
        scopes: schema.credentials.scopes,
        quotas: schema.credentials.quotas,
        expiresAt: schema.credentials.expiresAt,
      })
      .from(schema.credentials)
      .where(and(eq(schema.credentials.hash, hash), isNull(schema.credentials.revokedAt)))
      .get();
    if (!row) return null;
    const { quarantined, scopes, quotas, ...cred } = row;
    const out: Credential = {
      ...cred,
      // Keys made before scopes existed keep what they could do: everything.
      scopes: (scopes as Scope[] | null) ?? [...SCOPES],
      quotas: quotas ?? {},
    };
    return quarantined ? { ...out, quarantined } : out;
  }

  async createCredential(c: NewCredential): Promise<void> {
    await this.db.insert(schema.credentials).values({
      id: c.id,
      kind: c.kind,
      tenant: c.tenant,
      hash: c.hash,
      name: c.label,
      prefix: c.prefix,
      scopes: c.scopes,
      expiresAt: c.expiresAt,
      quotas: c.quotas,
      createdAt: new Date().toISOString(),
    });
  }

  private static toKey(r: typeof schema.credentials.$inferSelect): ApiKey {
    return {
      id: r.id,
      kind: r.kind,
      label: r.name,
      prefix: r.prefix,
      scopes: r.kind === "worker" ? [] : ((r.scopes as Scope[] | null) ?? [...SCOPES]),
      quotas: r.quotas ?? {},
      createdAt: r.createdAt,
      expiresAt: r.expiresAt,
      lastUsedAt: r.lastUsedAt,
      revokedAt: r.revokedAt,
    };
  }

  async listCredentials(tenant: string): Promise<ApiKey[]> {
    const rows = await this.db
      .select()
      .from(schema.credentials)
      .where(eq(schema.credentials.tenant, tenant))
      .orderBy(desc(schema.credentials.createdAt), desc(schema.credentials.id))
      .all();
    return rows.map(D1Store.toKey);
  }

  async getCredential(tenant: string, id: string): Promise<ApiKey | null> {
    const r = await this.db
      .select()
      .from(schema.credentials)
      .where(and(eq(schema.credentials.tenant, tenant), eq(schema.credentials.id, id)))
      .get();
    return r ? D1Store.toKey(r) : null;
  }

  async updateCredential(tenant: string, id: string, patch: { label?: string; quotas?: Quotas }) {
    const set: Partial<typeof schema.credentials.$inferInsert> = {};
    if (patch.label !== undefined) set.name = patch.label;
    if (patch.quotas !== undefined) set.quotas = patch.quotas;
    if (Object.keys(set).length === 0) return (await this.getCredential(tenant, id)) !== null;
    const r = await this.db
      .update(schema.credentials)
      .set(set)
      .where(
        and(
          eq(schema.credentials.tenant, tenant),
          eq(schema.credentials.id, id),
          isNull(schema.credentials.revokedAt),
        ),
      )
      .run();
    return (r.meta.changes ?? 0) > 0;
  }

  async revokeTenantCredential(tenant: string, id: string): Promise<boolean> {
    const r = await this.db
      .update(schema.credentials)
      .set({ revokedAt: new Date().toISOString() })
      .where(
        and(
          eq(schema.credentials.tenant, tenant),
          eq(schema.credentials.id, id),
          ne(schema.credentials.kind, "admin"),
          isNull(schema.credentials.revokedAt),
        ),
      )
      .run();
    return (r.meta.changes ?? 0) > 0;
  }

  async touchCredential(id: string): Promise<void> {
    await this.db
      .update(schema.credentials)
      .set({ lastUsedAt: new Date().toISOString() })
      .where(eq(schema.credentials.id, id));
  }

  async tenantSettings(tenant: string): Promise<TenantSettings | null> {
    const r = await this.db
      .select()
      .from(schema.tenantSettings)
      .where(eq(schema.tenantSettings.tenant, tenant))
      .get();
    return r
      ? { textRetentionDays: r.textRetentionDays, quotas: r.quotas ?? {}, updatedAt: r.updatedAt }
      : null;
  }

  async putTenantSettings(tenant: string, patch: Partial<Omit<TenantSettings, "updatedAt">>) {
    const now = new Date().toISOString();
    const current = (await this.tenantSettings(tenant)) ?? {
      textRetentionDays: null,
      quotas: {},
      updatedAt: now,
    };
    const next: TenantSettings = { ...current, ...patch, updatedAt: now };
    await this.db
      .insert(schema.tenantSettings)
      .values({ tenant, ...next })
      .onConflictDoUpdate({ target: schema.tenantSettings.tenant, set: next });
    return next;
  }

  async chunkUsage(tenant: string, keyId: string): Promise<ChunkUsage> {
    const since = new Date(Date.now() - 86_400_000).toISOString();
    const r = await this.db
      .select({
        tenantLast24h: sql<number>`coalesce(sum(CASE WHEN created_at > ${since} THEN chunks_total END), 0)`,
        keyLast24h: sql<number>`coalesce(sum(CASE WHEN created_at > ${since} AND created_by = ${keyId} THEN chunks_total END), 0)`,
        tenantOldestAt: sql<
          string | null
        >`min(CASE WHEN created_at > ${since} THEN created_at END)`,
        keyOldestAt: sql<
          string | null
        >`min(CASE WHEN created_at > ${since} AND created_by = ${keyId} THEN created_at END)`,
        // An ended job keeps the vectors it got; a live one may still get all but its failures.
        storedVectors: sql<number>`coalesce(sum(CASE WHEN status IN ('queued', 'running') THEN chunks_total - chunks_failed ELSE chunks_done END), 0)`,
      })
      .from(schema.jobs)
      .where(eq(schema.jobs.tenant, tenant))
      .get();
    return (
      r ?? {
        tenantLast24h: 0,
        keyLast24h: 0,
        tenantOldestAt: null,
        keyOldestAt: null,
        storedVectors: 0,
      }
    );
  }

  async chunksByKey(tenant: string): Promise<Map<string, number>> {
    const since = new Date(Date.now() - 86_400_000).toISOString();
    const rows = await this.db
      .select({ key: schema.jobs.createdBy, n: sql<number>`sum(chunks_total)` })
      .from(schema.jobs)
      .where(and(eq(schema.jobs.tenant, tenant), gt(schema.jobs.createdAt, since)))
      .groupBy(schema.jobs.createdBy)
      .all();
    return new Map(rows.flatMap((r) => (r.key ? [[r.key, r.n] as const] : [])));
  }

  async tenantJobs(tenant: string) {
    return this.db
      .select({ id: schema.jobs.id, model: schema.jobs.model })
      .from(schema.jobs)
      .where(eq(schema.jobs.tenant, tenant))
      .all();
  }

  /**
   * Statements that take chunks out of the keyword index: a job's, or one document's. Its terms
   * derive from the text, so they go wherever the text goes.
   */
  private dropKeywords(jobId: string, documentId?: string) {
    const job = literal(jobId);
    const mine = documentId
      ? sql`job_id = ${job} AND chunk_id IN (SELECT id FROM chunks WHERE job_id = ${job} AND document_id = ${literal(documentId)})`
      : sql`job_id = ${job}`;
    return [
      this.db.run(
        sql`DELETE FROM chunk_terms WHERE rowid IN (SELECT id FROM keyword_rows WHERE ${mine})`,
      ),
      this.db.run(sql`DELETE FROM keyword_rows WHERE ${mine}`),
    ] as const;
  }

  async purgeText(jobId: string): Promise<void> {
    await this.db.batch([
      ...this.dropKeywords(jobId),
      this.db.update(schema.chunks).set({ text: "" }).where(eq(schema.chunks.jobId, jobId)),
      this.db
        .update(schema.jobs)
        .set({ textPurgedAt: new Date().toISOString() })
        .where(and(eq(schema.jobs.id, jobId), isNull(schema.jobs.textPurgedAt))),
    ]);
  }

  async getDocument(tenant: string, jobId: string, documentId: string) {
    const doc = await this.db
      .select({ seq: schema.documents.seq, id: schema.documents.id })
      .from(schema.documents)
      .innerJoin(schema.jobs, eq(schema.jobs.id, schema.documents.jobId))
      .where(
        and(
          eq(schema.documents.jobId, jobId),
          eq(schema.documents.id, documentId),
          eq(schema.jobs.tenant, tenant),
        ),
      )
      .get();
    if (!doc) return null;
    const rows = await this.db
      .select({ id: schema.chunks.id })
      .from(schema.chunks)
      .where(and(eq(schema.chunks.jobId, jobId), eq(schema.chunks.documentId, documentId)))
      .all();
    return { ...doc, chunkIds: rows.map((r) => r.id) };
  }

  async deleteDocument(jobId: string, seq: number): Promise<void> {
    const doc = await this.db
      .select({ id: schema.documents.id })
      .from(schema.documents)
      .where(and(eq(schema.documents.jobId, jobId), eq(schema.documents.seq, seq)))
      .get();
    if (!doc) return;
    const c = schema.chunks;
    const mine = and(eq(c.jobId, jobId), eq(c.documentId, doc.id));
    const count = (status: "done" | "failed" | null) =>
      sql<number>`(SELECT count(*) FROM chunks WHERE job_id = ${jobId} AND document_id = ${doc.id}${status ? sql` AND status = ${status}` : sql``})`;
    await this.db.batch([
      // Counters first, while the chunks are still there to count.
      this.db
        .update(schema.jobs)
        .set({
          documents: sql`documents - 1`,
          chunksTotal: sql`chunks_total - ${count(null)}`,
          chunksDone: sql`chunks_done - ${count("done")}`,
          chunksFailed: sql`chunks_failed - ${count("failed")}`,
        })
        .where(eq(schema.jobs.id, jobId)),
      ...this.dropKeywords(jobId, doc.id),
      this.db.delete(c).where(mine),
      this.db
        .delete(schema.documents)
        .where(and(eq(schema.documents.jobId, jobId), eq(schema.documents.seq, seq))),
    ]);
  }

  async eraseTenant(tenant: string): Promise<void> {
    await this.db.batch([
      this.db.delete(schema.credentials).where(eq(schema.credentials.tenant, tenant)),
      this.db.delete(schema.tenantSettings).where(eq(schema.tenantSettings.tenant, tenant)),
    ]);
  }

  async quarantineCredential(id: string, reason: string): Promise<void> {
    await this.db
      .update(schema.credentials)
      .set({ quarantinedAt: new Date().toISOString(), quarantineReason: reason })
      .where(and(eq(schema.credentials.id, id), isNull(schema.credentials.quarantinedAt)));
  }

  async revokeCredential(id: string, kind: Credential["kind"]): Promise<boolean> {
    const r = await this.db
      .update(schema.credentials)
      .set({ revokedAt: new Date().toISOString() })
      .where(
        and(
          eq(schema.credentials.id, id),
          eq(schema.credentials.kind, kind),
          isNull(schema.credentials.revokedAt),
        ),
      )
      .run();
    return (r.meta.changes ?? 0) > 0;
  }

  async credentialStates(
    ids: string[],
  ): Promise<Map<string, "active" | "revoked" | "quarantined">> {
    const out = new Map<string, "active" | "revoked" | "quarantined">();
    for (let i = 0; i < ids.length; i += 90) {
      const rows = await this.db
        .select({
          id: schema.credentials.id,
          revokedAt: schema.credentials.revokedAt,
          quarantinedAt: schema.credentials.quarantinedAt,
          expiresAt: schema.credentials.expiresAt,
        })
        .from(schema.credentials)
        .where(inArray(schema.credentials.id, ids.slice(i, i + 90)))
        .all();
      const now = new Date().toISOString();
      for (const r of rows)
        out.set(
          r.id,
          r.revokedAt || (r.expiresAt && r.expiresAt <= now)
            ? "revoked"
            : r.quarantinedAt
              ? "quarantined"
              : "active",
        );
    }
    return out;
  }

  async createJob(input: NewJob) {
    const { db } = this;
    const jobRow: typeof schema.jobs.$inferInsert = {
      id: input.id,
      tenant: input.tenant,
      status: "queued",
      model: input.model,
      collection: input.collection,
      documents: input.documents.length,
      chunksTotal: input.chunks.length,
      chunkMaxChars: input.chunking.maxChars,
      chunkOverlap: input.chunking.overlap,
      verification: input.verification,
      pool: input.pool,
      piiMask: input.piiMask,
      textRetentionDays: input.textRetentionDays,
      createdBy: input.createdBy,
      idempotencyKey: input.idempotencyKey,
      requestHash: input.requestHash,
      createdAt: input.createdAt,
      webhookId: input.webhook?.id ?? null,
      webhookUrl: input.webhook?.url ?? null,
    };
    // One batch is one transaction: the job appears with all its chunks or not at all.
    const stmts = [db.insert(schema.jobs).values(jobRow)] as const;
    const rest = [];
    const docRows = input.documents.map((d) => ({
      jobId: input.id,
      seq: d.seq,
      id: d.id,
      metadata: d.metadata,
      chars: d.chars,
      chunks: input.chunks.filter((c) => c.documentSeq === d.seq).length,
    }));
    for (let i = 0, n = rowsPerStatement(schema.documents); i < docRows.length; i += n) {
      rest.push(db.insert(schema.documents).values(docRows.slice(i, i + n)));
    }
    // Text is sealed under the tenant's key, bound to its chunk id.
    const sealed = await Promise.all(
      input.chunks.map((c) => this.seal.encrypt(input.tenant, c.text, c.id)),
    );
    const chunkRows = input.chunks.map((c, i) => ({
      id: c.id,
      jobId: input.id,
      documentId: c.documentId,
      index: c.index,
      text: sealed[i] as string,
      start: c.start,
      end: c.end,
    }));
    for (let i = 0, n = rowsPerStatement(schema.chunks); i < chunkRows.length; i += n) {
      rest.push(db.insert(schema.chunks).values(chunkRows.slice(i, i + n)));
    }
    rest.push(...this.keywordInserts(input));
    try {
      await db.batch([...stmts, ...rest]);
    } catch (err) {
      // A concurrent submit with the same Idempotency-Key won the race: return its job.
      if (input.idempotencyKey && /UNIQUE/i.test(String(err))) {
        const existing = await this.findJobByIdempotencyKey(input.tenant, input.idempotencyKey);
        if (existing) return { ...existing, created: false };
      }
      throw err;
    }
    const job = await this.getJob(input.tenant, input.id);
    if (!job) throw new Error(`job ${input.id} vanished after insert`);
    return { job, created: true, requestHash: input.requestHash, dispatched: false };
  }

  /**
   * The keyword index's rows for a new job: `keyword_rows` first, then each chunk's terms into
   * `chunk_terms` under its row's id, many chunks per statement through one JSON parameter (D1
   * binds at most 100 parameters, and a statement may be at most 100 KB).
   */
  private keywordInserts(input: NewJob) {
    const indexed = input.chunks.filter((c) => c.terms);
    const out = [];
    for (let i = 0, n = rowsPerStatement(schema.keywordRows); i < indexed.length; i += n) {
      out.push(
        this.db
          .insert(schema.keywordRows)
          .values(indexed.slice(i, i + n).map((c) => ({ chunkId: c.id, jobId: input.id }))),
      );
    }
    let pairs: [string, string][] = [];
    let bytes = 0;
    const flush = () => {
      if (pairs.length === 0) return;
      out.push(
        this.db.run(sql`INSERT INTO chunk_terms (rowid, terms)
          SELECT k.id, json_extract(p.value, '$[1]') FROM json_each(${literal(JSON.stringify(pairs))}) p
          JOIN keyword_rows k ON k.chunk_id = json_extract(p.value, '$[0]')`),
      );
      pairs = [];
      bytes = 0;
    };
    for (const c of indexed) {
      const terms = c.terms as string;
      if (bytes + terms.length > KEYWORD_STATEMENT_BYTES) flush();
      pairs.push([c.id, terms]);
      bytes += terms.length + c.id.length + 8;
    }
    flush();
    return out;
  }

  async keywordSearch(q: KeywordQuery) {
    const filter = q.filter ? sql` AND ${boundCondition(q.filter)}` : sql``;
    // BM25 is negative in FTS5 (more negative is better): reported as its opposite.
    const rows = await this.db.all<{ id: string; score: number; terms: string }>(sql`
      SELECT k.chunk_id AS id, -bm25(chunk_terms) AS score, chunk_terms.terms AS terms
      FROM chunk_terms
      JOIN keyword_rows k ON k.id = chunk_terms.rowid
      JOIN chunks c ON c.id = k.chunk_id
      JOIN jobs j ON j.id = c.job_id
      LEFT JOIN documents d ON d.job_id = c.job_id AND d.id = c.document_id
      WHERE chunk_terms MATCH ${q.match} AND j.tenant = ${q.tenant} AND j.model = ${q.model}
        AND c.status = 'done'${filter}
      ORDER BY bm25(chunk_terms), k.chunk_id
      LIMIT ${q.limit}`);
    return rows;
  }

  async listCollections(tenant: string): Promise<Collection[]> {
    const j = schema.jobs;
    return this.db
      .select({
        name: j.collection,
        jobs: sql<number>`count(*)`,
        documents: sql<number>`coalesce(sum(${j.documents}), 0)`,
        chunks: sql<number>`coalesce(sum(${j.chunksDone}), 0)`,
        createdAt: sql<string>`min(${j.createdAt})`,
        updatedAt: sql<string>`max(coalesce(${j.completedAt}, ${j.createdAt}))`,
      })
      .from(j)
      .where(eq(j.tenant, tenant))
      .groupBy(j.collection)
      .orderBy(asc(j.collection))
      .all();
  }

  async findJobByIdempotencyKey(tenant: string, key: string) {
    const r = await this.db
      .select()
      .from(schema.jobs)
      .where(and(eq(schema.jobs.tenant, tenant), eq(schema.jobs.idempotencyKey, key)))
      .get();
    return r
      ? { job: toJob(r), requestHash: r.requestHash, dispatched: r.dispatchedAt !== null }
      : null;
  }

  async markDispatched(jobId: string): Promise<void> {
    await this.db
      .update(schema.jobs)
      .set({ dispatchedAt: new Date().toISOString() })
      .where(eq(schema.jobs.id, jobId));
  }

  async getJob(tenant: string, id: string): Promise<Job | null> {
    const r = await this.db
      .select()
      .from(schema.jobs)
      .where(and(eq(schema.jobs.id, id), eq(schema.jobs.tenant, tenant)))
      .get();
    return r ? toJob(r) : null;
  }

  async getJobById(id: string): Promise<Job | null> {
    const r = await this.db.select().from(schema.jobs).where(eq(schema.jobs.id, id)).get();
    return r ? toJob(r) : null;
  }

  private chunkQuery() {
    const c = schema.chunks;
    return this.db
      .select({
        id: c.id,
        jobId: c.jobId,
        documentId: c.documentId,
        collection: schema.jobs.collection,
        index: c.index,
        text: c.text,
        status: c.status,
        error: c.error,
        start: c.start,
        end: c.end,
        metadata: schema.documents.metadata,
      })
      .from(c)
      .innerJoin(schema.jobs, eq(schema.jobs.id, c.jobId))
      .innerJoin(
        schema.documents,
        and(eq(schema.documents.jobId, c.jobId), eq(schema.documents.id, c.documentId)),
      );
  }

  /** Rows as chunks, their text opened (null once purged by retention). */
  private async toChunks(tenant: string, rows: ChunkSelect[]): Promise<ChunkRow[]> {
    const texts = await Promise.all(
      rows.map((r) => (r.text === "" ? null : this.seal.decrypt(tenant, r.text, r.id))),
    );
    return rows.map((r, i) => ({ ...D1Store.toChunk(r), text: texts[i] ?? null }));
  }

  private static toChunk(r: ChunkSelect): ChunkRow {
    return {
      id: r.id,
      jobId: r.jobId,
      documentId: r.documentId,
      collection: r.collection,
      index: r.index,
      text: r.text,
      status: r.status,
      start: r.start,
      end: r.end,
      metadata: r.metadata ?? {},
      ...(r.error ? { error: r.error } : {}),
    };
  }

  async listChunks(tenant: string, jobId: string, after: string | null, limit: number) {
    const c = schema.chunks;
    const rows = await this.chunkQuery()
      .where(
        and(
          eq(c.jobId, jobId),
          eq(schema.jobs.tenant, tenant),
          after ? gt(c.id, after) : undefined,
        ),
      )
      .orderBy(asc(c.id))
      .limit(limit)
      .all();
    return this.toChunks(tenant, rows);
  }

  async getChunks(tenant: string, ids: string[]) {
    if (ids.length === 0) return [];
    const rows = await this.chunkQuery()
      .where(and(inArray(schema.chunks.id, ids), eq(schema.jobs.tenant, tenant)))
      .all();
    return this.toChunks(tenant, rows);
  }

  private async record(
    jobId: string,
    chunkIds: string[],
    to: "done" | "failed",
    reason: string | null,
  ) {
    const j = schema.jobs;
    const stmts = [];
    for (let i = 0; i < chunkIds.length; i += 90) {
      const ids = chunkIds.slice(i, i + 90);
      stmts.push(
        this.db
          .update(schema.chunks)
          .set({ status: to, error: reason })
          .where(
            and(
              eq(schema.chunks.jobId, jobId),
              inArray(schema.chunks.id, ids),
              eq(schema.chunks.status, "pending"),
            ),
          ),
      );
      // changes() is the row count of the UPDATE just before it in this transaction, so the
      // counter moves by exactly the chunks that changed state: replays add nothing.
      stmts.push(
        this.db
          .update(j)
          .set(
            to === "done"
              ? { chunksDone: sql`chunks_done + changes()` }
              : { chunksFailed: sql`chunks_failed + changes()` },
          )
          .where(eq(j.id, jobId)),
      );
    }
    stmts.push(
      this.db
        .update(j)
        .set({ status: SETTLED_STATUS, completedAt: SETTLED_AT })
        .where(and(eq(j.id, jobId), inArray(j.status, ["queued", "running"]))),
    );
    const [first, ...rest] = stmts;
    if (first) await this.db.batch([first, ...rest]);
  }

  recordDone(jobId: string, chunkIds: string[]) {
    return this.record(jobId, chunkIds, "done", null);
  }

  recordFailed(jobId: string, chunkIds: string[], reason: string) {
    return this.record(jobId, chunkIds, "failed", reason);
  }

  async markStarted(jobId: string): Promise<void> {
    await this.db
      .update(schema.jobs)
      .set({ status: "running", startedAt: new Date().toISOString() })
      .where(and(eq(schema.jobs.id, jobId), eq(schema.jobs.status, "queued")));
  }

  async cancelJob(tenant: string, id: string): Promise<boolean> {
    const j = schema.jobs;
    const r = await this.db
      .update(j)
      .set({ status: "cancelled", completedAt: new Date().toISOString() })
      .where(and(eq(j.id, id), eq(j.tenant, tenant), inArray(j.status, ["queued", "running"])))
      .run();
    return r.meta.changes > 0;
  }

  async chunkIds(jobId: string): Promise<string[]> {
    const rows = await this.db
      .select({ id: schema.chunks.id })
      .from(schema.chunks)
      .where(eq(schema.chunks.jobId, jobId))
      .all();
    return rows.map((r) => r.id);
  }

  async deleteJob(jobId: string): Promise<void> {
    await this.db.batch([
      ...this.dropKeywords(jobId),
      this.db.delete(schema.chunks).where(eq(schema.chunks.jobId, jobId)),
      this.db.delete(schema.documents).where(eq(schema.documents.jobId, jobId)),
      this.db.delete(schema.jobs).where(eq(schema.jobs.id, jobId)),
    ]);
  }

  async upsertWorker(w: WorkerInfo): Promise<void> {
    const row = { ...w, lastSeenAt: w.connectedAt, disconnectedAt: null };
    await this.db
      .insert(schema.workers)
      .values(row)
      .onConflictDoUpdate({ target: schema.workers.id, set: row });
  }

  async workerSeen(id: string, chunksDone: number, disconnected: boolean): Promise<void> {
    const now = new Date().toISOString();
    await this.db
      .update(schema.workers)
      .set({ lastSeenAt: now, chunksDone, ...(disconnected ? { disconnectedAt: now } : {}) })
      .where(eq(schema.workers.id, id));
  }
}

export type { JobStatus };
