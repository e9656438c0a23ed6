import { createRoute } from "@hono/zod-openapi";
import {
  type Chunk,
  ChunkPage,
  ChunkQuery,
  CreateJobRequest,
  chunkText,
  DEFAULT_COLLECTION,
  DEFAULT_MODEL,
  DEFAULT_WEBHOOK_EVENTS,
  ErrorBody,
  getModel,
  Job,
  MODELS,
  PII_KINDS,
  type PiiKind,
  type Privacy,
  TASK_SIZE,
  type Verification,
} from "@p2pa/shared";
import { z } from "zod";
import { router } from "../app.js";
import { keyringFor, openStore } from "../db/open.js";
import type { NewJob } from "../db/store.js";
import { sealItems } from "../dispatch/sealed-items.js";
import { dispatcherFor } from "../dispatch/shards.js";
import type { NewTask, QueuedItem, TaskOptions } from "../dispatch/task-queue.js";
import { requireAuth, scoped } from "../lib/auth.js";
import { newId, sha256Hex } from "../lib/crypto.js";
import { AppError, noCapacity, notFound } from "../lib/errors.js";
import { tokenCounter } from "../lib/tokens.js";
import { maskPersonalData } from "../privacy/mask.js";
import { indexHasher } from "../search/terms.js";
import { audit } from "../tenant/audit-log.js";
import { deleteDocumentEverywhere, deleteJobEverywhere } from "../tenant/erase.js";
import { assertChunkQuota } from "../tenant/limits.js";
import { putRaw, rawKey } from "../tenant/raw.js";
import { filterableKeys } from "../vector/config.js";
import { getVectorIndex } from "../vector/index.js";
import { assertTargetAllowed, webhookHub } from "../webhooks/index.js";
import { newSecret } from "../webhooks/signing.js";

// RPC payloads are capped; enqueue in slices well under the limit.
const ENQUEUE_SLICE_CHARS = 4_000_000;

const errors = {
  401: {
    description: "Missing or invalid credentials",
    content: { "application/json": { schema: ErrorBody } },
  },
  404: { description: "Not found", content: { "application/json": { schema: ErrorBody } } },
  422: { description: "Invalid request", content: { "application/json": { schema: ErrorBody } } },
};

const JobParams = z.object({ id: z.string().min(1).max(64) });
const write = scoped("jobs:write");
const read = scoped("jobs:read");

const createJob = createRoute({
  method: "post",
  path: "/v1/jobs",
  summary: "Submit documents to chunk and embed",
  ...write,
  request: {
    headers: z.object({ "idempotency-key": z.string().min(1).max(255).optional() }),
    body: { content: { "application/json": { schema: CreateJobRequest } }, required: true },
  },
  responses: {
    202: {
      description: "Accepted; poll the job or follow its progress",
      content: { "application/json": { schema: Job } },
    },
    409: {
      description: "Idempotency-Key reused with a different body",
      content: { "application/json": { schema: ErrorBody } },
    },
    429: {
      description: "A rate limit or quota is reached; see Retry-After",
      content: { "application/json": { schema: ErrorBody } },
    },
    503: {
      description: "No capacity to accept the job now",
      content: { "application/json": { schema: ErrorBody } },
    },
    ...errors,
  },
});

const getJob = createRoute({
  method: "get",
  path: "/v1/jobs/{id}",
  summary: "A job's status and progress",
  ...read,
  request: { params: JobParams },
  responses: {
    200: { description: "The job", content: { "application/json": { schema: Job } } },
    ...errors,
  },
});

const listChunks = createRoute({
  method: "get",
  path: "/v1/jobs/{id}/chunks",
  summary: "A job's chunks, page by page",
  ...read,
  request: { params: JobParams, query: ChunkQuery },
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
  summary: "Stop a job: no more tasks are handed out and current leases end",
  ...write,
  request: { params: JobParams },
  responses: {
    200: { description: "The cancelled job", content: { "application/json": { schema: Job } } },
    409: {
      description: "The job has already ended",
      content: { "application/json": { schema: ErrorBody } },
    },
    ...errors,
  },
});

const deleteJob = createRoute({
  method: "delete",
  path: "/v1/jobs/{id}",
  summary: "Delete a job with its chunks, vectors and raw documents",
  ...write,
  request: { params: JobParams },
  responses: { 204: { description: "Deleted" }, ...errors },
});

const deleteDocument = createRoute({
  method: "delete",
  path: "/v1/jobs/{id}/documents/{documentId}",
  summary: "Delete one document of an ended job: its chunks, vectors and raw text",
  ...write,
  request: { params: JobParams.extend({ documentId: z.string().min(1).max(128) }) },
  responses: {
    204: { description: "Deleted" },
    409: {
      description: "The job is still running",
      content: { "application/json": { schema: ErrorBody } },
    },
    ...errors,
  },
});

interface Plan {
  job: Omit<
    NewJob,
    "idempotencyKey" | "requestHash" | "createdAt" | "tenant" | "createdBy" | "textRetentionDays"
  >;
  tasks: NewTask[];
}

/** The deployment's verification policy for jobs that do not choose one (`VERIFICATION`). */
function defaultVerification(env: Env): Verification {
  const v: string = env.VERIFICATION;
  return v === "always" || v === "off" ? v : "auto";
}

/** The kinds of personal data a job masks: its own choice, else the deployment's PII_MASK. */
function maskedKinds(privacy: Privacy | undefined, env: Env): PiiKind[] {
  const choice: string | readonly string[] = privacy?.mask ?? (env.PII_MASK as string);
  if (choice === "all") return [...PII_KINDS];
  const list = typeof choice === "string" ? choice.split(",").map((k) => k.trim()) : choice;
  return PII_KINDS.filter((k) => list.includes(k));
}

/**
 * What each of a document's vectors carries for search filters beyond the product's own keys:
 * its collection and the filterable keys of its metadata (scalar values only, as Vectorize
 * indexes no others).
 */
function searchMetadata(
  collection: string,
  metadata: Record<string, unknown> | undefined,
  filterable: readonly string[],
): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = { collection };
  for (const key of filterable) {
    const v = metadata?.[key];
    if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") out[key] = v;
  }
  return out;
}

/** Chunks the documents and groups the chunks into tasks; deterministic for a given job id. */
function plan(jobId: string, body: CreateJobRequest, env: Env): Plan {
  const model = body.model ?? DEFAULT_MODEL;
  const info = getModel(model);
  if (!info) {
    throw new AppError(422, "unprocessable", `unknown model ${model}`, {
      available: Object.keys(MODELS),
    });
  }
  const maxChars = body.chunking?.maxChars ?? info.defaultChunkChars;
  if (maxChars > info.maxChunkChars) {
    throw new AppError(
      422,
      "unprocessable",
      `chunking.maxChars ${maxChars} is over the largest chunk for model ${model} (${info.maxChunkChars})`,
    );
  }
  const overlap = body.chunking?.overlap ?? Math.min(60, Math.floor(maxChars / 10));
  if (overlap >= maxChars / 2) {
    throw new AppError(
      422,
      "unprocessable",
      "chunking.overlap must be less than half of chunking.maxChars",
    );
  }
  // Chunks are cut to the model's token window, so the model never truncates one.
  const count = tokenCounter(model);
  const fits = count ? { fits: (t: string) => count(t) <= info.maxTokens } : {};
  const documents: NewJob["documents"] = [];
  const chunks: NewJob["chunks"] = [];
  const items: QueuedItem[] = [];
  const piiMask = maskedKinds(body.privacy, env);
  const collection = body.collection ?? DEFAULT_COLLECTION;
  const filterable = filterableKeys(env);
  body.documents.forEach((d, seq) => {
    const docId = d.id ?? `doc-${seq}`;
    const meta = searchMetadata(collection, d.metadata, filterable);
    documents.push({ seq, id: docId, metadata: d.metadata ?? null, chars: d.text.length });
    for (const c of chunkText(d.text, { maxChars, overlap, ...fits })) {
      const id = `${jobId}.${String(seq).padStart(5, "0")}.${String(c.index).padStart(5, "0")}`;
      chunks.push({
        id,
        documentSeq: seq,
        documentId: docId,
        index: c.index,
        text: c.text,
        start: c.start,
        end: c.end,
      });
      // The owner keeps the original; a volunteer gets the text with personal data masked.
      const text = piiMask.length ? maskPersonalData(c.text, piiMask).text : c.text;
      items.push({ chunkId: id, documentId: docId, index: c.index, text, meta });
    }
  });
  const tasks: NewTask[] = [];
  for (let i = 0; i < items.length; i += TASK_SIZE) {
    tasks.push({ id: `${jobId}.t${i / TASK_SIZE}`, items: items.slice(i, i + TASK_SIZE) });
  }
  return {
    job: {
      id: jobId,
      model,
      collection,
      chunking: { maxChars, overlap },
      verification: body.verification ?? defaultVerification(env),
      pool: body.pool ?? "any",
      piiMask,
      documents,
      chunks,
    },
    tasks,
  };
}

async function dispatch(
  env: Env,
  jobId: string,
  tenant: string,
  model: string,
  tasks: NewTask[],
  opts: TaskOptions,
) {
  const dispatcher = dispatcherFor(env, model, jobId);
  const keyring = keyringFor(env);
  let slice: NewTask[] = [];
  let size = 0;
  try {
    for (const t of tasks) {
      // The coordinator keeps the text only sealed, like D1.
      slice.push({ ...t, items: await sealItems(keyring, tenant, t.items) });
      size += (slice.at(-1)?.items ?? []).reduce((n, i) => n + i.text.length + 64, 0);
      if (size >= ENQUEUE_SLICE_CHARS) {
        await dispatcher.enqueue(jobId, tenant, model, slice, opts);
        slice = [];
        size = 0;
      }
    }
    if (slice.length) await dispatcher.enqueue(jobId, tenant, model, slice, opts);
  } catch (err) {
    console.error("dispatch failed", jobId, err);
    throw noCapacity("the coordinator is unavailable; retry with the same Idempotency-Key");
  }
  await openStore(env).markDispatched(jobId);
}

export const jobs = router();
jobs.use("/v1/jobs/*", requireAuth("api"));
jobs.use("/v1/jobs", requireAuth("api"));

jobs
  .openapi(createJob, async (c) => {
    const body = c.req.valid("json");
    const key = c.req.valid("header")["idempotency-key"] ?? null;
    const cred = c.get("credential");
    const tenant = cred.tenant;
    const store = openStore(c.env);
    const requestHash = key ? await sha256Hex(JSON.stringify(body)) : null;

    if (key) {
      const prior = await store.findJobByIdempotencyKey(tenant, key);
      if (prior) {
        if (prior.requestHash !== requestHash) {
          throw new AppError(
            409,
            "conflict",
            "Idempotency-Key was already used with a different request body",
          );
        }
        if (!prior.dispatched) {
          const { tasks } = plan(prior.job.id, body, c.env);
          await dispatch(c.env, prior.job.id, tenant, prior.job.model, tasks, {
            verify: prior.job.verification,
            pool: prior.job.pool,
          });
        }
        return c.json(prior.job, 202, {
          "Idempotent-Replayed": "true",
          Location: `/v1/jobs/${prior.job.id}`,
        });
      }
    }

    const jobId = newId("job");
    const { job, tasks } = plan(jobId, body, c.env);
    await assertChunkQuota(c.env, cred, job.chunks.length);
    const textRetentionDays =
      body.retention !== undefined
        ? body.retention.textDays
        : ((await store.tenantSettings(tenant))?.textRetentionDays ?? null);
    // Refuse work the coordinator cannot hold rather than queue it without bound.
    const backlog = await dispatcherFor(c.env, job.model, jobId).backlog();
    const limit = Number(c.env.MAX_BACKLOG_TASKS) || 200_000;
    if (backlog + tasks.length > limit) {
      throw noCapacity(`the queue is full (${backlog} tasks waiting); retry later`, 30);
    }
    let webhook: { id: string; url: string; secret: string } | null = null;
    if (body.webhook) {
      assertTargetAllowed(c.env, body.webhook.url);
      const secret = newSecret();
      const ep = await webhookHub(c.env, tenant).createEndpoint({
        url: body.webhook.url,
        events: body.webhook.events ?? DEFAULT_WEBHOOK_EVENTS,
        jobId,
        secret,
      });
      webhook = { id: ep.id, url: ep.url, secret };
    }
    // Raw input first: once the job exists, what it was made from is already kept (sealed).
    await putRaw(
      c.env.RAW,
      keyringFor(c.env),
      tenant,
      jobId,
      body.documents.map((d, seq) => ({
        seq,
        id: job.documents[seq]?.id ?? `doc-${seq}`,
        text: d.text,
        metadata: d.metadata ?? null,
      })),
    );
    // The keyword index holds each chunk's words as hashes under the tenant's term key.
    const hasher = await indexHasher(keyringFor(c.env), tenant);
    const chunks = await Promise.all(
      job.chunks.map(async (ch) => ({ ...ch, terms: await hasher.document(ch.text) })),
    );
    const created = await store.createJob({
      ...job,
      chunks,
      tenant,
      createdBy: cred.id,
      textRetentionDays,
      idempotencyKey: key,
      requestHash,
      createdAt: new Date().toISOString(),
      webhook,
    });
    if (!created.created) {
      // Lost a race with a concurrent submit of the same key.
      await c.env.RAW.delete(rawKey(tenant, jobId));
      if (created.requestHash !== requestHash)
        throw new AppError(
          409,
          "conflict",
          "Idempotency-Key was already used with a different request body",
        );
      return c.json(created.job, 202, {
        "Idempotent-Replayed": "true",
        Location: `/v1/jobs/${created.job.id}`,
      });
    }
    await audit(c, "job.created", jobId, {
      model: job.model,
      documents: job.documents.length,
      chunks: job.chunks.length,
      ...(key ? { idempotencyKey: key } : {}),
    });
    await dispatch(c.env, jobId, tenant, job.model, tasks, {
      verify: job.verification,
      pool: job.pool,
    });
    // The job's webhook secret is shown here, once.
    const body202 = webhook ? { ...created.job, webhook } : created.job;
    return c.json(body202, 202, { Location: `/v1/jobs/${jobId}` });
  })
  .openapi(getJob, async (c) => {
    const job = await openStore(c.env).getJob(c.get("credential").tenant, c.req.valid("param").id);
    if (!job) throw notFound("job");
    return c.json(job, 200);
  })
  .openapi(cancelJob, async (c) => {
    const { id } = c.req.valid("param");
    const tenant = c.get("credential").tenant;
    const store = openStore(c.env);
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
    const job = await openStore(c.env).getJob(tenant, id);
    if (!job) throw notFound("job");
    await deleteJobEverywhere(c.env, tenant, job);
    await audit(c, "job.deleted", id, { documents: job.documents, chunks: job.chunks.total });
    return c.body(null, 204);
  })
  .openapi(deleteDocument, async (c) => {
    const { id, documentId } = c.req.valid("param");
    const tenant = c.get("credential").tenant;
    const store = openStore(c.env);
    const job = await store.getJob(tenant, id);
    if (!job) throw notFound("job");
    const doc = await store.getDocument(tenant, id, documentId);
    if (!doc) throw notFound("document");
    if (job.status === "queued" || job.status === "running") {
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
    const store = openStore(c.env);
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
      const index = getVectorIndex(c.env, job.model);
      const vectors = new Map<string, number[]>();
      const done = page.filter((r) => r.status === "done").map((r) => r.id);
      for (let i = 0; i < done.length; i += 20) {
        for (const v of await index.getByIds(done.slice(i, i + 20)))
          vectors.set(v.id, Array.from(v.values));
      }
      data = page.map((r) => {
        const v = vectors.get(r.id);
        return v ? { ...r, vector: v } : r;
      });
    }
    const nextCursor =
      rows.length > limit && page.length ? encodeCursor(page[page.length - 1]?.id ?? "") : null;
    return c.json({ data, nextCursor }, 200);
  });

function encodeCursor(id: string): string {
  return btoa(id).replaceAll("+", "-").replaceAll("/", "_").replaceAll("=", "");
}

function decodeCursor(cursor: string): string | null {
  try {
    return atob(cursor.replaceAll("-", "+").replaceAll("_", "/"));
  } catch {
    return null;
  }
}
