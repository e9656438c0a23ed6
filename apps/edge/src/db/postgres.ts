import { neonConfig, Pool, type PoolConfig } from "@neondatabase/serverless";
import { endNeonSocketsCleanly } from "./neon-socket.js";

/**
 * Connections to the deployment's Postgres (Neon, or any Postgres behind a WebSocket proxy)
 * through Neon's serverless driver, which speaks the Postgres protocol over WebSocket from a
 * Worker. `DATABASE_URL` is the connection string; `PG_WS_PROXY` (`host:port/path`) names a
 * proxy of one's own instead of Neon's, reached without TLS (the local one that
 * `npm start -- --postgres` runs is scripts/lib/postgres.ts).
 */
export interface PostgresEnv {
  DATABASE_URL?: string;
  PG_WS_PROXY?: string;
}

/** Postgres is asked for but not configured (maps to 503, like a missing key). */
export class PostgresNotConfigured extends Error {
  constructor() {
    super("DATABASE_URL is not set: Postgres was chosen but has no connection string");
    this.name = "PostgresNotConfigured";
  }
}

/** Own proxies by the database address (`host:port`) they lead to. */
const proxies = new Map<string, string>();

/**
 * Applies `PG_WS_PROXY` to the driver, which keeps its settings per isolate: the proxy is
 * chosen by the address being connected to, so databases behind different proxies (the tests
 * run two servers) can be used from one isolate.
 */
function configure(env: PostgresEnv, url: string): void {
  const proxy = env.PG_WS_PROXY?.trim();
  if (!proxy) return;
  try {
    const u = new URL(url);
    proxies.set(`${u.hostname}:${u.port || "5432"}`, proxy);
  } catch {
    // Not a URL: the driver says what is wrong with it when it connects.
  }
  neonConfig.wsProxy = (host, port) =>
    `${proxies.get(`${host}:${port}`) ?? proxy}?address=${host}:${port}`;
  neonConfig.useSecureWebSocket = false;
  neonConfig.pipelineTLS = false;
  neonConfig.pipelineConnect = false;
}

/**
 * A connection pool for this deployment's Postgres. In a Worker a socket belongs to the request
 * that opened it, so a pool lives as long as one request (or one Durable Object) and is ended
 * with it (pg-client.ts keeps to that).
 */
export function postgresPool(
  env: PostgresEnv,
  options: Omit<PoolConfig, "connectionString"> = {},
): Pool {
  const url = env.DATABASE_URL?.trim();
  if (!url) throw new PostgresNotConfigured();
  endNeonSocketsCleanly();
  configure(env, url);
  return new Pool({ ...options, connectionString: url });
}
