import { checkEmbedding, decodeVector, getModel, type TaskResult } from "@p2pa/shared";

/** Why a task result is not acceptable, or null. Results come from untrusted peers: check everything. */
export function checkResult(
  items: { chunkId: string }[],
  model: string,
  msg: TaskResult,
): string | null {
  const info = getModel(model);
  if (!info) return `unknown model ${model}`;
  if (msg.vectors.length !== items.length)
    return `expected ${items.length} vectors, got ${msg.vectors.length}`;
  for (let i = 0; i < items.length; i++) {
    const got = msg.vectors[i];
    if (!got || got.chunkId !== items[i]?.chunkId)
      return `vector ${i} is for ${got?.chunkId}, expected ${items[i]?.chunkId}`;
    const v = decodeVector(got.vector);
    if (!v) return `vector ${i} is not base64 float32`;
    const why = checkEmbedding(v, info.dimension);
    if (why) return `vector ${i}: ${why}`;
  }
  return null;
}
