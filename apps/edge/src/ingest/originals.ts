import type { MetadataStore, NewDocument } from "../db/store.js";
import { chunkIdOf } from "../lib/chunk-ids.js";
import { utf8 } from "../lib/crypto.js";
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
 *   - `doc/<tenant>/<job>/<seq>/chunk`: nothing of its own. A text that is its own only chunk
 *     as sent (normalising changed nothing, and it fits one chunk: a sentence, a short note)
 *     is read back from that chunk's row, which keeps the same text sealed; a second sealed
 *     copy cost a submit of 10,000 sentences 10,000 AES-GCM operations and as many rows. The
 *     chunk goes with its version and its text with the job's retention, as an own original
 *     would;
 *   - `inline/<tenant>/<sha256>`: a row of `originals` shared by content, as small texts were
 *     kept before; read and removed like the R2 objects.
 */

/** Texts up to this size (UTF-8) are kept in D1. */
const INLINE_MAX_BYTES = 8 * 1024;
/** R2 writes in flight at once. */
const R2_WRITES = 16;
/** Keys per R2 delete call (R2's limit). */
const R2_DELETES = 1000;
/** What a text sent as such (JSON or NDJSON) is given back as. */
export const TEXT_MEDIA_TYPE = "text/plain; charset=utf-8";

const OWN = "doc/";
const CHUNK_TEXT = "/chunk";
const isChunkText = (key: string) => key.startsWith(OWN) && key.endsWith(CHUNK_TEXT);
const isInline = (key: string) =>
  (key.startsWith(OWN) && !isChunkText(key)) || key.startsWith("inline/");

/** An original to keep: a file's bytes, or the text a document was sent as. */
export type NewOriginal =
  | { key: string; text: string; mediaType: string }
  | { key: string; bytes: Uint8Array; mediaType: string };

/**
 * Where a document version's original is kept: a text sent as such (no file) that is its own
 * only chunk is that chunk's row; another small enough is the version's own row in D1,
 * anything else an R2 object under the tenant and its content hash.
 */
export function originalKey(
  tenant: string,
  version: { jobId: string; seq: number; contentHash: string },
  original:
    | { file: false; text: string; chunks: readonly { index: number; text: string }[] }
    | { file: true },
): string {
  const own = `${OWN}${tenant}/${version.jobId}/${version.seq}`;
  if (original.file) return `raw/${tenant}/docs/${version.contentHash}`;
  const { text, chunks } = original;
  const [only, ...more] = chunks;
  if (only?.index === 0 && only.text === text && more.length === 0) return `${own}${CHUNK_TEXT}`;
  // At most 3 UTF-8 bytes a UTF-16 unit: most texts are known to fit without encoding them.
  const small = text.length * 3 <= INLINE_MAX_BYTES || utf8.encode(text).length <= INLINE_MAX_BYTES;
  return small ? own : `raw/${tenant}/docs/${version.contentHash}`;
}

/** Whether the original under `key` is kept apart (false: it is its only chunk's text). */
export function keptApart(key: string): boolean {
  return !isChunkText(key);
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
  if (isChunkText(key)) {
    // doc/<tenant>/<job>/<seq>/chunk: job ids and seqs hold no slash.
    const [seq, jobId] = key.slice(0, -CHUNK_TEXT.length).split("/").reverse();
    const [chunk] = await store.getChunks(tenant, [chunkIdOf(jobId as string, Number(seq), 0)]);
    if (!chunk?.text) return null;
    return { bytes: utf8.encode(chunk.text), mediaType: TEXT_MEDIA_TYPE };
  }
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
  // An original that is its chunk's text goes with the chunk.
  const all = [...new Set(keys.filter(keptApart))];
  if (all.length === 0) return;
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
