import { applyD1Migrations, env } from "cloudflare:test";
import { sha256Hex } from "../src/lib/crypto.js";
import { KEYS } from "./helpers.js";

// Every test file starts from the schema the deployed database has, plus test credentials.
await applyD1Migrations(
  env.DB,
  (env as unknown as { TEST_MIGRATIONS: Parameters<typeof applyD1Migrations>[1] }).TEST_MIGRATIONS,
);

await env.DB.batch([
  env.DB.prepare(
    "INSERT OR IGNORE INTO credentials (id, kind, tenant, hash) VALUES (?, 'api', 't1', ?)",
  ).bind("c1", await sha256Hex(KEYS.api)),
  env.DB.prepare(
    "INSERT OR IGNORE INTO credentials (id, kind, tenant, hash) VALUES (?, 'api', 't2', ?)",
  ).bind("c2", await sha256Hex(KEYS.other)),
  env.DB.prepare(
    "INSERT OR IGNORE INTO credentials (id, kind, tenant, hash) VALUES (?, 'worker', 't1', ?)",
  ).bind("c3", await sha256Hex(KEYS.worker)),
  env.DB.prepare(
    "INSERT OR IGNORE INTO credentials (id, kind, tenant, hash) VALUES (?, 'worker', 't2', ?)",
  ).bind("c4", await sha256Hex(KEYS.otherWorker)),
  env.DB.prepare(
    "INSERT OR IGNORE INTO credentials (id, kind, tenant, hash) VALUES (?, 'admin', 'ops', ?)",
  ).bind("c5", await sha256Hex(KEYS.admin)),
]);
