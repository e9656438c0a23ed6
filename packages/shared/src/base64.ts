/**
 * base64 for bytes, one implementation for the product: Node's and workerd's (nodejs_compat)
 * native Buffer when there is one, which is many times faster than building a binary string
 * for `btoa`, and `btoa`/`atob` elsewhere (browsers).
 */
interface BufferLike {
  from(
    data: ArrayBufferLike,
    offset: number,
    length: number,
  ): { toString(encoding: "base64" | "base64url"): string };
  from(data: string, encoding: "base64" | "base64url"): Uint8Array;
}
const NodeBuffer = (globalThis as { Buffer?: BufferLike }).Buffer;

const STANDARD = /^[A-Za-z0-9+/]*={0,2}$/;
const ANY = /^[A-Za-z0-9+/_-]*={0,2}$/;

/** Standard base64 (padded), or base64url without padding with `{ url: true }`. */
export function bytesToBase64(bytes: Uint8Array, opts: { url?: boolean } = {}): string {
  if (NodeBuffer)
    return NodeBuffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString(
      opts.url ? "base64url" : "base64",
    );
  let bin = "";
  // Chunked: String.fromCharCode with a huge argument list overflows the stack.
  for (let i = 0; i < bytes.length; i += 0x8000)
    bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  const std = btoa(bin);
  return opts.url ? std.replace(/=+$/, "").replaceAll("+", "-").replaceAll("/", "_") : std;
}

/**
 * Decodes base64; `strict` accepts only canonical standard base64 (padded, as `atob` would),
 * otherwise either alphabet, padded or not. Returns null for anything that is not base64
 * (a native decoder would skip bad characters silently).
 */
export function base64ToBytes(s: string, opts: { strict?: boolean } = {}): Uint8Array | null {
  if (opts.strict ? !STANDARD.test(s) || s.length % 4 !== 0 : !ANY.test(s)) return null;
  const bare = s.replace(/=+$/, "");
  if (bare.length % 4 === 1) return null;
  if (NodeBuffer)
    return NodeBuffer.from(bare.replaceAll("+", "-").replaceAll("/", "_"), "base64url");
  let bin: string;
  try {
    const std = bare.replaceAll("-", "+").replaceAll("_", "/");
    bin = atob(std + "=".repeat((4 - (std.length % 4)) % 4));
  } catch {
    return null;
  }
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
