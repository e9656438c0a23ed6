import { z } from "zod";
import { MAX_FRAME_BYTES, type ParseResult, PROTOCOL_VERSION } from "./protocol.js";

/**
 * A task's result as one binary WebSocket frame: the vectors as raw little-endian float32,
 * not base64 inside JSON. For a 512-dimension model that is 2,048 bytes a chunk instead of
 * about 2,780, and the edge reads the numbers where they lie instead of parsing a 90 KB JSON
 * string and decoding 32 base64 strings.
 *
 * Layout:
 *   0  "P2PR"                       magic
 *   4  u8  format (1)
 *   5  3 bytes, zero
 *   8  u32 LE  header length H
 *   12 header: UTF-8 JSON {type: "result", v, taskId, leaseId, chunkIds, dimension, elapsedMs?}
 *      zero bytes up to a multiple of 4
 *   .. chunkIds.length × dimension float32 LE, item by item
 *
 * Used only when both sides said so: the worker in `hello` (`binaryResults`), the edge in
 * `welcome`. Either side without it speaks JSON results, so old workers and old edges work on.
 */

const MAGIC = [0x50, 0x32, 0x50, 0x52]; // "P2PR"
const FORMAT = 1;
const PREFIX = 12;

const Id = z.string().min(1).max(128);
const Header = z.strictObject({
  type: z.literal("result"),
  v: z.literal(PROTOCOL_VERSION),
  taskId: Id,
  leaseId: Id,
  chunkIds: z.array(Id).min(1).max(1024),
  dimension: z.number().int().positive().max(8192),
  elapsedMs: z.number().nonnegative().optional(),
});

/** A task result read from a binary frame: its vectors already numbers. */
export interface BinaryResult {
  type: "result";
  v: typeof PROTOCOL_VERSION;
  taskId: string;
  leaseId: string;
  vectors: { chunkId: string; values: Float32Array }[];
  elapsedMs?: number;
}

/** Whether this machine stores float32 little-endian (every platform Node and workerd run on). */
export const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Whether `data` is a binary result frame (by its magic), as opposed to any other frame. */
export function isResultFrame(data: ArrayBuffer | Uint8Array): boolean {
  const b = data instanceof Uint8Array ? data : new Uint8Array(data);
  return b.length >= PREFIX && MAGIC.every((m, i) => b[i] === m);
}

/** Encodes a result; every vector must have the same length. */
export function encodeResultFrame(r: {
  taskId: string;
  leaseId: string;
  vectors: { chunkId: string; values: Float32Array }[];
  elapsedMs?: number;
}): Uint8Array<ArrayBuffer> {
  if (!LITTLE_ENDIAN) throw new Error("binary result frames need a little-endian machine");
  const dimension = r.vectors[0]?.values.length ?? 0;
  const header = new TextEncoder().encode(
    JSON.stringify({
      type: "result",
      v: PROTOCOL_VERSION,
      taskId: r.taskId,
      leaseId: r.leaseId,
      chunkIds: r.vectors.map((x) => x.chunkId),
      dimension,
      ...(r.elapsedMs === undefined ? {} : { elapsedMs: r.elapsedMs }),
    }),
  );
  const dataAt = PREFIX + Math.ceil(header.length / 4) * 4;
  const out = new Uint8Array(dataAt + r.vectors.length * dimension * 4);
  out.set(MAGIC, 0);
  out[4] = FORMAT;
  new DataView(out.buffer).setUint32(8, header.length, true);
  out.set(header, PREFIX);
  const floats = new Float32Array(out.buffer, dataAt, r.vectors.length * dimension);
  r.vectors.forEach((x, i) => {
    if (x.values.length !== dimension) throw new Error("vectors of one result differ in length");
    floats.set(x.values, i * dimension);
  });
  return out;
}

/**
 * Reads a binary result frame. Never throws: a frame that does not hold together (wrong
 * magic or format, a header that is not the schema, a length that does not match) comes back
 * as a typed error, as `parseMessage` does for JSON frames.
 */
export function decodeResultFrame(data: ArrayBuffer): ParseResult<BinaryResult> {
  const bad = (message: string): ParseResult<BinaryResult> => ({
    ok: false,
    error: { code: "bad_message", message },
  });
  if (data.byteLength > MAX_FRAME_BYTES)
    return {
      ok: false,
      error: { code: "too_large", message: `frame over ${MAX_FRAME_BYTES} bytes` },
    };
  const bytes = new Uint8Array(data);
  if (!isResultFrame(bytes)) return bad("binary frame without the result magic");
  if (bytes[4] !== FORMAT) return bad(`binary result format ${bytes[4]} is not spoken here`);
  const headerLength = new DataView(data).getUint32(8, true);
  if (PREFIX + headerLength > bytes.length) return bad("binary result header runs past the frame");
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder().decode(bytes.subarray(PREFIX, PREFIX + headerLength)));
  } catch {
    return bad("binary result header is not valid JSON");
  }
  const header = Header.safeParse(json);
  if (!header.success) {
    const issue = header.error.issues[0];
    const where = issue?.path.length ? ` at ${issue.path.join(".")}` : "";
    return bad(`binary result header: ${issue?.message ?? "invalid"}${where}`);
  }
  const { chunkIds, dimension, taskId, leaseId, elapsedMs } = header.data;
  const dataAt = PREFIX + Math.ceil(headerLength / 4) * 4;
  const expected = dataAt + chunkIds.length * dimension * 4;
  if (bytes.length !== expected)
    return bad(`binary result is ${bytes.length} bytes; its header says ${expected}`);
  const all = new Float32Array(data, dataAt, chunkIds.length * dimension);
  return {
    ok: true,
    message: {
      type: "result",
      v: PROTOCOL_VERSION,
      taskId,
      leaseId,
      vectors: chunkIds.map((chunkId, i) => ({
        chunkId,
        // Views into the frame, not copies: whatever keeps a vector past its result (the
        // index, held versions, the verifier's candidates, the cache) writes its own copy.
        values: all.subarray(i * dimension, (i + 1) * dimension),
      })),
      ...(elapsedMs === undefined ? {} : { elapsedMs }),
    },
  };
}
