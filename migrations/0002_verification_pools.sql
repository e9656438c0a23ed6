ALTER TABLE `credentials` ADD `quarantined_at` text;--> statement-breakpoint
ALTER TABLE `credentials` ADD `quarantine_reason` text;--> statement-breakpoint
ALTER TABLE `jobs` ADD `verification` text DEFAULT 'auto' NOT NULL;--> statement-breakpoint
ALTER TABLE `jobs` ADD `pool` text DEFAULT 'any' NOT NULL;