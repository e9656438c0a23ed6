import { env } from "cloudflare:test";
import type { MetadataBackend } from "../src/db/open.js";
import { postgresPool } from "../src/db/postgres.js";

/**
 * The metadata backends the store's contract runs against, each as the deployment's `env` with
 * METADATA_BACKEND set, and a way to read what it stored. D1 is this test file's own database;
 * the Postgres databases (vitest.config.ts starts them) may be shared with other test files (the
 * system's PostgreSQL is started once for the run), so tests name their tenants and jobs
 * uniquely.
 */
export interface Backend {
  name: string;
  kind: MetadataBackend;
  env: Env;
  /**
   * Whether transactions of different connections keep apart when they overlap, so races
   * between them can be tested. PGlite runs every connection on one backend session; its proxy
   * (scripts/lib/ws-proxy.ts) gives connections turns a transaction at a time, so they do.
   */
  concurrent: boolean;
  /** Rows of a query written with `?` placeholders, run on the backend's database. */
  query<T>(sql: string, params?: unknown[]): Promise<T[]>;
}

const d1: Backend = {
  name: "d1",
  kind: "d1",
  env: { ...env, METADATA_BACKEND: "d1" } as Env,
  concurrent: true,
  async query<T>(sql: string, params: unknown[] = []) {
    return (
      await env.DB.prepare(sql)
        .bind(...params)
        .all<T>()
    ).results;
  },
};

function postgres(name: string, url: string, proxy: string, concurrent: boolean): Backend {
  const pgEnv = {
    ...env,
    METADATA_BACKEND: "postgres",
    DATABASE_URL: url,
    PG_WS_PROXY: proxy,
  } as unknown as Env;
  return {
    name,
    kind: "postgres",
    env: pgEnv,
    concurrent,
    async query<T>(sql: string, params: unknown[] = []) {
      let n = 0;
      const pool = postgresPool(pgEnv);
      try {
        return (
          await pool.query(
            sql.replace(/\?/g, () => `$${++n}`),
            params,
          )
        ).rows as T[];
      } finally {
        await pool.end();
      }
    },
  };
}

const bindings = env as unknown as Record<string, string | undefined>;

/** PGlite with pgvector: the tests' Postgres. */
export const PGLITE = postgres(
  "postgres (PGlite)",
  bindings.DATABASE_URL ?? "",
  bindings.PG_WS_PROXY ?? "",
  true,
);

/** The machine's own PostgreSQL, when installed (see scripts/lib/system-postgres.ts). */
export const SYSTEM_POSTGRES = bindings.SYSTEM_DATABASE_URL
  ? postgres(
      "postgres (system)",
      bindings.SYSTEM_DATABASE_URL,
      bindings.SYSTEM_PG_WS_PROXY ?? "",
      true,
    )
  : null;

export const BACKENDS: readonly Backend[] = [
  d1,
  PGLITE,
  ...(SYSTEM_POSTGRES ? [SYSTEM_POSTGRES] : []),
];

/** A name no other test (of any file, on any backend) uses. */
export function unique(prefix: string): string {
  return `${prefix}-${crypto.randomUUID().slice(0, 8)}`;
}
