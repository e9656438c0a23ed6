import { defineConfig } from "drizzle-kit";

// The Postgres metadata backend's migrations (METADATA_BACKEND=postgres): drizzle-kit writes
// them to their own folder, which `npm run db:migrate:postgres` applies. Wrangler reads only
// the .sql files directly in migrations/ for D1, so this subfolder is not among them.
export default defineConfig({
  dialect: "postgresql",
  schema: "./apps/edge/src/db/schema-pg.ts",
  out: "./migrations/postgres",
});
