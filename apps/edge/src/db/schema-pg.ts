import type { IngestReport, JOB_STATUSES, PiiKind, POOLS, VERIFICATIONS } from "@p2pa/shared";
import { sql } from "drizzle-orm";
import {
  bigint,
  boolean,
  customType,
  index,
  integer,
  json,
  pgTable,
  primaryKey,
  uniqueIndex,
} from "drizzle-orm/pg-core";
import { type DOCUMENT_STATES, SHARED_ORIGINAL } from "./schema.js";

/**
 * The metadata of schema.ts on Postgres (the `postgres` metadata backend, pg-store.ts): the
 * same tables, columns and indexes under the same names, so a row reads the same from either.
 * Differences are of the dialect only: booleans are `boolean`, JSON columns `json` (kept as the
 * text written, like D1's), the vector `bytea`; and the keyword index, which SQLite keeps in
 * FTS5, is three plain tables here (keyword_rows, chunk_terms, chunk_term_postings) from which
 * pg-store.ts computes FTS5's BM25.
 */

/**
 * Text compared byte by byte (collation "C"), as SQLite compares text: listings ordered by id
 * or name, and keyset cursors over them, come out in the same order on either backend whatever
 * the database's default collation.
 */
const text = customType<{ data: string; driverData: string }>({
  dataType: () => 'text COLLATE "C"',
});

/** Bytes (a float32 vector), written and read as hex by pg-store.ts. */
const bytea = customType<{ data: string; driverData: string }>({
  dataType: () => "bytea",
});

/** An ISO 8601 UTC instant with milliseconds, as `new Date().toISOString()` writes it. */
const NOW_ISO = sql`to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;

/** API keys (kind "api") and worker join tokens (kind "worker"), stored as SHA-256 hashes. */
export const credentials = pgTable(
  "credentials",
  {
    id: text("id").primaryKey(),
    kind: text("kind").$type<"api" | "worker" | "admin">().notNull(),
    tenant: text("tenant").notNull(),
    hash: text("hash").notNull(),
    name: text("name"),
    createdAt: text("created_at").notNull().default(NOW_ISO),
    revokedAt: text("revoked_at"),
    quarantinedAt: text("quarantined_at"),
    quarantineReason: text("quarantine_reason"),
    scopes: json("scopes").$type<string[]>(),
    prefix: text("prefix"),
    expiresAt: text("expires_at"),
    lastUsedAt: text("last_used_at"),
    quotas: json("quotas").$type<Record<string, number>>(),
  },
  (t) => [uniqueIndex("credentials_hash").on(t.hash)],
);

export const jobs = pgTable(
  "jobs",
  {
    id: text("id").primaryKey(),
    tenant: text("tenant").notNull(),
    status: text("status").$type<(typeof JOB_STATUSES)[number]>().notNull(),
    model: text("model").notNull(),
    collection: text("collection").notNull().default("default"),
    documents: integer("documents").notNull(),
    chunksTotal: integer("chunks_total").notNull(),
    chunksDone: integer("chunks_done").notNull().default(0),
    chunksFailed: integer("chunks_failed").notNull().default(0),
    chunkMaxChars: integer("chunk_max_chars").notNull(),
    chunkOverlap: integer("chunk_overlap").notNull(),
    verification: text("verification")
      .$type<(typeof VERIFICATIONS)[number]>()
      .notNull()
      .default("auto"),
    pool: text("pool").$type<(typeof POOLS)[number]>().notNull().default("any"),
    piiMask: json("pii_mask").$type<PiiKind[]>().notNull().default([]),
    idempotencyKey: text("idempotency_key"),
    createdBy: text("created_by"),
    textRetentionDays: integer("text_retention_days"),
    textPurgedAt: text("text_purged_at"),
    requestHash: text("request_hash"),
    webhookId: text("webhook_id"),
    webhookUrl: text("webhook_url"),
    accepting: boolean("accepting").notNull().default(false),
    keepOriginals: boolean("keep_originals").notNull().default(true),
    documentsUnchanged: integer("documents_unchanged").notNull().default(0),
    nextSeq: integer("next_seq").notNull().default(0),
    chunksCached: integer("chunks_cached").notNull().default(0),
    chunksPruned: integer("chunks_pruned").notNull().default(0),
    dispatchedAt: text("dispatched_at"),
    ingest: json("ingest").$type<IngestReport>(),
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

/** One version of a document (see schema.ts's documents). */
export const documents = pgTable(
  "documents",
  {
    jobId: text("job_id").notNull(),
    seq: integer("seq").notNull(),
    id: text("id").notNull(),
    tenant: text("tenant"),
    collection: text("collection"),
    docKey: text("doc_key"),
    state: text("state").$type<(typeof DOCUMENT_STATES)[number]>().notNull().default("current"),
    version: integer("version").notNull().default(1),
    contentHash: text("content_hash"),
    fingerprint: text("fingerprint"),
    rawKey: text("raw_key"),
    metadata: json("metadata").$type<Record<string, unknown>>(),
    chars: integer("chars").notNull(),
    chunks: integer("chunks").notNull(),
    error: text("error"),
    createdAt: text("created_at"),
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
    // Which documents still name a shared original (ingest/originals.ts): only those are
    // indexed, so a document's own original costs no entry at a random place of an index.
    index("documents_shared_original").on(t.rawKey).where(sql.raw(SHARED_ORIGINAL)),
  ],
);

export const chunks = pgTable(
  "chunks",
  {
    id: text("id").primaryKey(),
    jobId: text("job_id").notNull(),
    documentId: text("document_id").notNull(),
    index: integer("idx").notNull(),
    text: text("text").notNull(),
    start: integer("start").notNull(),
    end: integer("end").notNull(),
    status: text("status").$type<"pending" | "done" | "failed">().notNull().default("pending"),
    error: text("error"),
    headings: json("headings").$type<string[]>(),
    page: integer("page"),
    cacheKey: text("cache_key"),
  },
  (t) => [
    index("chunks_job").on(t.jobId, t.id),
    index("chunks_document").on(t.jobId, t.documentId, t.status),
  ],
);

/** The keyword index's row per chunk; its id names the chunk's entries in the two tables below. */
export const keywordRows = pgTable(
  "keyword_rows",
  {
    id: bigint("id", { mode: "number" }).primaryKey().generatedAlwaysAsIdentity(),
    chunkId: text("chunk_id").notNull(),
    jobId: text("job_id").notNull(),
  },
  (t) => [uniqueIndex("keyword_rows_chunk").on(t.chunkId), index("keyword_rows_job").on(t.jobId)],
);

/**
 * A chunk's keyword document (its words' keyed hashes in order, see search/terms.ts) with its
 * length in terms: BM25's document length, and the table's row count and mean length.
 */
export const chunkTerms = pgTable("chunk_terms", {
  id: bigint("id", { mode: "number" })
    .primaryKey()
    .references(() => keywordRows.id, { onDelete: "cascade" }),
  terms: text("terms").notNull(),
  tokens: integer("tokens").notNull(),
});

/** How often each term occurs in each chunk: BM25's term and document frequencies. */
export const chunkTermPostings = pgTable(
  "chunk_term_postings",
  {
    term: text("term").notNull(),
    rowId: bigint("row_id", { mode: "number" })
      .notNull()
      .references(() => keywordRows.id, { onDelete: "cascade" }),
    tf: integer("tf").notNull(),
  },
  (t) => [primaryKey({ columns: [t.term, t.rowId] }), index("chunk_term_postings_row").on(t.rowId)],
);

/** Vectors already computed (see schema.ts's embeddingCache). */
export const embeddingCache = pgTable(
  "embedding_cache",
  {
    tenant: text("tenant").notNull(),
    model: text("model").notNull(),
    key: text("key").notNull(),
    vector: bytea("vector").notNull(),
    jobId: text("job_id").notNull(),
    createdAt: text("created_at").notNull(),
  },
  (t) => [
    primaryKey({ columns: [t.tenant, t.model, t.key] }),
    index("embedding_cache_job").on(t.jobId),
  ],
);

/** Originals of small text documents, sealed (see schema.ts's originals). */
export const originals = pgTable(
  "originals",
  {
    key: text("key").primaryKey(),
    tenant: text("tenant").notNull(),
    mediaType: text("media_type").notNull(),
    body: text("body").notNull(),
  },
  (t) => [index("originals_tenant").on(t.tenant)],
);

/** Volunteer workers seen by the coordinator. */
export const workers = pgTable("workers", {
  id: text("id").primaryKey(),
  name: text("name"),
  version: text("version"),
  device: text("device"),
  threads: integer("threads"),
  models: json("models").$type<string[]>(),
  connectedAt: text("connected_at").notNull(),
  lastSeenAt: text("last_seen_at").notNull(),
  disconnectedAt: text("disconnected_at"),
  chunksDone: integer("chunks_done").notNull().default(0),
});

/** Each tenant's data keys, wrapped by a deployment key (see schema.ts's tenantKeys). */
export const tenantKeys = pgTable(
  "tenant_keys",
  {
    tenant: text("tenant").notNull(),
    version: integer("version").notNull(),
    wrapped: text("wrapped").notNull(),
    wrappedBy: text("wrapped_by").notNull(),
    createdAt: text("created_at").notNull(),
  },
  (t) => [uniqueIndex("tenant_keys_pk").on(t.tenant, t.version)],
);

/** A tenant's own policies: default text retention and quotas. */
export const tenantSettings = pgTable("tenant_settings", {
  tenant: text("tenant").primaryKey(),
  textRetentionDays: integer("text_retention_days"),
  quotas: json("quotas").$type<Record<string, number>>(),
  updatedAt: text("updated_at").notNull(),
});
