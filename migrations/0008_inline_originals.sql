CREATE TABLE `originals` (
	`key` text PRIMARY KEY NOT NULL,
	`tenant` text NOT NULL,
	`media_type` text NOT NULL,
	`body` text NOT NULL
);
--> statement-breakpoint
CREATE INDEX `originals_tenant` ON `originals` (`tenant`);