CREATE TABLE `keyword_rows` (
	`id` integer PRIMARY KEY NOT NULL,
	`chunk_id` text NOT NULL,
	`job_id` text NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX `keyword_rows_chunk` ON `keyword_rows` (`chunk_id`);--> statement-breakpoint
CREATE INDEX `keyword_rows_job` ON `keyword_rows` (`job_id`);--> statement-breakpoint
ALTER TABLE `jobs` ADD `collection` text DEFAULT 'default' NOT NULL;--> statement-breakpoint
CREATE INDEX `jobs_tenant_collection` ON `jobs` (`tenant`,`collection`);