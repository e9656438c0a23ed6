CREATE TABLE `embedding_cache` (
	`tenant` text NOT NULL,
	`model` text NOT NULL,
	`key` text NOT NULL,
	`vector` blob NOT NULL,
	`job_id` text NOT NULL,
	`created_at` text NOT NULL,
	PRIMARY KEY(`tenant`, `model`, `key`)
);
--> statement-breakpoint
CREATE INDEX `embedding_cache_job` ON `embedding_cache` (`job_id`);--> statement-breakpoint
ALTER TABLE `chunks` ADD `headings` text;--> statement-breakpoint
ALTER TABLE `chunks` ADD `page` integer;--> statement-breakpoint
ALTER TABLE `chunks` ADD `cache_key` text;--> statement-breakpoint
CREATE INDEX `chunks_document` ON `chunks` (`job_id`,`document_id`,`status`);--> statement-breakpoint
ALTER TABLE `documents` ADD `tenant` text;--> statement-breakpoint
ALTER TABLE `documents` ADD `collection` text;--> statement-breakpoint
ALTER TABLE `documents` ADD `doc_key` text;--> statement-breakpoint
ALTER TABLE `documents` ADD `state` text DEFAULT 'current' NOT NULL;--> statement-breakpoint
ALTER TABLE `documents` ADD `version` integer DEFAULT 1 NOT NULL;--> statement-breakpoint
ALTER TABLE `documents` ADD `content_hash` text;--> statement-breakpoint
ALTER TABLE `documents` ADD `fingerprint` text;--> statement-breakpoint
ALTER TABLE `documents` ADD `raw_key` text;--> statement-breakpoint
ALTER TABLE `documents` ADD `error` text;--> statement-breakpoint
ALTER TABLE `documents` ADD `created_at` text;--> statement-breakpoint
ALTER TABLE `documents` ADD `pruned_at` text;--> statement-breakpoint
CREATE UNIQUE INDEX `documents_current` ON `documents` (`tenant`,`collection`,`doc_key`) WHERE state = 'current';--> statement-breakpoint
CREATE UNIQUE INDEX `documents_pending` ON `documents` (`tenant`,`collection`,`doc_key`) WHERE state = 'pending';--> statement-breakpoint
CREATE INDEX `documents_versions` ON `documents` (`tenant`,`collection`,`doc_key`,`version`);--> statement-breakpoint
CREATE INDEX `documents_hash` ON `documents` (`tenant`,`content_hash`);--> statement-breakpoint
ALTER TABLE `jobs` ADD `accepting` integer DEFAULT false NOT NULL;--> statement-breakpoint
ALTER TABLE `jobs` ADD `keep_originals` integer DEFAULT true NOT NULL;--> statement-breakpoint
ALTER TABLE `jobs` ADD `documents_unchanged` integer DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE `jobs` ADD `chunks_cached` integer DEFAULT 0 NOT NULL;--> statement-breakpoint
-- Rows from before versions: their job's tenant, collection and time; no doc_key, so each stays
-- current and no later submit replaces it.
UPDATE `documents` SET
  `tenant` = (SELECT `tenant` FROM `jobs` WHERE `jobs`.`id` = `documents`.`job_id`),
  `collection` = (SELECT `collection` FROM `jobs` WHERE `jobs`.`id` = `documents`.`job_id`),
  `created_at` = (SELECT `created_at` FROM `jobs` WHERE `jobs`.`id` = `documents`.`job_id`)
WHERE `tenant` IS NULL;
