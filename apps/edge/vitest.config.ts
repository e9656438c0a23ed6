import path from "node:path";
import { cloudflareTest, readD1Migrations } from "@cloudflare/vitest-pool-workers";
import { defineConfig } from "vitest/config";
import { migratePostgres } from "../../scripts/lib/pg-migrate.js";
import { startPostgres } from "../../scripts/lib/postgres.js";
import { startSystemPostgres } from "../../scripts/lib/system-postgres.js";

const root = path.resolve(import.meta.dirname, "../..");

/**
 * The machine's own PostgreSQL, when installed, as a second Postgres for the metadata store's
 * contract tests: PGlite runs all connections on one backend, so concurrent transactions are
 * only truly concurrent there (test/backends.ts). Started and migrated once for every test file
 * of this process (the function below runs per file).
 */
let system: ReturnType<typeof startSystemPostgres> | undefined;

/**
 * A real Postgres with pgvector for the Postgres metadata store and vector index: PGlite over
 * the wire protocol behind the WebSocket proxy the Neon driver needs, migrated as
 * `npm run db:migrate:postgres` migrates a deployment's. One for every test file of this process
 * (each test names its tenants and jobs uniquely); it lives as long as the process.
 */
let local: ReturnType<typeof startPostgres> | undefined;
function localPostgres() {
  // Every store and keyring a test opens holds connections of its own until idle.
  local ??= startPostgres({ keepProcessAlive: false, maxConnections: 256 }).then(async (p) => {
    await migratePostgres(p.url, p.wsProxy);
    return p;
  });
  return local;
}
function systemPostgres() {
  system ??= startSystemPostgres({ keepProcessAlive: false }).then(async (s) => {
    if (s) await migratePostgres(s.url, s.wsProxy);
    return s;
  });
  return system;
}

export default defineConfig({
  plugins: [
    cloudflareTest(async () => {
      const [postgres, system] = await Promise.all([localPostgres(), systemPostgres()]);
      return {
        wrangler: { configPath: path.join(root, "wrangler.toml") },
        remoteBindings: false,
        miniflare: {
          // A database no setup migrates: tests of a migration run on it from an older schema.
          d1Databases: { UPGRADE_DB: "upgrade-db" },
          bindings: {
            VECTOR_BACKEND: "local",
            // A fixed test deployment key (base64 of 32 bytes); never a real deployment's.
            P2PA_DATA_KEYS: `test:${Buffer.alloc(32, 7).toString("base64")}`,
            // Small, so a test can fill the queue.
            MAX_BACKLOG_TASKS: "200",
            // Scripted test donors answer by position, not by text; canary tests turn them on.
            VERIFY_CANARY_RATE: "0",
            // For the same reason their vectors do not belong to a text: tests of the embedding
            // cache turn it on per job.
            EMBEDDING_CACHE: "off",
            TEST_MIGRATIONS: await readD1Migrations(path.join(root, "migrations")),
            DATABASE_URL: postgres.url,
            PG_WS_PROXY: postgres.wsProxy,
            ...(system
              ? { SYSTEM_DATABASE_URL: system.url, SYSTEM_PG_WS_PROXY: system.wsProxy }
              : {}),
          },
        },
      };
    }),
  ],
  test: {
    name: "edge",
    include: ["test/**/*.test.ts"],
    setupFiles: ["./test/setup.ts"],
  },
});
