DROP INDEX `chunks_job`;--> statement-breakpoint
DROP INDEX `keyword_rows_job`;