/** Hex SHA-256 of a string or bytes: how credentials are stored and bodies fingerprinted. */
export async function sha256Hex(input: string | Uint8Array): Promise<string> {
  const bytes = typeof input === "string" ? new TextEncoder().encode(input) : input;
  return hex(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)));
}

/** Each byte's two lower-case hex digits. */
const HEX = Array.from({ length: 256 }, (_, b) => b.toString(16).padStart(2, "0"));

/**
 * Bytes as lower-case hex. A table, not toString(16) and padStart per byte: submits hash
 * every document twice and every chunk's words, tens of thousands of digests a request.
 */
export function hex(bytes: Uint8Array): string {
  let out = "";
  for (const b of bytes) out += HEX[b];
  return out;
}

const ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz";

/** A prefixed random id (`job_…`): 5 bits of entropy per character (80 by default), Crockford base32. */
export function newId(prefix: string, chars = 16): string {
  const bytes = crypto.getRandomValues(new Uint8Array(chars));
  let out = "";
  for (const b of bytes) out += ALPHABET[b & 31];
  return `${prefix}_${out}`;
}

/** Stable 32-bit FNV-1a hash, used to place keys on shards. */
export function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/**
 * A one-way stand-in for a deleted thing's id (hex SHA-256 with a fixed label), so a
 * tombstone can recognise a late arrival without keeping the id itself.
 */
export function tombstone(id: string): Promise<string> {
  return sha256Hex(`p2pa-tombstone\n${id}`);
}
