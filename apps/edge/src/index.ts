import { MODELS } from "@p2pa/shared";
import { createApp } from "./app.js";
import { shardsFrom } from "./dispatch/shards.js";
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

/**
 * Liveness and the two things that stop the product: an unreachable database, and a stalled
 * dispatcher shard (work waiting while a worker that could take it has room). Either makes
 * the answer `degraded` with 503, so a monitor that watches status codes sees it.
 */
app.get("/healthz", async (c) => {
  const [db, shards] = await Promise.all([
    c.env.DB.prepare("SELECT 1 AS ok")
      .first<{ ok: number }>()
      .catch(() => null),
    Promise.all(
      Object.keys(MODELS).flatMap((model) =>
        shardsFrom(c.env, model, 0).map((s, shard) =>
          s.stats().then(
            (st) => ({ model, shard, ...st.health }),
            () => null,
          ),
        ),
      ),
    ),
  ]);
  const database = db?.ok === 1 ? "ok" : "unreachable";
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
