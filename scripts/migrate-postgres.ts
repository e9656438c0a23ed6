/**
 * `npm run db:migrate:postgres`: applies migrations/postgres to the database named by
 * DATABASE_URL (the same connection string the edge is given). PG_WS_PROXY, when set, reaches a
 * plain Postgres through a WebSocket proxy instead of Neon's (see scripts/lib/postgres.ts).
 */
import { migratePostgres } from "./lib/pg-migrate.js";

const url = process.env.DATABASE_URL?.trim();
if (!url) {
  console.error(
    "DATABASE_URL is not set: give the Postgres connection string, e.g.\n" +
      "  DATABASE_URL=postgres://user:password@host/db npm run db:migrate:postgres",
  );
  process.exit(2);
}
try {
  await migratePostgres(url, process.env.PG_WS_PROXY?.trim() || undefined);
  console.log("postgres: migrations applied");
} catch (err) {
  console.error(`postgres: migrations failed: ${(err as Error).message}`);
  process.exit(1);
}
