ALTER TABLE `jobs` ADD `webhook_id` text;--> statement-breakpoint
ALTER TABLE `jobs` ADD `webhook_url` text;