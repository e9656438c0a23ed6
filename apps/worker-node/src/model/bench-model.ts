// Throughput of an Embedder, tokenisation included. Shared by the repo-level benchmark; run
// directly (`npx tsx apps/worker-node/src/model/bench-model.ts [threads] [model]`) for numbers.
import { mkdtemp } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { loadModel } from "./load.js";
import type { Embedder } from "./types.js";

/** Result of {@link benchEmbedder}. */
export interface BenchResult {
  /** Texts embedded. */
  items: number;
  /** Wall-clock seconds for all batches. */
  seconds: number;
  /** items / seconds. */
  perSecond: number;
}

/**
 * Embeds `texts` in batches of `batchSize` (one embed call, so one session.run, per batch) and
 * times it, keeping `embedder.parallelism` calls and one more in flight, as the worker does: a
 * pool's sessions all run, and each finds its next batch waiting. Run a warm-up batch first if
 * first-call costs should not count.
 */
export async function benchEmbedder(
  embedder: Embedder,
  texts: string[],
  batchSize: number,
): Promise<BenchResult> {
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new Error("batchSize must be >= 1");
  const start = performance.now();
  let next = 0;
  const lane = async () => {
    while (next < texts.length) {
      const at = next;
      next += batchSize;
      await embedder.embed(texts.slice(at, at + batchSize));
    }
  };
  await Promise.all(Array.from({ length: embedder.parallelism + 1 }, lane));
  const seconds = (performance.now() - start) / 1000;
  return { items: texts.length, seconds, perSecond: texts.length / seconds };
}

/** Short-to-medium English sentences (4-30 words), deterministic for a given count. */
export function benchSentences(count: number): string[] {
  const subjects = [
    "The committee",
    "A small robot",
    "My neighbour",
    "The new library",
    "Our team",
    "The river",
  ];
  const verbs = ["announced", "described", "questioned", "celebrated", "rebuilt", "measured"];
  const objects = [
    "the results of the annual survey",
    "a plan to reduce energy use in public buildings",
    "the history of the old harbour and its lighthouse",
    "three options",
    "the weather",
    "an unexpected discovery about migrating birds during the winter months",
  ];
  const tails = [
    "",
    " yesterday.",
    " after a long debate.",
    " with great care, despite the cold rain and the late hour.",
    "!",
  ];
  return Array.from({ length: count }, (_, i) => {
    const pick = <T>(xs: T[], k: number) =>
      xs[(i * k + Math.floor(i / xs.length)) % xs.length] as T;
    return `${pick(subjects, 1)} ${pick(verbs, 5)} ${pick(objects, 7)}${pick(tails, 3)} (#${i})`;
  });
}

async function main(): Promise<void> {
  const threads = Number(process.argv[2] ?? os.availableParallelism());
  const model = process.argv[3] ?? "use-lite";
  const cacheDir =
    process.env.P2PA_CACHE_DIR ?? (await mkdtemp(path.join(os.tmpdir(), "p2pa-bench-")));
  const embedder = await loadModel(model, { cacheDir, threads });
  const texts = benchSentences(1024);
  await benchEmbedder(embedder, texts.slice(0, 64), 32); // warm-up
  const r = await benchEmbedder(embedder, texts, 32);
  console.log(
    JSON.stringify({ model, threads, batchSize: 32, ...r, perSecond: Math.round(r.perSecond) }),
  );
  await embedder.dispose();
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main();
