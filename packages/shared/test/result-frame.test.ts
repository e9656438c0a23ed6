import { describe, expect, it } from "vitest";
import { PROTOCOL_VERSION } from "../src/protocol.js";
import { decodeResultFrame, encodeResultFrame, isResultFrame } from "../src/result-frame.js";
import { encodeVector } from "../src/vector-codec.js";

function unit(dim: number, seed: number): Float32Array {
  const v = Float32Array.from({ length: dim }, (_, i) => Math.sin(seed * 31 + i * 7));
  const n = Math.hypot(...v);
  return v.map((x) => x / n);
}

const result = (n: number, dim = 512) => ({
  taskId: "job_1.t0",
  leaseId: "lease-1",
  vectors: Array.from({ length: n }, (_, i) => ({
    chunkId: `job_1.${String(i).padStart(5, "0")}.00000`,
    values: unit(dim, i),
  })),
  elapsedMs: 12.5,
});

/** A frame as the edge's socket hands it over: an ArrayBuffer of exactly its bytes. */
const asReceived = (b: Uint8Array) => b.slice().buffer;

describe("binary result frames", () => {
  it("carry every vector bit for bit, with the task's ids", () => {
    const r = result(32);
    const frame = encodeResultFrame(r);
    expect(isResultFrame(frame)).toBe(true);
    const got = decodeResultFrame(asReceived(frame));
    expect(got.ok).toBe(true);
    if (!got.ok) return;
    expect(got.message).toMatchObject({
      type: "result",
      v: PROTOCOL_VERSION,
      taskId: r.taskId,
      leaseId: r.leaseId,
      elapsedMs: 12.5,
    });
    expect(got.message.vectors.map((v) => v.chunkId)).toEqual(r.vectors.map((v) => v.chunkId));
    got.message.vectors.forEach((v, i) => {
      const want = r.vectors[i]?.values as Float32Array;
      expect(Buffer.from(v.values.buffer, v.values.byteOffset, v.values.byteLength)).toEqual(
        Buffer.from(want.buffer, want.byteOffset, want.byteLength),
      );
    });
  });

  it("are about three quarters of the JSON frame's size", () => {
    const r = result(32);
    const json = JSON.stringify({
      type: "result",
      v: PROTOCOL_VERSION,
      taskId: r.taskId,
      leaseId: r.leaseId,
      vectors: r.vectors.map((v) => ({ chunkId: v.chunkId, vector: encodeVector(v.values) })),
      elapsedMs: r.elapsedMs,
    });
    const binary = encodeResultFrame(r).length;
    // 2,048 bytes of floats a chunk, plus its id once in the header.
    expect(binary).toBeLessThan(32 * (2048 + 40) + 200);
    expect(binary / Buffer.byteLength(json)).toBeLessThan(0.77);
  });

  it("turn every frame that does not hold together into a typed error", () => {
    const good = encodeResultFrame(result(2, 8));
    const bad = (mutate: (b: Uint8Array) => Uint8Array) => {
      const got = decodeResultFrame(asReceived(mutate(good.slice())));
      expect(got.ok).toBe(false);
      return got.ok ? "" : `${got.error.code}: ${got.error.message}`;
    };
    expect(bad((b) => b.subarray(0, 8))).toMatch(/magic/);
    expect(
      bad((b) => {
        b[0] = 0x7b;
        return b;
      }),
    ).toMatch(/magic/);
    expect(
      bad((b) => {
        b[4] = 9;
        return b;
      }),
    ).toMatch(/format 9/);
    // A header longer than the frame.
    expect(
      bad((b) => {
        new DataView(b.buffer).setUint32(8, 1 << 20, true);
        return b;
      }),
    ).toMatch(/runs past/);
    // A float short, and one too many.
    expect(bad((b) => b.subarray(0, b.length - 4))).toMatch(/its header says/);
    expect(
      bad((b) => {
        const longer = new Uint8Array(b.length + 4);
        longer.set(b);
        return longer;
      }),
    ).toMatch(/its header says/);
    // A header that is not JSON, or not the schema.
    const withHeader = (header: string) => {
      const h = new TextEncoder().encode(header);
      const out = new Uint8Array(12 + Math.ceil(h.length / 4) * 4);
      out.set(good.subarray(0, 8));
      new DataView(out.buffer).setUint32(8, h.length, true);
      out.set(h, 12);
      return out;
    };
    expect(bad(() => withHeader("{not json"))).toMatch(/not valid JSON/);
    /** A header of the schema, but for `change`. */
    const header = (change: Record<string, unknown>) =>
      withHeader(
        JSON.stringify({
          type: "result",
          v: PROTOCOL_VERSION,
          taskId: "t",
          leaseId: "l",
          chunkIds: ["a"],
          dimension: 8,
          ...change,
        }),
      );
    expect(bad(() => header({ chunkIds: [] }))).toMatch(/chunkIds/);
    expect(bad(() => header({ extra: "no" }))).toMatch(/header/);
    expect(bad(() => header({ dimension: 0 }))).toMatch(/dimension/);
    // Over the frame limit.
    const huge = decodeResultFrame(new ArrayBuffer(5 * 1024 * 1024));
    expect(huge).toMatchObject({ ok: false, error: { code: "too_large" } });
  });

  it("refuse vectors of different lengths in one result", () => {
    const r = result(2, 8);
    (r.vectors[1] as { values: Float32Array }).values = unit(9, 1);
    expect(() => encodeResultFrame(r)).toThrow(/differ in length/);
  });
});
