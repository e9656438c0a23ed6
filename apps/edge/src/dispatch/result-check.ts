import { type BinaryResult, checkEmbedding, decodeVector, type TaskResult } from "@p2pa/shared";

export type CheckedResult = { ok: true; vectors: Float32Array[] } | { ok: false; problem: string };

/**
 * Checks a task result against its task and decodes its vectors (once, for storing too).
 * Results come from untrusted peers: check everything.
 */
export function checkResult(
  items: { chunkId: string }[],
  model: { id: string; dimension: number } | undefined,
  msg: TaskResult | BinaryResult,
): CheckedResult {
  const fail = (problem: string): CheckedResult => ({ ok: false, problem });
  const info = model;
  if (!info) return fail("the task's model is no longer served");
  if (msg.vectors.length !== items.length)
    return fail(`expected ${items.length} vectors, got ${msg.vectors.length}`);
  const vectors: Float32Array[] = [];
  for (let i = 0; i < items.length; i++) {
    const got = msg.vectors[i];
    if (!got || got.chunkId !== items[i]?.chunkId)
      return fail(`vector ${i} is for ${got?.chunkId}, expected ${items[i]?.chunkId}`);
    // A binary frame's vectors are numbers already; a JSON frame's are base64.
    const v = "values" in got ? got.values : decodeVector(got.vector);
    if (!v) return fail(`vector ${i} is not base64 float32`);
    const why = checkEmbedding(v, info.dimension);
    if (why) return fail(`vector ${i}: ${why}`);
    vectors.push(v);
  }
  return { ok: true, vectors };
}
