import { defineConfig } from "drizzle-kit";

// drizzle-kit writes SQL migrations here; wrangler applies them (migrations_dir in wrangler.toml).
export default defineConfig({
  dialect: "sqlite",
  schema: "./apps/edge/src/db/schema.ts",
  out: "./migrations",
});
