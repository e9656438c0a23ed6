import { AsyncLocalStorage } from "node:async_hooks";
import type { Pool } from "@neondatabase/serverless";
import { drizzle, type NeonDatabase } from "drizzle-orm/neon-serverless";
import { type PostgresEnv, postgresPool } from "./postgres.js";
import * as schema from "./schema-pg.js";

export type PgDatabase = NeonDatabase<typeof schema>;

/**
 * How long a pool with nothing to do stays open. Long enough that the calls of one request, or
 * the results a Dispatcher stores one after another, share a connection; short enough that a
 * Durable Object does not hold a socket (and so stay awake) long after its last event.
 */
const IDLE_MS = 2_000;
/** Connections one pool opens at most: a request or a Dispatcher runs few queries at once. */
const MAX_CONNECTIONS = 4;
/** SQLSTATEs after which a transaction is run again: deadlock, serialization failure. */
const RETRYABLE = new Set(["40P01", "40001"]);
const TRIES = 5;

/**
 * The Postgres connections of one store (or keyring), opened on first use and ended once idle.
 *
 * Where a pool may live was found by running it in workerd (test/postgres/connections.test.ts):
 * inside one Durable Object, a pool opened in one event serves the object's later events; used
 * from another context (the Worker that called the object), its socket fails ("Cannot perform
 * I/O on behalf of a different Durable Object"). In a Worker, workerd gives an I/O object to the
 * request that opened it and refuses it to any other.
 * So a `PgClient` belongs to whoever made it (a request, or one Durable Object, as the
 * Dispatcher keeps its store), never to an isolate: nothing keeps one at module level. It ends
 * its pool IDLE_MS after the last query, so a Durable Object is not kept awake by an idle
 * socket, and a request's pool does not outlive the calls it made; `close` ends it at once.
 */
export class PgClient {
  private pool: Pool | null = null;
  private db: PgDatabase | null = null;
  private active = 0;
  private idle: ReturnType<typeof setTimeout> | null = null;
  /** End the pool as soon as nothing runs on it (`closeWhenIdle`), then call these. */
  private closing = false;
  private readonly onClosed: (() => void)[] = [];

  constructor(private readonly env: PostgresEnv) {}

  /** Whether this client connects where `env` says. */
  serves(env: PostgresEnv): boolean {
    return env.DATABASE_URL === this.env.DATABASE_URL && env.PG_WS_PROXY === this.env.PG_WS_PROXY;
  }

  /** Runs `fn` with the database, opening the pool if it is not open. */
  async run<T>(fn: (db: PgDatabase) => Promise<T>): Promise<T> {
    this.stopIdle();
    this.active++;
    try {
      return await fn(this.open());
    } finally {
      this.active--;
      if (this.active === 0) {
        if (this.closing) void this.close();
        else this.idle = setTimeout(() => void this.close(), IDLE_MS);
      }
    }
  }

  /**
   * Ends the pool once the queries running now are done (at once if none are). A later call
   * opens a new pool, which ends IDLE_MS after its last query.
   */
  async closeWhenIdle(): Promise<void> {
    if (this.active === 0) return this.close();
    this.closing = true;
    await new Promise<void>((resolve) => this.onClosed.push(resolve));
  }

  private closedNow(): void {
    for (const resolve of this.onClosed.splice(0)) resolve();
  }

  /**
   * Runs `fn` in one transaction (READ COMMITTED), again from the start if Postgres aborted it
   * for a deadlock or a serialization failure (nothing of an aborted try was written).
   */
  transaction<T>(fn: (tx: PgDatabase) => Promise<T>): Promise<T> {
    return this.run(async (db) => {
      for (let attempt = 1; ; attempt++) {
        try {
          return await db.transaction((tx) => fn(tx as unknown as PgDatabase));
        } catch (err) {
          if (attempt >= TRIES || !RETRYABLE.has(sqlState(err) ?? "")) throw err;
        }
      }
    });
  }

  /** Ends the pool now; the next call opens a new one. */
  async close(): Promise<void> {
    this.stopIdle();
    this.closing = false;
    const pool = this.pool;
    this.pool = null;
    this.db = null;
    await pool?.end().catch(() => {});
    this.closedNow();
  }

  private stopIdle(): void {
    if (this.idle !== null) clearTimeout(this.idle);
    this.idle = null;
  }

  private open(): PgDatabase {
    if (this.db) return this.db;
    const pool = postgresPool(this.env, { max: MAX_CONNECTIONS, idleTimeoutMillis: IDLE_MS });
    // A connection that drops while idle is reported on the pool: without a listener that
    // would throw. The next query opens another.
    pool.on("error", () => {});
    this.pool = pool;
    this.db = drizzle(pool, { schema });
    return this.db;
  }
}

/** The connections of the request being served, if it opened any (see `withRequestClient`). */
const requestClient = new AsyncLocalStorage<PgClient>();

/**
 * Runs one request's work with one PgClient that every store and keyring it opens shares (one
 * set of connections per request rather than one per store), and ends its pool when the work
 * is done. A stream still answering afterwards opens a pool again as it needs one.
 */
export async function withRequestClient<T>(
  env: PostgresEnv,
  fn: () => Promise<T>,
  waitUntil?: (p: Promise<unknown>) => void,
): Promise<T> {
  const client = new PgClient(env);
  try {
    return await requestClient.run(client, fn);
  } finally {
    const closed = client.closeWhenIdle();
    waitUntil?.(closed);
  }
}

/** The request's PgClient when it serves `env`, else a PgClient of the caller's own. */
export function pgClientFor(env: PostgresEnv): PgClient {
  const shared = requestClient.getStore();
  return shared?.serves(env) ? shared : new PgClient(env);
}

/** The SQLSTATE of a Postgres error (through drizzle's wrapper), if it is one. */
function sqlState(err: unknown): string | undefined {
  return pgError(err)?.code;
}

/** The Postgres error behind `err` (drizzle wraps it as the cause), if any. */
export function pgError(err: unknown): { code?: string; constraint?: string } | undefined {
  for (let e = err, depth = 0; e && depth < 4; depth++) {
    const x = e as { code?: unknown; constraint?: unknown; cause?: unknown };
    if (typeof x.code === "string" && /^[0-9A-Z]{5}$/.test(x.code))
      return x as { code?: string; constraint?: string };
    e = x.cause;
  }
  return undefined;
}
