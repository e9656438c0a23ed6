/**
 * The typed p2pa client: every path, parameter and body of the edge's /openapi.json, checked by
 * TypeScript (openapi-fetch over the types in schema.ts, which `npm run client` regenerates from
 * the edge and tests compare against it). The `p2pa` command line and the web console both use
 * it, so neither can drift from the API.
 */
import { EventSource } from "eventsource";
import createClient, { type Client } from "openapi-fetch";
import type { components, paths } from "./schema.js";

export type { components, operations, paths } from "./schema.js";

type Schemas = components["schemas"];
export type JobRecord = Schemas["Job"];
export type ApiErrorCode = Schemas["Error"]["error"]["code"];

export interface ClientOptions {
  /** The edge's origin, e.g. http://127.0.0.1:8787. */
  server: string;
  /** An API key (or an operator key). */
  key: string;
  /** A fetch to use instead of the global one. */
  fetch?: typeof fetch;
}

/** An answer that was not 2xx: its status and the API's error code and message. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: ApiErrorCode | "network",
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

export interface P2paClient {
  /** Every operation of the API, typed (openapi-fetch). */
  readonly api: Client<paths>;
  readonly server: string;
  /** Follows a job's live progress (Server-Sent Events), resuming after a cut. */
  watch(jobId: string, handlers: WatchHandlers): JobWatch;
}

export interface JobProgress {
  status: JobRecord["status"];
  chunks: JobRecord["chunks"];
  chunksPerSecond: number;
}

export interface JobEnd {
  id: string;
  status: JobRecord["status"];
  chunks: JobRecord["chunks"];
  completedAt: string | null;
}

export interface WatchHandlers {
  onProgress?(p: JobProgress): void;
  /** One per stored chunk; asking for them makes the stream carry every chunk id. */
  onChunk?(chunk: { chunkId: string; [k: string]: unknown }): void;
  /** A cut the stream is reconnecting after. */
  onReconnect?(): void;
}

export interface JobWatch {
  /** The terminal event; rejects when the job cannot be watched (unknown job, bad key). */
  readonly done: Promise<JobEnd>;
  close(): void;
}

const TERMINAL_EVENTS = ["completed", "completed_with_errors", "failed", "cancelled"] as const;

/** Throws the API's error for an answer that is not 2xx, else returns its body. */
export async function unwrap<T>(
  call: Promise<{ data?: T; error?: unknown; response: Response }>,
): Promise<T> {
  let result: Awaited<typeof call>;
  try {
    result = await call;
  } catch (err) {
    const c = (err as { cause?: { code?: string; message?: string } }).cause;
    const cause = c?.code ?? c?.message ?? (err as Error).message;
    throw new ApiError(0, "network", `cannot reach the server (${cause})`);
  }
  const { data, error, response } = result;
  if (response.ok) return data as T;
  const body = (error ?? {}) as {
    error?: { code?: ApiErrorCode; message?: string; details?: unknown };
  };
  throw new ApiError(
    response.status,
    body.error?.code ?? "internal",
    body.error?.message ?? `${response.status} ${response.statusText}`,
    body.error?.details,
  );
}

export function createP2paClient(opts: ClientOptions): P2paClient {
  const server = opts.server.replace(/\/+$/, "");
  const authorization = `Bearer ${opts.key}`;
  const fetchImpl = opts.fetch ?? globalThis.fetch.bind(globalThis);
  const api = createClient<paths>({
    baseUrl: server,
    headers: { Authorization: authorization },
    fetch: fetchImpl,
  });

  function watch(jobId: string, handlers: WatchHandlers): JobWatch {
    const url = new URL(`${server}/v1/jobs/${encodeURIComponent(jobId)}/events`);
    if (handlers.onChunk) url.searchParams.set("chunks", "true");
    let opened = false;
    const source = new EventSource(url, {
      fetch: (input, init) =>
        fetchImpl(input, { ...init, headers: { ...init?.headers, Authorization: authorization } }),
    });
    const done = new Promise<JobEnd>((resolve, reject) => {
      source.addEventListener("open", () => {
        if (opened) handlers.onReconnect?.();
        opened = true;
      });
      source.addEventListener("progress", (e) => handlers.onProgress?.(JSON.parse(e.data)));
      source.addEventListener("chunk", (e) => handlers.onChunk?.(JSON.parse(e.data)));
      for (const name of TERMINAL_EVENTS)
        source.addEventListener(name, (e) => {
          source.close();
          resolve(JSON.parse(e.data));
        });
      source.addEventListener("error", (e) => {
        // The library reconnects on its own after a cut; it gives up (CLOSED) only on an
        // answer that is not an event stream: a wrong job id or key.
        if (source.readyState !== EventSource.CLOSED) return;
        const code = (e as { code?: number }).code ?? 0;
        reject(
          new ApiError(
            code,
            code === 401 ? "unauthorized" : code === 404 ? "not_found" : "network",
            `cannot watch job ${jobId}: ${(e as { message?: string }).message ?? code}`,
          ),
        );
      });
    });
    return { done, close: () => source.close() };
  }

  return { api, server, watch };
}
