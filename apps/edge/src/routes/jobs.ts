import { createRoute } from "@hono/zod-openapi";
import {
  AppendDocumentsRequest,
  type Chunk,
  ChunkPage,
  ChunkQuery,
  type CreateJobOptions,
  CreateJobRequest,
  DEFAULT_WEBHOOK_EVENTS,
  ErrorBody,
  IngestReport,
  isTerminal,
  Job,
  JobList,
  JobListQuery,
} from "@p2pa/shared";
import type { Context } from "hono";
import { z } from "zod";
import { isMultipart, isNdjson, router } from "../app.js";
import { dispatcherFor } from "../dispatch/shards.js";
import { readUpload } from "../ingest/files.js";
import { feed, headerOptions, type Line, lines } from "../ingest/stream.js";
import {
  Ingestion,
  type IngestTally,
  type JobHeader,
  redispatch,
  resolveSettings,
  type SourceDocument,
  settingsOf,
} from "../ingest/submit.js";
import { type AppEnv, requireAuth, scoped } from "../lib/auth.js";
import { newId, sha256Hex } from "../lib/crypto.js";
import { decodeCursor, decodePairCursor, encodeCursor, encodePairCursor } from "../lib/cursor.js";
import { AppError, notFound } from "../lib/errors.js";
import { audit } from "../tenant/audit-log.js";
import { deleteDocumentEverywhere, deleteJobEverywhere } from "../tenant/erase.js";
import { getVectorIndex, vectorsOf } from "../vector/index.js";
import { assertTargetAllowed, webhookHub } from "../webhooks/index.js";
import { newSecret } from "../webhooks/signing.js";
import { errors, IdParam, json } from "./openapi.js";

const write = scoped("jobs:write");
const read = scoped("jobs:read");

const createJob = createRoute({
  method: "post",
  path: "/v1/jobs",
  operationId: "createJob",
  summary: "Submit documents to chunk and embed",
  ...write,
  request: {
    headers: z.object({
      "idempotency-key": z.string().min(1).max(255).optional().meta({
        description:
          "Makes a retry safe: the same request sent again with the same key gets the first answer again (the job as it is now, its webhook secret and `ingest`), with `Idempotent-Replayed: true`, and nothing is taken twice. JSON and files only.",
      }),
    }),
    body: {
      description:
        'Documents as JSON; or as NDJSON (one document per line, read as a stream, optionally led by a line {"job": {...options}}); or as files (multipart/form-data: `file` fields, an `options` JSON field, a `metadata` JSON field for every file).',
      content: {
        "application/json": { schema: CreateJobRequest },
        "application/x-ndjson": {
          schema: { type: "string", description: "One DocumentInput per line." },
        },
        "multipart/form-data": {
          schema: {
            type: "object",
            properties: {
              file: {
                type: "array",
                items: { type: "string", format: "binary" },
                description:
                  "Plain text, Markdown, HTML or PDF files; each is one document named by its file name.",
              },
              options: { type: "string", description: "CreateJobOptions as JSON." },
              metadata: { type: "string", description: "Metadata (JSON object) for every file." },
            },
            required: ["file"],
          },
        },
      },
      required: false,
    },
  },
  responses: {
    202: {
      description:
        "Accepted; poll the job or follow its progress. `ingest` says which documents were taken, unchanged or rejected.",
      content: { "application/json": { schema: Job.extend({ ingest: IngestReport.optional() }) } },
    },
    409: json(
      ErrorBody,
      "Idempotency-Key reused with a different body, or a document submitted by another request at the same moment",
    ),
    413: json(ErrorBody, "A file or the upload is over its size or count limit"),
    503: json(ErrorBody, "No capacity to accept the job now"),
    ...errors,
  },
});

const getJob = createRoute({
  method: "get",
  path: "/v1/jobs/{id}",
  operationId: "getJob",
  summary: "A job's status and progress",
  ...read,
  request: { params: IdParam },
  responses: {
    200: { description: "The job", content: { "application/json": { schema: Job } } },
    ...errors,
  },
});

const listChunks = createRoute({
  method: "get",
  path: "/v1/jobs/{id}/chunks",
  operationId: "listJobChunks",
  summary: "A job's chunks, page by page",
  ...read,
  request: { params: IdParam, query: ChunkQuery },
  responses: {
    200: {
      description: "A page of chunks",
      content: { "application/json": { schema: ChunkPage } },
    },
    ...errors,
  },
});

const cancelJob = createRoute({
  method: "post",
  path: "/v1/jobs/{id}/cancel",
  operationId: "cancelJob",
  summary: "Stop a job: no more tasks are handed out and current leases end",
  ...write,
  request: { params: IdParam },
  responses: {
    200: { description: "The cancelled job", content: { "application/json": { schema: Job } } },
    409: json(ErrorBody, "The job has already ended"),
    ...errors,
  },
});

const deleteJob = createRoute({
  method: "delete",
  path: "/v1/jobs/{id}",
  operationId: "deleteJob",
  summary: "Delete a job with its chunks, vectors and raw documents",
  ...write,
  request: { params: IdParam },
  responses: { 204: { description: "Deleted" }, ...errors },
});

const deleteDocument = createRoute({
  method: "delete",
  path: "/v1/jobs/{id}/documents/{documentId}",
  operationId: "deleteJobDocument",
  summary: "Delete one document of an ended job: its chunks, vectors and raw text",
  ...write,
  request: { params: IdParam.extend({ documentId: z.string().min(1).max(128) }) },
  responses: {
    204: { description: "Deleted" },
    409: json(ErrorBody, "The job is still running"),
    ...errors,
  },
});

const listJobs = createRoute({
  method: "get",
  path: "/v1/jobs",
  operationId: "listJobs",
  summary: "The tenant's jobs, newest first",
  ...read,
  request: { query: JobListQuery },
  responses: {
    200: { description: "A page of jobs", content: { "application/json": { schema: JobList } } },
    ...errors,
  },
});

const appendDocuments = createRoute({
  method: "post",
  path: "/v1/jobs/{id}/documents",
  operationId: "appendJobDocuments",
  summary: "Add documents to an open job (JSON or NDJSON)",
  ...write,
  request: {
    params: IdParam,
    body: {
      content: {
        "application/json": { schema: AppendDocumentsRequest },
        "application/x-ndjson": {
          schema: { type: "string", description: "One DocumentInput per line." },
        },
      },
      required: false,
    },
  },
  responses: {
    202: {
      description: "Taken; `ingest` says which documents were taken, unchanged or rejected",
      content: { "application/json": { schema: Job.extend({ ingest: IngestReport }) } },
    },
    409: json(ErrorBody, "The job takes no more documents (closed, ended or never opened)"),
    ...errors,
  },
});

const closeJob = createRoute({
  method: "post",
  path: "/v1/jobs/{id}/close",
  operationId: "closeJob",
  summary: "Stop an open job taking documents: it completes once they are done",
  ...write,
  request: { params: IdParam },
  responses: {
    200: { description: "The closed job", content: { "application/json": { schema: Job } } },
    409: json(ErrorBody, "The job was not open"),
    ...errors,
  },
});

type Ctx = Context<AppEnv>;

/** The JSON body a route validated (routes that also take NDJSON or files leave it untyped). */
function validJson<T>(c: Ctx): T {
  return (c.req as unknown as { valid(target: "json"): T }).valid("json");
}

/**
 * A new job's header: its webhook endpoint (made now, its secret shown once), retention and
 * idempotency fields.
 */
async function newJobHeader(
  c: Ctx,
  jobId: string,
  options: CreateJobOptions,
  idempotency: { key: string | null; requestHash: string | null },
): Promise<{ header: JobHeader; secret: string | null }> {
  const cred = c.get("credential");
  // Without a choice the job takes the tenant's default, which its insert reads.
  const textRetentionDays = options.retention !== undefined ? options.retention.textDays : "tenant";
  let webhook: JobHeader["webhook"] = null;
  let secret: string | null = null;
  if (options.webhook) {
    assertTargetAllowed(c.env, options.webhook.url);
    secret = newSecret();
    const ep = await webhookHub(c.env, cred.tenant).createEndpoint({
      url: options.webhook.url,
      events: options.webhook.events ?? DEFAULT_WEBHOOK_EVENTS,
      jobId,
      secret,
    });
    webhook = { id: ep.id, url: ep.url };
  }
  return {
    header: {
      createdBy: cred.id,
      textRetentionDays,
      idempotencyKey: idempotency.key,
      requestHash: idempotency.requestHash,
      webhook,
    },
    secret,
  };
}

/** The 202 of a new job: the job (its webhook secret shown here, once) and what was taken. */
async function accepted(c: Ctx, ingestion: Ingestion, secret: string | null) {
  const job =
    ingestion.job ?? (await c.var.store.getJob(c.get("credential").tenant, ingestion.jobId));
  if (!job) throw new Error(`job ${ingestion.jobId} vanished after submit`);
  await audit(c, "job.created", job.id, {
    model: job.model,
    documents: job.documents,
    chunks: job.chunks.total,
  });
  return c.json(createdBody(job, secret, ingestion.report()), 202, {
    Location: `/v1/jobs/${job.id}`,
  });
}

/** A new job's 202 body: the job, its own webhook's signing secret, what the request took. */
function createdBody(job: Job, secret: string | null, ingest: IngestReport | null) {
  return {
    ...job,
    ...(job.webhook && secret ? { webhook: { ...job.webhook, secret } } : {}),
    ...(ingest ? { ingest } : {}),
  };
}

/** Nothing in the request could be taken: a 422 listing why, and no job. */
function nothingTaken(t: IngestTally): never {
  throw new AppError(422, "unprocessable", "no document of the request could be taken", {
    rejections: t.rejections,
    rejected: t.rejected,
  });
}

/**
 * Runs an ingest that may stop part way (quota, backlog, a cut stream): what was taken stays
 * in the job, which is closed so it can complete, and the error says so.
 */
async function guarded(
  ingestion: Ingestion,
  keepOpen: boolean,
  run: () => Promise<void>,
  onError: "close" | "keep open" = "close",
) {
  try {
    await run();
  } catch (err) {
    if (ingestion.exists) {
      // A job this request created is closed with what it took; an open job another request
      // created stays open for the next append (this one can be sent again).
      if (onError === "close") await ingestion.close();
      // A job deleted meanwhile keeps nothing.
      if (err instanceof AppError && err.status !== 404) {
        const taken = ingestion.tally.accepted;
        throw new AppError(
          err.status,
          err.code,
          onError === "close"
            ? `${err.message} (job ${ingestion.jobId} keeps the ${taken} documents taken before this and is closed)`
            : `${err.message} (job ${ingestion.jobId} keeps the ${taken} documents this request added before this)`,
          { jobId: ingestion.jobId, ingest: ingestion.report() },
          err.headers,
        );
      }
    }
    throw err;
  }
  if (!keepOpen) await ingestion.close();
}

/** POST /v1/jobs with an NDJSON body. */
async function submitStream(c: Ctx) {
  if (c.req.header("idempotency-key"))
    throw new AppError(
      422,
      "validation_failed",
      "Idempotency-Key is not taken with an NDJSON stream, which is read as it arrives: give the documents ids (sent again unchanged, they are skipped), or send JSON or files",
    );
  const body = c.req.raw.body;
  if (!body) throw new AppError(422, "validation_failed", "the NDJSON body is empty");
  const source = lines(body)[Symbol.asyncIterator]();
  const first = await source.next();
  let options: CreateJobOptions = {};
  let pending: Line | undefined = first.done ? undefined : first.value;
  try {
    const header = headerOptions(pending);
    if (header) {
      options = header;
      pending = undefined;
    }
  } catch (err) {
    throw new AppError(
      422,
      "validation_failed",
      `line 1: invalid job options: ${(err as Error).message}`,
    );
  }
  const settings = resolveSettings(c.env, options);
  const jobId = newId("job");
  const { header, secret } = await newJobHeader(c, jobId, options, {
    key: null,
    requestHash: null,
  });
  const ingestion = new Ingestion(c.env, c.get("credential"), jobId, settings, 0, header);
  async function* rest(): AsyncGenerator<Line> {
    if (pending) yield pending;
    for (let n = await source.next(); !n.done; n = await source.next()) yield n.value;
  }
  await guarded(ingestion, options.open === true, () => feed(ingestion, rest()));
  if (!ingestion.exists) nothingTaken(ingestion.tally);
  return accepted(c, ingestion, secret);
}

/** POST /v1/jobs with files. */
async function submitFiles(c: Ctx) {
  const upload = await readUpload(c.req.raw);
  const key = c.req.header("idempotency-key") ?? null;
  // What the upload holds, not its bytes: a client draws a new multipart boundary each time.
  const requestHash = key
    ? await sha256Hex(
        JSON.stringify([
          upload.options,
          await Promise.all(
            upload.documents.map(async (d) => [
              d.id,
              d.metadata,
              d.original?.mediaType,
              await sha256Hex(d.original?.bytes ?? d.text),
            ]),
          ),
          upload.rejections,
        ]),
      )
    : null;
  if (key) {
    const replay = await replayed(c, key, requestHash);
    if (replay) return replay;
  }
  const settings = resolveSettings(c.env, upload.options);
  const jobId = newId("job");
  const { header, secret } = await newJobHeader(c, jobId, upload.options, { key, requestHash });
  const ingestion = new Ingestion(c.env, c.get("credential"), jobId, settings, 0, header);
  ingestion.reject(upload.rejections);
  if (upload.documents.length === 0) nothingTaken(ingestion.tally);
  try {
    await guarded(ingestion, upload.options.open === true, async () => {
      await ingestion.add(upload.documents, true);
    });
  } catch (err) {
    const replay = await racedReplay(c, err, key, requestHash, jobId);
    if (replay) return replay;
    throw err;
  }
  if (!ingestion.exists) nothingTaken(ingestion.tally);
  return accepted(c, ingestion, secret);
}

/**
 * The answer to a submit whose Idempotency-Key a job already has: the first answer again
 * (the job dispatched now if the first try never reached the coordinator), or a 409 when the
 * request differs.
 * Null when no job has the key.
 */
async function replayed(c: Ctx, key: string, requestHash: string | null) {
  const tenant = c.get("credential").tenant;
  const prior = await c.var.store.findJobByIdempotencyKey(tenant, key);
  if (!prior) return null;
  if (prior.requestHash !== requestHash)
    throw new AppError(
      409,
      "conflict",
      "Idempotency-Key was already used with a different request body",
    );
  if (!prior.dispatched) await redispatch(c.env, tenant, prior.job);
  // The first answer again: the job as it is now, with the webhook secret and what the
  // request took (absent when the first try ended before it was written).
  const { job, ingest } = prior;
  const secret = job.webhook
    ? await webhookHub(c.env, tenant).jobEndpointSecret(job.webhook.id, job.id)
    : null;
  return c.json(createdBody(job, secret, ingest), 202, {
    "Idempotent-Replayed": "true",
    Location: `/v1/jobs/${job.id}`,
  });
}

/** A submit that lost the race for its Idempotency-Key to another: that one's job. */
async function racedReplay(
  c: Ctx,
  err: unknown,
  key: string | null,
  requestHash: string | null,
  jobId: string,
) {
  if (!key || !(err instanceof AppError) || err.status !== 409) return null;
  const prior = await c.var.store.findJobByIdempotencyKey(c.get("credential").tenant, key);
  if (!prior || prior.job.id === jobId) return null;
  return replayed(c, key, requestHash);
}

export const jobs = router();
jobs.use("/v1/jobs/*", requireAuth("api"));
jobs.use("/v1/jobs", requireAuth("api"));

jobs
  .openapi(createJob, async (c) => {
    const type = c.req.header("content-type");
    if (isNdjson(type)) return submitStream(c);
    if (isMultipart(type)) return submitFiles(c);
    // Validated against CreateJobRequest by the route (JSON bodies only; others branch above).
    const body = validJson<CreateJobRequest>(c);
    const key = c.req.valid("header")["idempotency-key"] ?? null;
    const requestHash = key ? await sha256Hex(JSON.stringify(body)) : null;

    if (key) {
      const replay = await replayed(c, key, requestHash);
      if (replay) return replay;
    }

    const settings = resolveSettings(c.env, body);
    const jobId = newId("job");
    const { header, secret } = await newJobHeader(c, jobId, body, { key, requestHash });
    const ingestion = new Ingestion(c.env, c.get("credential"), jobId, settings, 0, header);
    const docs: SourceDocument[] = body.documents.map((d) => ({
      id: d.id,
      text: d.text,
      metadata: d.metadata ?? null,
    }));
    try {
      await ingestion.add(docs, body.open === true);
    } catch (err) {
      // A concurrent submit with the same Idempotency-Key won the race: answer with its job.
      const replay = await racedReplay(c, err, key, requestHash, jobId);
      if (replay) return replay;
      throw err;
    }
    if (!ingestion.exists) nothingTaken(ingestion.tally);
    return accepted(c, ingestion, secret);
  })
  .openapi(listJobs, async (c) => {
    const q = c.req.valid("query");
    let before: [string, string] | undefined;
    if (q.cursor) {
      const at = decodePairCursor(q.cursor);
      if (!at) throw new AppError(422, "validation_failed", "invalid cursor");
      before = at;
    }
    const rows = await c.var.store.listJobs(c.get("credential").tenant, {
      ...(q.status ? { status: q.status } : {}),
      ...(q.collection ? { collection: q.collection } : {}),
      ...(before ? { before } : {}),
      limit: q.limit + 1,
    });
    const data = rows.slice(0, q.limit);
    const last = data.at(-1);
    const nextCursor =
      rows.length > q.limit && last ? encodePairCursor([last.createdAt, last.id]) : null;
    return c.json({ data, nextCursor }, 200);
  })
  .openapi(appendDocuments, async (c) => {
    const { id } = c.req.valid("param");
    const tenant = c.get("credential").tenant;
    const store = c.var.store;
    const job = await store.getJob(tenant, id);
    if (!job) throw notFound("job");
    if (!job.accepting)
      throw new AppError(
        409,
        "conflict",
        `job ${id} takes no more documents (${job.accepting ? "open" : !isTerminal(job.status) ? "it was not opened with open: true, or was closed" : `it has ${job.status}`})`,
      );
    const ingestion = new Ingestion(
      c.env,
      c.get("credential"),
      id,
      settingsOf(c.env, job),
      job.documents,
      null,
    );
    let close = false;
    if (isNdjson(c.req.header("content-type"))) {
      const body = c.req.raw.body;
      if (!body) throw new AppError(422, "validation_failed", "the NDJSON body is empty");
      await guarded(ingestion, true, () => feed(ingestion, lines(body)), "keep open");
    } else {
      const parsed = { data: validJson<AppendDocumentsRequest>(c) };
      close = parsed.data.close === true;
      await guarded(
        ingestion,
        !close,
        () =>
          ingestion
            .add(
              parsed.data.documents.map((d) => ({
                id: d.id,
                text: d.text,
                metadata: d.metadata ?? null,
              })),
              true,
            )
            .then(() => undefined),
        "keep open",
      );
    }
    // As for a new job: a request none of whose documents could be taken is refused whole
    // (unless it also closed the job, which it did).
    if (ingestion.tally.accepted === 0 && !close) nothingTaken(ingestion.tally);
    const now = (await store.getJob(tenant, id)) ?? job;
    return c.json({ ...now, ingest: ingestion.report() }, 202);
  })
  .openapi(closeJob, async (c) => {
    const { id } = c.req.valid("param");
    const tenant = c.get("credential").tenant;
    const store = c.var.store;
    const job = await store.getJob(tenant, id);
    if (!job) throw notFound("job");
    if (!(await store.closeJob(tenant, id)))
      throw new AppError(409, "conflict", `job ${id} was not open`);
    await dispatcherFor(c.env, job.model, id).close(id);
    return c.json((await store.getJob(tenant, id)) ?? job, 200);
  })
  .openapi(getJob, async (c) => {
    const job = await c.var.store.getJob(c.get("credential").tenant, c.req.valid("param").id);
    if (!job) throw notFound("job");
    return c.json(job, 200);
  })
  .openapi(cancelJob, async (c) => {
    const { id } = c.req.valid("param");
    const tenant = c.get("credential").tenant;
    const store = c.var.store;
    const job = await store.getJob(tenant, id);
    if (!job) throw notFound("job");
    if (!(await store.cancelJob(tenant, id))) {
      throw new AppError(409, "conflict", `job ${id} has already ended (${job.status})`);
    }
    await audit(c, "job.cancelled", id, { chunks: job.chunks });
    await dispatcherFor(c.env, job.model, id).cancel(id);
    return c.json((await store.getJob(tenant, id)) ?? job, 200);
  })
  .openapi(deleteJob, async (c) => {
    const { id } = c.req.valid("param");
    const tenant = c.get("credential").tenant;
    const job = await c.var.store.getJob(tenant, id);
    if (!job) throw notFound("job");
    await deleteJobEverywhere(c.env, tenant, job);
    await audit(c, "job.deleted", id, { documents: job.documents, chunks: job.chunks.total });
    return c.body(null, 204);
  })
  .openapi(deleteDocument, async (c) => {
    const { id, documentId } = c.req.valid("param");
    const tenant = c.get("credential").tenant;
    const store = c.var.store;
    const job = await store.getJob(tenant, id);
    if (!job) throw notFound("job");
    const doc = await store.getDocument(tenant, id, documentId);
    if (!doc) throw notFound("document");
    if (!isTerminal(job.status)) {
      throw new AppError(
        409,
        "conflict",
        `job ${id} is ${job.status}: cancel it or wait for it to end before deleting a document`,
      );
    }
    await deleteDocumentEverywhere(c.env, tenant, job, doc);
    // A document id is the submitter's own name (it may name a person): the log keeps only its
    // hash, which the owner can match against the id they deleted.
    await audit(c, "document.deleted", id, {
      documentSha256: await sha256Hex(documentId),
      chunks: doc.chunkIds.length,
    });
    return c.body(null, 204);
  })
  .openapi(listChunks, async (c) => {
    const { id } = c.req.valid("param");
    const { cursor, limit, includeVectors } = c.req.valid("query");
    const tenant = c.get("credential").tenant;
    const store = c.var.store;
    const job = await store.getJob(tenant, id);
    if (!job) throw notFound("job");
    let after: string | null = null;
    if (cursor) {
      after = decodeCursor(cursor);
      if (!after?.startsWith(`${id}.`))
        throw new AppError(422, "validation_failed", "invalid cursor");
    }
    const rows = await store.listChunks(tenant, id, after, limit + 1);
    const page = rows.slice(0, limit);
    let data: Chunk[] = page;
    if (includeVectors) {
      const vectors = await vectorsOf(
        getVectorIndex(c.env, job.model),
        page.filter((r) => r.status === "done").map((r) => r.id),
      );
      data = page.map((r) => {
        const v = vectors.get(r.id);
        return v ? { ...r, vector: v } : r;
      });
    }
    const nextCursor =
      rows.length > limit && page.length ? encodeCursor(page[page.length - 1]?.id ?? "") : null;
    return c.json({ data, nextCursor }, 200);
  });
