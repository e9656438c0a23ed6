import type { ErrorCode } from "@p2pa/shared";
import type { ContentfulStatusCode } from "hono/utils/http-status";

/** An error the client caused or must handle; rendered as `{"error": {code, message, details}}`. */
export class AppError extends Error {
  constructor(
    readonly status: ContentfulStatusCode,
    readonly code: ErrorCode,
    message: string,
    readonly details?: unknown,
    readonly headers?: Record<string, string>,
  ) {
    super(message);
    this.name = "AppError";
  }
}

export const notFound = (what: string) => new AppError(404, "not_found", `${what} not found`);

/** No worker can serve the request now; the client should retry after a few seconds. */
export const noCapacity = (message: string, retryAfterSeconds = 5) =>
  new AppError(503, "no_capacity", message, undefined, {
    "Retry-After": String(retryAfterSeconds),
  });
