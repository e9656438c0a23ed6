/**
 * A local Postgres for `npm start -- --postgres`, the tests and the benchmark: PGlite (Postgres
 * 17 in WebAssembly, with pgvector) served over the Postgres wire protocol by pglite-socket,
 * and in front of it a WebSocket-to-TCP proxy, because the Neon serverless driver the edge uses
 * speaks Postgres over WebSocket (Neon runs such a proxy in front of every database).
 * The proxy is ws-proxy.ts.
 */
import { mkdir } from "node:fs/promises";
import type net from "node:net";
import { PGlite } from "@electric-sql/pglite";
import { vector } from "@electric-sql/pglite-pgvector";
import { PGLiteSocketServer } from "@electric-sql/pglite-socket";
import { startWsProxy } from "./ws-proxy.js";

export { startWsProxy };

/** A running local Postgres and its WebSocket proxy. */
export interface LocalPostgres {
  /** Connection string for the edge's `DATABASE_URL` and for Node clients. */
  url: string;
  /** The Neon driver's `wsProxy` setting for this server (`PG_WS_PROXY`): `127.0.0.1:PORT/v2`. */
  wsProxy: string;
  /** Runs SQL statements directly (seeding, tests), outside any client connection. */
  exec(sql: string): Promise<void>;
  stop(): Promise<void>;
}

export interface PostgresOptions {
  /** Folder that keeps the database between runs; in memory when absent. */
  dataDir?: string;
  /** Concurrent client connections the server multiplexes onto PGlite (default 32). */
  maxConnections?: number;
  /**
   * False: the servers do not keep the process running (a test runner's config starts one that
   * lives as long as the runner, and must not hold the runner open at its end).
   */
  keepProcessAlive?: boolean;
}

/** Starts PGlite with pgvector on a free port, plus its WebSocket proxy on another. */
export async function startPostgres(options: PostgresOptions = {}): Promise<LocalPostgres> {
  if (options.dataDir) await mkdir(options.dataDir, { recursive: true });
  const db = await PGlite.create({ dataDir: options.dataDir, extensions: { vector } });
  await db.exec("CREATE EXTENSION IF NOT EXISTS vector");
  const server = new PGLiteSocketServer({
    db,
    host: "127.0.0.1",
    port: 0,
    maxConnections: options.maxConnections ?? 32,
  });
  await server.start();
  const [host, port] = server.getServerConn().split(":") as [string, string];
  // PGlite runs every connection on one session: the proxy gives connections turns, one
  // transaction at a time, so that transactions stay apart as they do on Postgres.
  const proxy = await startWsProxy([`${host}:${port}`], { serializeTransactions: true });
  if (options.keepProcessAlive === false) {
    // pglite-socket keeps its net.Server in a private field.
    (server as unknown as { server?: net.Server }).server?.unref();
    proxy.unref();
  }
  return {
    url: `postgres://postgres:postgres@${host}:${port}/postgres`,
    wsProxy: proxy.wsProxy,
    async exec(sql) {
      await db.exec(sql);
    },
    async stop() {
      await proxy.stop();
      await server.stop();
      await db.close();
    },
  };
}
