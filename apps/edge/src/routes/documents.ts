import { createRoute } from "@hono/zod-openapi";
import {
  Document,
  DocumentList,
  DocumentListQuery,
  DocumentParams,
  DocumentQuery,
  type DocumentSummary,
  type DocumentVersion,
  ErrorBody,
  isTerminal,
} from "@p2pa/shared";
import { router } from "../app.js";
import { keyringFor } from "../db/open.js";
import type { MetadataStore, VersionRow } from "../db/store.js";
import { getOriginal } from "../ingest/originals.js";
import { requireAuth, scoped } from "../lib/auth.js";
import { sha256Hex } from "../lib/crypto.js";
import { decodePairCursor, encodePairCursor } from "../lib/cursor.js";
import { AppError, notFound } from "../lib/errors.js";
import { audit } from "../tenant/audit-log.js";
import { deleteDocumentEverywhere } from "../tenant/erase.js";
import { errors, json } from "./openapi.js";

/**
 * Documents as the tenant names them: by id within a collection, across the jobs that made
 * their versions. A document's current version is what search shows; a newer one is pending
 * while its chunks are computed.
 */

const read = scoped("jobs:read");
const write = scoped("jobs:write");

const getDocument = createRoute({
  method: "get",
  path: "/v1/documents/{id}",
  operationId: "getDocument",
  summary: "A document: its current version, a pending one, and every version",
  description: "Ids holding `/` are sent URL-encoded (%2F).",
  ...read,
  request: { params: DocumentParams, query: DocumentQuery },
  responses: { 200: json(Document, "The document"), ...errors },
});

const listDocuments = createRoute({
  method: "get",
  path: "/v1/documents",
  operationId: "listDocuments",
  summary: "The tenant's documents by collection and id, page by page",
  ...read,
  request: { query: DocumentListQuery },
  responses: { 200: json(DocumentList, "A page of documents"), ...errors },
});

const getOriginalRoute = createRoute({
  method: "get",
  path: "/v1/documents/{id}/original",
  operationId: "getDocumentOriginal",
  summary: "The original of a document's current version, as it was submitted",
  ...read,
  request: { params: DocumentParams, query: DocumentQuery },
  responses: {
    200: {
      description: "The original's bytes, with its media type",
      content: { "application/octet-stream": { schema: { type: "string", format: "binary" } } },
    },
    ...errors,
  },
});

const deleteDocument = createRoute({
  method: "delete",
  path: "/v1/documents/{id}",
  operationId: "deleteDocument",
  summary: "Delete a document: every version's chunks, vectors and original",
  ...write,
  request: { params: DocumentParams, query: DocumentQuery },
  responses: {
    204: { description: "Deleted" },
    409: json(ErrorBody, "A version of the document is still being indexed"),
    ...errors,
  },
});

/**
 * A document's versions, newest first, from its id and (optional) collection: without one,
 * the collection that holds a document of that id, which must be only one.
 */
async function versionsOf(
  store: MetadataStore,
  tenant: string,
  id: string,
  collection: string | undefined,
) {
  const rows = await store.documentVersions(tenant, collection, id);
  if (rows.length === 0) throw notFound("document");
  const collections = [...new Set(rows.map((r) => r.collection))];
  if (collections.length > 1)
    throw new AppError(
      422,
      "unprocessable",
      `documents named ${id} are in several collections (${collections.join(", ")}): name one with ?collection=`,
      { collections },
    );
  return rows;
}

function versionOf(r: VersionRow): DocumentVersion {
  return {
    version: r.version,
    state: r.state,
    jobId: r.jobId,
    chunks: r.prunedAt ? 0 : r.chunks,
    chars: r.chars,
    contentHash: r.contentHash,
    original: r.rawKey !== null && r.prunedAt === null,
    createdAt: r.createdAt,
    ...(r.error ? { error: r.error } : {}),
  };
}

/** A document from its rows (`newest` first for a summary; all versions for the full view). */
function summaryOf(newest: VersionRow, live: VersionRow[]): DocumentSummary {
  const current = live.find((v) => v.state === "current") ?? null;
  const pending = live.find((v) => v.state === "pending") ?? null;
  return {
    id: newest.docKey,
    collection: newest.collection,
    // A first version is current from the start (there is nothing to replace), and searchable
    // chunk by chunk: it is ready once its job has ended with every chunk done (a job cancelled
    // or with failed chunks leaves it failed, until it is sent again).
    status:
      pending || (current && !isTerminal(current.jobStatus))
        ? "indexing"
        : current?.complete
          ? "ready"
          : "failed",
    metadata: (current ?? pending ?? newest).metadata ?? {},
    current: current ? versionOf(current) : null,
    pending: pending ? versionOf(pending) : null,
  };
}

export const documentRoutes = router();
documentRoutes.use("/v1/documents", requireAuth("api"));
documentRoutes.use("/v1/documents/*", requireAuth("api"));

documentRoutes
  .openapi(getDocument, async (c) => {
    const { id } = c.req.valid("param");
    const { collection } = c.req.valid("query");
    const rows = await versionsOf(c.var.store, c.get("credential").tenant, id, collection);
    const newest = rows[0];
    if (!newest) throw notFound("document");
    return c.json({ ...summaryOf(newest, rows), versions: rows.map(versionOf) }, 200);
  })
  .openapi(listDocuments, async (c) => {
    const q = c.req.valid("query");
    let after: [string, string] | undefined;
    if (q.cursor) {
      const at = decodePairCursor(q.cursor);
      if (!at) throw new AppError(422, "validation_failed", "invalid cursor");
      after = at;
    }
    const tenant = c.get("credential").tenant;
    const store = c.var.store;
    const rows = await store.listDocuments(tenant, {
      ...(q.collection ? { collection: q.collection } : {}),
      ...(q.status ? { status: q.status } : {}),
      ...(q.jobId ? { jobId: q.jobId } : {}),
      ...(q.prefix ? { prefix: q.prefix } : {}),
      ...(after ? { after } : {}),
      limit: q.limit + 1,
    });
    const page = rows.slice(0, q.limit);
    const live = await store.liveRows(
      tenant,
      page.map((r) => [r.collection, r.docKey]),
    );
    const data = page.map((r) =>
      summaryOf(
        r,
        live.filter((v) => v.collection === r.collection && v.docKey === r.docKey),
      ),
    );
    const last = page.at(-1);
    const nextCursor =
      rows.length > q.limit && last ? encodePairCursor([last.collection, last.docKey]) : null;
    return c.json({ data, nextCursor }, 200);
  })
  .openapi(getOriginalRoute, async (c) => {
    const { id } = c.req.valid("param");
    const { collection } = c.req.valid("query");
    const tenant = c.get("credential").tenant;
    const rows = await versionsOf(c.var.store, tenant, id, collection);
    const current = rows.find((v) => v.state === "current");
    if (!current)
      throw new AppError(404, "not_found", `document ${id} has no current version to read`);
    if (!current.rawKey)
      throw notFound("original (the job chose not to keep it, or retention purged its text)");
    const got = await getOriginal(c.env, c.var.store, keyringFor(c.env), tenant, current.rawKey);
    if (!got) throw notFound("original");
    return c.body(new Uint8Array(got.bytes), 200, {
      "Content-Type": got.mediaType,
      "Content-Disposition": "attachment",
      ...(current.contentHash ? { ETag: `"${current.contentHash}"` } : {}),
    });
  })
  .openapi(deleteDocument, async (c) => {
    const { id } = c.req.valid("param");
    const { collection } = c.req.valid("query");
    const tenant = c.get("credential").tenant;
    const store = c.var.store;
    const rows = await versionsOf(c.var.store, tenant, id, collection);
    for (const v of rows) {
      const job = await store.getJob(tenant, v.jobId);
      if (job && !isTerminal(job.status) && v.prunedAt === null)
        throw new AppError(
          409,
          "conflict",
          `version ${v.version} of this document is in job ${v.jobId}, which is ${job.status}: wait for it or cancel it`,
        );
    }
    for (const v of rows) {
      const job = await store.getJob(tenant, v.jobId);
      const doc = await store.getDocument(tenant, v.jobId, v.id);
      if (job && doc) await deleteDocumentEverywhere(c.env, tenant, job, doc);
    }
    // A document id is the submitter's own name (it may name a person): the log keeps only its
    // hash, which the owner can match against the id they deleted.
    await audit(c, "document.deleted", rows[0]?.jobId ?? "", {
      documentSha256: await sha256Hex(id),
      collection: rows[0]?.collection,
      versions: rows.length,
    });
    return c.body(null, 204);
  });
