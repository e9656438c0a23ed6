import { fnv1a } from "../lib/crypto.js";
import { settings } from "../lib/settings.js";

/**
 * Placement of work on Dispatcher shards: a job's tasks live on shard hash(jobId) % N of its
 * model, and each worker joins one shard of its model. See README.md in this folder.
 */
export function shardCount(env: Env): number {
  return settings(env).DISPATCH_SHARDS;
}

export function dispatcherAt(env: Env, model: string, shard: number) {
  return env.DISPATCHER.get(env.DISPATCHER.idFromName(`${model}:${shard}`));
}

/** The shard that owns a key (a job id, or a worker's random join key). */
export function dispatcherFor(env: Env, model: string, key: string) {
  return dispatcherAt(env, model, fnv1a(key) % shardCount(env));
}

/** Every shard of a model, starting at a random one so real-time load spreads evenly. */
export function shardsFrom(
  env: Env,
  model: string,
  start = Math.floor(Math.random() * shardCount(env)),
) {
  const n = shardCount(env);
  return Array.from({ length: n }, (_, i) => dispatcherAt(env, model, (start + i) % n));
}
