import type { MetadataStore } from "../db/store.js";
import type { Keyring } from "../lib/keyring.js";
import { slices } from "../lib/slices.js";

/**
 * The document store: each document's original, as submitted (a file's bytes, or a JSON or
 * NDJSON document's text), under the tenant and its content hash, sealed under the tenant's
 * key bound to where it is kept, so a copy of the store alone reveals nothing. Documents with
 * the same content share one original; it goes when the last version naming it goes.
 *
 * Where it is kept follows from its key:
 *   - `raw/<tenant>/docs/<sha256>`: an R2 object (files, and texts over INLINE_MAX_BYTES);
 *   - `inline/<tenant>/<sha256>`: a row of D1's `originals` (small texts), written in one
 *     statement with many others. One object per sentence made a submit of 10,000 short
 *     documents spend 12 s on object writes (in production, as many billed writes, each a
 *     round trip).
 */

/** Texts up to this size (UTF-8) are kept in D1. */
const INLINE_MAX_BYTES = 8 * 1024;
/** R2 writes in flight at once. */
const R2_WRITES = 16;
/** Keys per R2 delete call (R2's limit). */
const R2_DELETES = 1000;

const INLINE = "inline/";
const isInline = (key: string) => key.startsWith(INLINE);

/** An original to keep: a file's bytes, or the text a document was sent as. */
export type NewOriginal =
  | { key: string; text: string; mediaType: string }
  | { key: string; bytes: Uint8Array; mediaType: string };

/**
 * Where an original is kept: a text sent as such (no file) small enough goes to D1, anything
 * else to R2, under the tenant and its content hash either way.
 */
export function originalKey(
  tenant: string,
  contentHash: string,
  original: { file: boolean; bytes: number },
): string {
  return !original.file && original.bytes <= INLINE_MAX_BYTES
    ? `${INLINE}${tenant}/${contentHash}`
    : `raw/${tenant}/docs/${contentHash}`;
}

/** Keeps originals, sealed: the small texts in one D1 write, the rest as R2 objects. */
export async function putOriginals(
  env: Env,
  store: MetadataStore,
  keyring: Keyring,
  tenant: string,
  originals: NewOriginal[],
): Promise<void> {
  const rows: { key: string; mediaType: string; body: string }[] = [];
  const objects: { key: string; bytes: Uint8Array; mediaType: string }[] = [];
  for (const o of originals) {
    if (isInline(o.key) && "text" in o)
      rows.push({
        key: o.key,
        mediaType: o.mediaType,
        body: await keyring.encrypt(tenant, o.text, o.key),
      });
    else
      objects.push({
        key: o.key,
        mediaType: o.mediaType,
        bytes: "bytes" in o ? o.bytes : new TextEncoder().encode(o.text),
      });
  }
  if (rows.length) await store.putOriginals(tenant, rows);
  for (const group of slices(objects, R2_WRITES)) {
    await Promise.all(
      group.map(async (o) =>
        env.RAW.put(o.key, await keyring.encryptBytes(tenant, o.bytes, o.key), {
          httpMetadata: { contentType: "application/octet-stream" },
          customMetadata: { format: "p2pa-sealed", mediaType: o.mediaType },
        }),
      ),
    );
  }
}

/** An original with its media type, or null when it is not kept. */
export async function getOriginal(
  env: Env,
  store: MetadataStore,
  keyring: Keyring,
  tenant: string,
  key: string,
): Promise<{ bytes: Uint8Array; mediaType: string } | null> {
  if (isInline(key)) {
    const row = await store.getOriginal(tenant, key);
    if (!row) return null;
    const text = await keyring.decrypt(tenant, row.body, key);
    return { bytes: new TextEncoder().encode(text), mediaType: row.mediaType };
  }
  const obj = await env.RAW.get(key);
  if (!obj) return null;
  const bytes = await keyring.decryptBytes(tenant, new Uint8Array(await obj.arrayBuffer()), key);
  return { bytes, mediaType: obj.customMetadata?.mediaType ?? "application/octet-stream" };
}

/** Deletes the originals among `keys` that no remaining document names. */
export async function dropOriginals(
  env: Env,
  store: MetadataStore,
  tenant: string,
  keys: string[],
): Promise<void> {
  if (keys.length === 0) return;
  const inUse = await store.originalsInUse(tenant, keys);
  const unused = [...new Set(keys)].filter((k) => !inUse.has(k));
  const inline = unused.filter(isInline);
  if (inline.length) await store.deleteOriginals(tenant, inline);
  for (const group of slices(
    unused.filter((k) => !isInline(k)),
    R2_DELETES,
  ))
    await env.RAW.delete(group);
}
