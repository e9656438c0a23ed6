/**
 * One UTF-8 encoder for the isolate: a submit encodes several strings a document (digests, MACs,
 * sealing contexts), and an encoder made each time costs more than the encoding of a sentence.
 */
export const utf8 = new TextEncoder();

/** Hex SHA-256 of a string or bytes: how credentials are stored and bodies fingerprinted. */
export async function sha256Hex(input: string | Uint8Array): Promise<string> {
  const bytes = typeof input === "string" ? utf8.encode(input) : input;
  return hex(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)));
}

/** The ASCII codes of the sixteen lower-case hex digits. */
const DIGITS = new TextEncoder().encode("0123456789abcdef");
const ASCII = new TextDecoder();
/** Where hex digits are spelled before being read out as one string; grows when needed. */
let spelled = new Uint8Array(128);

/**
 * Bytes as lower-case hex. Spelled as ASCII and decoded once: submits hash every document
 * twice and every chunk's words, tens of thousands of digests a request, and a string built
 * two digits at a time left a string per step behind (some 17 MB a 10,000-document submit)
 * for twice the time.
 */
export function hex(bytes: Uint8Array): string {
  const n = bytes.length * 2;
  if (spelled.length < n) spelled = new Uint8Array(n);
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i] as number;
    spelled[2 * i] = DIGITS[b >> 4] as number;
    spelled[2 * i + 1] = DIGITS[b & 15] as number;
  }
  return ASCII.decode(spelled.subarray(0, n));
}

/** The value of each ASCII code as a hex digit (either case), 255 where it is none. */
const DIGIT_VALUES = new Uint8Array(128).fill(255);
for (let d = 0; d < 16; d++) {
  DIGIT_VALUES["0123456789abcdef".charCodeAt(d)] = d;
  DIGIT_VALUES["0123456789ABCDEF".charCodeAt(d)] = d;
}

/** The bytes that `hex` (or SQLite's `hex()`, upper case) spelled; throws on anything else. */
export function bytesOfHex(text: string): Uint8Array {
  if (text.length % 2 !== 0) throw new Error("hex text has an odd length");
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) {
    const hi = DIGIT_VALUES[text.charCodeAt(2 * i)] ?? 255;
    const lo = DIGIT_VALUES[text.charCodeAt(2 * i + 1)] ?? 255;
    if (hi > 15 || lo > 15) throw new Error(`not a hex digit at ${2 * i}`);
    out[i] = (hi << 4) | lo;
  }
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
