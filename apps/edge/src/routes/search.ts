import { createRoute } from "@hono/zod-openapi";
import { DEFAULT_MODEL, ErrorBody, SearchRequest, SearchResponse } from "@p2pa/shared";
import { router } from "../app.js";
import { openStore } from "../db/open.js";
import { requireAuth, scoped } from "../lib/auth.js";
import { embedNow } from "../lib/realtime.js";
import { assertWithinWindow } from "../lib/tokens.js";
import { getVectorIndex } from "../vector/index.js";

const search = createRoute({
  method: "post",
  path: "/v1/search",
  summary: "Search stored chunks by meaning",
  ...scoped("search"),
  request: { body: { content: { "application/json": { schema: SearchRequest } }, required: true } },
  responses: {
    200: {
      description: "Best matches first",
      content: { "application/json": { schema: SearchResponse } },
    },
    401: {
      description: "Missing or invalid credentials",
      content: { "application/json": { schema: ErrorBody } },
    },
    422: { description: "Invalid request", content: { "application/json": { schema: ErrorBody } } },
    503: {
      description: "No worker can embed the query now; see Retry-After",
      content: { "application/json": { schema: ErrorBody } },
    },
  },
});

export const searchRoutes = router();
searchRoutes.use("/v1/search", requireAuth("api"));

searchRoutes.openapi(search, async (c) => {
  const { query, topK, filter, pool, model = DEFAULT_MODEL } = c.req.valid("json");
  const tenant = c.get("credential").tenant;
  assertWithinWindow(model, [query], "query");
  const {
    vectors: [vector],
  } = await embedNow(c.env, model, [query], { tenant, ...(pool ? { pool } : {}) });
  const metaFilter: Record<string, string> = { tenant };
  if (filter?.jobId) metaFilter.jobId = filter.jobId;
  if (filter?.documentId) metaFilter.documentId = filter.documentId;
  const { matches } = await getVectorIndex(c.env, model).query(vector as Float32Array, {
    topK,
    filter: metaFilter,
    returnMetadata: "none",
  });
  const chunks = new Map(
    (
      await openStore(c.env).getChunks(
        tenant,
        matches.map((m) => m.id),
      )
    ).map((r) => [r.id, r]),
  );
  const results = matches.flatMap((m) => {
    const chunk = chunks.get(m.id);
    if (!chunk) return [];
    const { status: _s, error: _e, ...rest } = chunk;
    return [{ score: m.score, chunk: rest }];
  });
  return c.json({ results }, 200);
});
