import { decodeVector } from "@p2pa/shared";
import { shardsFrom } from "../dispatch/shards.js";
import { noCapacity } from "./errors.js";
import { requireModel } from "./models.js";

/**
 * Embeds texts now, on a connected worker, through the priority lane: the request jumps
 * ahead of batch work on whichever shard has a worker for the model.
 */
export async function embedNow(
  env: Env,
  model: string,
  texts: string[],
  scope: { tenant: string; pool?: "any" | "own" },
): Promise<{ vectors: Float32Array[]; tokens: number }> {
  const info = requireModel(env, model);
  let last = "";
  for (const shard of shardsFrom(env, model)) {
    const r = await shard.embed(model, texts, undefined, scope);
    if (r.ok) {
      const vectors = r.vectors.map((b) => decodeVector(b));
      if (
        vectors.length === texts.length &&
        vectors.every((v) => v && v.length === info.dimension)
      ) {
        return { vectors: vectors as Float32Array[], tokens: r.tokens };
      }
      last = "a worker returned a malformed answer";
      continue;
    }
    last = r.message;
  }
  throw noCapacity(`no worker could embed the input now (${last}); retry shortly`);
}
