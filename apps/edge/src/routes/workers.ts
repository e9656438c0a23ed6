import { DEFAULT_MODEL, getModel } from "@p2pa/shared";
import { router } from "../app.js";
import { dispatcherFor, shardsFrom } from "../dispatch/shards.js";
import { requireAuth } from "../lib/auth.js";
import { AppError } from "../lib/errors.js";
import { getVectorIndex } from "../vector/index.js";

/**
 * Workers join over WebSocket with a worker token. The edge authenticates, then hands the
 * socket to the Dispatcher shard the worker is placed on.
 */
export const workerRoutes = router()
  .get("/v1/workers/connect", requireAuth("worker"), async (c) => {
    if (c.req.header("Upgrade")?.toLowerCase() !== "websocket") {
      throw new AppError(426 as 400, "bad_request", "this endpoint expects a WebSocket upgrade");
    }
    const model = c.req.query("model") ?? DEFAULT_MODEL;
    if (!getModel(model)) throw new AppError(422, "unprocessable", `unknown model ${model}`);
    return dispatcherFor(c.env, model, crypto.randomUUID()).fetch(c.req.raw);
  })
  .get("/v1/workers", requireAuth("api"), async (c) => {
    const model = c.req.query("model") ?? DEFAULT_MODEL;
    if (!getModel(model)) throw new AppError(422, "unprocessable", `unknown model ${model}`);
    const [shards, index] = await Promise.all([
      Promise.all(shardsFrom(c.env, model, 0).map((s) => s.stats())),
      getVectorIndex(c.env, model).describe(),
    ]);
    return c.json({ model, vectors: index.vectorCount, shards }, 200);
  });
