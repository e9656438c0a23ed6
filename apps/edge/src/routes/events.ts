import { createRoute } from "@hono/zod-openapi";
import { isTerminal } from "@p2pa/shared";
import { z } from "zod";
import { router } from "../app.js";
import { dispatcherFor } from "../dispatch/shards.js";
import { requireAuth, scoped } from "../lib/auth.js";
import { AppError, notFound } from "../lib/errors.js";
import { errors, IdParam } from "./openapi.js";

const events = createRoute({
  method: "get",
  path: "/v1/jobs/{id}/events",
  operationId: "streamJobEvents",
  summary: "Live progress as Server-Sent Events; resume with Last-Event-ID",
  ...scoped("jobs:read"),
  description:
    "Events: `progress` (coalesced: status, chunks done/failed/total, chunks/s), `chunk` (one per chunk when `chunks=true`), and one terminal event (`completed`, `completed_with_errors`, `failed` or `cancelled`) before the stream closes. Event ids are positions in the job's event log: reconnecting with `Last-Event-ID` resumes after it without gaps or repeats.",
  request: {
    params: IdParam,
    query: z.object({ chunks: z.enum(["true", "false", "1", "0"]).optional() }),
    headers: z.object({ "last-event-id": z.string().max(32).optional() }),
  },
  responses: {
    200: {
      description: "An event stream",
      content: { "text/event-stream": { schema: z.string() } },
    },
    204: { description: "The client has already seen the terminal event" },
    401: errors[401],
    404: errors[404],
  },
});

export const eventRoutes = router();
eventRoutes.use("/v1/jobs/:id/events", requireAuth("api"));

eventRoutes.openapi(events, async (c) => {
  const { id } = c.req.valid("param");
  const wantChunks = ["true", "1"].includes(c.req.valid("query").chunks ?? "");
  const lastId = c.req.valid("header")["last-event-id"];
  let after = 0;
  if (lastId !== undefined) {
    after = Number(lastId);
    if (!Number.isSafeInteger(after) || after < 0)
      throw new AppError(
        422,
        "validation_failed",
        "Last-Event-ID must be an event id from this stream",
      );
  }
  const tenant = c.get("credential").tenant;
  const store = c.var.store;
  const first = await store.getJob(tenant, id);
  if (!first) throw notFound("job");
  const dispatcher = dispatcherFor(c.env, first.model, id);

  const backlog = await dispatcher.events(id, after, 1);
  const ended = isTerminal(first.status);
  if (ended && backlog.length === 0 && after > 0) {
    // Everything up to the terminal event was delivered: tell EventSource not to reconnect.
    return c.body(null, 204) as never;
  }

  // The coordinator that keeps the job's event log pushes the stream as the log grows.
  const stream = await dispatcher.watchEvents(id, after, wantChunks);
  return c.body(stream, 200, {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    Connection: "keep-alive",
    // Proxies that buffer (nginx) pass each frame on as it comes.
    "X-Accel-Buffering": "no",
  }) as never;
});
