import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { baselineHarness, type Harness, median, sentences } from "./capacity-bench.js";
import * as here from "./local-edge.js";
import { waitForCompletion } from "./local-edge.js";
import { randomUnit, ScriptedDonor } from "./scripted-donor.js";

/**
 * The embedding cache on the coordinator's path, with protocol-level donors (as `capacity`):
 *   - confirmed: a job every task of which two donors of two credentials compute and agree on
 *     (`verification: "always"`), so every chunk's vector is confirmed, and cached as it is
 *     stored: chunks/s from the first task a donor received to completion, and the edge's CPU
 *     a chunk;
 *   - cached: the same texts again as a new job, every chunk a cache hit, whose submit takes
 *     the vectors from the cache and writes them to the index before its 202: documents/s
 *     from the request's first byte to the 202, and the edge's CPU a document.
 * Each run is a fresh local system that computes a warm-up pair of such jobs first. With a
 * baseline checkout (`--baseline-dir`), its edge runs the same jobs in the same run, by turns.
 */

/** The second donor credential every run's database is given (the first is the dev token). */
const SECOND_DONOR = "p2pa_bench_cache_donor";
/** Documents of each warm-up job. */
const WARM_UP_DOCUMENTS = 1000;

interface CacheRun {
  /** The job whose results are all confirmed, and so cached. */
  confirmed: { chunksPerSecond: number; cpuPerChunk: number };
  /** The same texts again: every chunk from the cache. */
  cached: { documentsPerSecond: number; cpuPerDocument: number; hits: number };
}

export interface CacheReport {
  documents: number;
  donors: number;
  runs: CacheRun[];
  median: CacheRun;
  baseline: { dir: string; runs: CacheRun[]; median: CacheRun } | null;
}

/** One run on a fresh local system of `harness`'s checkout. */
async function cacheRun(
  harness: Harness,
  opts: { documents: number; donors: number; capacity: number; seed: number },
): Promise<CacheRun> {
  const { documents, donors, capacity, seed } = opts;
  const { DEV_CREDENTIALS } = harness;
  const headers = {
    Authorization: `Bearer ${DEV_CREDENTIALS.apiKey}`,
    "Content-Type": "application/json",
  };
  const dir = mkdtempSync(path.join(os.tmpdir(), "p2pa-cache-"));
  await harness.prepareLocalDatabase(dir, [SECOND_DONOR]);
  const edge = await harness.startEdge({
    port: await here.freePort(),
    persistTo: dir,
    vars: { DISPATCH_SHARDS: "1", VERIFY_CANARY_RATE: "0" },
  });
  const answer = randomUnit();
  const runtime = await here.edgeRuntimePid(edge);
  const submit = async (texts: string[]) => {
    const body = JSON.stringify({
      documents: texts.map((text) => ({ text })),
      verification: "always",
    });
    const cpu0 = await here.cpuSeconds(runtime);
    const t0 = Date.now();
    const res = await fetch(`${edge.url}/v1/jobs`, { method: "POST", headers, body });
    const ms = Date.now() - t0;
    const cpu = (await here.cpuSeconds(runtime)) - cpu0;
    if (res.status !== 202) throw new Error(`submit failed: ${res.status} ${await res.text()}`);
    const job = (await res.json()) as { id: string; chunks: { total: number; cached: number } };
    return { job, ms, cpu };
  };
  /** A job of `texts` computed by donors of both credentials that join once it is in. */
  const confirmed = async (texts: string[]) => {
    const { job } = await submit(texts);
    const pool = Array.from(
      { length: donors },
      (_, i) =>
        new ScriptedDonor(
          edge.url,
          i % 2 === 0 ? DEV_CREDENTIALS.workerToken : SECOND_DONOR,
          async (t) => t.items.map(() => answer),
          capacity,
          false,
          true,
        ),
    );
    try {
      const cpu0 = await here.cpuSeconds(runtime);
      await Promise.all(pool.map((d) => d.connect()));
      const { completedAt } = await waitForCompletion(edge.url, job.id, headers);
      const cpu = (await here.cpuSeconds(runtime)) - cpu0;
      const first = Math.min(...pool.map((d) => d.firstTaskAt ?? Number.POSITIVE_INFINITY));
      return {
        chunksPerSecond: job.chunks.total / ((completedAt - first) / 1000),
        cpuPerChunk: (1e6 * cpu) / job.chunks.total,
      };
    } finally {
      await Promise.all(pool.map((d) => d.close()));
    }
  };
  const cached = async (texts: string[]) => {
    const { job, ms, cpu } = await submit(texts);
    return {
      documentsPerSecond: texts.length / (ms / 1000),
      cpuPerDocument: (1e6 * cpu) / texts.length,
      hits: job.chunks.cached,
    };
  };
  try {
    const warm = sentences(WARM_UP_DOCUMENTS, seed + 1).map((t) => `Warm-up: ${t}`);
    await confirmed(warm);
    await cached(warm);
    const texts = sentences(documents, seed);
    const run = { confirmed: await confirmed(texts), cached: await cached(texts) };
    if (run.cached.hits !== documents)
      throw new Error(`the second job took ${run.cached.hits} of ${documents} from the cache`);
    return run;
  } finally {
    await edge.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

const medianRun = (rs: CacheRun[]): CacheRun => ({
  confirmed: {
    chunksPerSecond: median(rs.map((r) => r.confirmed.chunksPerSecond)),
    cpuPerChunk: median(rs.map((r) => r.confirmed.cpuPerChunk)),
  },
  cached: {
    documentsPerSecond: median(rs.map((r) => r.cached.documentsPerSecond)),
    cpuPerDocument: median(rs.map((r) => r.cached.cpuPerDocument)),
    hits: median(rs.map((r) => r.cached.hits)),
  },
});

export function describeCacheRun(r: CacheRun): string {
  return `confirmed job ${r.confirmed.chunksPerSecond.toFixed(0)} chunks/s (${r.confirmed.cpuPerChunk.toFixed(0)} µs of edge CPU a chunk), the same texts from the cache ${r.cached.documentsPerSecond.toFixed(0)} documents/s (${r.cached.cpuPerDocument.toFixed(0)} µs a document)`;
}

export async function cacheBench(opts: {
  documents: number;
  donors: number;
  capacity: number;
  runs: number;
  baselineDir?: string;
}): Promise<CacheReport> {
  const baseline = opts.baselineDir ? await baselineHarness(opts.baselineDir) : null;
  const mine: CacheRun[] = [];
  const base: CacheRun[] = [];
  for (let r = 0; r < opts.runs; r++) {
    // By turns, each side first in every other run.
    const order = baseline && r % 2 === 1 ? ["baseline", "this"] : ["this", "baseline"];
    for (const side of order) {
      const harness = side === "this" ? here : baseline;
      if (!harness) continue;
      const run = await cacheRun(harness, { ...opts, seed: 8000 + r });
      console.log(`cache run ${r + 1}, ${side} edge: ${describeCacheRun(run)}`);
      (side === "this" ? mine : base).push(run);
    }
  }
  return {
    documents: opts.documents,
    donors: opts.donors,
    runs: mine,
    median: medianRun(mine),
    baseline:
      opts.baselineDir && base.length
        ? { dir: opts.baselineDir, runs: base, median: medianRun(base) }
        : null,
  };
}
