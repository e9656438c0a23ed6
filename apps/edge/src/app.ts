import { OpenAPIHono } from "@hono/zod-openapi";
import { bodyLimit } from "hono/body-limit";
import { HTTPException } from "hono/http-exception";
import { secureHeaders } from "hono/secure-headers";
import type { z } from "zod";
import { metadataConnections, openStore } from "./db/open.js";
import { PostgresNotConfigured } from "./db/postgres.js";
import type { AppEnv } from "./lib/auth.js";
import { AppError } from "./lib/errors.js";
import { KeyringNotConfigured } from "./lib/keyring.js";
import { SettingsInvalid, settings } from "./lib/settings.js";

/** Largest request body the API reads (a job's text limit plus JSON overhead; file uploads). */
const MAX_BODY_BYTES = 32 * 1024 * 1024;

/** NDJSON, one document per line: read as a stream, so it has no size limit. */
export const isNdjson = (type: string | undefined) => /^application\/x-ndjson\b/i.test(type ?? "");
export const isMultipart = (type: string | undefined) =>
  /^multipart\/form-data\b/i.test(type ?? "");
/** Where documents arrive: a new job, or more for an open one (which takes no files). */
const INGEST_PATH = /^\/v1\/jobs(\/[^/]+\/documents)?$/;
const APPEND_PATH = /^\/v1\/jobs\/[^/]+\/documents$/;

/** Maps zod failures to the API's error body: 422 with every issue listed. */
function validationHook(result: { success: boolean; error?: z.ZodError; target?: string }) {
  if (!result.success && result.error) {
    throw new AppError(
      422,
      "validation_failed",
      `invalid ${result.target ?? "request"}: ${result.error.issues[0]?.message ?? "invalid"}`,
      result.error.issues.map((i) => ({
        path: i.path.join("."),
        message: i.message,
        code: i.code,
      })),
    );
  }
}

/** A router with the API's validation and error conventions. */
export function router() {
  return new OpenAPIHono<AppEnv>({ defaultHook: validationHook });
}

/**
 * Whether a request carries a body. An action with nothing to say (cancel, redeliver, rotate)
 * is a bodiless POST, as browsers and `curl -X POST` send it: it needs no Content-Type.
 */
function hasBody(req: Request): boolean {
  const length = req.headers.get("Content-Length");
  if (length !== null) return length.trim() !== "0";
  return req.headers.has("Transfer-Encoding") || req.body !== null;
}

function errorBody(code: string, message: string, details?: unknown) {
  return { error: { code, message, ...(details === undefined ? {} : { details }) } };
}

/** The root app: error mapping, body limits, content-type checks. */
export function createApp() {
  const app = router();

  // The usual security headers on every answer. The API serves JSON only, so nothing may
  // be framed, sniffed or loaded from it. A WebSocket upgrade's answer comes from the
  // coordinator as it is.
  const headers = secureHeaders({
    contentSecurityPolicy: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] },
    strictTransportSecurity: "max-age=63072000; includeSubDomains",
    referrerPolicy: "no-referrer",
    crossOriginResourcePolicy: "same-origin",
    xFrameOptions: "DENY",
  });
  app.use("*", async (c, next) =>
    c.req.header("Upgrade")?.toLowerCase() === "websocket" ? next() : headers(c, next),
  );
  // On Postgres, the stores and keyrings of one request share its connections, ended once it
  // has been answered.
  app.use("*", (c, next) =>
    metadataConnections(c.env, next, (p) => {
      try {
        c.executionCtx.waitUntil(p);
      } catch {
        // No execution context (a request made in-process): nothing to keep up.
      }
    }),
  );

  // A deployment whose variables cannot be read answers every API call with why (503).
  // Every route then finds its metadata store on the context (cheap: keys load on first use).
  app.use("/v1/*", async (c, next) => {
    settings(c.env);
    c.set("store", openStore(c.env));
    await next();
  });

  const limit = bodyLimit({
    maxSize: MAX_BODY_BYTES,
    onError: () => {
      throw new AppError(413, "payload_too_large", `request body over ${MAX_BODY_BYTES} bytes`);
    },
  });
  app.use("/v1/*", (c, next) =>
    // A stream of documents is read line by line in flat memory: it needs no cap.
    isNdjson(c.req.header("Content-Type")) && INGEST_PATH.test(c.req.path)
      ? next()
      : limit(c, next),
  );

  app.use("/v1/*", async (c, next) => {
    if (c.req.method === "POST" || c.req.method === "PUT" || c.req.method === "PATCH") {
      const type = c.req.header("Content-Type") ?? "";
      const ingest = c.req.method === "POST" && INGEST_PATH.test(c.req.path);
      const append = ingest && APPEND_PATH.test(c.req.path);
      // Documents always come as a body; anything else may be a bare action.
      if (
        (ingest || hasBody(c.req.raw)) &&
        !/^application\/([\w.+-]*\+)?json\b/i.test(type) &&
        !(ingest && (isNdjson(type) || (!append && isMultipart(type))))
      ) {
        throw new AppError(
          415,
          "unsupported_media_type",
          append
            ? "send documents to an open job as JSON (application/json) or as NDJSON (application/x-ndjson, one document per line); files start a job of their own"
            : ingest
              ? "send documents as JSON (application/json), as NDJSON (application/x-ndjson, one document per line) or as files (multipart/form-data)"
              : "send the body as JSON with Content-Type: application/json",
        );
      }
      // JSON and NDJSON are UTF-8 (RFC 8259): a body said to be in another charset would be
      // read as other text than was meant.
      const charset = /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(type)?.[1];
      if (charset && !isMultipart(type) && !/^utf-?8$/i.test(charset))
        throw new AppError(
          415,
          "unsupported_media_type",
          `the body must be UTF-8, as JSON is; this one says charset=${charset}`,
        );
    }
    await next();
  });

  app.onError((err, c) => {
    if (err instanceof AppError) {
      return c.json(errorBody(err.code, err.message, err.details), err.status, err.headers);
    }
    if (err instanceof SettingsInvalid) {
      console.error(err.message);
      return c.json(errorBody("not_configured", err.message), 503);
    }
    if (err instanceof PostgresNotConfigured) {
      console.error(err.message);
      return c.json(
        errorBody(
          "not_configured",
          "this deployment's metadata database is not configured: the operator must set DATABASE_URL",
        ),
        503,
      );
    }
    if (err instanceof KeyringNotConfigured) {
      console.error(err.message);
      return c.json(
        errorBody(
          "not_configured",
          "this deployment cannot encrypt data yet: the operator must set the P2PA_DATA_KEYS secret",
        ),
        503,
      );
    }
    if (err instanceof HTTPException) {
      // hono raises 400 for unparseable JSON bodies.
      const status = err.status;
      if (status === 400)
        return c.json(errorBody("invalid_json", "request body is not valid JSON"), 400);
      if (status === 415)
        return c.json(
          errorBody("unsupported_media_type", `${err.message}: see /openapi.json`),
          415,
        );
      return c.json(errorBody("bad_request", err.message), status);
    }
    console.error("unhandled error", c.req.method, c.req.path, err);
    return c.json(errorBody("internal", "internal error; the request may be retried"), 500);
  });

  app.notFound((c) =>
    c.json(errorBody("not_found", `no route for ${c.req.method} ${c.req.path}`), 404),
  );
  return app;
}
