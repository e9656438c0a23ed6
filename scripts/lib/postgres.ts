/**
 * A local Postgres for `npm start -- --postgres`, the tests and the benchmark: PGlite (Postgres
 * 17 in WebAssembly, with pgvector) served over the Postgres wire protocol by pglite-socket,
 * and in front of it a WebSocket-to-TCP proxy, because the Neon serverless driver the edge uses
 * speaks Postgres over WebSocket (Neon runs such a proxy in front of every database).
 *
 * The proxy follows Neon's: a WebSocket to `ws://HOST:PORT/v2?address=<host>:<port>` carries
 * the raw wire protocol to that address, one binary message per chunk each way. It only
 * forwards to the addresses it was started for, so it is not an open relay.
 */
import { mkdir } from "node:fs/promises";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import net from "node:net";
import { PGlite } from "@electric-sql/pglite";
import { vector } from "@electric-sql/pglite-pgvector";
import { PGLiteSocketServer } from "@electric-sql/pglite-socket";
import { WebSocketServer } from "ws";

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
  const proxy = await startWsProxy([`${host}:${port}`]);
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

/**
 * A WebSocket-to-TCP proxy for the Neon serverless driver in front of a plain Postgres (this
 * one, or Debian's). `targets` are the `host:port` addresses it may connect to.
 */
export async function startWsProxy(
  targets: readonly string[],
): Promise<{ wsProxy: string; unref(): void; stop(): Promise<void> }> {
  const allowed = new Set(targets);
  const http = createServer();
  const wss = new WebSocketServer({ server: http });
  await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve));
  wss.on("connection", (ws, req) => {
    const address = new URL(req.url ?? "/", "http://proxy").searchParams.get("address") ?? "";
    const at = address.lastIndexOf(":");
    if (!allowed.has(address) || at < 0) {
      ws.close(1008, `not a proxied address: ${address}`);
      return;
    }
    const socket = net.connect(Number(address.slice(at + 1)), address.slice(0, at));
    socket.setNoDelay(true);
    // Bytes from the client before the TCP connection is up wait in order.
    const early: Buffer[] = [];
    let connected = false;
    socket.once("connect", () => {
      connected = true;
      for (const b of early.splice(0)) socket.write(b);
    });
    const terminates = terminateWatcher();
    let terminated = false;
    ws.on("message", (data: Buffer | ArrayBuffer | Buffer[]) => {
      const bytes = Array.isArray(data)
        ? Buffer.concat(data)
        : Buffer.isBuffer(data)
          ? data
          : Buffer.from(data);
      if (connected) socket.write(bytes);
      else early.push(bytes);
      // A client that says Terminate is done. Postgres would close the connection; pglite-socket
      // keeps it, counted against maxConnections, for as long as the WebSocket stays open, and a
      // client in workerd leaves that open until its request ends. So the proxy ends the TCP
      // side at once and leaves the WebSocket to the client, which no longer reads from it.
      if (terminates(bytes)) {
        terminated = true;
        if (connected) socket.end();
        else socket.once("connect", () => socket.end());
      }
    });
    socket.on("data", (chunk) => ws.send(chunk));
    socket.on("close", () => {
      if (!terminated) ws.close();
    });
    socket.on("error", () => {
      if (!terminated) ws.close();
    });
    ws.on("close", () => socket.destroy());
    ws.on("error", () => socket.destroy());
  });
  const { port } = http.address() as AddressInfo;
  return {
    wsProxy: `127.0.0.1:${port}/v2`,
    unref: () => http.unref(),
    stop: () =>
      new Promise<void>((resolve) => {
        for (const c of wss.clients) c.terminate();
        wss.close();
        http.close(() => resolve());
      }),
  };
}

/**
 * Follows the client's half of the Postgres protocol, chunk by chunk, and says when it has sent
 * Terminate ('X'). Message bodies are counted, not kept. The first message has no type byte,
 * and neither has the startup message that follows an 8-byte SSL or GSS encryption request.
 */
function terminateWatcher(): (chunk: Buffer) => boolean {
  let startup = true;
  let header = Buffer.alloc(0);
  let skip = 0;
  return (chunk) => {
    let at = 0;
    while (at < chunk.length) {
      if (skip > 0) {
        const n = Math.min(skip, chunk.length - at);
        skip -= n;
        at += n;
        continue;
      }
      const size = startup ? 4 : 5;
      const take = Math.min(size - header.length, chunk.length - at);
      header = Buffer.concat([header, chunk.subarray(at, at + take)]);
      at += take;
      if (header.length < size) return false;
      const length = header.readInt32BE(size - 4);
      if (!startup && header[0] === 0x58) return true;
      if (startup) startup = length === 8;
      skip = length - 4;
      header = Buffer.alloc(0);
    }
    return false;
  };
}
