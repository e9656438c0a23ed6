-- A chunk's keyword entry (its `chunk_terms` rowid) is the chunk's own INTEGER PRIMARY KEY,
-- `rid`, so `keyword_rows` (one row and one index entry more a chunk) goes. Chunks keep the
-- number their keyword row had, so the FTS5 table needs no rewrite; the others are numbered
-- after them. The index of a document's chunks leaves their status out: a stored result
-- then rewrites the chunk's row alone.
CREATE TABLE `__new_chunks` (
	`rid` integer PRIMARY KEY NOT NULL,
	`id` text NOT NULL,
	`job_id` text NOT NULL,
	`document_id` text NOT NULL,
	`idx` integer NOT NULL,
	`text` text NOT NULL,
	`start` integer NOT NULL,
	`end` integer NOT NULL,
	`status` text DEFAULT 'pending' NOT NULL,
	`error` text,
	`headings` text,
	`page` integer,
	`cache_key` text
);
--> statement-breakpoint
INSERT INTO `__new_chunks`("rid", "id", "job_id", "document_id", "idx", "text", "start", "end", "status", "error", "headings", "page", "cache_key") SELECT k.id, c."id", c."job_id", c."document_id", c."idx", c."text", c."start", c."end", c."status", c."error", c."headings", c."page", c."cache_key" FROM `chunks` c LEFT JOIN `keyword_rows` k ON k.chunk_id = c.id ORDER BY k.id IS NULL, k.id;--> statement-breakpoint
DROP TABLE `chunks`;--> statement-breakpoint
ALTER TABLE `__new_chunks` RENAME TO `chunks`;--> statement-breakpoint
DROP TABLE `keyword_rows`;--> statement-breakpoint
CREATE UNIQUE INDEX `chunks_id` ON `chunks` (`id`);--> statement-breakpoint
CREATE INDEX `chunks_document` ON `chunks` (`job_id`,`document_id`);
