/**
 * Vectors cross the wire as base64 of little-endian float32: a third of the size of JSON
 * numbers, exact, and parseable without a JSON number round trip. Works in workerd and Node.
 */
import { base64ToBytes, bytesToBase64 } from "./base64.js";

export function encodeVector(vector: Float32Array | readonly number[]): string {
  const f32 = vector instanceof Float32Array ? vector : Float32Array.from(vector);
  return bytesToBase64(new Uint8Array(f32.buffer, f32.byteOffset, f32.byteLength));
}

/** Decodes a base64 float32 vector; returns null when the payload is not whole float32s. */
export function decodeVector(b64: string): Float32Array | null {
  const bytes = base64ToBytes(b64, { strict: true });
  if (!bytes || bytes.length % 4 !== 0) return null;
  // Copy into an aligned buffer: Float32Array needs a 4-byte aligned offset.
  const out = new Float32Array(bytes.length / 4);
  new Uint8Array(out.buffer).set(bytes);
  return out;
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
