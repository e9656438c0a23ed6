import type { Keyring } from "../lib/keyring.js";

/**
 * The document store: each document's original, as submitted (a file's bytes, or a JSON or
 * NDJSON document's text), in R2 under the tenant and its content hash, sealed under the
 * tenant's key bound to its R2 key, so a copy of the bucket alone reveals nothing. Documents
 * with the same content share one object; it goes when the last version naming it goes.
 */

export async function putOriginal(
  bucket: R2Bucket,
  keyring: Keyring,
  tenant: string,
  key: string,
  bytes: Uint8Array,
  mediaType: string,
): Promise<void> {
  await bucket.put(key, await keyring.encryptBytes(tenant, bytes, key), {
    httpMetadata: { contentType: "application/octet-stream" },
    customMetadata: { format: "p2pa-sealed", mediaType },
  });
}

/** An original with its media type, or null when it is not kept. */
export async function getOriginal(
  bucket: R2Bucket,
  keyring: Keyring,
  tenant: string,
  key: string,
): Promise<{ bytes: Uint8Array; mediaType: string } | null> {
  const obj = await bucket.get(key);
  if (!obj) return null;
  const bytes = await keyring.decryptBytes(tenant, new Uint8Array(await obj.arrayBuffer()), key);
  return { bytes, mediaType: obj.customMetadata?.mediaType ?? "application/octet-stream" };
}
