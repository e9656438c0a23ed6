CREATE TABLE `chunks` (
	`id` text PRIMARY KEY NOT NULL,
	`job_id` text NOT NULL,
	`document_id` text NOT NULL,
	`idx` integer NOT NULL,
	`text` text NOT NULL,
	`start` integer NOT NULL,
	`end` integer NOT NULL,
	`status` text DEFAULT 'pending' NOT NULL,
	`error` text
);
--> statement-breakpoint
CREATE INDEX `chunks_job` ON `chunks` (`job_id`,`id`);--> statement-breakpoint
CREATE TABLE `credentials` (
	`id` text PRIMARY KEY NOT NULL,
	`kind` text NOT NULL,
	`tenant` text NOT NULL,
	`hash` text NOT NULL,
	`name` text,
	`created_at` text DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')) NOT NULL,
	`revoked_at` text
);
--> statement-breakpoint
CREATE UNIQUE INDEX `credentials_hash` ON `credentials` (`hash`);--> statement-breakpoint
CREATE TABLE `documents` (
	`job_id` text NOT NULL,
	`seq` integer NOT NULL,
	`id` text NOT NULL,
	`metadata` text,
	`chars` integer NOT NULL,
	`chunks` integer NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX `documents_pk` ON `documents` (`job_id`,`seq`);--> statement-breakpoint
CREATE UNIQUE INDEX `documents_id` ON `documents` (`job_id`,`id`);--> statement-breakpoint
CREATE TABLE `jobs` (
	`id` text PRIMARY KEY NOT NULL,
	`tenant` text NOT NULL,
	`status` text NOT NULL,
	`model` text NOT NULL,
	`documents` integer NOT NULL,
	`chunks_total` integer NOT NULL,
	`chunks_done` integer DEFAULT 0 NOT NULL,
	`chunks_failed` integer DEFAULT 0 NOT NULL,
	`chunk_max_chars` integer NOT NULL,
	`chunk_overlap` integer NOT NULL,
	`idempotency_key` text,
	`request_hash` text,
	`dispatched_at` text,
	`created_at` text NOT NULL,
	`started_at` text,
	`completed_at` text
);
--> statement-breakpoint
CREATE UNIQUE INDEX `jobs_idempotency` ON `jobs` (`tenant`,`idempotency_key`);--> statement-breakpoint
CREATE INDEX `jobs_tenant_created` ON `jobs` (`tenant`,`created_at`);--> statement-breakpoint
CREATE TABLE `workers` (
	`id` text PRIMARY KEY NOT NULL,
	`name` text,
	`version` text,
	`device` text,
	`threads` integer,
	`models` text,
	`connected_at` text NOT NULL,
	`last_seen_at` text NOT NULL,
	`disconnected_at` text,
	`chunks_done` integer DEFAULT 0 NOT NULL
);
