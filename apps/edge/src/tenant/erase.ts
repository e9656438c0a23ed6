import type { Job } from "@p2pa/shared";
import { keyringFor, openStore } from "../db/open.js";
import { dispatcherFor } from "../dispatch/shards.js";
import { dropOriginals } from "../ingest/originals.js";
import { deleteVectors, getVectorIndex } from "../vector/index.js";
import { webhookHub } from "../webhooks/index.js";
import { ledger } from "./limits.js";
import { dropRawDocument, rawKey } from "./raw.js";

/** Where jobs made before raw objects were sealed kept their request. */
const legacyRawKey = (jobId: string) => `jobs/${jobId}/request.json`;

/**
 * Deletes a job and every trace of it: its tasks, leases and event log on the coordinator,
 * its webhook endpoints and deliveries, its vectors, its raw documents, its retention
 * schedule, and its rows. Safe to run again after a failure part way.
 */
export async function deleteJobEverywhere(env: Env, tenant: string, job: Job): Promise<void> {
  const store = openStore(env);
  await store.cancelJob(tenant, job.id);
  await dispatcherFor(env, job.model, job.id).cancel(job.id, true);
  await webhookHub(env, tenant).deleteJob(job.id);
  await deleteVectors(getVectorIndex(env, job.model), await store.chunkIds(job.id));
  await env.RAW.delete([rawKey(tenant, job.id), legacyRawKey(job.id)]);
  await ledger(env, tenant).unscheduleTextPurge(job.id);
  const originals = await store.originalsOf(job.id);
  // The rows go last: until then a retry can still find what is left to delete.
  await store.deleteJob(job.id);
  await dropOriginals(env, store, tenant, originals);
}

/**
 * Deletes one document of an ended job: its chunks, vectors and raw text, and its task items and
 * chunk events on the coordinator; counters follow.
 */
export async function deleteDocumentEverywhere(
  env: Env,
  tenant: string,
  job: Job,
  doc: { seq: number; id: string; rawKey: string | null; chunkIds: string[] },
): Promise<void> {
  const store = openStore(env);
  await dispatcherFor(env, job.model, job.id).forgetDocument(job.id, doc.id);
  await deleteVectors(getVectorIndex(env, job.model), doc.chunkIds);
  // Jobs from before the document store kept one raw object per job.
  if (!doc.rawKey) await dropRawDocument(env.RAW, keyringFor(env), tenant, job.id, doc.seq);
  await store.deleteDocument(job.id, doc.seq);
  if (doc.rawKey) await dropOriginals(env, store, tenant, [doc.rawKey]);
}

/**
 * Retention: drops a job's chunk text, raw documents and the text its failed tasks keep on the
 * coordinator; vectors and metadata stay.
 */
export async function purgeJobText(env: Env, tenant: string, jobId: string): Promise<boolean> {
  const store = openStore(env);
  const job = await store.getJob(tenant, jobId);
  if (!job) return false;
  await dispatcherFor(env, job.model, jobId).purgeText(jobId);
  await env.RAW.delete([rawKey(tenant, jobId), legacyRawKey(jobId)]);
  const originals = await store.originalsOf(jobId);
  await store.purgeText(jobId);
  await dropOriginals(env, store, tenant, originals);
  return true;
}

/**
 * Erases a tenant: every job as above, then its webhook hub, its keys and settings, its
 * data keys (so any copy of its ciphertext left in a backup is unreadable), anything left
 * under its R2 prefix, and last its audit log and rate state.
 */
export async function eraseTenant(env: Env, tenant: string): Promise<{ jobs: number }> {
  const store = openStore(env);
  const jobs = await store.tenantJobs(tenant);
  for (const { id } of jobs) {
    const job = await store.getJob(tenant, id);
    if (job) await deleteJobEverywhere(env, tenant, job);
  }
  await webhookHub(env, tenant).wipe();
  for (let cursor: string | undefined; ; ) {
    const page = await env.RAW.list({ prefix: `raw/${tenant}/`, ...(cursor ? { cursor } : {}) });
    if (page.objects.length) await env.RAW.delete(page.objects.map((o) => o.key));
    if (!page.truncated) break;
    cursor = page.cursor;
  }
  await keyringFor(env).destroyTenant(tenant);
  await store.eraseTenant(tenant);
  await ledger(env, tenant).wipe();
  return { jobs: jobs.length };
}
