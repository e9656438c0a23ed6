import type { Keyring } from "../lib/keyring.js";

/** One line of a job's raw object: a document as it was submitted. */
interface RawDocument {
  seq: number;
  id: string;
  text: string;
  metadata: Record<string, unknown> | null;
}

/** Where a job's raw documents are kept in R2: under the tenant, so erasure finds them all. */
export function rawKey(tenant: string, jobId: string): string {
  return `raw/${tenant}/${jobId}.ndjson`;
}

/**
 * Keeps a job's documents as submitted, as one object sealed under the tenant's key (bound to
 * its R2 key), so a copy of the bucket alone reveals nothing.
 */
async function putRaw(
  bucket: R2Bucket,
  keyring: Keyring,
  tenant: string,
  jobId: string,
  docs: RawDocument[],
): Promise<void> {
  const key = rawKey(tenant, jobId);
  const plain = new TextEncoder().encode(docs.map((d) => JSON.stringify(d)).join("\n"));
  await bucket.put(key, await keyring.encryptBytes(tenant, plain, key), {
    httpMetadata: { contentType: "application/octet-stream" },
    customMetadata: { format: "p2pa-sealed-ndjson" },
  });
}

/** A job's raw documents, or null when none are kept (deleted, purged, never kept). */
async function getRaw(
  bucket: R2Bucket,
  keyring: Keyring,
  tenant: string,
  jobId: string,
): Promise<RawDocument[] | null> {
  const key = rawKey(tenant, jobId);
  const obj = await bucket.get(key);
  if (!obj) return null;
  const plain = await keyring.decryptBytes(tenant, new Uint8Array(await obj.arrayBuffer()), key);
  const text = new TextDecoder().decode(plain);
  return text ? text.split("\n").map((l) => JSON.parse(l) as RawDocument) : [];
}

/** Drops one document from a job's raw object (rewritten without it). */
export async function dropRawDocument(
  bucket: R2Bucket,
  keyring: Keyring,
  tenant: string,
  jobId: string,
  seq: number,
): Promise<void> {
  const docs = await getRaw(bucket, keyring, tenant, jobId);
  if (!docs) return;
  const rest = docs.filter((d) => d.seq !== seq);
  if (rest.length) await putRaw(bucket, keyring, tenant, jobId, rest);
  else await bucket.delete(rawKey(tenant, jobId));
}
