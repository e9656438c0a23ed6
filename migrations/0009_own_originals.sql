DROP INDEX `documents_hash`;--> statement-breakpoint
CREATE INDEX `documents_shared_original` ON `documents` (`raw_key`) WHERE raw_key NOT LIKE 'doc/%';