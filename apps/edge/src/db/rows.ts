import {
  type ApiKey,
  type Collection,
  type IngestReport,
  type Job,
  type JobStatus,
  SCOPES,
  type Scope,
} from "@p2pa/shared";
import { type Column, eq, gt, type SQL, sql } from "drizzle-orm";
import { bytesOfHex } from "../lib/crypto.js";
import { AppError } from "../lib/errors.js";
import type * as schema from "./schema.js";
import type {
  ChunkRow,
  ChunkSelect,
  ChunkUsage,
  Credential,
  DocumentListFilter,
  NewChunk,
  NewCredential,
  NewDocument,
  NewJob,
  TenantSettings,
  TextSealer,
} from "./store.js";

/**
 * What both metadata stores (D1Store, PgStore) do alike whatever the database: rows to the
 * API's shapes and back, the rules that decide a value before it is written, and the SQL that
 * reads the same in either dialect. Each store keeps only its own statements.
 */

// Reading rows.

/** A job's row as either backend reads it. */
type JobRow = typeof schema.jobs.$inferSelect;

/** A float32 vector's bytes as they are stored (a view: no copy). */
export function vectorBytes(v: Float32Array): Uint8Array {
  return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

/** A stored vector read back as hex (D1's `hex()`, Postgres's `encode(…, 'hex')`). */
export function vectorOfHex(text: string): Float32Array {
  return new Float32Array(bytesOfHex(text).buffer);
}

/** A job's row as the API shows it. */
export function toJob(r: JobRow): Job {
  return {
    id: r.id,
    status: r.status,
    model: r.model,
    collection: r.collection,
    documents: r.documents,
    documentsUnchanged: r.documentsUnchanged,
    chunks: {
      total: r.chunksTotal,
      done: r.chunksDone,
      failed: r.chunksFailed,
      cached: r.chunksCached,
    },
    accepting: r.accepting,
    keepOriginals: r.keepOriginals,
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

/** A job found by its Idempotency-Key, with what the replay of its request needs. */
/** A job as found by its Idempotency-Key: what a retry of its request is compared with and answered. */
export interface IdempotentJob {
  job: Job;
  requestHash: string | null;
  /** Whether the coordinator has the job's tasks (a retry dispatches them otherwise). */
  dispatched: boolean;
  /** What the first request took and refused, once it ended. */
  ingest: IngestReport | null;
}

export function idempotentJob(r: JobRow): IdempotentJob {
  return {
    job: toJob(r),
    requestHash: r.requestHash,
    dispatched: r.dispatchedAt !== null,
    ingest: r.ingest ?? null,
  };
}

/** A chunk's row (text already opened) as the API shows it. */
function toChunkRow(r: ChunkSelect): ChunkRow {
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
    ...(r.headings?.length ? { headings: r.headings } : {}),
    ...(r.page != null ? { page: r.page } : {}),
    ...(r.error ? { error: r.error } : {}),
  };
}

/** A credential's row as a listing shows it (no hash). */
export function toApiKey(r: typeof schema.credentials.$inferSelect): ApiKey {
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

/** A credential's row as authentication reads it. */
export function toCredential(row: {
  id: string;
  kind: Credential["kind"];
  tenant: string;
  quarantined: string | null;
  scopes: string[] | null;
  quotas: Record<string, number> | null;
  expiresAt: string | null;
}): Credential {
  const { quarantined, scopes, quotas, ...cred } = row;
  const out: Credential = {
    ...cred,
    // Keys made before scopes existed keep what they could do: everything.
    scopes: (scopes as Scope[] | null) ?? [...SCOPES],
    quotas: quotas ?? {},
  };
  return quarantined ? { ...out, quarantined } : out;
}

/** The columns of `credentials` authentication reads under their own names. */
type CredentialField = "id" | "kind" | "tenant" | "scopes" | "quotas" | "expiresAt";

/** `credentials`' columns that authentication reads (`toCredential`'s row), of either schema. */
export function credentialColumns<C extends Record<CredentialField | "quarantineReason", Column>>(
  c: C,
): Pick<C, CredentialField> & { quarantined: C["quarantineReason"] } {
  return {
    id: c.id,
    kind: c.kind,
    tenant: c.tenant,
    quarantined: c.quarantineReason,
    scopes: c.scopes,
    quotas: c.quotas,
    expiresAt: c.expiresAt,
  };
}

/** Whether a credential is usable now (`now`: an ISO instant). */
export function credentialState(
  r: { revokedAt: string | null; quarantinedAt: string | null; expiresAt: string | null },
  now: string,
): "active" | "revoked" | "quarantined" {
  return r.revokedAt || (r.expiresAt && r.expiresAt <= now)
    ? "revoked"
    : r.quarantinedAt
      ? "quarantined"
      : "active";
}

/** A tenant's settings row as the API shows it. */
export function toTenantSettings(r: {
  textRetentionDays: number | null;
  quotas: Record<string, number> | null;
  updatedAt: string;
}): TenantSettings {
  return { textRetentionDays: r.textRetentionDays, quotas: r.quotas ?? {}, updatedAt: r.updatedAt };
}

/** The settings `patch` makes of `current` (none yet: the defaults), updated now. */
export function patchedSettings(
  current: TenantSettings | null,
  patch: Partial<Omit<TenantSettings, "updatedAt">>,
): TenantSettings {
  const now = new Date().toISOString();
  const base = current ?? { textRetentionDays: null, quotas: {}, updatedAt: now };
  return { ...base, ...patch, updatedAt: now };
}

/** The start of the last 24 hours, over which usage is counted. */
export function dayAgo(): string {
  return new Date(Date.now() - 86_400_000).toISOString();
}

/** The usage of a tenant with no jobs. */
export function noUsage(): ChunkUsage {
  return {
    tenantLast24h: 0,
    keyLast24h: 0,
    tenantOldestAt: null,
    keyOldestAt: null,
    storedVectors: 0,
  };
}

/** The columns of `chunks` a chunk is read with. */
type ChunkField =
  | "id"
  | "jobId"
  | "documentId"
  | "index"
  | "text"
  | "status"
  | "error"
  | "start"
  | "end"
  | "headings"
  | "page";

/** The columns a chunk is read with (`ChunkSelect`), from `chunks` joined to its job and document. */
export function chunkColumns<
  S extends {
    chunks: Record<ChunkField, Column>;
    jobs: { collection: Column };
    documents: { metadata: Column };
  },
>(
  s: S,
): Pick<S["chunks"], ChunkField> & {
  collection: S["jobs"]["collection"];
  metadata: S["documents"]["metadata"];
} {
  const c = s.chunks;
  return {
    id: c.id,
    jobId: c.jobId,
    documentId: c.documentId,
    collection: s.jobs.collection,
    index: c.index,
    text: c.text,
    status: c.status,
    error: c.error,
    start: c.start,
    end: c.end,
    metadata: s.documents.metadata,
    headings: c.headings,
    page: c.page,
  };
}

/** A tenant's collections with the documents and chunks of their current versions. */
export function withCounts<R extends { name: string }>(
  rows: readonly R[],
  live: readonly { name: string; documents: number; chunks: number }[],
): (R & Pick<Collection, "documents" | "chunks">)[] {
  const counts = new Map(live.map((r) => [r.name, r]));
  return rows.map((r) => ({
    ...r,
    documents: counts.get(r.name)?.documents ?? 0,
    chunks: counts.get(r.name)?.chunks ?? 0,
  }));
}

// Writing rows.

/** A new credential's row. */
export function newCredentialRow(c: NewCredential) {
  return {
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
  };
}

/** How many of `chunks` came from the embedding cache (done on arrival). */
function cachedCount(chunks: readonly NewChunk[]): number {
  return chunks.filter((c) => c.cached).length;
}

/** A jobs row to insert: a column may also be an SQL expression, evaluated as it is written. */
type JobValues = {
  [K in keyof typeof schema.jobs.$inferInsert]: (typeof schema.jobs.$inferInsert)[K] | SQL;
};

/**
 * A new job's row: queued, counting its documents and the chunks the cache already gave. The
 * tenant's default retention is read by the insert itself (no round trip of its own).
 */
export function newJobRow(input: NewJob): JobValues {
  const cached = cachedCount(input.chunks);
  return {
    id: input.id,
    tenant: input.tenant,
    status: "queued",
    model: input.model,
    collection: input.collection,
    documents: input.documents.length + input.unchanged,
    documentsUnchanged: input.unchanged,
    nextSeq: input.documents.length + input.unchanged,
    chunksTotal: input.chunks.length,
    chunksDone: cached,
    chunksCached: cached,
    accepting: input.accepting,
    keepOriginals: input.keepOriginals,
    chunkMaxChars: input.chunking.maxChars,
    chunkOverlap: input.chunking.overlap,
    verification: input.verification,
    pool: input.pool,
    piiMask: input.piiMask,
    textRetentionDays:
      input.textRetentionDays === "tenant"
        ? sql`(SELECT text_retention_days FROM tenant_settings WHERE tenant = ${input.tenant})`
        : input.textRetentionDays,
    createdBy: input.createdBy,
    idempotencyKey: input.idempotencyKey,
    requestHash: input.requestHash,
    createdAt: input.createdAt,
    webhookId: input.webhook?.id ?? null,
    webhookUrl: input.webhook?.url ?? null,
  };
}

/** A job's counters moved by the documents and chunks appended to it. */
export function appendedCounters(input: {
  documents: readonly NewDocument[];
  chunks: readonly NewChunk[];
  unchanged: number;
}) {
  const cached = cachedCount(input.chunks);
  return {
    documents: sql`documents + ${input.documents.length + input.unchanged}`,
    documentsUnchanged: sql`documents_unchanged + ${input.unchanged}`,
    chunksTotal: sql`chunks_total + ${input.chunks.length}`,
    chunksDone: sql`chunks_done + ${cached}`,
    chunksCached: sql`chunks_cached + ${cached}`,
  };
}

/** A job's counters less one document, its chunks counted by `count` (null: all of them). */
export function removedCounters(count: (status: "done" | "failed" | null) => SQL) {
  return {
    documents: sql`documents - 1`,
    chunksTotal: sql`chunks_total - ${count(null)}`,
    chunksDone: sql`chunks_done - ${count("done")}`,
    chunksFailed: sql`chunks_failed - ${count("failed")}`,
  };
}

/** New document versions' rows, each with how many of `chunks` are its. */
export function newDocumentRows(input: {
  documents: readonly NewDocument[];
  chunks: readonly NewChunk[];
}) {
  const perDoc = new Map<number, number>();
  for (const c of input.chunks) perDoc.set(c.documentSeq, (perDoc.get(c.documentSeq) ?? 0) + 1);
  return input.documents.map((d) => ({
    seq: d.seq,
    id: d.id,
    docKey: d.docKey,
    state: d.state,
    version: d.version,
    contentHash: d.contentHash,
    fingerprint: d.fingerprint,
    rawKey: d.rawKey,
    metadata: d.metadata,
    chars: d.chars,
    chunks: perDoc.get(d.seq) ?? 0,
    createdAt: d.createdAt,
  }));
}

/** The originals that go with their versions' rows (small texts, sealed), keyed as the row says. */
export function newOriginalRows(documents: readonly NewDocument[]) {
  return documents.flatMap((d) =>
    d.original && d.rawKey
      ? [{ key: d.rawKey, mediaType: d.original.mediaType, body: d.original.body }]
      : [],
  );
}

/**
 * The new pending versions with nothing to compute (every chunk from the cache, or none): the
 * only ones that can settle as they arrive. A new version that is current from the start has
 * nothing to settle, and none has a failed chunk yet.
 */
export function settledOnArrival(input: {
  documents: readonly NewDocument[];
  chunks: readonly NewChunk[];
}): number[] {
  const open = new Set(input.chunks.flatMap((c) => (c.cached ? [] : [c.documentSeq])));
  return input.documents.flatMap((d) => (d.state === "pending" && !open.has(d.seq) ? [d.seq] : []));
}

/** The names of new versions that wait for chunks: each supersedes one still pending. */
export function pendingKeys(documents: readonly NewDocument[]): string[] {
  return documents.filter((d) => d.state === "pending").map((d) => d.docKey);
}

/** New chunks' rows, their text as sealed (`sealed[i]` is `chunks[i]`'s). */
export function newChunkRows(chunks: readonly NewChunk[], sealed: readonly string[]) {
  return chunks.map((c, i) => ({
    id: c.id,
    documentId: c.documentId,
    index: c.index,
    text: sealed[i] as string,
    start: c.start,
    end: c.end,
    status: c.cached ? ("done" as const) : ("pending" as const),
    headings: c.headings?.length ? c.headings : null,
    page: c.page ?? null,
    cacheKey: c.cacheKey ?? null,
  }));
}

/** The cache entries new chunks took their vectors from (each once). */
export function cacheHits(chunks: readonly NewChunk[]): string[] {
  return [...new Set(chunks.flatMap((c) => (c.cached && c.cacheKey ? [c.cacheKey] : [])))];
}

// SQL that reads the same on SQLite and Postgres.

/** A job's status from its counters, once `settled` (its condition of being over) holds. */
export function settledStatus(settled: SQL): SQL<JobStatus> {
  return sql<JobStatus>`CASE
  WHEN NOT (${settled}) THEN status
  WHEN chunks_failed = 0 THEN 'completed'
  WHEN chunks_done = 0 THEN 'failed'
  ELSE 'completed_with_errors' END`;
}

/** A tenant's jobs that a listing shows: by status and collection, then before its cursor. */
export function jobListWhere(
  j: { tenant: Column; status: Column; collection: Column; createdAt: Column; id: Column },
  tenant: string,
  q: { status?: JobStatus; collection?: string; before?: [string, string] },
) {
  return [
    eq(j.tenant, tenant),
    q.status ? eq(j.status, q.status) : undefined,
    q.collection ? eq(j.collection, q.collection) : undefined,
    q.before ? sql`(${j.createdAt}, ${j.id}) < (${q.before[0]}, ${q.before[1]})` : undefined,
  ];
}

/** A job's chunks that a page shows: those after its cursor, when it has one. */
export function chunkPageWhere(
  c: { jobId: Column; id: Column },
  jobs: { tenant: Column },
  tenant: string,
  jobId: string,
  after: string | null,
) {
  return [eq(c.jobId, jobId), eq(jobs.tenant, tenant), after ? gt(c.id, after) : undefined];
}

/**
 * The conditions of a tenant's document listing on `d`, the row of a document's newest version
 * (a table name or alias, written as it is): its collection, job, name prefix, cursor and
 * status. The status follows the same rule as a document's status (routes/documents.ts): a
 * current version whose job still runs is being indexed.
 */
/** Whether the version in `row` (an alias of documents) has a chunk that is not done. */
const undone = (row: string) =>
  `EXISTS (SELECT 1 FROM chunks u WHERE u.job_id = ${row}.job_id AND u.document_id = ${row}.id AND u.status <> 'done')`;

/**
 * SQL: whether the version in `row` has a chunk that is not done. A current version whose job
 * ended so (cancelled, or chunks failed) is not whole: it is not ready, and sending the same
 * document again computes it again.
 */
export function undoneChunks(row: string): SQL {
  return sql.raw(undone(row));
}

/** SQL: whether the version in `row` is current but will never be whole (see undoneChunks). */
export function stalledVersion(row: string): SQL {
  return sql.raw(
    `(${row}.state = 'current' AND ${undone(row)} AND EXISTS (SELECT 1 FROM jobs sj WHERE sj.id = ${row}.job_id AND sj.status NOT IN ('queued', 'running')))`,
  );
}

export function documentListWhere(d: "documents" | "d", tenant: string, q: DocumentListFilter) {
  const row = sql.raw(d);
  const same = sql`s.tenant = ${row}.tenant AND s.collection = ${row}.collection AND s.doc_key = ${row}.doc_key`;
  const has = (states: string, job?: "running" | "ended", whole?: boolean) =>
    sql`EXISTS (SELECT 1 FROM documents s JOIN jobs sj ON sj.id = s.job_id WHERE ${same} AND s.state IN (${sql.raw(states)})${
      job === undefined
        ? sql``
        : sql.raw(` AND sj.status ${job === "running" ? "" : "NOT "}IN ('queued', 'running')`)
    }${whole === undefined ? sql`` : sql` AND ${whole ? sql`NOT ` : sql``}${undoneChunks("s")}`})`;
  return [
    sql`${row}.tenant = ${tenant}`,
    sql`${row}.doc_key IS NOT NULL`,
    q.collection ? sql`${row}.collection = ${q.collection}` : undefined,
    // One row per document: its newest version.
    sql`${row}.version = (SELECT max(m.version) FROM documents m WHERE m.tenant = ${row}.tenant AND m.collection = ${row}.collection AND m.doc_key = ${row}.doc_key)`,
    q.jobId
      ? sql`EXISTS (SELECT 1 FROM documents s WHERE s.job_id = ${q.jobId} AND ${same})`
      : undefined,
    q.prefix ? sql`substr(${row}.doc_key, 1, ${q.prefix.length}) = ${q.prefix}` : undefined,
    q.after ? sql`(${row}.collection, ${row}.doc_key) > (${q.after[0]}, ${q.after[1]})` : undefined,
    q.status === "indexing"
      ? sql`(${has("'pending'")} OR ${has("'current'", "running")})`
      : q.status === "ready"
        ? sql`${has("'current'", "ended", true)} AND NOT ${has("'pending'")}`
        : q.status === "failed"
          ? sql`(NOT ${has("'current', 'pending'")} OR (${has("'current'", "ended", false)} AND NOT ${has("'pending'")}))`
          : undefined,
  ];
}

// The stores' common part.

/** Chunks' results recorded for several jobs at once, by job. */
export type RecordGroups = readonly { jobId: string; chunkIds: readonly string[] }[];

/** What `createJob` answers. */
type CreatedJob = IdempotentJob & { created: boolean };

/**
 * What D1Store and PgStore do alike around their own statements: chunk text sealed on the way
 * in and opened on the way out, a new job's answer when its insert meets another submit, and
 * the forms of recording chunks' results.
 */
export abstract class StoreBase {
  /**
   * `sealer` encrypts chunk text on the way in and decrypts it on the way out; without one,
   * touching chunk text fails (routes and the coordinator always pass one).
   */
  constructor(private readonly sealer?: TextSealer) {}

  protected get seal(): TextSealer {
    if (!this.sealer)
      throw new Error("this store was opened without a sealer; it cannot touch text");
    return this.sealer;
  }

  /** New chunks' text, each sealed under the tenant's key and bound to its chunk id. */
  protected sealChunks(tenant: string, chunks: readonly NewChunk[]): Promise<string[]> {
    return this.seal.encryptAll(
      tenant,
      chunks.map((c) => ({ plaintext: c.text, context: c.id })),
    );
  }

  /** Rows as chunks, their text opened (null once purged by retention). */
  protected async openChunks(tenant: string, rows: readonly ChunkSelect[]): Promise<ChunkRow[]> {
    const kept = rows.filter((r) => r.text !== "");
    const texts = await this.seal.decryptAll(
      tenant,
      kept.map((r) => ({ ciphertext: r.text, context: r.id })),
    );
    const opened = new Map(kept.map((r, i) => [r, texts[i] as string]));
    return rows.map((r) => ({ ...toChunkRow(r), text: opened.get(r) ?? null }));
  }

  abstract getJob(tenant: string, id: string): Promise<Job | null>;

  abstract findJobByIdempotencyKey(tenant: string, key: string): Promise<IdempotentJob | null>;

  /**
   * Prepares the write of a new job with its documents and chunks (their text sealed), to run
   * as one transaction: all of it or nothing. The write returns the job as it wrote it (read
   * in the same transaction, so no round trip more).
   */
  protected abstract jobInsert(input: NewJob): Promise<() => Promise<Job>>;

  /** Whether the database refused a row for a unique index (`err`, as it was thrown). */
  protected abstract isUniqueViolation(err: unknown): boolean;

  /** Whether the database refused a row for the unique index on live document versions. */
  protected abstract isVersionRace(err: unknown): boolean;

  async createJob(input: NewJob): Promise<CreatedJob> {
    const insert = await this.jobInsert(input);
    let job: Job;
    try {
      job = await insert();
    } catch (err) {
      // A concurrent submit with the same Idempotency-Key won the race: return its job.
      if (input.idempotencyKey && this.isUniqueViolation(err)) {
        const existing = await this.findJobByIdempotencyKey(input.tenant, input.idempotencyKey);
        if (existing) return { ...existing, created: false };
      }
      throw this.raced(err);
    }
    return { job, created: true, requestHash: input.requestHash, dispatched: false, ingest: null };
  }

  /**
   * Two submits of the same document name raced, and the unique index on live versions refused
   * the second: nothing of it was written (a 409). Other errors pass through.
   */
  protected raced(err: unknown): unknown {
    if (!this.isVersionRace(err)) return err;
    return new AppError(
      409,
      "conflict",
      "a document of this request was submitted by another request at the same moment; retry",
    );
  }

  /**
   * Moves the groups' pending chunks to `to` (once each) with the job counters, and returns per
   * job the seqs of its pending versions these chunks belong to that have none left to compute.
   */
  protected abstract record(
    groups: RecordGroups,
    to: "done" | "failed",
    reason: string | null,
  ): Promise<Map<string, number[]>>;

  async recordDone(jobId: string, chunkIds: string[]): Promise<{ settled: number[] }> {
    const settled = await this.record([{ jobId, chunkIds }], "done", null);
    return { settled: settled.get(jobId) ?? [] };
  }

  recordDoneAll(groups: RecordGroups): Promise<Map<string, number[]>> {
    return this.record(groups, "done", null);
  }

  async recordFailed(
    jobId: string,
    chunkIds: string[],
    reason: string,
  ): Promise<{ settled: number[] }> {
    const settled = await this.record([{ jobId, chunkIds }], "failed", reason);
    return { settled: settled.get(jobId) ?? [] };
  }
}
