import { WorkerList } from "@p2pa/shared";
import { z } from "zod";
import { createApp } from "./app.js";
import { openStore } from "./db/open.js";
import { shardsFrom } from "./dispatch/shards.js";
import { modelIds } from "./lib/models.js";
import { documentRoutes } from "./routes/documents.js";
import { embeddingRoutes } from "./routes/embeddings.js";
import { eventRoutes } from "./routes/events.js";
import { jobs } from "./routes/jobs.js";
import { keyRoutes } from "./routes/keys.js";
import { metricRoutes } from "./routes/metrics.js";
import { modelRoutes } from "./routes/models.js";
import { errors, IdParam } from "./routes/openapi.js";
import { resultRoutes } from "./routes/results.js";
import { searchRoutes } from "./routes/search.js";
import { tenantRoutes } from "./routes/tenant.js";
import { webhookRoutes } from "./routes/webhooks.js";
import { workerRoutes } from "./routes/workers.js";

export { Dispatcher } from "./dispatch/dispatcher.js";
export { TenantLedger } from "./tenant/ledger.js";
export { IndexWriter } from "./vector/index-writer.js";
export { LocalVectorIndex } from "./vector/local-index.js";
export { WebhookHub } from "./webhooks/hub.js";

const app = createApp();

/**
 * Liveness and the two things that stop the product: an unreachable database, and a stalled
 * dispatcher shard (work waiting while a worker that could take it has room). Either makes
 * the answer `degraded` with 503, so a monitor that watches status codes sees it.
 */
app.get("/healthz", async (c) => {
  const [db, shards] = await Promise.all([
    openStore(c.env)
      .ping()
      .catch(() => false),
    Promise.all(
      modelIds(c.env).flatMap((model) =>
        shardsFrom(c.env, model, 0).map((s, shard) =>
          s.stats().then(
            (st) => ({ model, shard, ...st.health }),
            () => null,
          ),
        ),
      ),
    ),
  ]);
  const database = db ? "ok" : "unreachable";
  const stalled = shards.filter((s) => s?.stalled);
  const unreachable = shards.filter((s) => s === null).length;
  const dispatch = stalled.length ? "stalled" : unreachable ? "unreachable" : "ok";
  const ok = database === "ok" && dispatch === "ok";
  return c.json(
    {
      status: ok ? "ok" : "degraded",
      checks: { database, dispatch },
      ...(stalled.length ? { stalled } : {}),
    },
    ok ? 200 : 503,
  );
});

app.route("/", jobs);
app.route("/", documentRoutes);
app.route("/", resultRoutes);
app.route("/", eventRoutes);
app.route("/", webhookRoutes);
app.route("/", searchRoutes);
app.route("/", embeddingRoutes);
app.route("/", modelRoutes);
app.route("/", workerRoutes);
app.route("/", metricRoutes);
app.route("/", keyRoutes);
app.route("/", tenantRoutes);

// Routes written without createRoute still belong in the document (and in the cross-tenant
// walk of every route).
const plain = (description: string) => ({
  200: { description },
  401: errors[401],
  403: errors[403],
});
app.openAPIRegistry.registerPath({
  method: "get",
  path: "/v1/workers",
  operationId: "listWorkers",
  summary: "Connected workers: your own (operators: the whole fleet, queues and index)",
  security: [{ bearer: ["jobs:read"] }],
  request: { query: z.object({ model: z.string().optional() }) },
  responses: {
    200: {
      description: "Workers per shard; operators also see queues, health, donors and the index",
      content: { "application/json": { schema: WorkerList } },
    },
    401: errors[401],
    403: errors[403],
  },
});
app.openAPIRegistry.registerPath({
  method: "get",
  path: "/v1/workers/connect",
  operationId: "connectWorker",
  summary: "A worker joins over WebSocket with its worker token (the p2pa protocol)",
  responses: {
    101: { description: "Switching to the WebSocket protocol" },
    // A refused upgrade is closed with a code (4401, 4403, 4426) rather than answered.
    200: { description: "Never sent: the request either upgrades or is closed with a code" },
    401: errors[401],
  },
});
app.openAPIRegistry.registerPath({
  method: "delete",
  path: "/v1/workers/tokens/{id}",
  request: { params: IdParam },
  operationId: "revokeWorkerToken",
  summary: "Operator: revoke any worker token and close its connections",
  responses: { ...plain("Revoked"), 404: errors[404] },
});
app.openAPIRegistry.registerPath({
  method: "get",
  path: "/v1/metrics",
  operationId: "getMetrics",
  summary: "Operator: Prometheus metrics of every shard",
  responses: plain("Metrics in the Prometheus text format"),
});

app.openAPIRegistry.registerComponent("securitySchemes", "bearer", {
  type: "http",
  scheme: "bearer",
});
app.doc31("/openapi.json", {
  openapi: "3.1.0",
  info: {
    title: "p2pa API",
    version: "0.1.0",
    description: "Turn documents into searchable vectors on donated compute.",
    license: { name: "Apache-2.0", url: "https://www.apache.org/licenses/LICENSE-2.0" },
  },
  servers: [
    { url: "http://127.0.0.1:8787", description: "Local (npm start)" },
    { url: "/", description: "The deployment serving this document" },
  ],
  security: [{ bearer: [] }],
});

export default app;
