CREATE TABLE `tenant_keys` (
	`tenant` text NOT NULL,
	`version` integer NOT NULL,
	`wrapped` text NOT NULL,
	`wrapped_by` text NOT NULL,
	`created_at` text NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX `tenant_keys_pk` ON `tenant_keys` (`tenant`,`version`);--> statement-breakpoint
CREATE TABLE `tenant_settings` (
	`tenant` text PRIMARY KEY NOT NULL,
	`text_retention_days` integer,
	`quotas` text,
	`updated_at` text NOT NULL
);
--> statement-breakpoint
ALTER TABLE `credentials` ADD `scopes` text;--> statement-breakpoint
ALTER TABLE `credentials` ADD `prefix` text;--> statement-breakpoint
ALTER TABLE `credentials` ADD `expires_at` text;--> statement-breakpoint
ALTER TABLE `credentials` ADD `last_used_at` text;--> statement-breakpoint
ALTER TABLE `credentials` ADD `quotas` text;--> statement-breakpoint
ALTER TABLE `jobs` ADD `created_by` text;--> statement-breakpoint
ALTER TABLE `jobs` ADD `text_retention_days` integer;--> statement-breakpoint
ALTER TABLE `jobs` ADD `text_purged_at` text;--> statement-breakpoint
CREATE INDEX `jobs_tenant_status` ON `jobs` (`tenant`,`status`);