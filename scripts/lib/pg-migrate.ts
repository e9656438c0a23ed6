/**
 * Applies the Postgres metadata backend's migrations (migrations/postgres, written by
 * drizzle-kit from apps/edge/src/db/schema-pg.ts) with drizzle's migrator, through the same
 * Neon serverless driver the edge uses: to Neon directly, or to a plain Postgres behind a
 * WebSocket proxy (`wsProxy`, `host:port/path`, as scripts/lib/postgres.ts runs one).
 * drizzle records what it applied in `drizzle.__drizzle_migrations`, so running it again applies
 * only what is new.
 */
import path from "node:path";
import { neonConfig, Pool } from "@neondatabase/serverless";
import { drizzle } from "drizzle-orm/neon-serverless";
import { migrate } from "drizzle-orm/neon-serverless/migrator";
import ws from "ws";
import { endNeonSocketsCleanly } from "../../apps/edge/src/db/neon-socket.js";

/** The folder drizzle.postgres.config.ts writes to. */
const PG_MIGRATIONS = path.resolve(import.meta.dirname, "../../migrations/postgres");

/** Brings the database at `url` up to the newest migration. */
export async function migratePostgres(url: string, wsProxy?: string): Promise<void> {
  endNeonSocketsCleanly();
  neonConfig.webSocketConstructor = ws;
  if (wsProxy) {
    neonConfig.wsProxy = (host, port) => `${wsProxy}?address=${host}:${port}`;
    neonConfig.useSecureWebSocket = false;
    neonConfig.pipelineTLS = false;
    neonConfig.pipelineConnect = false;
  }
  const pool = new Pool({ connectionString: url, max: 1 });
  try {
    await migrate(drizzle(pool), { migrationsFolder: PG_MIGRATIONS });
  } finally {
    await pool.end();
  }
}
