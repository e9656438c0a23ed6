/** Hex SHA-256 of a string or bytes: how credentials are stored and bodies fingerprinted. */
export async function sha256Hex(input: string | Uint8Array): Promise<string> {
  const bytes = typeof input === "string" ? new TextEncoder().encode(input) : input;
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
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
