import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import {
  DEV_CREDENTIALS,
  prepareLocalDatabase,
  slowestStatusMs,
  spawnWorker,
  startEdge,
  waitForCompletion,
} from "./local-edge.js";

/**
 * Re-indexing a corpus in which 90% of the documents are unchanged, against indexing it the
 * first time, on one system with one worker, in the same run: the first index computes every
 * chunk; the re-index skips the unchanged documents (same id, same content) and computes only
 * the changed ones. Reported per run: wall time from the first byte of the submit to the job's
 * completion, documents per second, and the chunks computed.
 */

interface ReindexRun {
  firstSeconds: number;
  reindexSeconds: number;
  /** reindexSeconds / firstSeconds. */
  ratio: number;
  documents: number;
  firstChunks: number;
  reindexChunks: number;
  unchanged: number;
}

export interface ReindexReport {
  runs: ReindexRun[];
  slowestStatusMs: number;
  median: { ratio: number; firstDocsPerSecond: number; reindexDocsPerSecond: number };
}

const headers = {
  Authorization: `Bearer ${DEV_CREDENTIALS.apiKey}`,
  "Content-Type": "application/json",
};

interface JobOut {
  id: string;
  status: string;
  completedAt?: string;
  documentsUnchanged: number;
  chunks: { total: number; done: number; failed: number; cached: number };
}

/**
 * Submits and waits for the job. Its time is from the submit's start to the completion time
 * the edge records, so a status call held up on its way back does not count.
 */
async function timedJob(url: string, body: unknown): Promise<{ seconds: number; job: JobOut }> {
  const started = Date.now();
  const res = await fetch(`${url}/v1/jobs`, {
    method: "POST",
    headers,
    body: JSON.stringify(body),
  });
  if (res.status !== 202) throw new Error(`submit failed: ${res.status} ${await res.text()}`);
  const { id } = (await res.json()) as JobOut;
  const { completedAt, job } = await waitForCompletion<JobOut>(url, id, headers);
  return { seconds: (completedAt - started) / 1000, job };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

export async function reindexBench(opts: {
  passages: string[];
  runs: number;
  threads: number;
  batchSize: number;
}): Promise<ReindexReport> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "p2pa-reindex-"));
  await prepareLocalDatabase(dir);
  const edge = await startEdge({ port: 8791, persistTo: dir });
  const worker = spawnWorker(edge.url, DEV_CREDENTIALS.workerToken, [
    "--threads",
    String(opts.threads),
    "--batch-size",
    String(opts.batchSize),
  ]);
  const runs: ReindexRun[] = [];
  try {
    // A warm model, as for the other sections.
    for (let ok = false; !ok; await new Promise((r) => setTimeout(r, 200))) {
      const r = await fetch(`${edge.url}/v1/embeddings`, {
        method: "POST",
        headers,
        body: JSON.stringify({ model: "use-lite", input: Array(8).fill("warming up the model") }),
      });
      ok = r.ok;
    }
    for (let r = 0; r < opts.runs; r++) {
      // Each run's texts are its own (a nonce), so its first index computes every chunk.
      const nonce = `r${r}-${Date.now().toString(36)}`;
      const collection = `reindex-${nonce}`;
      const docs = opts.passages.map((text, i) => ({ id: `doc-${i}`, text: `${text} (${nonce})` }));
      // A first index computes everything: earlier runs' texts overlap this one's in all but
      // the nonce, so it does not take their vectors from the cache (its own are cached).
      const first = await timedJob(edge.url, { collection, cache: false, documents: docs });
      // One document in ten changed: a sentence added at its end.
      const changed = docs.map((d, i) =>
        i % 10 === 0 ? { ...d, text: `${d.text} This paragraph was revised.` } : d,
      );
      const again = await timedJob(edge.url, { collection, documents: changed });
      const run: ReindexRun = {
        firstSeconds: first.seconds,
        reindexSeconds: again.seconds,
        ratio: again.seconds / first.seconds,
        documents: docs.length,
        firstChunks: first.job.chunks.total,
        reindexChunks: again.job.chunks.total - again.job.chunks.cached,
        unchanged: again.job.documentsUnchanged,
      };
      runs.push(run);
      console.log(
        `re-index run ${r + 1}: first index ${run.firstSeconds.toFixed(1)} s (${run.firstChunks} chunks), re-index with 90% unchanged ${run.reindexSeconds.toFixed(1)} s (${run.reindexChunks} chunks computed, ${run.unchanged} documents unchanged); ratio ${run.ratio.toFixed(3)}`,
      );
    }
  } finally {
    worker.kill("SIGKILL");
    await edge.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  return {
    runs,
    slowestStatusMs: slowestStatusMs(),
    median: {
      ratio: median(runs.map((r) => r.ratio)),
      firstDocsPerSecond: median(runs.map((r) => r.documents / r.firstSeconds)),
      reindexDocsPerSecond: median(runs.map((r) => r.documents / r.reindexSeconds)),
    },
  };
}
