import type {
  ApiKey,
  Chunk,
  Collection,
  IngestReport,
  Job,
  JobStatus,
  PiiKind,
  Pool,
  Quotas,
  Scope,
  Verification,
} from "@p2pa/shared";
import {
  and,
  asc,
  desc,
  eq,
  gt,
  inArray,
  isNull,
  ne,
  notInArray,
  or,
  type SQL,
  type SQLWrapper,
  sql,
} from "drizzle-orm";
import { type DrizzleD1Database, drizzle } from "drizzle-orm/d1";
import { hex } from "../lib/crypto.js";
import { slices } from "../lib/slices.js";
import { compileFilter } from "../vector/filter.js";
import {
  appendedCounters,
  cacheHits,
  chunkColumns,
  credentialColumns,
  credentialState,
  dayAgo,
  documentListWhere,
  type IdempotentJob,
  idempotentJob,
  jobListWhere,
  newChunkRows,
  newCredentialRow,
  newDocumentRows,
  newJobRow,
  newOriginalRows,
  noUsage,
  patchedSettings,
  pendingKeys,
  type RecordGroups,
  removedCounters,
  StoreBase,
  settledOnArrival,
  settledStatus,
  stalledVersion,
  toApiKey,
  toCredential,
  toJob,
  toTenantSettings,
  undoneChunks,
  vectorBytes,
  vectorOfHex,
  withCounts,
} from "./rows.js";
import * as schema from "./schema.js";

/**
 * The metadata store: the one module that knows the database. Routes and Durable Objects
 * speak to this interface only; D1 (`D1Store`, here) and Postgres through Neon (`PgStore`,
 * pg-store.ts) implement it, and open.ts picks one by `METADATA_BACKEND`.
 */
export interface MetadataStore {
  /** Whether the database answers (the health check). */
  ping(): Promise<boolean>;
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
  ): Promise<{ seq: number; id: string; rawKey: string | null; chunkIds: string[] } | null>;
  /** The originals a job's documents name (to delete those no other document shares). */
  originalsOf(jobId: string): Promise<string[]>;
  /** Versions of the named documents that are current or pending, with their job's model. */
  liveRows(tenant: string, names: [collection: string, key: string][]): Promise<VersionRow[]>;
  /** Removes one document with its chunks, and takes them off the job's counters. */
  deleteDocument(jobId: string, seq: number): Promise<void>;
  /** Erases a tenant's credentials and settings (its jobs are deleted one by one first). */
  eraseTenant(tenant: string): Promise<void>;
  createJob(input: NewJob): Promise<IdempotentJob & { created: boolean }>;
  findJobByIdempotencyKey(tenant: string, key: string): Promise<IdempotentJob | null>;
  /**
   * Notes that the coordinator has the job's tasks, and, for a job made with an
   * Idempotency-Key, what its request took and refused (`ingest`), to answer a retry with.
   * Returns the job as it is then (null when it is gone).
   */
  markDispatched(jobId: string, ingest?: IngestReport): Promise<Job | null>;
  getJob(tenant: string, id: string): Promise<Job | null>;
  /** A job by id alone, for the coordinator (which has no tenant in hand). */
  getJobById(id: string): Promise<Job | null>;
  listChunks(
    tenant: string,
    jobId: string,
    after: string | null,
    limit: number,
  ): Promise<ChunkRow[]>;
  /** Chunks by id; `currentOnly`: only those of documents' current versions (what search shows). */
  getChunks(tenant: string, ids: string[], opts?: { currentOnly?: boolean }): Promise<ChunkRow[]>;
  /**
   * Marks chunks done (once each) and moves the job's counters. Idempotent. Returns `settled`:
   * the seqs of the pending document versions these chunks belong to that have no chunk left
   * to compute. They stay pending, and their job unfinished, until `promote` settles them (the
   * caller writes their vectors to the index first, so a version never becomes current without
   * them).
   */
  recordDone(jobId: string, chunkIds: string[]): Promise<{ settled: number[] }>;
  /**
   * `recordDone` for the chunks of several jobs in one transaction (one round trip): each
   * job's `settled` seqs, by job id.
   */
  recordDoneAll(
    groups: readonly { jobId: string; chunkIds: readonly string[] }[],
  ): Promise<Map<string, number[]>>;
  /** Marks chunks failed (once each) with a reason, like `recordDone`. */
  recordFailed(jobId: string, chunkIds: string[], reason: string): Promise<{ settled: number[] }>;
  /** Seqs of the job's pending versions with no chunk left to compute (see `recordDone`). */
  settledVersions(jobId: string): Promise<number[]>;
  /**
   * Settles these versions of the job in one transaction: one whose chunks are all done becomes
   * current as its old version is superseded; one with a failed chunk fails and the current
   * version stays. Then the job's status. Idempotent. Returns how many versions it superseded.
   */
  promote(jobId: string, seqs: number[]): Promise<{ superseded: number }>;
  markStarted(jobId: string): Promise<void>;
  /** Moves a queued or running job to cancelled; false when it had already ended. */
  cancelJob(tenant: string, id: string): Promise<boolean>;
  /** Ids of all of a job's chunks (they are also its vector ids). */
  chunkIds(jobId: string): Promise<string[]>;
  /** Removes a job with its documents and chunks. */
  deleteJob(jobId: string): Promise<void>;
  /**
   * Takes `count` document seqs of a job that is accepting, for a batch about to be added: the
   * first of them, or null when the job takes no more documents. Requests adding to one job at
   * the same moment each get seqs of their own.
   */
  reserveSeqs(tenant: string, jobId: string, count: number): Promise<number | null>;
  /** Adds documents to a job that is accepting (see NewJob.accepting); false when it is not. */
  appendDocuments(input: NewDocuments): Promise<boolean>;
  /** Stops a job taking documents; it settles once its chunks are. False when it was not open. */
  closeJob(tenant: string, id: string): Promise<boolean>;
  /** The live versions (current and pending) of documents named by `keys` in a collection. */
  liveVersions(tenant: string, collection: string, keys: string[]): Promise<LiveVersion[]>;
  /** Every version of one document, newest first. */
  documentVersions(
    tenant: string,
    collection: string | undefined,
    key: string,
  ): Promise<VersionRow[]>;
  /** Documents (one row per name: its newest version), by collection and name. */
  listDocuments(tenant: string, q: DocumentListFilter): Promise<VersionRow[]>;
  /** Superseded versions whose chunks, vectors and original are still to be removed. */
  versionsToPrune(tenant: string, limit: number): Promise<VersionRow[]>;
  /** Removes superseded versions' chunks, keyword and cache entries (their rows stay). */
  pruneVersions(versions: { jobId: string; seq: number; id: string }[]): Promise<void>;
  /** Which of these shared originals (schema.SHARED_ORIGINAL) a live row still names. */
  sharedOriginalsInUse(tenant: string, rawKeys: string[]): Promise<Set<string>>;
  /** A small original kept in D1, sealed, or null. */
  getOriginal(tenant: string, key: string): Promise<{ mediaType: string; body: string } | null>;
  /** Deletes small originals kept in D1. */
  deleteOriginals(tenant: string, keys: string[]): Promise<void>;
  /** A tenant's jobs, newest first. */
  listJobs(tenant: string, q: JobListFilter): Promise<Job[]>;
  /** Vectors cached for these keys (see embeddingCache). */
  cachedVectors(tenant: string, model: string, keys: string[]): Promise<Map<string, Float32Array>>;
  /** Caches confirmed vectors; an existing entry moves to `jobId` and takes the new vector. */
  cachePut(tenant: string, model: string, jobId: string, entries: CacheEntry[]): Promise<void>;
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
  encryptAll(
    tenant: string,
    items: readonly { plaintext: string; context: string }[],
  ): Promise<string[]>;
  decryptAll(
    tenant: string,
    items: readonly { ciphertext: string; context: string }[],
  ): Promise<string[]>;
}

/** A document version a job adds (see schema.documents). */
export interface NewDocument {
  seq: number;
  id: string;
  metadata: Record<string, unknown> | null;
  chars: number;
  docKey: string;
  state: "pending" | "current";
  version: number;
  contentHash: string;
  /** Null for a document without an id (nothing is ever compared with it). */
  fingerprint: string | null;
  rawKey: string | null;
  createdAt: string;
  /** The version's own original (a small text, sealed by the caller), kept under `rawKey`. */
  original?: { mediaType: string; body: string };
}

export interface NewChunk {
  id: string;
  documentSeq: number;
  documentId: string;
  index: number;
  text: string;
  start: number;
  end: number;
  /** The chunk's keyword-index document (hashed words, search/terms.ts); none: not indexed. */
  terms?: string;
  headings?: string[];
  page?: number;
  /** Its key in the embedding cache. */
  cacheKey?: string;
  /** Its vector came from the cache: it is done on arrival. */
  cached?: boolean;
}

/** Documents added to an open job. */
export interface NewDocuments {
  jobId: string;
  tenant: string;
  documents: NewDocument[];
  chunks: NewChunk[];
  /** Documents skipped as unchanged. */
  unchanged: number;
}

/** A live document version, as a new submission of the same name checks it. */
/**
 * A live version of a named document, or (`none`) the newest version of one that has no live
 * version left (its job deleted, cancelled or failed), which only says what number comes next.
 */
export interface LiveVersion {
  docKey: string;
  state: "pending" | "current" | "none";
  version: number;
  fingerprint: string | null;
  jobId: string;
  /** Highest version number the name has had (any state). */
  maxVersion: number;
  /** Current, but its job ended with chunks not done: sending it again computes it again. */
  stalled: boolean;
}

export interface VersionRow {
  jobId: string;
  seq: number;
  id: string;
  tenant: string;
  collection: string;
  docKey: string;
  state: (typeof schema.DOCUMENT_STATES)[number];
  version: number;
  contentHash: string | null;
  rawKey: string | null;
  metadata: Record<string, unknown> | null;
  chars: number;
  chunks: number;
  error: string | null;
  createdAt: string | null;
  prunedAt: string | null;
  model: string;
  /** The status of the job that made the version. */
  jobStatus: JobStatus;
  /** Every chunk of the version is done. */
  complete: boolean;
}

export interface DocumentListFilter {
  collection?: string;
  status?: "indexing" | "ready" | "failed";
  jobId?: string;
  prefix?: string;
  /** After this (collection, name). */
  after?: [string, string];
  limit: number;
}

export interface JobListFilter {
  status?: JobStatus;
  collection?: string;
  /** After this (createdAt, id), newest first. */
  before?: [string, string];
  limit: number;
}

export interface CacheEntry {
  key: string;
  vector: Float32Array;
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
  /** Days its text is kept (null: kept); "tenant": the tenant's default, read as it is written. */
  textRetentionDays: number | null | "tenant";
  createdBy: string | null;
  idempotencyKey: string | null;
  requestHash: string | null;
  createdAt: string;
  webhook?: { id: string; url: string } | null;
  documents: NewDocument[];
  chunks: NewChunk[];
  /** Documents skipped as unchanged. */
  unchanged: number;
  /** The job takes more documents until closed. */
  accepting: boolean;
  keepOriginals: boolean;
}

/**
 * A keyword search. `match` is an FTS5 expression over hashed terms, an OR of quoted terms
 * (search/terms.ts's `queryTerms`); `filter` is the request's filter, which each store compiles
 * for its database with the semantics of vector/filter.ts.
 */
export interface KeywordQuery {
  tenant: string;
  model: string;
  match: string;
  filter?: KeywordFilter;
  limit: number;
}

/**
 * A search filter over the chunk's document metadata with jobId, documentId and collection set
 * by the product (`FILTER_METADATA`), and the keys it may name.
 */
export interface KeywordFilter {
  metadata: VectorizeVectorMetadataFilter;
  keys: readonly string[];
}

/**
 * The metadata a keyword search filters on, the same object the vector index filters on:
 * document metadata, with the product's keys over any document keys of the same name.
 */
export const FILTER_METADATA =
  "json_patch(coalesce(d.metadata, '{}'), json_object('jobId', c.job_id, 'documentId', c.document_id, 'collection', j.collection))";

export type ChunkRow = Omit<Chunk, "vector">;

export type ChunkSelect = {
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
  headings: string[] | null;
  page: number | null;
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

/** `ids` in slices that fit one statement beside its `others` other bound parameters. */
function bindable<T>(ids: readonly T[], others: number): T[][] {
  return slices(ids, MAX_PARAMS - others);
}
/** Chunk ids one statement takes as a bound JSON array: some 30 KB, under D1's 100 KB. */
const IDS_PER_STATEMENT = 1_000;
/** Reads sent to D1 together in one batch. */
const READS_PER_BATCH = 50;
/**
 * Embedding cache reads sent together: each answers up to IDS_PER_STATEMENT vectors of some 4 KB
 * of hex (512 dimensions), so one answer stays near 8 MB where 50 reads would bring 200 MB back
 * at once (a Worker has 128 MB).
 */
const VECTOR_READS_PER_BATCH = 2;
/** Bytes of values per many-row statement (keyword terms, originals): well under D1's 100 KB statement limit. */
const STATEMENT_BYTES = 80_000;

/**
 * A string as a SQL literal (`sqlLiteral`). Only for raw statements that go into a `batch`:
 * drizzle's D1 batch cannot bind the parameters of a raw `sql` statement (it binds only those
 * of query builders), so these carry their values inline.
 */
function literal(s: string) {
  return sql.raw(sqlLiteral(s));
}

/**
 * A job's chunk ids, after `after` when given, as a range of `id` (a chunk id column): every
 * one starts with `<jobId>.` (lib/chunk-ids.ts) and `/` is the character after `.`, so the
 * chunks' unique index on their id reads a job's chunks in order without an index on the
 * job. Inline literals, so raw statements in a batch can carry it too.
 */
function jobChunks(id: SQLWrapper, jobId: string, after: string | null = null) {
  const start = `${jobId}.`;
  const from = after !== null && after > start ? after : start;
  return sql`${id} > ${literal(from)} AND ${id} < ${literal(`${jobId}/`)}`;
}

/** A value a raw statement carries inline (see `sqlLiteral`). */
type SqlValue = string | number | null | Uint8Array;

/**
 * A value as SQL literal text: numbers as written (not finite: NULL, as JSON would give), text
 * quoted with quotes doubled. (No stored text holds NUL, which cannot stand in a statement:
 * the API refuses it in ids and metadata, ingest drops control characters from text, and JSON
 * columns carry it escaped.)
 */
function sqlLiteral(v: SqlValue): string {
  if (v === null) return "NULL";
  // Bytes as a blob literal: bound as a parameter, D1's client sends a blob as a JSON array of
  // its byte values, some 7 KB and 55 µs of the caller's CPU for a 512-dimension vector (4 KB
  // and 4.5 µs spelled as hex).
  if (v instanceof Uint8Array) return `X'${hex(v)}'`;
  if (typeof v === "number") return Number.isFinite(v) ? String(v) : "NULL";
  return v.includes("'") ? `'${v.replaceAll("'", "''")}'` : `'${v}'`;
}

/**
 * Rows many to a statement as a multi-row VALUES list of literals: D1 binds at most 100
 * parameters, so bound inserts of a 15-column row took one statement per 6 rows, some 3,500
 * statements for 10,000 documents. Each statement holds up to STATEMENT_BYTES of values and is
 * spelled by one join of its parts. (Rows sent as one JSON literal read by `json_each` and
 * `json_extract`, as before, took twice as long in SQLite as these: 78 ms against 38 ms for
 * 10,000 rows of 15 columns.) Returns each statement's text.
 */
function valuesLists(head: string, rows: readonly (readonly SqlValue[])[], tail = ""): string[] {
  const out: string[] = [];
  let group: string[] = [];
  let bytes = 0;
  const flush = () => {
    if (group.length === 0) return;
    out.push(`${head}${group.join(",")}${tail}`);
    group = [];
    bytes = 0;
  };
  // The head may carry values too (rowInserts): the statement as a whole stays in the limit.
  const room = STATEMENT_BYTES - head.length - tail.length;
  for (const row of rows) {
    const text = `(${row.map(sqlLiteral).join(",")})`;
    if (bytes + text.length > room) flush();
    group.push(text);
    bytes += text.length + 1;
  }
  flush();
  return out;
}

/**
 * Rows into `table` through `valuesLists` (a JSON column's value goes as its JSON text);
 * `prefix` picks INSERT or INSERT OR IGNORE. SQLite parses every literal of a VALUES list, and
 * for 10,000 one-sentence documents that parsing was most of their insert's time, so each
 * value is written once where it can be: a column that holds the same value in every row (a
 * submit's job, tenant, collection, state, time) as one literal in a SELECT over the VALUES
 * list, and a column that repeats an earlier one in every row (a document's key is its id) as
 * that one's place in the list.
 */
function rowInserts(
  db: DrizzleD1Database<typeof schema>,
  table: string,
  columns: readonly string[],
  rows: readonly SqlValue[][],
  prefix = "INSERT",
) {
  const names = columns.map((c) => `"${c}"`).join(", ");
  const [first] = rows;
  const same = columns.map((_, i) => rows.length > 1 && rows.every((r) => r[i] === first?.[i]));
  const copyOf = columns.map((_, j) =>
    same[j]
      ? -1
      : columns.findIndex((_, i) => i < j && !same[i] && rows.every((r) => r[i] === r[j])),
  );
  const listed = columns.map((_, i) => !same[i] && copyOf[i] === -1);
  if (!listed.includes(false) || !listed.includes(true)) {
    return valuesLists(`${prefix} INTO "${table}" (${names}) VALUES `, rows).map((text) =>
      db.run(sql.raw(text)),
    );
  }
  const place: number[] = [];
  let n = 0;
  for (const [i, l] of listed.entries()) if (l) place[i] = ++n;
  const picks = columns.map((_, i) =>
    same[i]
      ? sqlLiteral(first?.[i] ?? null)
      : `column${place[listed[i] ? i : (copyOf[i] as number)]}`,
  );
  return valuesLists(
    `${prefix} INTO "${table}" (${names}) SELECT ${picks.join(", ")} FROM (VALUES `,
    rows.map((r) => r.filter((_, i) => listed[i])),
    ")",
  ).map((text) => db.run(sql.raw(text)));
}

/** The columns a new document's row is written with (the others keep their defaults). */
const DOCUMENT_COLUMNS = [
  "job_id",
  "seq",
  "id",
  "tenant",
  "collection",
  "doc_key",
  "state",
  "version",
  "content_hash",
  "fingerprint",
  "raw_key",
  "metadata",
  "chars",
  "chunks",
  "created_at",
] as const;
/** The columns a new chunk's row is written with. */
const CHUNK_COLUMNS = [
  "id",
  "job_id",
  "document_id",
  "idx",
  "text",
  "start",
  "end",
  "status",
  "headings",
  "page",
  "cache_key",
] as const;

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

/** A job ends once it takes no more documents, its chunks are settled and so are its versions. */
const JOB_SETTLED = sql`accepting = 0 AND chunks_done + chunks_failed >= chunks_total
  AND NOT EXISTS (SELECT 1 FROM documents WHERE documents.job_id = jobs.id AND documents.state = 'pending')`;
/** Settles a job's status from its counters; applied after every counter change. */
const SETTLED_STATUS = settledStatus(JOB_SETTLED);
const SETTLED_AT = sql<string | null>`CASE
  WHEN ${JOB_SETTLED} THEN strftime('%Y-%m-%dT%H:%M:%fZ','now')
  ELSE completed_at END`;

/**
 * One drizzle database per D1 binding: building one reads the whole schema's tables and
 * relations (drizzle's relational config), and a store is opened for every request and in
 * many places within one. The database holds no state of a request's, so the isolate shares it.
 */
const databases = new WeakMap<D1Database, DrizzleD1Database<typeof schema>>();
function databaseOf(d1: D1Database): DrizzleD1Database<typeof schema> {
  let db = databases.get(d1);
  if (!db) {
    db = drizzle(d1, { schema });
    databases.set(d1, db);
  }
  return db;
}

/** D1 implementation of the metadata store (drizzle-orm). */
export class D1Store extends StoreBase implements MetadataStore {
  private readonly db: DrizzleD1Database<typeof schema>;

  /** `sealer` seals and opens chunk text (see StoreBase). */
  constructor(d1: D1Database, sealer?: TextSealer) {
    super(sealer);
    this.db = databaseOf(d1);
  }

  async findCredential(hash: string): Promise<Credential | null> {
    const row = await this.db
      .select(credentialColumns(schema.credentials))
      .from(schema.credentials)
      .where(and(eq(schema.credentials.hash, hash), isNull(schema.credentials.revokedAt)))
      .get();
    return row ? toCredential(row) : null;
  }

  async createCredential(c: NewCredential): Promise<void> {
    await this.db.insert(schema.credentials).values(newCredentialRow(c));
  }

  async ping(): Promise<boolean> {
    const r = await this.db.get<{ ok: number }>(sql`SELECT 1 AS ok`).catch(() => null);
    return r?.ok === 1;
  }

  async listCredentials(tenant: string): Promise<ApiKey[]> {
    const rows = await this.db
      .select()
      .from(schema.credentials)
      .where(eq(schema.credentials.tenant, tenant))
      .orderBy(desc(schema.credentials.createdAt), desc(schema.credentials.id))
      .all();
    return rows.map(toApiKey);
  }

  async getCredential(tenant: string, id: string): Promise<ApiKey | null> {
    const r = await this.db
      .select()
      .from(schema.credentials)
      .where(and(eq(schema.credentials.tenant, tenant), eq(schema.credentials.id, id)))
      .get();
    return r ? toApiKey(r) : null;
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
    return r ? toTenantSettings(r) : null;
  }

  async putTenantSettings(tenant: string, patch: Partial<Omit<TenantSettings, "updatedAt">>) {
    const next = patchedSettings(await this.tenantSettings(tenant), patch);
    await this.db
      .insert(schema.tenantSettings)
      .values({ tenant, ...next })
      .onConflictDoUpdate({ target: schema.tenantSettings.tenant, set: next });
    return next;
  }

  async chunkUsage(tenant: string, keyId: string): Promise<ChunkUsage> {
    const since = dayAgo();
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
        // An ended job keeps the vectors it got, less its pruned versions'; a live one may still
        // get all but its failures.
        storedVectors: sql<number>`coalesce(sum(CASE WHEN status IN ('queued', 'running') THEN chunks_total - chunks_failed ELSE chunks_done END - chunks_pruned), 0)`,
      })
      .from(schema.jobs)
      .where(eq(schema.jobs.tenant, tenant))
      .get();
    return r ?? noUsage();
  }

  async chunksByKey(tenant: string): Promise<Map<string, number>> {
    const since = dayAgo();
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
   * The statement that takes chunks out of the keyword index: a job's, or one document's (before
   * the chunks themselves go). Its terms derive from the text, so they go wherever it goes.
   */
  private dropKeywords(jobId: string, documentId?: string) {
    const job = literal(jobId);
    const mine = documentId
      ? sql`job_id = ${job} AND document_id = ${literal(documentId)}`
      : jobChunks(sql.raw("id"), jobId);
    return this.db.run(
      sql`DELETE FROM chunk_terms WHERE rowid IN (SELECT rid FROM chunks WHERE ${mine})`,
    );
  }

  async purgeText(jobId: string): Promise<void> {
    await this.db.batch([
      this.dropKeywords(jobId),
      this.db.update(schema.chunks).set({ text: "" }).where(eq(schema.chunks.jobId, jobId)),
      // Its originals are no longer its to keep (the caller deletes those no one else names).
      this.db
        .update(schema.documents)
        .set({ rawKey: null })
        .where(eq(schema.documents.jobId, jobId)),
      this.db
        .update(schema.jobs)
        .set({ textPurgedAt: new Date().toISOString() })
        .where(and(eq(schema.jobs.id, jobId), isNull(schema.jobs.textPurgedAt))),
    ]);
  }

  async getDocument(tenant: string, jobId: string, documentId: string) {
    const doc = await this.db
      .select({
        seq: schema.documents.seq,
        id: schema.documents.id,
        rawKey: schema.documents.rawKey,
      })
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
      this.db.update(schema.jobs).set(removedCounters(count)).where(eq(schema.jobs.id, jobId)),
      this.dropKeywords(jobId, doc.id),
      ...this.dropCached(jobId, doc.id),
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
      this.db.delete(schema.embeddingCache).where(eq(schema.embeddingCache.tenant, tenant)),
      this.db.delete(schema.originals).where(eq(schema.originals.tenant, tenant)),
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
    for (const slice of bindable(ids, 0)) {
      const rows = await this.db
        .select({
          id: schema.credentials.id,
          revokedAt: schema.credentials.revokedAt,
          quarantinedAt: schema.credentials.quarantinedAt,
          expiresAt: schema.credentials.expiresAt,
        })
        .from(schema.credentials)
        .where(inArray(schema.credentials.id, slice))
        .all();
      const now = new Date().toISOString();
      for (const r of rows) out.set(r.id, credentialState(r, now));
    }
    return out;
  }

  protected override async jobInsert(input: NewJob) {
    const { db } = this;
    const jobRow = newJobRow(input);
    // One batch is one transaction: the job appears with all its chunks or not at all.
    const rest = await this.documentInserts(input.id, input.tenant, input.collection, input);
    return async () => {
      const results = await db.batch([
        db.insert(schema.jobs).values(jobRow),
        ...rest,
        this.settle(input.id),
        db.select().from(schema.jobs).where(eq(schema.jobs.id, input.id)),
      ]);
      const [row] = results.at(-1) as (typeof schema.jobs.$inferSelect)[];
      if (!row) throw new Error(`job ${input.id} vanished after insert`);
      return toJob(row);
    };
  }

  protected override isUniqueViolation(err: unknown): boolean {
    return /UNIQUE/i.test(String(err));
  }

  protected override isVersionRace(err: unknown): boolean {
    return (
      /UNIQUE/i.test(String(err)) && /documents\.(tenant|doc_key|collection)/.test(String(err))
    );
  }

  async reserveSeqs(tenant: string, jobId: string, count: number): Promise<number | null> {
    const j = schema.jobs;
    const row = await this.db
      .update(j)
      .set({ nextSeq: sql`max(${j.nextSeq}, ${j.documents}) + ${count}` })
      .where(and(eq(j.id, jobId), eq(j.tenant, tenant), eq(j.accepting, true)))
      .returning({ next: j.nextSeq })
      .get();
    return row ? row.next - count : null;
  }

  async appendDocuments(input: NewDocuments): Promise<boolean> {
    const j = schema.jobs;
    const job = await this.db
      .select({ collection: j.collection, accepting: j.accepting })
      .from(j)
      .where(and(eq(j.id, input.jobId), eq(j.tenant, input.tenant)))
      .get();
    if (!job?.accepting) return false;
    const rest = await this.documentInserts(input.jobId, input.tenant, job.collection, input);
    try {
      await this.db.batch([
        this.db
          .update(j)
          .set(appendedCounters(input))
          .where(and(eq(j.id, input.jobId), eq(j.accepting, true))),
        ...rest,
      ]);
    } catch (err) {
      throw this.raced(err);
    }
    return true;
  }

  async closeJob(tenant: string, id: string): Promise<boolean> {
    const j = schema.jobs;
    const [closed] = await this.db.batch([
      this.db
        .update(j)
        .set({ accepting: false })
        .where(and(eq(j.id, id), eq(j.tenant, tenant), eq(j.accepting, true))),
      this.settle(id),
    ]);
    return (closed.meta.changes ?? 0) > 0;
  }

  /** The job's status from its counters, once it has stopped taking documents. */
  private settle(jobId: string) {
    const j = schema.jobs;
    return this.db
      .update(j)
      .set({ status: SETTLED_STATUS, completedAt: SETTLED_AT })
      .where(and(eq(j.id, jobId), inArray(j.status, ["queued", "running"])));
  }

  /**
   * The statements that add documents with their chunks (text sealed under the tenant's key,
   * bound to the chunk id), keyword entries and cache adoptions, then make current the pending
   * versions that are already complete (every chunk from the cache).
   */
  private async documentInserts(
    jobId: string,
    tenant: string,
    collection: string,
    input: { documents: NewDocument[]; chunks: NewChunk[] },
  ) {
    const { db } = this;
    const out = [];
    // A new pending version supersedes one still pending from an earlier job (the newest wins).
    const d = schema.documents;
    for (const keys of bindable(pendingKeys(input.documents), 5)) {
      out.push(
        db
          .update(d)
          .set({ state: "superseded", error: "a newer version was submitted before it was done" })
          .where(
            and(
              eq(d.tenant, tenant),
              eq(d.collection, collection),
              eq(d.state, "pending"),
              ne(d.jobId, jobId),
              inArray(d.docKey, keys),
            ),
          ),
      );
    }
    out.push(
      ...rowInserts(
        db,
        "originals",
        ["key", "tenant", "media_type", "body"],
        newOriginalRows(input.documents).map((r) => [r.key, tenant, r.mediaType, r.body]),
      ),
      ...rowInserts(
        db,
        "documents",
        DOCUMENT_COLUMNS,
        newDocumentRows(input).map((r) => [
          jobId,
          r.seq,
          r.id,
          tenant,
          collection,
          r.docKey,
          r.state,
          r.version,
          r.contentHash,
          r.fingerprint,
          r.rawKey,
          r.metadata === null ? null : JSON.stringify(r.metadata),
          r.chars,
          r.chunks,
          r.createdAt,
        ]),
      ),
    );
    // Two submits that read the same live versions at the same moment give their new
    // versions the same number: the one written second takes the next.
    for (const keys of bindable(pendingKeys(input.documents), 5)) {
      out.push(
        db
          .update(d)
          .set({
            version: sql`(SELECT max(m.version) FROM documents m WHERE m.tenant = documents.tenant AND m.collection = documents.collection AND m.doc_key = documents.doc_key) + 1`,
          })
          .where(
            and(
              eq(d.jobId, jobId),
              inArray(d.docKey, keys),
              sql`EXISTS (SELECT 1 FROM documents o WHERE o.tenant = documents.tenant AND o.collection = documents.collection AND o.doc_key = documents.doc_key AND o.version = documents.version AND o.job_id <> documents.job_id)`,
            ),
          ),
      );
    }
    const sealed = await this.sealChunks(tenant, input.chunks);
    out.push(
      ...rowInserts(
        db,
        "chunks",
        CHUNK_COLUMNS,
        newChunkRows(input.chunks, sealed).map((r) => [
          r.id,
          jobId,
          r.documentId,
          r.index,
          r.text,
          r.start,
          r.end,
          r.status,
          r.headings === null ? null : JSON.stringify(r.headings),
          r.page,
          r.cacheKey,
        ]),
      ),
    );
    out.push(...this.keywordInserts(input.chunks));
    // A hit moves the cache entry to this job: it goes when the chunk that now uses it goes.
    const model = sql`(SELECT model FROM jobs WHERE id = ${jobId})`;
    // The keys as one bound JSON array a statement: 10,000 hits take 10 statements, not 106.
    for (const keys of slices(cacheHits(input.chunks), IDS_PER_STATEMENT)) {
      const e = schema.embeddingCache;
      out.push(
        db
          .update(e)
          .set({ jobId })
          .where(
            and(
              eq(e.tenant, tenant),
              sql`${e.model} = ${model}`,
              sql`${e.key} IN (SELECT value FROM json_each(${JSON.stringify(keys)}))`,
            ),
          ),
      );
    }
    out.push(...this.promotionsOf(jobId, settledOnArrival(input)).stmts);
    return out;
  }

  /**
   * The statements that settle a job's pending document versions among those `which` selects
   * (a condition on `n`, the version's row): one whose chunks are all done becomes current as
   * the current one is superseded (first, so the unique index on current versions holds); one
   * with a failed chunk and none left to do fails, and the current version stays.
   */
  /** `promotion` for the job's versions `seqs`, in slices under D1's parameter limit. */
  private promotionsOf(jobId: string, seqs: number[]) {
    const stmts = [];
    /** Where each slice's statements start (its first supersedes). */
    const firsts: number[] = [];
    for (const slice of bindable(seqs, 5)) {
      firsts.push(stmts.length);
      const bound = slice.map((q) => sql`${q}`);
      stmts.push(...this.promotion(jobId, sql`n.seq IN (${sql.join(bound, sql`, `)})`));
    }
    return { stmts, firsts };
  }

  private promotion(jobId: string, which: SQL) {
    const settledPending = sql`SELECT n.tenant, n.collection, n.doc_key FROM documents n
      WHERE n.job_id = ${jobId} AND n.state = 'pending' AND ${which}
        AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.job_id = n.job_id AND c.document_id = n.id AND c.status <> 'done')`;
    const d = schema.documents;
    const mine = (cond: SQL) =>
      sql`${d.jobId} = ${jobId} AND ${d.state} = 'pending' AND ${d.seq} IN (SELECT n.seq FROM documents n WHERE n.job_id = ${jobId} AND ${which} AND ${cond})`;
    return [
      this.db
        .update(d)
        .set({ state: "superseded" })
        .where(
          sql`${d.state} = 'current' AND (tenant, collection, doc_key) IN (${settledPending})`,
        ),
      this.db
        .update(d)
        .set({ state: "current" })
        .where(
          mine(
            sql`NOT EXISTS (SELECT 1 FROM chunks c WHERE c.job_id = n.job_id AND c.document_id = n.id AND c.status <> 'done')`,
          ),
        ),
      this.db
        .update(d)
        .set({
          state: "failed",
          error: "some of its chunks failed; the previous version stays current",
        })
        .where(
          mine(
            sql`NOT EXISTS (SELECT 1 FROM chunks c WHERE c.job_id = n.job_id AND c.document_id = n.id AND c.status = 'pending')
              AND EXISTS (SELECT 1 FROM chunks c WHERE c.job_id = n.job_id AND c.document_id = n.id AND c.status = 'failed')`,
          ),
        ),
    ] as const;
  }

  async liveVersions(tenant: string, collection: string, keys: string[]): Promise<LiveVersion[]> {
    const d = schema.documents;
    const unique = [...new Set(keys)];
    const reads = [];
    // The names as one bound JSON array a statement (a submit looks up every named document).
    for (const keys of slices(unique, IDS_PER_STATEMENT)) {
      reads.push(
        this.db
          .select({
            docKey: d.docKey,
            state: d.state,
            version: d.version,
            fingerprint: d.fingerprint,
            jobId: d.jobId,
            // Qualified by hand: a one-table select renders its columns unqualified, and inside
            // this subquery they would name the subquery's own rows.
            maxVersion: sql<number>`(SELECT max(m.version) FROM documents m WHERE m.tenant = documents.tenant AND m.collection = documents.collection AND m.doc_key = documents.doc_key)`,
            stalled: stalledVersion("documents").mapWith(Boolean),
          })
          .from(d)
          .where(
            and(
              eq(d.tenant, tenant),
              eq(d.collection, collection),
              sql`${d.docKey} IN (SELECT value FROM json_each(${JSON.stringify(keys)}))`,
              or(
                inArray(d.state, ["current", "pending"]),
                sql`${d.version} = (SELECT max(m.version) FROM documents m WHERE m.tenant = documents.tenant AND m.collection = documents.collection AND m.doc_key = documents.doc_key)`,
              ),
            ),
          ),
      );
    }
    const out: LiveVersion[] = [];
    for (const [first, ...more] of slices(reads, READS_PER_BATCH)) {
      if (!first) break;
      for (const rows of await this.db.batch([first, ...more]))
        for (const r of rows)
          if (r.docKey)
            out.push({
              ...r,
              docKey: r.docKey,
              state: r.state === "current" || r.state === "pending" ? r.state : "none",
            });
    }
    return out;
  }

  private versionQuery() {
    const d = schema.documents;
    return this.db
      .select({
        jobId: d.jobId,
        seq: d.seq,
        id: d.id,
        tenant: sql<string>`${d.tenant}`,
        collection: sql<string>`${d.collection}`,
        docKey: sql<string>`${d.docKey}`,
        state: d.state,
        version: d.version,
        contentHash: d.contentHash,
        rawKey: d.rawKey,
        metadata: d.metadata,
        chars: d.chars,
        chunks: d.chunks,
        error: d.error,
        createdAt: d.createdAt,
        prunedAt: d.prunedAt,
        model: schema.jobs.model,
        jobStatus: schema.jobs.status,
        complete: sql`NOT ${undoneChunks("documents")}`.mapWith(Boolean),
      })
      .from(d)
      .innerJoin(schema.jobs, eq(schema.jobs.id, d.jobId));
  }

  async documentVersions(tenant: string, collection: string | undefined, key: string) {
    const d = schema.documents;
    return this.versionQuery()
      .where(
        and(
          eq(d.tenant, tenant),
          collection === undefined ? undefined : eq(d.collection, collection),
          eq(d.docKey, key),
        ),
      )
      .orderBy(desc(d.version), desc(d.createdAt))
      .all();
  }

  async listDocuments(tenant: string, q: DocumentListFilter) {
    const d = schema.documents;
    return this.versionQuery()
      .where(and(...documentListWhere("documents", tenant, q)))
      .orderBy(asc(d.collection), asc(d.docKey))
      .limit(q.limit)
      .all();
  }

  async versionsToPrune(tenant: string, limit: number) {
    const d = schema.documents;
    return this.versionQuery()
      .where(
        and(
          eq(d.tenant, tenant),
          eq(d.state, "superseded"),
          isNull(d.prunedAt),
          // A version superseded while its job still runs is pruned once the job has ended.
          notInArray(schema.jobs.status, ["queued", "running"]),
        ),
      )
      .limit(limit)
      .all();
  }

  async pruneVersions(versions: { jobId: string; seq: number; id: string }[]): Promise<void> {
    const d = schema.documents;
    const c = schema.chunks;
    const stmts = [];
    const now = new Date().toISOString();
    for (const doc of versions) {
      const { jobId, seq } = doc;
      stmts.push(
        this.dropKeywords(jobId, doc.id),
        ...this.dropCached(jobId, doc.id),
        this.db
          .update(schema.jobs)
          .set({
            chunksPruned: sql`chunks_pruned + (SELECT count(*) FROM chunks WHERE job_id = ${jobId} AND document_id = ${doc.id} AND status = 'done')`,
          })
          .where(eq(schema.jobs.id, jobId)),
        this.db.delete(c).where(and(eq(c.jobId, jobId), eq(c.documentId, doc.id))),
        // Its original is no longer its (the caller deletes it unless another row names it).
        this.db
          .update(d)
          .set({ prunedAt: now, rawKey: null })
          .where(and(eq(d.jobId, jobId), eq(d.seq, seq), eq(d.state, "superseded"))),
      );
    }
    const [first, ...rest] = stmts;
    if (first) await this.db.batch([first, ...rest]);
  }

  async sharedOriginalsInUse(tenant: string, rawKeys: string[]): Promise<Set<string>> {
    const d = schema.documents;
    const out = new Set<string>();
    for (const keys of bindable(rawKeys, 2)) {
      const rows = await this.db
        .selectDistinct({ k: d.rawKey })
        .from(d)
        .where(
          and(
            inArray(d.rawKey, keys),
            sql.raw(schema.SHARED_ORIGINAL),
            eq(d.tenant, tenant),
            isNull(d.prunedAt),
          ),
        )
        .all();
      for (const r of rows) if (r.k) out.add(r.k);
    }
    return out;
  }

  async originalsOf(jobId: string): Promise<string[]> {
    const d = schema.documents;
    const rows = await this.db
      .selectDistinct({ k: d.rawKey })
      .from(d)
      .where(and(eq(d.jobId, jobId), sql`${d.rawKey} IS NOT NULL`))
      .all();
    return rows.flatMap((r) => (r.k ? [r.k] : []));
  }

  async liveRows(tenant: string, names: [string, string][]) {
    const d = schema.documents;
    const out: VersionRow[] = [];
    // Two parameters a pair, beside the version query's own.
    for (const slice of slices(names, 45)) {
      const pairs = slice.map(([col, key]) => sql`(${col}, ${key})`);
      out.push(
        ...(await this.versionQuery()
          .where(
            and(
              eq(d.tenant, tenant),
              inArray(d.state, ["current", "pending"]),
              sql`(${d.collection}, ${d.docKey}) IN (${sql.join(pairs, sql`, `)})`,
            ),
          )
          .all()),
      );
    }
    return out;
  }

  async getOriginal(tenant: string, key: string) {
    const o = schema.originals;
    const row = await this.db
      .select({ mediaType: o.mediaType, body: o.body })
      .from(o)
      .where(and(eq(o.tenant, tenant), eq(o.key, key)))
      .get();
    return row ?? null;
  }

  async deleteOriginals(tenant: string, keys: string[]) {
    const o = schema.originals;
    const stmts = bindable(keys, 1).map((slice) =>
      this.db.delete(o).where(and(eq(o.tenant, tenant), inArray(o.key, slice))),
    );
    const [first, ...rest] = stmts;
    if (first) await this.db.batch([first, ...rest]);
  }

  async listJobs(tenant: string, q: JobListFilter): Promise<Job[]> {
    const j = schema.jobs;
    const rows = await this.db
      .select()
      .from(j)
      .where(and(...jobListWhere(j, tenant, q)))
      .orderBy(desc(j.createdAt), desc(j.id))
      .limit(q.limit)
      .all();
    return rows.map(toJob);
  }

  async cachedVectors(tenant: string, model: string, keys: string[]) {
    const e = schema.embeddingCache;
    const out = new Map<string, Float32Array>();
    const unique = [...new Set(keys)];
    const reads = [];
    // The keys as one bound JSON array a statement (a submit looks up every chunk's).
    for (const slice of slices(unique, IDS_PER_STATEMENT)) {
      reads.push(
        this.db
          // As hex: D1 returns a blob as a JSON array of its byte values (see `sqlLiteral`).
          .select({ key: e.key, vector: sql<string>`hex(${e.vector})` })
          .from(e)
          .where(
            and(
              eq(e.tenant, tenant),
              eq(e.model, model),
              sql`${e.key} IN (SELECT value FROM json_each(${JSON.stringify(slice)}))`,
            ),
          ),
      );
    }
    for (const [first, ...more] of slices(reads, VECTOR_READS_PER_BATCH)) {
      if (!first) break;
      for (const rows of await this.db.batch([first, ...more]))
        for (const r of rows) out.set(r.key, vectorOfHex(r.vector));
    }
    return out;
  }

  async cachePut(tenant: string, model: string, jobId: string, entries: CacheEntry[]) {
    const now = new Date().toISOString();
    // Vectors inline as blob literals, many to a statement (see `sqlLiteral`). `WHERE true`
    // tells SQLite that ON CONFLICT is the upsert's, not a join's.
    const stmts = valuesLists(
      `INSERT INTO embedding_cache (tenant, model, key, vector, job_id, created_at) SELECT ${sqlLiteral(tenant)}, ${sqlLiteral(model)}, column1, column2, ${sqlLiteral(jobId)}, ${sqlLiteral(now)} FROM (VALUES `,
      entries.map((x) => [x.key, vectorBytes(x.vector)]),
      ") WHERE true ON CONFLICT (tenant, model, key) DO UPDATE SET job_id = excluded.job_id, vector = excluded.vector",
    ).map((text) => this.db.run(sql.raw(text)));
    const [first, ...rest] = stmts;
    if (first) await this.db.batch([first, ...rest]);
  }

  /**
   * Statements that drop the cache entries a job's chunks hold (one document's, or all): the
   * vector of deleted text goes with it. An entry another job has adopted since is not this
   * job's any more, and stays.
   */
  private dropCached(jobId: string, documentId?: string) {
    const e = schema.embeddingCache;
    const ofJob = sql`SELECT cache_key FROM chunks WHERE job_id = ${jobId}${documentId ? sql` AND document_id = ${documentId}` : sql``} AND cache_key IS NOT NULL`;
    return [
      this.db.delete(e).where(sql`${e.jobId} = ${jobId} AND ${e.key} IN (${ofJob})`),
    ] as const;
  }

  /**
   * The keyword index's entries for new chunks (written before): each chunk's terms into
   * `chunk_terms` under the chunk's `rid`, many chunks a statement as literal rows (D1 binds at
   * most 100 parameters, and a statement may be at most 100 KB).
   */
  private keywordInserts(chunks: NewChunk[]) {
    const terms = valuesLists(
      "INSERT INTO chunk_terms (rowid, terms) SELECT c.rid, v.column2 FROM (VALUES ",
      chunks.filter((c) => c.terms).map((c) => [c.id, c.terms as string]),
      ") v JOIN chunks c ON c.id = v.column1",
    );
    return terms.map((text) => this.db.run(sql.raw(text)));
  }

  async keywordSearch(q: KeywordQuery) {
    const filter = q.filter
      ? sql` AND ${boundCondition(compileFilter(q.filter.metadata, q.filter.keys, FILTER_METADATA))}`
      : sql``;
    // BM25 is negative in FTS5 (more negative is better): reported as its opposite.
    const rows = await this.db.all<{ id: string; score: number; terms: string }>(sql`
      SELECT c.id AS id, -bm25(chunk_terms) AS score, chunk_terms.terms AS terms
      FROM chunk_terms
      JOIN chunks c ON c.rid = chunk_terms.rowid
      JOIN jobs j ON j.id = c.job_id
      LEFT JOIN documents d ON d.job_id = c.job_id AND d.id = c.document_id
      WHERE chunk_terms MATCH ${q.match} AND j.tenant = ${q.tenant} AND j.model = ${q.model}
        AND c.status = 'done' AND d.state = 'current'${filter}
      ORDER BY bm25(chunk_terms), c.id
      LIMIT ${q.limit}`);
    return rows;
  }

  async listCollections(tenant: string): Promise<Collection[]> {
    const j = schema.jobs;
    const live = sql`SELECT d.collection AS name, count(*) AS documents, coalesce(sum(d.chunks), 0) AS chunks
      FROM documents d WHERE d.tenant = ${tenant} AND d.state = 'current' GROUP BY d.collection`;
    const rows = await this.db
      .select({
        name: j.collection,
        jobs: sql<number>`count(*)`,
        createdAt: sql<string>`min(${j.createdAt})`,
        updatedAt: sql<string>`max(coalesce(${j.completedAt}, ${j.createdAt}))`,
      })
      .from(j)
      .where(eq(j.tenant, tenant))
      .groupBy(j.collection)
      .orderBy(asc(j.collection))
      .all();
    return withCounts(
      rows,
      await this.db.all<{ name: string; documents: number; chunks: number }>(live),
    );
  }

  async findJobByIdempotencyKey(tenant: string, key: string) {
    const r = await this.db
      .select()
      .from(schema.jobs)
      .where(and(eq(schema.jobs.tenant, tenant), eq(schema.jobs.idempotencyKey, key)))
      .get();
    return r ? idempotentJob(r) : null;
  }

  async markDispatched(jobId: string, ingest?: IngestReport): Promise<Job | null> {
    const r = await this.db
      .update(schema.jobs)
      .set({ dispatchedAt: new Date().toISOString(), ...(ingest ? { ingest } : {}) })
      .where(eq(schema.jobs.id, jobId))
      .returning()
      .get();
    return r ? toJob(r) : null;
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
    return (
      this.db
        .select(chunkColumns(schema))
        .from(c)
        // `+`: the job is found from each chunk, never the chunks from the job (through
        // chunks_document, whose order is not the page's).
        .innerJoin(schema.jobs, eq(schema.jobs.id, sql`+${c.jobId}`))
        .innerJoin(
          schema.documents,
          and(eq(schema.documents.jobId, c.jobId), eq(schema.documents.id, c.documentId)),
        )
    );
  }

  async listChunks(tenant: string, jobId: string, after: string | null, limit: number) {
    const c = schema.chunks;
    const rows = await this.chunkQuery()
      .where(and(jobChunks(c.id, jobId, after), eq(schema.jobs.tenant, tenant)))
      .orderBy(asc(c.id))
      .limit(limit)
      .all();
    return this.openChunks(tenant, rows);
  }

  async getChunks(tenant: string, ids: string[], opts: { currentOnly?: boolean } = {}) {
    if (ids.length === 0) return [];
    const rows: ChunkSelect[] = [];
    // D1 binds at most 100 parameters per statement: the ids go in slices.
    for (const slice of bindable(ids, 4)) {
      rows.push(
        ...(await this.chunkQuery()
          .where(
            and(
              inArray(schema.chunks.id, slice),
              eq(schema.jobs.tenant, tenant),
              opts.currentOnly ? eq(schema.documents.state, "current") : undefined,
            ),
          )
          .all()),
      );
    }
    return this.openChunks(tenant, rows);
  }

  protected override async record(
    groups: RecordGroups,
    to: "done" | "failed",
    reason: string | null,
  ): Promise<Map<string, number[]>> {
    const j = schema.jobs;
    const stmts = [];
    const reads: { at: number; jobId: string }[] = [];
    for (const { jobId, chunkIds } of groups) {
      // The ids go as one bound JSON array each statement (json_each), not as a parameter
      // each: a task of 256 chunks is then three statements, not three per 96 ids, and no
      // query builder walks a parameter per id.
      for (const part of slices(chunkIds, IDS_PER_STATEMENT)) {
        const ids = JSON.stringify(part);
        stmts.push(
          this.db
            .update(schema.chunks)
            .set({ status: to, error: reason })
            .where(
              sql`+chunks.job_id = ${jobId} AND chunks.status = 'pending' AND chunks.id IN (SELECT value FROM json_each(${ids}))`,
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
        // The versions these chunks belong to that have nothing left to compute. Most jobs have
        // no pending version at all: the first row (CROSS JOIN keeps it first) asks that of
        // an index holding pending versions only, so then no chunk is looked up again.
        reads.push({ at: stmts.length, jobId });
        stmts.push(
          this.db
            .select({ seq: sql<number>`d.seq` })
            .from(
              sql`(SELECT 1 FROM documents INDEXED BY documents_job_pending
                WHERE job_id = ${jobId} AND state = 'pending' LIMIT 1) AS waiting
              CROSS JOIN documents AS d`,
            )
            .where(
              sql`d.job_id = ${jobId} AND d.state = 'pending'
              AND d.id IN (SELECT document_id FROM chunks WHERE +job_id = ${jobId} AND id IN (SELECT value FROM json_each(${ids})))
              AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.job_id = d.job_id AND c.document_id = d.id AND c.status = 'pending')`,
            ),
        );
      }
      // A job none of whose versions waits (they were superseded or cancelled) may end here.
      stmts.push(this.settle(jobId));
    }
    const settled = new Map<string, Set<number>>(groups.map((g) => [g.jobId, new Set()]));
    const [first, ...rest] = stmts;
    if (first) {
      const results = (await this.db.batch([first, ...rest])) as unknown[];
      for (const { at, jobId } of reads)
        for (const r of (results[at] ?? []) as { seq: number }[]) settled.get(jobId)?.add(r.seq);
    }
    return new Map([...settled].map(([jobId, seqs]) => [jobId, [...seqs]]));
  }

  async settledVersions(jobId: string): Promise<number[]> {
    const d = schema.documents;
    const rows = await this.db
      .select({ seq: d.seq })
      .from(d)
      .where(
        sql`documents.job_id = ${jobId} AND documents.state = 'pending'
          AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.job_id = documents.job_id AND c.document_id = documents.id AND c.status = 'pending')`,
      )
      .all();
    return rows.map((r) => r.seq);
  }

  async promote(jobId: string, seqs: number[]): Promise<{ superseded: number }> {
    const { stmts, firsts } = this.promotionsOf(jobId, seqs);
    const [first, ...rest] = [...stmts, this.settle(jobId)];
    if (!first) return { superseded: 0 };
    const results = (await this.db.batch([first, ...rest])) as { meta?: { changes?: number } }[];
    // The first statement of each promotion supersedes.
    return { superseded: firsts.reduce((n, at) => n + (results[at]?.meta?.changes ?? 0), 0) };
  }

  async markStarted(jobId: string): Promise<void> {
    await this.db
      .update(schema.jobs)
      .set({ status: "running", startedAt: new Date().toISOString() })
      .where(and(eq(schema.jobs.id, jobId), eq(schema.jobs.status, "queued")));
  }

  async cancelJob(tenant: string, id: string): Promise<boolean> {
    const j = schema.jobs;
    const d = schema.documents;
    const [r] = await this.db.batch([
      this.db
        .update(j)
        .set({ status: "cancelled", accepting: false, completedAt: new Date().toISOString() })
        .where(and(eq(j.id, id), eq(j.tenant, tenant), inArray(j.status, ["queued", "running"]))),
      // Its new versions never become current: the ones they would replace stay.
      this.db
        .update(d)
        .set({ state: "cancelled", error: "its job was cancelled" })
        .where(
          and(
            eq(d.jobId, id),
            eq(d.state, "pending"),
            sql`(SELECT status FROM jobs WHERE id = ${id}) = 'cancelled'`,
          ),
        ),
    ]);
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
      this.dropKeywords(jobId),
      ...this.dropCached(jobId),
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
