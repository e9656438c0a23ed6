// Which models a server serves, as the worker learns it: from the server's model list
// (`GET /v1/models/{id}`) before it loads anything, and from the connect route's refusal. Either
// way a model the server does not serve is a verdict for the person starting the worker, not a
// reason to retry.
import type { IncomingMessage } from "node:http";
import { ErrorCode, ModelObject } from "@p2pa/shared";
import { z } from "zod";
import { UserError } from "./errors.js";

/** Exit code of a worker asked to serve a model the server does not serve. */
const NOT_SERVED_EXIT = 6;

/** How long a question about one model may take: the server already answered the probe. */
const ASK_TIMEOUT_MS = 10_000;

/**
 * What `GET /v1/models/{id}` says of a model the server serves: the fields of the API's model
 * object the worker uses (the manifest, absent for a built-in model, is where workers fetch it).
 */
const ServedModel = ModelObject.pick({
  id: true,
  dimension: true,
  maxTokens: true,
  manifest: true,
  workers: true,
}).partial({ maxTokens: true, workers: true });
export type ServedModel = z.infer<typeof ServedModel>;

/** The error body of a refusal: `{"error": {"code", "message", "details": {"available"}}}`. */
const Refusal = z.object({
  error: z.object({
    code: z.string(),
    details: z
      .object({ available: z.array(z.string()) })
      .partial()
      .optional(),
  }),
});

/**
 * The models a server says it serves when it refuses `model`, or null when the answer is not
 * that refusal. Servers answer 404 `model_not_found`; earlier ones answered 422 `unprocessable`
 * listing `details.available`.
 */
export function refusalOf(status: number, body: unknown): string[] | null {
  const parsed = Refusal.safeParse(body);
  if (!parsed.success) return null;
  const { code, details } = parsed.data.error;
  if (status === 404 && code === ErrorCode.enum.model_not_found) return details?.available ?? [];
  if (status === 422 && code === ErrorCode.enum.unprocessable && details?.available)
    return details.available;
  return null;
}

/** Most of a refused upgrade's answer read for the reason: an error body is small. */
const REFUSAL_BODY_MAX = 64 * 1024;

/**
 * What an HTTP answer to a WebSocket upgrade says: the models the server serves when it refused
 * the one asked for, else null (another refusal, or a body that cannot be read).
 */
export function upgradeRefusal(res: IncomingMessage): Promise<string[] | null> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    res.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > REFUSAL_BODY_MAX) res.destroy();
      else chunks.push(chunk);
    });
    res.on("end", () => {
      let body: unknown = null;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch {
        // Not JSON: not the refusal this looks for.
      }
      resolve(refusalOf(res.statusCode ?? 0, body));
    });
    res.on("close", () => resolve(null));
    res.on("error", () => resolve(null));
  });
}

/** What the server answered about one model. */
export type ServerAnswer =
  | { kind: "served"; model: ServedModel }
  | { kind: "not_served"; available: string[] }
  /** No verdict: a server without a model list, or no answer; `why` says which. */
  | { kind: "unknown"; why: string };

/** Asks the server's model list about `id`, with the worker token. Never throws. */
export async function askServer(
  base: URL,
  token: string,
  id: string,
  fetchImpl: typeof fetch = globalThis.fetch,
): Promise<ServerAnswer> {
  const url = new URL(`/v1/models/${encodeURIComponent(id)}`, base);
  let res: Response;
  try {
    res = await fetchImpl(url, {
      headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
      signal: AbortSignal.timeout(ASK_TIMEOUT_MS),
    });
  } catch (err) {
    return { kind: "unknown", why: `no answer from ${url.href} (${(err as Error).message})` };
  }
  const body: unknown = await res.json().catch(() => null);
  const available = refusalOf(res.status, body);
  if (available) return { kind: "not_served", available };
  if (res.status !== 200)
    return { kind: "unknown", why: `${url.href} answered HTTP ${res.status}` };
  const model = ServedModel.safeParse(body);
  if (!model.success || model.data.id !== id)
    return { kind: "unknown", why: `${url.href} did not answer with model "${id}"` };
  return { kind: "served", model: model.data };
}

/**
 * A server that does not serve the model asked for: one line that says which it serves and
 * what to do, and an exit code of its own.
 */
export class ModelNotServed extends UserError {
  constructor(
    readonly origin: string,
    readonly model: string,
    readonly available: readonly string[],
  ) {
    super(notServedMessage(origin, model, available), undefined, NOT_SERVED_EXIT);
    this.name = "ModelNotServed";
  }
}

function notServedMessage(origin: string, model: string, available: readonly string[]): string {
  const head = `the server at ${origin} does not serve model "${model}"`;
  if (available.length === 0) return `${head} (it lists no models). Ask its operator to add it`;
  return `${head}; it serves: ${available.join(", ")}. Start with --model <one of them>, or ask its operator to add it`;
}
