import { createApp } from "./app.js";
import { embeddingRoutes } from "./routes/embeddings.js";
import { eventRoutes } from "./routes/events.js";
import { jobs } from "./routes/jobs.js";
import { metricRoutes } from "./routes/metrics.js";
import { resultRoutes } from "./routes/results.js";
import { searchRoutes } from "./routes/search.js";
import { webhookRoutes } from "./routes/webhooks.js";
import { workerRoutes } from "./routes/workers.js";

export { Dispatcher } from "./dispatch/dispatcher.js";
export { LocalVectorIndex } from "./vector/local-index.js";
export { WebhookHub } from "./webhooks/hub.js";

const app = createApp();

app.get("/healthz", async (c) => {
  const db = await c.env.DB.prepare("SELECT 1 AS ok")
    .first<{ ok: number }>()
    .catch(() => null);
  const ok = db?.ok === 1;
  return c.json(
    { status: ok ? "ok" : "degraded", checks: { database: ok ? "ok" : "unreachable" } },
    ok ? 200 : 503,
  );
});

app.route("/", jobs);
app.route("/", resultRoutes);
app.route("/", eventRoutes);
app.route("/", webhookRoutes);
app.route("/", searchRoutes);
app.route("/", embeddingRoutes);
app.route("/", workerRoutes);
app.route("/", metricRoutes);

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
  },
  security: [{ bearer: [] }],
});

export default app;
