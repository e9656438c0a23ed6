import { CloseCode, DEFAULT_MODEL } from "@p2pa/shared";
import { createMiddleware } from "hono/factory";
import { router } from "../app.js";
import { openStore } from "../db/open.js";
import { CREDENTIAL_HEADER, TENANT_HEADER } from "../dispatch/dispatcher.js";
import { dispatcherFor, shardsFrom } from "../dispatch/shards.js";
import { type AppEnv, bearer, lookupCredential, requireAuth, requireScope } from "../lib/auth.js";
import { AppError } from "../lib/errors.js";
import { modelIds, requireModel } from "../lib/models.js";
import { getVectorIndex } from "../vector/index.js";

/**
 * A WebSocket client often cannot read an HTTP error on the upgrade; so a socket with a bad
 * or revoked token is accepted and closed at once with 4401 and the reason, which every
 * client sees. Plain HTTP requests get the usual 401/403 JSON.
 */
const refuseSocketWithCloseCode = createMiddleware<AppEnv>(async (c, next) => {
  if (c.req.header("Upgrade")?.toLowerCase() !== "websocket") return next();
  const secret = bearer(c.req.header("Authorization"));
  const cred = secret ? await lookupCredential(c.env, secret) : null;
  if (cred?.kind === "worker" && !cred.quarantined && !cred.expired) return next();
  const pair = new WebSocketPair();
  const server = pair[1];
  server.accept();
  if (cred?.quarantined) {
    server.close(CloseCode.quarantined, "quarantined: results disagreed with other donors");
    return new Response(null, { status: 101, webSocket: pair[0] });
  }
  const reason = !secret
    ? "missing worker token"
    : cred?.kind === "worker"
      ? `this worker token expired at ${cred.expiresAt}`
      : cred
        ? "this is an API key, not a worker token"
        : "invalid or revoked worker token";
  server.close(CloseCode.unauthorized, reason);
  return new Response(null, { status: 101, webSocket: pair[0] });
});

/**
 * Workers join over WebSocket with a worker token. The edge authenticates, then hands the
 * socket to the Dispatcher shard the worker is placed on.
 */
export const workerRoutes = router()
  .get("/v1/workers/connect", refuseSocketWithCloseCode, requireAuth("worker"), async (c) => {
    if (c.req.header("Upgrade")?.toLowerCase() !== "websocket") {
      throw new AppError(426, "bad_request", "this endpoint expects a WebSocket upgrade");
    }
    const model = c.req.query("model") ?? DEFAULT_MODEL;
    requireModel(c.env, model);
    // The Dispatcher learns who connects from the route alone: whatever the client sent
    // under these names is replaced.
    const cred = c.get("credential");
    const headers = new Headers(c.req.raw.headers);
    headers.set(CREDENTIAL_HEADER, cred.id);
    headers.set(TENANT_HEADER, cred.tenant);
    return dispatcherFor(c.env, model, crypto.randomUUID()).fetch(
      new Request(c.req.raw, { headers }),
    );
  })
  .get("/v1/workers", requireAuth("api"), requireScope("jobs:read"), async (c) => {
    const model = c.req.query("model") ?? DEFAULT_MODEL;
    requireModel(c.env, model);
    const cred = c.get("credential");
    if (cred.kind === "admin") {
      // Operators see the whole fleet, every shard's queue and the index.
      const [shards, index] = await Promise.all([
        Promise.all(shardsFrom(c.env, model, 0).map((s) => s.stats())),
        getVectorIndex(c.env, model).describe(),
      ]);
      return c.json({ model, vectors: index.vectorCount, shards }, 200);
    }
    // A tenant sees only the workers that joined with its own tokens, and nothing global.
    const shards = await Promise.all(shardsFrom(c.env, model, 0).map((s) => s.stats(cred.tenant)));
    return c.json({ model, shards: shards.map((s) => ({ workers: s.workers })) }, 200);
  })
  .delete("/v1/workers/tokens/:id", requireAuth("admin"), async (c) => {
    // Operators revoke a worker token; its live connections are closed at once, on every shard.
    const id = c.req.param("id");
    if (!(await openStore(c.env).revokeCredential(id, "worker")))
      throw new AppError(404, "not_found", `no active worker token ${id}`);
    const shards = modelIds(c.env).flatMap((m) => shardsFrom(c.env, m, 0));
    const closed = (await Promise.all(shards.map((s) => s.revalidateNow()))).reduce(
      (n, k) => n + k,
      0,
    );
    return c.json({ id, revoked: true, connectionsClosed: closed }, 200);
  });
