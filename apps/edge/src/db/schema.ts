import { type IngestReport, JOB_STATUSES, type PiiKind, POOLS, VERIFICATIONS } from "@p2pa/shared";
import { sql } from "drizzle-orm";
import {
  blob,
  index,
  integer,
  primaryKey,
  sqliteTable,
  text,
  uniqueIndex,
} from "drizzle-orm/sqlite-core";

/**
 * Metadata in D1. Task state (leases, attempts) lives in the Dispatcher Durable Objects;
 * D1 holds what the API reads: jobs with their counters, documents, chunks, credentials and
 * the worker registry.
 */

/** API keys (kind "api") and worker join tokens (kind "worker"), stored as SHA-256 hashes. */
export const credentials = sqliteTable(
  "credentials",
  {
    id: text("id").primaryKey(),
    kind: text("kind", { enum: ["api", "worker", "admin"] }).notNull(),
    tenant: text("tenant").notNull(),
    hash: text("hash").notNull(),
    name: text("name"),
    createdAt: text("created_at").notNull().default(sql`(strftime('%Y-%m-%dT%H:%M:%fZ','now'))`),
    revokedAt: text("revoked_at"),
    /** A worker token caught returning wrong results: it gets no work, and says why. */
    quarantinedAt: text("quarantined_at"),
    quarantineReason: text("quarantine_reason"),
    /** What an API key may do (JSON array of scopes); null: every scope (keys made before scopes). */
    scopes: text("scopes", { mode: "json" }).$type<string[]>(),
    /** The first characters of the secret, shown in listings so a key can be recognised. */
    prefix: text("prefix"),
    /** After this instant the key is refused, as if revoked. */
    expiresAt: text("expires_at"),
    /** Updated at most once a minute per key, off the request's path. */
    lastUsedAt: text("last_used_at"),
    /** Limits of this key alone (JSON); the tenant's own limits apply as well. */
    quotas: text("quotas", { mode: "json" }).$type<Record<string, number>>(),
  },
  (t) => [uniqueIndex("credentials_hash").on(t.hash)],
);

export const jobs = sqliteTable(
  "jobs",
  {
    id: text("id").primaryKey(),
    tenant: text("tenant").notNull(),
    status: text("status", {
      enum: JOB_STATUSES,
    }).notNull(),
    model: text("model").notNull(),
    /** The tenant's named namespace the job's documents live in; search can target it. */
    collection: text("collection").notNull().default("default"),
    documents: integer("documents").notNull(),
    chunksTotal: integer("chunks_total").notNull(),
    chunksDone: integer("chunks_done").notNull().default(0),
    chunksFailed: integer("chunks_failed").notNull().default(0),
    chunkMaxChars: integer("chunk_max_chars").notNull(),
    chunkOverlap: integer("chunk_overlap").notNull(),
    /** How results are verified: auto (by each worker's record), always, off. */
    verification: text("verification", { enum: VERIFICATIONS }).notNull().default("auto"),
    /** Who may compute the job: any worker, or only workers of the job's own tenant. */
    pool: text("pool", { enum: POOLS }).notNull().default("any"),
    /** Kinds of personal data masked in the text workers get (JSON array; empty: none). */
    piiMask: text("pii_mask", { mode: "json" }).$type<PiiKind[]>().notNull().default([]),
    idempotencyKey: text("idempotency_key"),
    /** The key that submitted the job (its per-key quotas count the job's chunks). */
    createdBy: text("created_by"),
    /**
     * How long the raw documents and chunk text are kept after the job ends, in days: null
     * keeps them until the job is deleted, 0 drops them as soon as the job ends (vectors and
     * metadata stay).
     */
    textRetentionDays: integer("text_retention_days"),
    /** When the text was purged (retention): chunks then answer with `text: null`. */
    textPurgedAt: text("text_purged_at"),
    requestHash: text("request_hash"),
    /** The job's own webhook endpoint (in the tenant's WebhookHub), if it asked for one. */
    webhookId: text("webhook_id"),
    webhookUrl: text("webhook_url"),
    /**
     * 1 while the job takes more documents (an NDJSON stream being read, or a job opened for
     * appends): it cannot settle until it is closed, however many of its chunks are done.
     */
    accepting: integer("accepting", { mode: "boolean" }).notNull().default(false),
    /** Whether the originals of the job's documents are kept in the document store. */
    keepOriginals: integer("keep_originals", { mode: "boolean" }).notNull().default(true),
    /** Documents submitted again with nothing changed: skipped, nothing computed. */
    documentsUnchanged: integer("documents_unchanged").notNull().default(0),
    /**
     * The first document seq not yet given out: each batch added to an open job takes its seqs
     * here before it is written, so appends at the same moment never share one (0 on jobs from
     * before it: their next is their document count).
     */
    nextSeq: integer("next_seq").notNull().default(0),
    /** Chunks whose vector came from the embedding cache (counted in chunks_done as well). */
    chunksCached: integer("chunks_cached").notNull().default(0),
    /**
     * Done chunks removed with their superseded versions (pruned): the job's vectors kept are
     * chunks_done less these, which is what a tenant's stored-vector quota counts.
     */
    chunksPruned: integer("chunks_pruned").notNull().default(0),
    /** Set once the Dispatcher has the job's tasks; a retried submit re-dispatches otherwise. */
    dispatchedAt: text("dispatched_at"),
    /**
     * What the request that made the job took and refused (its 202's `ingest`), kept for a job
     * made with an Idempotency-Key: a retry of that request is answered with it again.
     */
    ingest: text("ingest", { mode: "json" }).$type<IngestReport>(),
    createdAt: text("created_at").notNull(),
    startedAt: text("started_at"),
    completedAt: text("completed_at"),
  },
  (t) => [
    index("jobs_tenant_status").on(t.tenant, t.status),
    uniqueIndex("jobs_idempotency").on(t.tenant, t.idempotencyKey),
    index("jobs_tenant_created").on(t.tenant, t.createdAt),
    index("jobs_tenant_collection").on(t.tenant, t.collection),
  ],
);

/** The states of a document version; at most one `current` and one `pending` per document. */
export const DOCUMENT_STATES = ["pending", "current", "superseded", "failed", "cancelled"] as const;

/**
 * The versions that name a shared original: one kept under its content's hash, which other
 * documents may name too (files and long texts in R2, and small texts kept before each version
 * had its own, `doc/<tenant>/<job>/<seq>`). The condition of the index that finds them, and of
 * the query that uses it, word for word (SQLite uses a partial index only then).
 */
export const SHARED_ORIGINAL = "raw_key NOT LIKE 'doc/%'";

/**
 * One version of a document: the row a job made for it. A document is named by `docKey`
 * within a tenant's collection; its `current` version is the one search shows. A new version
 * is `pending` until all its chunks are stored, then becomes `current` in the same transaction
 * that makes the old one `superseded`, so search sees one version at every moment.
 */
export const documents = sqliteTable(
  "documents",
  {
    jobId: text("job_id").notNull(),
    seq: integer("seq").notNull(),
    /** The submitter's id for the document (or a generated one). */
    id: text("id").notNull(),
    /** Null on rows from before versions existed (they stay as they were: current). */
    tenant: text("tenant"),
    collection: text("collection"),
    /** The document's name in its collection: versions share it; null on older rows. */
    docKey: text("doc_key"),
    state: text("state", { enum: DOCUMENT_STATES }).notNull().default("current"),
    version: integer("version").notNull().default(1),
    /** SHA-256 (hex) of the original as submitted: the raw object's name. */
    contentHash: text("content_hash"),
    /** SHA-256 of everything that decides the vectors: unchanged when it is the same. */
    fingerprint: text("fingerprint"),
    /** Where the sealed original is kept in R2; null when the job chose not to keep it. */
    rawKey: text("raw_key"),
    metadata: text("metadata", { mode: "json" }).$type<Record<string, unknown>>(),
    chars: integer("chars").notNull(),
    chunks: integer("chunks").notNull(),
    /** Why the version did not become current (its chunks failed, or its job was cancelled). */
    error: text("error"),
    createdAt: text("created_at"),
    /** When a superseded version's chunks, vectors and raw object were removed. */
    prunedAt: text("pruned_at"),
  },
  (t) => [
    uniqueIndex("documents_pk").on(t.jobId, t.seq),
    uniqueIndex("documents_id").on(t.jobId, t.id),
    uniqueIndex("documents_current")
      .on(t.tenant, t.collection, t.docKey)
      .where(sql`state = 'current'`),
    uniqueIndex("documents_pending")
      .on(t.tenant, t.collection, t.docKey)
      .where(sql`state = 'pending'`),
    index("documents_versions").on(t.tenant, t.collection, t.docKey, t.version),
    // A job's versions waiting for their chunks: a stored result asks whether its job has
    // any before it looks for the ones it completed (most jobs have none).
    index("documents_job_pending").on(t.jobId).where(sql`state = 'pending'`),
    // Which documents still name a shared original (ingest/originals.ts): only those are
    // indexed, so a document's own original costs no entry at a random place of an index.
    index("documents_shared_original").on(t.rawKey).where(sql.raw(SHARED_ORIGINAL)),
  ],
);

export const chunks = sqliteTable(
  "chunks",
  {
    /**
     * The chunk's number in this database: the rowid of its entry in `chunk_terms`, the FTS5
     * keyword index (migrations/0006, which drizzle cannot describe). SQLite may renumber
     * implicit rowids on VACUUM, never an INTEGER PRIMARY KEY, so the two stay joined.
     */
    rid: integer("rid").primaryKey(),
    /** `<jobId>.<docSeq>.<index>`: deterministic, also the vector id. */
    id: text("id").notNull(),
    jobId: text("job_id").notNull(),
    documentId: text("document_id").notNull(),
    index: integer("idx").notNull(),
    text: text("text").notNull(),
    start: integer("start").notNull(),
    end: integer("end").notNull(),
    status: text("status", { enum: ["pending", "done", "failed"] })
      .notNull()
      .default("pending"),
    error: text("error"),
    /** The headings the chunk sits under in its document, outermost first (JSON). */
    headings: text("headings", { mode: "json" }).$type<string[]>(),
    /** The PDF page the chunk is on. */
    page: integer("page"),
    /** The chunk's key in the embedding cache (HMAC of its embedded text); null: not cached. */
    cacheKey: text("cache_key"),
  },
  // A job's chunks in id order are a range of `chunks_id` (every id starts with the job's,
  // see jobChunks in store.ts), so no index on (job_id, id): one b-tree less to write for
  // every chunk. A document's chunks are found by (job_id, document_id) and their status read
  // from their rows: with the status in the index, every stored result moved its chunk's
  // entry as well as its row.
  (t) => [uniqueIndex("chunks_id").on(t.id), index("chunks_document").on(t.jobId, t.documentId)],
);

/**
 * Vectors already computed, by (tenant, model, HMAC of the exact text embedded under the
 * tenant's cache key): a chunk found here goes to no worker. Only results two donors agreed on
 * are written. `job_id` is the job whose chunk holds the vector now (a hit
 * moves it to the new job), so deleting a job or a document takes its entries with it, and an
 * erased tenant's rows go with its keys.
 */
export const embeddingCache = sqliteTable(
  "embedding_cache",
  {
    tenant: text("tenant").notNull(),
    model: text("model").notNull(),
    key: text("key").notNull(),
    vector: blob("vector", { mode: "buffer" }).$type<ArrayBuffer>().notNull(),
    jobId: text("job_id").notNull(),
    createdAt: text("created_at").notNull(),
  },
  (t) => [
    primaryKey({ columns: [t.tenant, t.model, t.key] }),
    index("embedding_cache_job").on(t.jobId),
  ],
);

/**
 * Originals of small text documents (sent as JSON or NDJSON text), sealed, kept here rather
 * than as one R2 object each: a submit of 10,000 sentences was 10,000 object writes. Each is
 * its version's own (`doc/<tenant>/<job>/<seq>`), written with the version's row and deleted
 * with it; rows kept before then are shared by content (`inline/<tenant>/<sha256>`). See
 * ingest/originals.ts.
 */
export const originals = sqliteTable(
  "originals",
  {
    key: text("key").primaryKey(),
    tenant: text("tenant").notNull(),
    mediaType: text("media_type").notNull(),
    /** The text, sealed under the tenant's key bound to `key`. */
    body: text("body").notNull(),
  },
  (t) => [index("originals_tenant").on(t.tenant)],
);

/** Volunteer workers seen by the coordinator. */
export const workers = sqliteTable("workers", {
  id: text("id").primaryKey(),
  name: text("name"),
  version: text("version"),
  device: text("device"),
  threads: integer("threads"),
  models: text("models", { mode: "json" }).$type<string[]>(),
  connectedAt: text("connected_at").notNull(),
  lastSeenAt: text("last_seen_at").notNull(),
  disconnectedAt: text("disconnected_at"),
  chunksDone: integer("chunks_done").notNull().default(0),
});

/**
 * Each tenant's data keys (AES-256-GCM), wrapped by a deployment key from the
 * `P2PA_DATA_KEYS` secret: a copy of D1 alone cannot unwrap them. The highest version
 * encrypts new data; older versions still decrypt what they wrote.
 */
export const tenantKeys = sqliteTable(
  "tenant_keys",
  {
    tenant: text("tenant").notNull(),
    version: integer("version").notNull(),
    /** base64 of the AES-KW wrapped key. */
    wrapped: text("wrapped").notNull(),
    /** Id of the deployment key that wrapped it. */
    wrappedBy: text("wrapped_by").notNull(),
    createdAt: text("created_at").notNull(),
  },
  (t) => [uniqueIndex("tenant_keys_pk").on(t.tenant, t.version)],
);

/** A tenant's own policies: default text retention and quotas. */
export const tenantSettings = sqliteTable("tenant_settings", {
  tenant: text("tenant").primaryKey(),
  /** Default for jobs that do not choose (see jobs.textRetentionDays); null: keep. */
  textRetentionDays: integer("text_retention_days"),
  /** JSON of the tenant's limits (requestsPerMinute, chunksPerDay, storedVectors). */
  quotas: text("quotas", { mode: "json" }).$type<Record<string, number>>(),
  updatedAt: text("updated_at").notNull(),
});
