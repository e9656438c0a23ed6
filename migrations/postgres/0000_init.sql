CREATE TABLE "chunk_term_postings" (
	"term" text COLLATE "C" NOT NULL,
	"row_id" bigint NOT NULL,
	"tf" integer NOT NULL,
	CONSTRAINT "chunk_term_postings_term_row_id_pk" PRIMARY KEY("term","row_id")
);
--> statement-breakpoint
CREATE TABLE "chunk_terms" (
	"id" bigint PRIMARY KEY NOT NULL,
	"terms" text COLLATE "C" NOT NULL,
	"tokens" integer NOT NULL
);
--> statement-breakpoint
CREATE TABLE "chunks" (
	"id" text COLLATE "C" PRIMARY KEY NOT NULL,
	"job_id" text COLLATE "C" NOT NULL,
	"document_id" text COLLATE "C" NOT NULL,
	"idx" integer NOT NULL,
	"text" text COLLATE "C" NOT NULL,
	"start" integer NOT NULL,
	"end" integer NOT NULL,
	"status" text COLLATE "C" DEFAULT 'pending' NOT NULL,
	"error" text COLLATE "C",
	"headings" json,
	"page" integer,
	"cache_key" text COLLATE "C"
);
--> statement-breakpoint
CREATE TABLE "credentials" (
	"id" text COLLATE "C" PRIMARY KEY NOT NULL,
	"kind" text COLLATE "C" NOT NULL,
	"tenant" text COLLATE "C" NOT NULL,
	"hash" text COLLATE "C" NOT NULL,
	"name" text COLLATE "C",
	"created_at" text COLLATE "C" DEFAULT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') NOT NULL,
	"revoked_at" text COLLATE "C",
	"quarantined_at" text COLLATE "C",
	"quarantine_reason" text COLLATE "C",
	"scopes" json,
	"prefix" text COLLATE "C",
	"expires_at" text COLLATE "C",
	"last_used_at" text COLLATE "C",
	"quotas" json
);
--> statement-breakpoint
CREATE TABLE "documents" (
	"job_id" text COLLATE "C" NOT NULL,
	"seq" integer NOT NULL,
	"id" text COLLATE "C" NOT NULL,
	"tenant" text COLLATE "C",
	"collection" text COLLATE "C",
	"doc_key" text COLLATE "C",
	"state" text COLLATE "C" DEFAULT 'current' NOT NULL,
	"version" integer DEFAULT 1 NOT NULL,
	"content_hash" text COLLATE "C",
	"fingerprint" text COLLATE "C",
	"raw_key" text COLLATE "C",
	"metadata" json,
	"chars" integer NOT NULL,
	"chunks" integer NOT NULL,
	"error" text COLLATE "C",
	"created_at" text COLLATE "C",
	"pruned_at" text COLLATE "C"
);
--> statement-breakpoint
CREATE TABLE "embedding_cache" (
	"tenant" text COLLATE "C" NOT NULL,
	"model" text COLLATE "C" NOT NULL,
	"key" text COLLATE "C" NOT NULL,
	"vector" "bytea" NOT NULL,
	"job_id" text COLLATE "C" NOT NULL,
	"created_at" text COLLATE "C" NOT NULL,
	CONSTRAINT "embedding_cache_tenant_model_key_pk" PRIMARY KEY("tenant","model","key")
);
--> statement-breakpoint
CREATE TABLE "jobs" (
	"id" text COLLATE "C" PRIMARY KEY NOT NULL,
	"tenant" text COLLATE "C" NOT NULL,
	"status" text COLLATE "C" NOT NULL,
	"model" text COLLATE "C" NOT NULL,
	"collection" text COLLATE "C" DEFAULT 'default' NOT NULL,
	"documents" integer NOT NULL,
	"chunks_total" integer NOT NULL,
	"chunks_done" integer DEFAULT 0 NOT NULL,
	"chunks_failed" integer DEFAULT 0 NOT NULL,
	"chunk_max_chars" integer NOT NULL,
	"chunk_overlap" integer NOT NULL,
	"verification" text COLLATE "C" DEFAULT 'auto' NOT NULL,
	"pool" text COLLATE "C" DEFAULT 'any' NOT NULL,
	"pii_mask" json DEFAULT '[]'::json NOT NULL,
	"idempotency_key" text COLLATE "C",
	"created_by" text COLLATE "C",
	"text_retention_days" integer,
	"text_purged_at" text COLLATE "C",
	"request_hash" text COLLATE "C",
	"webhook_id" text COLLATE "C",
	"webhook_url" text COLLATE "C",
	"accepting" boolean DEFAULT false NOT NULL,
	"keep_originals" boolean DEFAULT true NOT NULL,
	"documents_unchanged" integer DEFAULT 0 NOT NULL,
	"chunks_cached" integer DEFAULT 0 NOT NULL,
	"dispatched_at" text COLLATE "C",
	"created_at" text COLLATE "C" NOT NULL,
	"started_at" text COLLATE "C",
	"completed_at" text COLLATE "C"
);
--> statement-breakpoint
CREATE TABLE "keyword_rows" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "keyword_rows_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"chunk_id" text COLLATE "C" NOT NULL,
	"job_id" text COLLATE "C" NOT NULL
);
--> statement-breakpoint
CREATE TABLE "originals" (
	"key" text COLLATE "C" PRIMARY KEY NOT NULL,
	"tenant" text COLLATE "C" NOT NULL,
	"media_type" text COLLATE "C" NOT NULL,
	"body" text COLLATE "C" NOT NULL
);
--> statement-breakpoint
CREATE TABLE "tenant_keys" (
	"tenant" text COLLATE "C" NOT NULL,
	"version" integer NOT NULL,
	"wrapped" text COLLATE "C" NOT NULL,
	"wrapped_by" text COLLATE "C" NOT NULL,
	"created_at" text COLLATE "C" NOT NULL
);
--> statement-breakpoint
CREATE TABLE "tenant_settings" (
	"tenant" text COLLATE "C" PRIMARY KEY NOT NULL,
	"text_retention_days" integer,
	"quotas" json,
	"updated_at" text COLLATE "C" NOT NULL
);
--> statement-breakpoint
CREATE TABLE "workers" (
	"id" text COLLATE "C" PRIMARY KEY NOT NULL,
	"name" text COLLATE "C",
	"version" text COLLATE "C",
	"device" text COLLATE "C",
	"threads" integer,
	"models" json,
	"connected_at" text COLLATE "C" NOT NULL,
	"last_seen_at" text COLLATE "C" NOT NULL,
	"disconnected_at" text COLLATE "C",
	"chunks_done" integer DEFAULT 0 NOT NULL
);
--> statement-breakpoint
ALTER TABLE "chunk_term_postings" ADD CONSTRAINT "chunk_term_postings_row_id_keyword_rows_id_fk" FOREIGN KEY ("row_id") REFERENCES "public"."keyword_rows"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "chunk_terms" ADD CONSTRAINT "chunk_terms_id_keyword_rows_id_fk" FOREIGN KEY ("id") REFERENCES "public"."keyword_rows"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "chunk_term_postings_row" ON "chunk_term_postings" USING btree ("row_id");--> statement-breakpoint
CREATE INDEX "chunks_job" ON "chunks" USING btree ("job_id","id");--> statement-breakpoint
CREATE INDEX "chunks_document" ON "chunks" USING btree ("job_id","document_id","status");--> statement-breakpoint
CREATE UNIQUE INDEX "credentials_hash" ON "credentials" USING btree ("hash");--> statement-breakpoint
CREATE UNIQUE INDEX "documents_pk" ON "documents" USING btree ("job_id","seq");--> statement-breakpoint
CREATE UNIQUE INDEX "documents_id" ON "documents" USING btree ("job_id","id");--> statement-breakpoint
CREATE UNIQUE INDEX "documents_current" ON "documents" USING btree ("tenant","collection","doc_key") WHERE state = 'current';--> statement-breakpoint
CREATE UNIQUE INDEX "documents_pending" ON "documents" USING btree ("tenant","collection","doc_key") WHERE state = 'pending';--> statement-breakpoint
CREATE INDEX "documents_versions" ON "documents" USING btree ("tenant","collection","doc_key","version");--> statement-breakpoint
CREATE INDEX "documents_hash" ON "documents" USING btree ("tenant","content_hash");--> statement-breakpoint
CREATE INDEX "embedding_cache_job" ON "embedding_cache" USING btree ("job_id");--> statement-breakpoint
CREATE INDEX "jobs_tenant_status" ON "jobs" USING btree ("tenant","status");--> statement-breakpoint
CREATE UNIQUE INDEX "jobs_idempotency" ON "jobs" USING btree ("tenant","idempotency_key");--> statement-breakpoint
CREATE INDEX "jobs_tenant_created" ON "jobs" USING btree ("tenant","created_at");--> statement-breakpoint
CREATE INDEX "jobs_tenant_collection" ON "jobs" USING btree ("tenant","collection");--> statement-breakpoint
CREATE UNIQUE INDEX "keyword_rows_chunk" ON "keyword_rows" USING btree ("chunk_id");--> statement-breakpoint
CREATE INDEX "keyword_rows_job" ON "keyword_rows" USING btree ("job_id");--> statement-breakpoint
CREATE INDEX "originals_tenant" ON "originals" USING btree ("tenant");--> statement-breakpoint
CREATE UNIQUE INDEX "tenant_keys_pk" ON "tenant_keys" USING btree ("tenant","version");