import { createRoute } from "@hono/zod-openapi";
import { CollectionList, ErrorBody, SearchRequest, SearchResponse } from "@p2pa/shared";
import { router } from "../app.js";
import { requireAuth, scoped } from "../lib/auth.js";
import { search } from "../search/search.js";
import { filterableKeys } from "../vector/config.js";
import { errors, json } from "./openapi.js";

const searchRoute = createRoute({
  method: "post",
  path: "/v1/search",
  operationId: "search",
  summary: "Search stored chunks by meaning, by words, or both",
  ...scoped("search"),
  request: { body: { content: { "application/json": { schema: SearchRequest } }, required: true } },
  responses: {
    200: json(SearchResponse, "Best matches first"),
    401: errors[401],
    403: errors[403],
    404: errors[404],
    422: errors[422],
    429: errors[429],
    503: json(ErrorBody, "No worker can embed the query now (vector and hybrid); see Retry-After"),
  },
});

const collections = createRoute({
  method: "get",
  path: "/v1/collections",
  operationId: "listCollections",
  summary: "List the tenant's collections and the metadata keys searches can filter on",
  ...scoped("search"),
  responses: {
    200: json(CollectionList, "Collections by name"),
    401: errors[401],
    403: errors[403],
  },
});

export const searchRoutes = router();
searchRoutes.use("/v1/search", requireAuth("api"));
searchRoutes.use("/v1/collections", requireAuth("api"));

searchRoutes.openapi(searchRoute, async (c) =>
  c.json(await search(c.env, c.get("credential").tenant, c.req.valid("json")), 200),
);

searchRoutes.openapi(collections, async (c) => {
  const data = await c.var.store.listCollections(c.get("credential").tenant);
  return c.json({ data, filterable: filterableKeys(c.env) }, 200);
});
