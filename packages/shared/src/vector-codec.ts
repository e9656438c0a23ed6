/**
 * Vectors cross the wire as base64 of little-endian float32: a third of the size of JSON
 * numbers, exact, and parseable without a JSON number round trip. Works in workerd and Node.
 */
// Node (and workerd with nodejs_compat) have Buffer, whose base64 is native and much faster.
interface BufferLike {
  from(
    data: ArrayBufferLike,
    offset: number,
    length: number,
  ): { toString(encoding: "base64"): string };
  from(data: string, encoding: "base64"): Uint8Array;
}
const NodeBuffer = (globalThis as { Buffer?: BufferLike }).Buffer;

export function encodeVector(vector: Float32Array | readonly number[]): string {
  const f32 = vector instanceof Float32Array ? vector : Float32Array.from(vector);
  if (NodeBuffer)
    return NodeBuffer.from(f32.buffer, f32.byteOffset, f32.byteLength).toString("base64");
  const bytes = new Uint8Array(f32.buffer, f32.byteOffset, f32.byteLength);
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(bin);
}

/** Decodes a base64 float32 vector; returns null when the payload is not whole float32s. */
export function decodeVector(b64: string): Float32Array | null {
  if (NodeBuffer) {
    // Buffer skips bad characters silently; insist on canonical base64 like atob would.
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64) || b64.length % 4 !== 0) return null;
    const buf = NodeBuffer.from(b64, "base64");
    if (buf.length % 4 !== 0) return null;
    // Copy into an aligned buffer: Float32Array needs a 4-byte aligned offset.
    const out = new Float32Array(buf.length / 4);
    new Uint8Array(out.buffer).set(buf);
    return out;
  }
  let bin: string;
  try {
    bin = atob(b64);
  } catch {
    return null;
  }
  if (bin.length % 4 !== 0) return null;
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Float32Array(bytes.buffer);
}

/** Why a vector is unacceptable as an embedding, or null when it is fine. */
export function checkEmbedding(v: Float32Array, dimension: number): string | null {
  if (v.length !== dimension) return `dimension ${v.length}, expected ${dimension}`;
  let sq = 0;
  for (let i = 0; i < v.length; i++) {
    const x = v[i] as number;
    if (!Number.isFinite(x)) return `non-finite value at ${i}`;
    sq += x * x;
  }
  const norm = Math.sqrt(sq);
  if (Math.abs(norm - 1) > 1e-3) return `L2 norm ${norm.toFixed(4)}, expected 1`;
  return null;
}

/** Cosine similarity of two vectors of the same length. */
export function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a[i] as number;
    const y = b[i] as number;
    dot += x * y;
    na += x * x;
    nb += y * y;
  }
  return dot / Math.sqrt(na * nb);
}
