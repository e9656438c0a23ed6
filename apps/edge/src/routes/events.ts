import { createRoute } from "@hono/zod-openapi";
import type { Job } from "@p2pa/shared";
import { streamSSE } from "hono/streaming";
import { z } from "zod";
import { router } from "../app.js";
import { dispatcherFor } from "../dispatch/shards.js";
import { requireAuth, scoped } from "../lib/auth.js";
import { AppError, notFound } from "../lib/errors.js";
import { errors, IdParam } from "./openapi.js";

/** Progress events are coalesced to at most one per interval. */
const PROGRESS_MS = 500;
const POLL_MS = 200;
const KEEPALIVE_MS = 15_000;
const RECONNECT_MS = 1000;

const events = createRoute({
  method: "get",
  path: "/v1/jobs/{id}/events",
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
  const ended = first.status !== "queued" && first.status !== "running";
  if (ended && backlog.length === 0 && after > 0) {
    // Everything up to the terminal event was delivered: tell EventSource not to reconnect.
    return c.body(null, 204) as never;
  }

  return streamSSE(c, async (stream) => {
    let aborted = false;
    stream.onAbort(() => {
      aborted = true;
    });
    let last: Job["chunks"] | null = null;
    let lastSent = 0;
    let lastKeepalive = Date.now();
    const rate = { at: Date.now(), settled: first.chunks.done + first.chunks.failed, value: 0 };

    const progress = async (job: Job, force: boolean) => {
      const settled = job.chunks.done + job.chunks.failed;
      const now = Date.now();
      const same = last && last.done === job.chunks.done && last.failed === job.chunks.failed;
      if (!force && (same || now - lastSent < PROGRESS_MS)) return;
      if (now > rate.at) {
        rate.value = ((settled - rate.settled) * 1000) / (now - rate.at);
        rate.at = now;
        rate.settled = settled;
      }
      await stream.writeSSE({
        event: "progress",
        id: String(after),
        // Ask clients to reconnect quickly after a drop; they resume from the last id.
        ...(last === null ? { retry: RECONNECT_MS } : {}),
        data: JSON.stringify({
          status: job.status,
          chunks: job.chunks,
          chunksPerSecond: Math.round(rate.value * 10) / 10,
        }),
      });
      last = { ...job.chunks };
      lastSent = now;
    };

    while (!aborted) {
      const batch = await dispatcher.events(id, after, 500);
      const job = (await store.getJob(tenant, id)) ?? first;
      let end: { seq: number; status: string } | null = null;
      for (const e of batch) {
        if (e.kind === "end") {
          const status = (JSON.parse(e.data) as { status?: string }).status ?? job.status;
          end = { seq: e.seq, status };
          break;
        }
        after = e.seq;
        if (wantChunks)
          await stream.writeSSE({
            event: "chunk",
            id: String(e.seq),
            data: e.data,
          });
      }
      if (end) {
        await progress(job, true);
        after = end.seq;
        await stream.writeSSE({
          event: end.status,
          id: String(end.seq),
          data: JSON.stringify({
            id,
            status: end.status,
            chunks: job.chunks,
            completedAt: job.completedAt,
          }),
        });
        return;
      }
      await progress(job, last === null);
      if (batch.length === 500) continue;
      if (Date.now() - lastKeepalive > KEEPALIVE_MS) {
        await stream.write(": keepalive\n\n");
        lastKeepalive = Date.now();
      }
      await stream.sleep(POLL_MS);
    }
  }) as never;
});
