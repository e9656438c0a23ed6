/**
 * A WebSocket-to-TCP proxy for the Neon serverless driver in front of a plain Postgres, as Neon
 * runs one in front of every database: a WebSocket to `ws://HOST:PORT/v2?address=<host>:<port>`
 * carries the raw wire protocol to that address, one binary message per chunk each way. It only
 * forwards to the addresses it was started for, so it is not an open relay.
 *
 * It reads the protocol's framing in both directions (never the contents), for two things:
 * - A client that sends Terminate is done: Postgres would close the connection, and so does the
 *   proxy's TCP side at once (pglite-socket keeps such a connection, counted against its limit,
 *   for as long as the WebSocket stays open, and a client in workerd leaves that open until its
 *   request ends).
 * - `serializeTransactions`: PGlite runs every connection on one backend session, so two
 *   connections' transactions would interleave in one. The proxy then lets one connection talk
 *   to the server at a time, from its first message until the server is ready for a query again
 *   with no transaction open (ReadyForQuery 'I' and nothing outstanding), which is transaction
 *   pooling as PgBouncer does it. A connection that goes away inside a transaction has it rolled
 *   back before the next one goes on.
 */

import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import net from "node:net";
import { WebSocketServer } from "ws";

export interface WsProxy {
  /** The Neon driver's `wsProxy` setting: `127.0.0.1:PORT/v2`. */
  wsProxy: string;
  unref(): void;
  stop(): Promise<void>;
}

/** SSLRequest and GSSENCRequest codes: 8-byte messages answered with one byte. */
const ENCRYPTION_REQUESTS = new Set([80877103, 80877104]);
/** A waiting connection goes on after this long anyway, with a warning, rather than hang. */
const LOCK_WAIT_MS = 30_000;

/**
 * Splits a byte stream into protocol messages and calls `on(type, body)` for each: `type` is 0
 * for the untyped first message (startup, or an encryption request) of a client stream.
 */
function framer(untypedFirst: boolean, on: (type: number, body: Buffer) => void) {
  let buffered: Buffer = Buffer.alloc(0);
  let untyped = untypedFirst;
  return (chunk: Buffer) => {
    buffered = buffered.length ? Buffer.concat([buffered, chunk]) : chunk;
    for (;;) {
      const head = untyped ? 4 : 5;
      if (buffered.length < head) return;
      const length = buffered.readInt32BE(head - 4);
      const total = head - 4 + length;
      if (buffered.length < total) return;
      const type = untyped ? 0 : (buffered[0] as number);
      const body = buffered.subarray(head, total);
      buffered = buffered.subarray(total);
      // After an encryption request the startup message follows, untyped as well.
      untyped = type === 0 && length === 8 && ENCRYPTION_REQUESTS.has(body.readInt32BE(0));
      on(type, body);
    }
  };
}

/** One connection at a time, in order of asking. */
class Turn {
  private holder: object | null = null;
  private readonly waiting: { who: object; go: () => void }[] = [];

  take(who: object): Promise<void> {
    if (this.holder === who) return Promise.resolve();
    if (this.holder === null) {
      this.holder = who;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const entry = { who, go: () => resolve() };
      this.waiting.push(entry);
      setTimeout(() => {
        const i = this.waiting.indexOf(entry);
        if (i < 0) return;
        this.waiting.splice(i, 1);
        console.warn("postgres proxy: a connection waited 30 s for its turn; it goes on");
        resolve();
      }, LOCK_WAIT_MS).unref();
    });
  }

  give(who: object): void {
    if (this.holder !== who) return;
    const next = this.waiting.shift();
    this.holder = next?.who ?? null;
    next?.go();
  }
}

/** A simple-protocol Query message. */
function query(sql: string): Buffer {
  const text = Buffer.from(`${sql}\0`);
  const head = Buffer.alloc(5);
  head[0] = 0x51; // 'Q'
  head.writeInt32BE(4 + text.length, 1);
  return Buffer.concat([head, text]);
}

/** Starts a proxy to `targets` (`host:port` addresses) on a free port of 127.0.0.1. */
export async function startWsProxy(
  targets: readonly string[],
  options: { serializeTransactions?: boolean } = {},
): Promise<WsProxy> {
  const allowed = new Set(targets);
  const turn = options.serializeTransactions ? new Turn() : null;
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
    const me = {};
    let connected = false;
    let holding = turn === null;
    let asking = false;
    let terminated = false;
    let closed = false;
    /** Answers the server still owes: a ReadyForQuery per startup, Query and Sync sent. */
    let outstanding = 0;
    /** The server's last transaction status: 'I' idle, 'T' in a transaction, 'E' failed one. */
    let status = 0x49;
    /** Client bytes not yet written: before the TCP side is up, or while another has the turn. */
    const waiting: Buffer[] = [];
    /** Set while the proxy rolls back a transaction the client left open. */
    let rollingBack = false;

    const flush = () => {
      if (!connected || !holding) return;
      for (const b of waiting.splice(0)) socket.write(b);
    };
    const ask = () => {
      if (holding || asking || !turn) return;
      asking = true;
      void turn.take(me).then(() => {
        asking = false;
        holding = true;
        flush();
        maybeGive();
      });
    };
    const maybeGive = () => {
      if (!turn || !holding || outstanding > 0 || status !== 0x49 || waiting.length) return;
      if (closed && rollingBack) return;
      holding = false;
      turn.give(me);
    };
    const finish = () => {
      if (!turn) {
        socket.destroy();
        return;
      }
      // A transaction left open is rolled back before the next connection goes on.
      if (holding && connected && (status !== 0x49 || outstanding > 0) && !rollingBack) {
        rollingBack = true;
        outstanding++;
        socket.write(query("ROLLBACK"));
        return;
      }
      socket.destroy();
      if (holding) {
        holding = false;
        turn.give(me);
      }
    };

    const fromClient = framer(true, (type) => {
      if (type === 0 || type === 0x51 || type === 0x53) outstanding++; // startup, 'Q', 'S'
      if (type === 0x58) terminated = true; // 'X'
    });
    const fromServer = framer(false, (type, body) => {
      if (type !== 0x5a) return; // 'Z' ReadyForQuery
      outstanding = Math.max(0, outstanding - 1);
      status = body[0] ?? 0x49;
      if (rollingBack && outstanding === 0) {
        rollingBack = false;
        finish();
        return;
      }
      maybeGive();
    });

    socket.once("connect", () => {
      connected = true;
      flush();
    });
    ws.on("message", (data: Buffer | ArrayBuffer | Buffer[]) => {
      const bytes = Array.isArray(data)
        ? Buffer.concat(data)
        : Buffer.isBuffer(data)
          ? data
          : Buffer.from(data);
      // The encryption request's one-byte answer is not a framed message: this proxy's
      // clients never ask (the Neon driver does not over a proxy), so it is not expected.
      fromClient(bytes);
      // Terminate is not passed on: the proxy ends the session itself (rolling back what the
      // client left open) and closes the TCP side, as Postgres closes the connection.
      const onlyTerminate = terminated && bytes.length === 5 && bytes[0] === 0x58;
      if (!onlyTerminate) {
        waiting.push(bytes);
        if (holding) flush();
        else ask();
      }
      if (terminated) {
        closed = true;
        if (connected) finish();
        else socket.once("connect", finish);
      }
    });
    socket.on("data", (chunk) => {
      fromServer(chunk);
      if (!rollingBack && !closed) ws.send(chunk);
    });
    socket.on("close", () => {
      if (turn && holding) {
        holding = false;
        turn.give(me);
      }
      if (!terminated) ws.close();
    });
    socket.on("error", () => {
      if (!terminated) ws.close();
    });
    const gone = () => {
      if (closed) return;
      closed = true;
      if (!connected) socket.destroy();
      else finish();
    };
    ws.on("close", gone);
    ws.on("error", gone);
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
