import type { MetadataStore, NewDocument } from "../db/store.js";
import type { Keyring } from "../lib/keyring.js";
import { slices } from "../lib/slices.js";

/**
 * The document store: each document's original, as submitted (a file's bytes, or a JSON or
 * NDJSON document's text), sealed under the tenant's key bound to where it is kept, so a copy
 * of the store alone reveals nothing.
 *
 * Where it is kept follows from its key:
 *   - `raw/<tenant>/docs/<sha256>`: an R2 object (files, and texts over INLINE_MAX_BYTES),
 *     named by its content: documents with the same content share it, and it goes when the
 *     last version naming it goes;
 *   - `doc/<tenant>/<job>/<seq>`: a row of D1's `originals` (small texts), the version's own,
 *     written in the transaction that adds the version and removed with it. One object per
 *     sentence made a submit of 10,000 short documents spend 12 s on object writes (in
 *     production, as many billed writes, each a round trip); and a row named by its content
 *     cost an entry at a random place of two indexes (the key's, and the one that finds who
 *     else names it): with 200,000 documents kept, SQLite spent three times as long on a
 *     submit as without them;
 *   - `inline/<tenant>/<sha256>`: a row of `originals` shared by content, as small texts were
 *     kept before; read and removed like the R2 objects.
 */

/** Texts up to this size (UTF-8) are kept in D1. */
const INLINE_MAX_BYTES = 8 * 1024;
/** R2 writes in flight at once. */
const R2_WRITES = 16;
/** Keys per R2 delete call (R2's limit). */
const R2_DELETES = 1000;

const OWN = "doc/";
const isInline = (key: string) => key.startsWith(OWN) || key.startsWith("inline/");

/** An original to keep: a file's bytes, or the text a document was sent as. */
export type NewOriginal =
  | { key: string; text: string; mediaType: string }
  | { key: string; bytes: Uint8Array; mediaType: string };

/**
 * Where a document version's original is kept: a text sent as such (no file) small enough is
 * the version's own row in D1, anything else an R2 object under the tenant and its content hash.
 */
export function originalKey(
  tenant: string,
  version: { jobId: string; seq: number; contentHash: string },
  original: { file: boolean; bytes: number },
): string {
  return !original.file && original.bytes <= INLINE_MAX_BYTES
    ? `${OWN}${tenant}/${version.jobId}/${version.seq}`
    : `raw/${tenant}/docs/${version.contentHash}`;
}

/**
 * Keeps the documents' originals, sealed: a small text goes with its document's row (`original`,
 * written in the same transaction), anything else to R2 now, before the rows that name it.
 */
export async function keepOriginals(
  env: Env,
  keyring: Keyring,
  tenant: string,
  originals: { doc: NewDocument; original: NewOriginal }[],
): Promise<void> {
  const objects: { key: string; bytes: Uint8Array; mediaType: string }[] = [];
  const inline: { doc: NewDocument; key: string; text: string; mediaType: string }[] = [];
  for (const { doc, original: o } of originals) {
    if (isInline(o.key) && "text" in o) inline.push({ doc, ...o });
    else
      objects.push({
        key: o.key,
        mediaType: o.mediaType,
        bytes: "bytes" in o ? o.bytes : new TextEncoder().encode(o.text),
      });
  }
  const bodies = await keyring.encryptAll(
    tenant,
    inline.map((o) => ({ plaintext: o.text, context: o.key })),
  );
  inline.forEach((o, i) => {
    o.doc.original = { mediaType: o.mediaType, body: bodies[i] as string };
  });
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

/**
 * Deletes the originals of versions that are gone: each one's own, and the shared ones among
 * `keys` that no remaining document names.
 */
export async function dropOriginals(
  env: Env,
  store: MetadataStore,
  tenant: string,
  keys: string[],
): Promise<void> {
  if (keys.length === 0) return;
  const all = [...new Set(keys)];
  const shared = all.filter((k) => !k.startsWith(OWN));
  const inUse = shared.length ? await store.sharedOriginalsInUse(tenant, shared) : new Set();
  const unused = all.filter((k) => !inUse.has(k));
  const inline = unused.filter(isInline);
  if (inline.length) await store.deleteOriginals(tenant, inline);
  for (const group of slices(
    unused.filter((k) => !isInline(k)),
    R2_DELETES,
  ))
    await env.RAW.delete(group);
}
