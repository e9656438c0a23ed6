import type { PiiKind } from "@p2pa/shared";
import { sql } from "drizzle-orm";
import { index, integer, sqliteTable, text, uniqueIndex } from "drizzle-orm/sqlite-core";

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
  },
  (t) => [uniqueIndex("credentials_hash").on(t.hash)],
);

export const jobs = sqliteTable(
  "jobs",
  {
    id: text("id").primaryKey(),
    tenant: text("tenant").notNull(),
    status: text("status", {
      enum: ["queued", "running", "completed", "completed_with_errors", "failed", "cancelled"],
    }).notNull(),
    model: text("model").notNull(),
    documents: integer("documents").notNull(),
    chunksTotal: integer("chunks_total").notNull(),
    chunksDone: integer("chunks_done").notNull().default(0),
    chunksFailed: integer("chunks_failed").notNull().default(0),
    chunkMaxChars: integer("chunk_max_chars").notNull(),
    chunkOverlap: integer("chunk_overlap").notNull(),
    /** How results are verified: auto (by each worker's record), always, off. */
    verification: text("verification", { enum: ["auto", "always", "off"] })
      .notNull()
      .default("auto"),
    /** Who may compute the job: any worker, or only workers of the job's own tenant. */
    pool: text("pool", { enum: ["any", "own"] })
      .notNull()
      .default("any"),
    /** Kinds of personal data masked in the text workers get (JSON array; empty: none). */
    piiMask: text("pii_mask", { mode: "json" }).$type<PiiKind[]>().notNull().default([]),
    idempotencyKey: text("idempotency_key"),
    requestHash: text("request_hash"),
    /** The job's own webhook endpoint (in the tenant's WebhookHub), if it asked for one. */
    webhookId: text("webhook_id"),
    webhookUrl: text("webhook_url"),
    /** Set once the Dispatcher has the job's tasks; a retried submit re-dispatches otherwise. */
    dispatchedAt: text("dispatched_at"),
    createdAt: text("created_at").notNull(),
    startedAt: text("started_at"),
    completedAt: text("completed_at"),
  },
  (t) => [
    uniqueIndex("jobs_idempotency").on(t.tenant, t.idempotencyKey),
    index("jobs_tenant_created").on(t.tenant, t.createdAt),
  ],
);

export const documents = sqliteTable(
  "documents",
  {
    jobId: text("job_id").notNull(),
    seq: integer("seq").notNull(),
    /** The submitter's id for the document (or a generated one). */
    id: text("id").notNull(),
    metadata: text("metadata", { mode: "json" }).$type<Record<string, unknown>>(),
    chars: integer("chars").notNull(),
    chunks: integer("chunks").notNull(),
  },
  (t) => [
    uniqueIndex("documents_pk").on(t.jobId, t.seq),
    uniqueIndex("documents_id").on(t.jobId, t.id),
  ],
);

export const chunks = sqliteTable(
  "chunks",
  {
    /** `<jobId>.<docSeq>.<index>`: deterministic, also the vector id. */
    id: text("id").primaryKey(),
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
  },
  (t) => [index("chunks_job").on(t.jobId, t.id)],
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
