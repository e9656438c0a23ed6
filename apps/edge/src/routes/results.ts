import { createRoute } from "@hono/zod-openapi";
import { z } from "zod";
import { router } from "../app.js";
import { requireAuth, scoped } from "../lib/auth.js";
import { notFound } from "../lib/errors.js";
import { audit } from "../tenant/audit-log.js";
import { getVectorIndex, vectorsOf } from "../vector/index.js";
import { errors, IdParam } from "./openapi.js";

const PAGE = 200;

const exportResults = createRoute({
  method: "get",
  path: "/v1/jobs/{id}/results",
  operationId: "exportJobResults",
  summary: "Stream a job's chunks with their vectors as NDJSON (gzip when accepted)",
  ...scoped("jobs:read"),
  request: { params: IdParam },
  responses: {
    200: {
      description:
        "One JSON object per line: id, documentId, index, text, metadata, status, vector",
      content: { "application/x-ndjson": { schema: z.string() } },
    },
    401: errors[401],
    404: errors[404],
  },
});

export const resultRoutes = router();
resultRoutes.use("/v1/jobs/:id/results", requireAuth("api"));

resultRoutes.openapi(exportResults, async (c) => {
  const { id } = c.req.valid("param");
  const tenant = c.get("credential").tenant;
  const store = c.var.store;
  const job = await store.getJob(tenant, id);
  if (!job) throw notFound("job");
  // An export hands out the job's text and vectors at once: the log says who took it.
  await audit(c, "export.read", id, { chunks: job.chunks.total });
  const index = getVectorIndex(c.env, job.model);
  const encoder = new TextEncoder();
  let after: string | null = null;
  let finished = false;

  // Pull-based: one page of chunks is read per pull, so memory stays flat for any job size.
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (finished) return;
      const rows = await store.listChunks(tenant, id, after, PAGE);
      if (rows.length === 0) {
        finished = true;
        controller.close();
        return;
      }
      after = rows[rows.length - 1]?.id ?? null;
      const vectors = await vectorsOf(
        index,
        rows.filter((r) => r.status === "done").map((r) => r.id),
      );
      let out = "";
      for (const r of rows)
        out += `${JSON.stringify({ ...r, vector: vectors.get(r.id) ?? null })}\n`;
      controller.enqueue(encoder.encode(out));
      if (rows.length < PAGE) {
        finished = true;
        controller.close();
      }
    },
  });

  const headers: Record<string, string> = {
    "Content-Type": "application/x-ndjson; charset=utf-8",
    "Cache-Control": "no-store",
    "Content-Disposition": `attachment; filename="${id}.ndjson"`,
  };
  if (/\bgzip\b/i.test(clientAcceptEncoding(c.req.raw))) {
    headers["Content-Encoding"] = "gzip";
    return new Response(body.pipeThrough(new CompressionStream("gzip")), {
      status: 200,
      headers,
      // The body is already gzip: the runtime must not encode it again.
      encodeBody: "manual",
    } as ResponseInit) as never;
  }
  // A streamed body has no typed schema; the route's docs describe the lines.
  return new Response(body, { status: 200, headers }) as never;
});

/**
 * The Accept-Encoding the client sent. Cloudflare (and the local runtime, which copies it) gives
 * a Worker `br, gzip` in that header whatever the client sent, and keeps the client's own in
 * `cf.clientAcceptEncoding`. It encodes a response again for the client only for the content
 * types it compresses itself, and NDJSON is not one: gzipped on the header's word, the export
 * reached a client that never asked for gzip (curl without `--compressed`) as gzip.
 */
function clientAcceptEncoding(req: Request): string {
  const cf = (req as { cf?: { clientAcceptEncoding?: string } }).cf;
  return cf?.clientAcceptEncoding ?? req.headers.get("Accept-Encoding") ?? "";
}
