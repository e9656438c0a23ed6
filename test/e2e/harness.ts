import type { ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { connect, createServer as createTcpServer, type Socket } from "node:net";
import os from "node:os";
import path from "node:path";
import type {
  AuditEntrySchema,
  Chunk,
  ChunkPage,
  IngestReport,
  Job,
  WebhookDelivery,
  WebhookEventType,
} from "@p2pa/shared";
import type { z } from "zod";
import {
  DEV_CREDENTIALS,
  freePort,
  type LocalEdge,
  prepareLocalDatabase,
  spawnWorker,
  startEdge,
} from "../../scripts/lib/local-edge.js";
import { startPostgres } from "../../scripts/lib/postgres.js";

export { DEV_CREDENTIALS, freePort };

/** How long a GET from the tests waits for an answer before it is sent again (once). */
const GET_TIMEOUT_MS = 30_000;

/*
 * Responses are typed with @p2pa/shared's schema types (Job, Chunk, SearchResponse, Document,
 * ...). The few shapes below have no shared schema; they are declared here once.
 */

/** A submission or append as the edge answers it (202): the job and what was taken of it. */
export type SubmittedJob = Job & { ingest: IngestReport };

/** GET /v1/webhooks/{id}/deliveries. */
export interface WebhookDeliveryList {
  data: WebhookDelivery[];
}

/** A webhook's signed payload: every job event carries the job as it is then. */
export interface WebhookPayload {
  type: WebhookEventType;
  timestamp: string;
  data: Job;
}

/** The data of a `chunk` event on GET /v1/jobs/{id}/events (the field the tests read). */
export interface ChunkEvent {
  chunkId: string;
}

/** A page of GET /v1/audit (only the entry has a shared schema). */
export interface AuditLogPage {
  data: z.infer<typeof AuditEntrySchema>[];
}

/** GET /v1/audit/verify. */
export interface AuditVerification {
  ok: boolean;
  entries: number;
}

/** A donor's verification record in a shard's stats. */
interface DonorRecord {
  donor: string;
  agreed: number;
  disagreed: number;
  quarantinedAt: number | null;
  trusted: boolean;
}

/** GET /v1/workers with the operator's key (the fields the end-to-end tests read). */
export interface FleetStats {
  vectors: number;
  shards: { tasks: Record<string, number>; donors?: DonorRecord[] }[];
}

export interface System {
  edge: LocalEdge;
  dir: string;
  workers: ChildProcess[];
  api<T = unknown>(
    pathname: string,
    init?: {
      method?: string;
      json?: unknown;
      headers?: Record<string, string>;
      /** Call with the operator's key (fleet-wide routes such as /v1/metrics). */
      admin?: boolean;
    },
  ): Promise<{ status: number; body: T; headers: Headers }>;
  /** Starts a real p2pa-worker; `token` defaults to the development worker token. */
  addWorker(args?: string[], token?: string): Promise<ChildProcess>;
  /** Kills the edge and starts it again on the same port with the same state on disk. */
  restartEdge(): Promise<void>;
  stop(): Promise<void>;
}

/** The real system: wrangler dev with local bindings and real p2pa-worker processes. */
export async function startSystem(
  opts: {
    vars?: Record<string, string>;
    workerTokens?: string[];
    /** Metadata and vectors in a local Postgres with pgvector instead of D1 and the local index. */
    postgres?: boolean;
  } = {},
): Promise<System> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "p2pa-e2e-"));
  const postgres = opts.postgres ? await startPostgres() : undefined;
  await prepareLocalDatabase(dir, opts.workerTokens, postgres);
  const edgeOptions = {
    port: await freePort(),
    persistTo: dir,
    ...(opts.vars ? { vars: opts.vars } : {}),
    ...(postgres ? { postgres } : {}),
  };
  const edge = await startEdge(edgeOptions);
  const workers: ChildProcess[] = [];
  const sys: System = {
    edge,
    dir,
    workers,
    async api(pathname, init = {}) {
      const method = init.method ?? (init.json === undefined ? "GET" : "POST");
      const request = () =>
        fetch(`${sys.edge.url}${pathname}`, {
          // wrangler dev's proxy sometimes holds a request until its client gives up (seen
          // right after a large submit); a GET is safe to send again, so it gets a deadline.
          ...(method === "GET" ? { signal: AbortSignal.timeout(GET_TIMEOUT_MS) } : {}),
          method,
          headers: {
            Authorization: `Bearer ${init.admin ? DEV_CREDENTIALS.adminKey : DEV_CREDENTIALS.apiKey}`,
            "Content-Type": "application/json",
            ...init.headers,
          },
          ...(init.json === undefined ? {} : { body: JSON.stringify(init.json) }),
        });
      // A kept-alive socket the server closed while this process was busy (the model runs
      // in-process in some tests) fails once; a GET is safe to send again on a new one.
      const res = await request().catch((err: { name?: string; cause?: { code?: string } }) => {
        if (method !== "GET") throw err;
        if (err.name === "TimeoutError") {
          console.warn(`GET ${pathname}: no answer in ${GET_TIMEOUT_MS} ms; sent again`);
          return request();
        }
        if (err.cause?.code === "UND_ERR_SOCKET") return request();
        throw err;
      });
      const text = await res.text();
      return {
        status: res.status,
        body: (text ? JSON.parse(text) : null) as never,
        headers: res.headers,
      };
    },
    async addWorker(args = ["--threads", "1"], token: string = DEV_CREDENTIALS.workerToken) {
      const w = spawnWorker(sys.edge.url, token, args);
      let out = "";
      const connected = new Promise<void>((resolve, reject) => {
        const onData = (d: Buffer) => {
          out += d.toString();
          if (out.includes("connected as")) resolve();
        };
        w.stderr?.on("data", onData);
        w.stdout?.on("data", onData);
        w.once("exit", (code) =>
          reject(new Error(`worker exited with ${code} before connecting:\n${out}`)),
        );
      });
      workers.push(w);
      await connected;
      return w;
    },
    async restartEdge() {
      await sys.edge.stop("SIGKILL");
      sys.edge = await startEdge(edgeOptions);
    },
    async stop() {
      for (const w of workers) if (w.exitCode === null && w.signalCode === null) w.kill("SIGKILL");
      await sys.edge.stop();
      await postgres?.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return sys;
}

export async function waitForJob<T extends { status: string }>(
  sys: System,
  id: string,
  timeoutMs = 120_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { body } = await sys.api<T>(`/v1/jobs/${id}`);
    if (!["queued", "running"].includes(body.status)) return body;
    if (Date.now() > deadline)
      throw new Error(
        `job ${id} still ${body.status} after ${timeoutMs} ms: ${JSON.stringify(body)}`,
      );
    await new Promise((r) => setTimeout(r, 250));
  }
}

export async function allChunks(
  sys: System,
  jobId: string,
  includeVectors = true,
): Promise<Chunk[]> {
  const out: Chunk[] = [];
  let cursor: string | null = null;
  do {
    const q: string = `limit=500&includeVectors=${includeVectors}${cursor ? `&cursor=${cursor}` : ""}`;
    const { body }: { body: ChunkPage } = await sys.api<ChunkPage>(`/v1/jobs/${jobId}/chunks?${q}`);
    out.push(...body.data);
    cursor = body.nextCursor;
  } while (cursor);
  return out;
}

export { cosine } from "@p2pa/shared";

/**
 * A TCP proxy in front of the edge that a test cuts like a network would: `cut` drops every
 * connection open through it; new ones are taken as before.
 */
export async function cuttableProxy(
  edgeUrl: string,
): Promise<{ url: string; cut(): void; close(): Promise<void> }> {
  const port = await freePort();
  const edgePort = Number(new URL(edgeUrl).port);
  const sockets = new Set<Socket>();
  const proxy = createTcpServer((client) => {
    const upstream = connect(edgePort, "127.0.0.1");
    client.pipe(upstream).pipe(client);
    sockets.add(client);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
    };
    client.on("error", drop);
    upstream.on("error", drop);
    client.on("close", drop);
  });
  await new Promise<void>((r) => proxy.listen(port, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${port}`,
    cut: () => {
      for (const s of sockets) s.destroy();
    },
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        proxy.close(() => r());
      }),
  };
}
