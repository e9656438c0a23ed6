import { createRoute, z } from "@hono/zod-openapi";
import { ModelList, ModelObject } from "@p2pa/shared";
import { router } from "../app.js";
import { shardsFrom } from "../dispatch/shards.js";
import { requireAuth } from "../lib/auth.js";
import { modelRegistry, type RegisteredModel, requireModel } from "../lib/models.js";
import { errors, json } from "./openapi.js";

const listModels = createRoute({
  method: "get",
  path: "/v1/models",
  operationId: "listModels",
  summary: "List the models this deployment serves, with their connected workers",
  description:
    "OpenAI's model list, with what a client or a worker needs besides: each model's dimension, token window and chunk sizes, and where workers fetch it. Any key or worker token may read it.",
  security: [{ bearer: [] }],
  responses: { 200: json(ModelList, "Every model, built-in first"), 401: errors[401] },
});

const getModelRoute = createRoute({
  method: "get",
  path: "/v1/models/{model}",
  operationId: "getModel",
  summary: "One model of this deployment",
  security: [{ bearer: [] }],
  request: { params: z.object({ model: z.string().min(1).max(64) }) },
  responses: {
    200: json(ModelObject, "The model"),
    401: errors[401],
    404: errors[404],
  },
});

/** Workers connected for `model` now, over all its shards (0 when a shard cannot be asked). */
async function workersFor(env: Env, model: string): Promise<number> {
  const counts = await Promise.all(
    shardsFrom(env, model, 0).map((s) =>
      s.stats().then(
        (st) => st.workers.length,
        () => 0,
      ),
    ),
  );
  return counts.reduce((a, b) => a + b, 0);
}

function modelObject(m: RegisteredModel, workers: number): ModelObject {
  return {
    id: m.id,
    object: "model",
    created: 0,
    owned_by: m.manifest ? "operator" : "p2pa",
    dimension: m.dimension,
    maxTokens: m.maxTokens,
    defaultChunkChars: m.defaultChunkChars,
    maxChunkChars: m.maxChunkChars,
    ...(m.manifest ? { manifest: m.manifest } : {}),
    workers,
  };
}

export const modelRoutes = router();
modelRoutes.use("/v1/models", requireAuth("any"));
modelRoutes.use("/v1/models/*", requireAuth("any"));

modelRoutes.openapi(listModels, async (c) => {
  const models = [...modelRegistry(c.env).values()];
  const workers = await Promise.all(models.map((m) => workersFor(c.env, m.id)));
  return c.json(
    { object: "list" as const, data: models.map((m, i) => modelObject(m, workers[i] ?? 0)) },
    200,
  );
});

modelRoutes.openapi(getModelRoute, async (c) => {
  const m = requireModel(c.env, c.req.valid("param").model);
  return c.json(modelObject(m, await workersFor(c.env, m.id)), 200);
});
