import { createRoute } from "@hono/zod-openapi";
import { EmbeddingsRequest, EmbeddingsResponse, ErrorBody, encodeVector } from "@p2pa/shared";
import { router } from "../app.js";
import { requireAuth, scoped } from "../lib/auth.js";
import { AppError } from "../lib/errors.js";
import { requireModel } from "../lib/models.js";
import { embedNow } from "../lib/realtime.js";
import { assertWithinWindow } from "../lib/tokens.js";
import { errors, json } from "./openapi.js";

const embeddings = createRoute({
  method: "post",
  path: "/v1/embeddings",
  operationId: "createEmbeddings",
  summary: "OpenAI-compatible embeddings, computed now by a connected worker",
  ...scoped("search"),
  request: {
    body: { content: { "application/json": { schema: EmbeddingsRequest } }, required: true },
  },
  responses: {
    200: {
      description: "One embedding per input, in input order",
      content: { "application/json": { schema: EmbeddingsResponse } },
    },
    401: errors[401],
    404: errors[404],
    422: errors[422],
    503: json(ErrorBody, "No worker can embed now; see Retry-After"),
  },
});

export const embeddingRoutes = router();
embeddingRoutes.use("/v1/embeddings", requireAuth("api"));

embeddingRoutes.openapi(embeddings, async (c) => {
  const req = c.req.valid("json");
  const info = requireModel(c.env, req.model);
  if (req.dimensions !== undefined && req.dimensions !== info.dimension) {
    throw new AppError(
      422,
      "unprocessable",
      `model ${req.model} produces ${info.dimension} dimensions`,
    );
  }
  const inputs = typeof req.input === "string" ? [req.input] : req.input;
  await assertWithinWindow(c.env, req.model, inputs, "input");
  const { vectors, tokens } = await embedNow(c.env, req.model, inputs, {
    tenant: c.get("credential").tenant,
    ...(req.pool ? { pool: req.pool } : {}),
  });
  const base64 = req.encoding_format === "base64";
  return c.json(
    {
      object: "list" as const,
      data: vectors.map((v, index) => ({
        object: "embedding" as const,
        index,
        embedding: base64 ? encodeVector(v) : Array.from(v),
      })),
      model: req.model,
      usage: { prompt_tokens: tokens, total_tokens: tokens },
    },
    200,
  );
});
