import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fnv1a } from "../../apps/edge/src/lib/crypto.js";
import { rng } from "./corpus.js";
import * as here from "./local-edge.js";
import { waitForCompletion } from "./local-edge.js";
import { type LocalPostgres, startPostgres } from "./postgres.js";
import { EdgeProfiler } from "./profile.js";
import { randomUnit, ScriptedDonor } from "./scripted-donor.js";

/**
 * The coordinator's own capacity: donors that answer every task at once with a valid vector
 * (protocol-level, no model), so only the edge's work per chunk counts. One Dispatcher shard,
 * verification off and no known-answer checks (they are trust's cost, measured elsewhere).
 * Per run, on a fresh local system:
 *   - a warm-up job of WARM_UP_DOCUMENTS, computed by donors that then leave;
 *   - the edge's first job of `documents` (other sentences), submitted and computed as the
 *     measured one is, and reported apart (`firstJob`);
 *   - submission: documents/s of one POST /v1/jobs of `documents` one-sentence documents,
 *     from the request's first byte to the 202, with no donor connected;
 *   - dispatch: the donors join, then chunks/s from the first task a donor received to the
 *     completion time the edge records;
 *   - bytes on the wire per chunk, edge to donor (task frames, acks) and donor to edge
 *     (results), as the donors counted them;
 *   - with donors waiting: a job of WAITING_DOCUMENTS documents submitted while they are
 *     connected, and how long from the request's first byte the first task took to reach one
 *     of them, and the 202 to come back.
 * `--profile` writes CPU profiles of the edge over the first run's submit (to the 202) and its
 * dispatch (from the 202) to bench-results/capacity-submit.cpuprofile and capacity.cpuprofile,
 * and prints where their time went.
 */

/** Documents of the warm-up job each run computes before the measured one. */
const WARM_UP_DOCUMENTS = 2000;
/** Documents of the job submitted to donors already waiting (a pipeline job's size). */
const WAITING_DOCUMENTS = 2000;

interface CapacityRun {
  documents: number;
  submitSeconds: number;
  documentsPerSecond: number;
  dispatchSeconds: number;
  chunksPerSecond: number;
  /**
   * CPU the edge's workerd runtime (its Workers, Durable Objects, D1 and the local vector
   * index) used, in µs per document submitted and per chunk dispatched: a figure that a busy
   * neighbour on a shared machine disturbs far less than the rates.
   */
  submitCpuPerDocument: number;
  dispatchCpuPerChunk: number;
  bytesPerChunkToDonor: number;
  bytesPerChunkFromDonor: number;
  /** Chunks per task the donors were sent (tasks are cut to each donor's pace). */
  chunksPerTask: number;
  /** Reading every chunk of the finished job back through the API (pages of 500), in seconds. */
  readSeconds: number;
  /** The same figures for the edge's first job of this size, run just before the measured one. */
  firstJob: FirstJob;
  /** A job submitted to donors already connected: ms from the request to its first task, to its 202. */
  waiting: { firstTaskMs: number; acceptedMs: number };
}

type FirstJob = Pick<
  CapacityRun,
  "documentsPerSecond" | "chunksPerSecond" | "submitCpuPerDocument" | "dispatchCpuPerChunk"
>;

/** Where the edge keeps metadata and vectors: D1 + the local index, or Postgres + pgvector. */
type Backend = "d1" | "postgres";

/** How the donors send results: binary float32 frames (p2pa-worker), or JSON (older workers). */
type ResultFrames = "binary" | "json";

interface CapacityFigures {
  runs: CapacityRun[];
  median: Omit<CapacityRun, "documents" | "submitSeconds" | "dispatchSeconds">;
}

export interface CapacityReport {
  donors: number;
  capacity: number;
  /** By how the donors sent results, measured in alternation in the same run. */
  frames: Record<ResultFrames, CapacityFigures>;
  /** A baseline checkout's edge in the same run (JSON donors), and this/baseline ratios. */
  baseline: {
    dir: string;
    figures: CapacityFigures;
    ratio: {
      chunksPerSecond: number;
      documentsPerSecond: number;
      /** baseline / this: above 1, this edge spends less CPU. */
      dispatchCpu: number;
      submitCpu: number;
    };
  } | null;
}

const WORDS =
  "river bridge library garden museum festival harbour market school station orchard tower valley council".split(
    " ",
  );

/** `n` distinct one-sentence documents (no two share a text, so nothing is served from cache). */
export function sentences(n: number, seed: number): string[] {
  const r = rng(seed);
  const pick = () => WORDS[Math.floor(r() * WORDS.length)] as string;
  return Array.from(
    { length: n },
    (_, i) =>
      `Note ${seed}-${i}: the ${pick()} near the ${pick()} opened after the ${pick()} closed.`,
  );
}

export const median = (xs: number[]) =>
  [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

/** The runs and the median of each figure over them. */
function figures(rs: CapacityRun[]): CapacityFigures {
  const m = (k: Exclude<keyof CapacityRun, "firstJob" | "waiting">) => median(rs.map((r) => r[k]));
  const f = (k: keyof FirstJob) => median(rs.map((r) => r.firstJob[k]));
  return {
    runs: rs,
    median: {
      documentsPerSecond: m("documentsPerSecond"),
      chunksPerSecond: m("chunksPerSecond"),
      submitCpuPerDocument: m("submitCpuPerDocument"),
      dispatchCpuPerChunk: m("dispatchCpuPerChunk"),
      bytesPerChunkToDonor: m("bytesPerChunkToDonor"),
      bytesPerChunkFromDonor: m("bytesPerChunkFromDonor"),
      chunksPerTask: m("chunksPerTask"),
      readSeconds: m("readSeconds"),
      firstJob: {
        documentsPerSecond: f("documentsPerSecond"),
        chunksPerSecond: f("chunksPerSecond"),
        submitCpuPerDocument: f("submitCpuPerDocument"),
        dispatchCpuPerChunk: f("dispatchCpuPerChunk"),
      },
      waiting: {
        firstTaskMs: median(rs.map((r) => r.waiting.firstTaskMs)),
        acceptedMs: median(rs.map((r) => r.waiting.acceptedMs)),
      },
    },
  };
}

/** What a checkout's harness offers: this one's, or a baseline checkout's (`--baseline-dir`). */
export type Harness = Pick<typeof here, "prepareLocalDatabase" | "startEdge" | "DEV_CREDENTIALS">;

/** A baseline checkout's harness (built, with node_modules), to run its edge in the same run. */
export const baselineHarness = async (dir: string) =>
  (await import(path.resolve(dir, "scripts/lib/local-edge.ts"))) as Harness;

async function oneRun(
  harness: Harness,
  documents: number,
  donors: number,
  capacity: number,
  seed: number,
  profile: string | null,
  frames: ResultFrames,
  backend: Backend = "d1",
) {
  const { DEV_CREDENTIALS } = harness;
  const headers = {
    Authorization: `Bearer ${DEV_CREDENTIALS.apiKey}`,
    "Content-Type": "application/json",
  };
  const dir = mkdtempSync(path.join(os.tmpdir(), "p2pa-capacity-"));
  const postgres: LocalPostgres | undefined =
    backend === "postgres" ? await startPostgres() : undefined;
  if (postgres) await here.prepareLocalDatabase(dir, [], postgres);
  else await harness.prepareLocalDatabase(dir);
  const edge = await harness.startEdge({
    port: await here.freePort(),
    persistTo: dir,
    vars: { DISPATCH_SHARDS: "1", VERIFY_CANARY_RATE: "0", VERIFICATION: "off" },
    ...(postgres ? { postgres } : {}),
    // The profiler reaches the edge through the DevTools inspector, off otherwise.
    ...(profile ? { inspect: true } : {}),
  });
  // Every donor answers every item with the same valid unit vector, encoded once.
  const answer = randomUnit();
  const donorPool = () =>
    Array.from(
      { length: donors },
      () =>
        new ScriptedDonor(
          edge.url,
          DEV_CREDENTIALS.workerToken,
          async (t) => t.items.map(() => answer),
          capacity,
          false,
          frames === "binary",
        ),
    );
  const runtime = await here.edgeRuntimePid(edge);
  /**
   * One job of `documents` sentences from `jobSeed`: its submit (request to 202, no donor
   * connected), then its dispatch to donors that join once it is in and leave when it is done.
   */
  const job = async (jobSeed: number, profile: string | null) => {
    const body = JSON.stringify({
      documents: sentences(documents, jobSeed).map((text) => ({ text })),
      verification: "off",
    });
    // A profile of the submit, when asked for, is taken apart from the dispatch's.
    const submitProfiler =
      profile && edge.inspectorPort ? await EdgeProfiler.start(edge.inspectorPort) : null;
    const cpu0 = await here.cpuSeconds(runtime);
    const t0 = Date.now();
    const res = await fetch(`${edge.url}/v1/jobs`, { method: "POST", headers, body });
    const submitted = Date.now();
    const cpu1 = await here.cpuSeconds(runtime);
    if (submitProfiler && profile) {
      const { text, busyMs } = await submitProfiler.stop(
        profile.replace(/(\.cpuprofile)?$/, "-submit$1"),
      );
      console.log(`the submit of ${documents} documents:\n${text}`);
      console.log(
        `the edge's isolate: ${((1000 * busyMs) / documents).toFixed(0)} µs of CPU a document`,
      );
    }
    if (res.status !== 202) throw new Error(`submit failed: ${res.status} ${await res.text()}`);
    const { id, chunks } = (await res.json()) as { id: string; chunks: { total: number } };
    const pool = donorPool();
    try {
      const profiler =
        profile && edge.inspectorPort ? await EdgeProfiler.start(edge.inspectorPort) : null;
      const cpu2 = await here.cpuSeconds(runtime);
      await Promise.all(pool.map((d) => d.connect()));
      const { completedAt } = await waitForCompletion(edge.url, id, headers);
      const cpu3 = await here.cpuSeconds(runtime);
      if (profiler && profile) {
        const { text, busyMs } = await profiler.stop(profile);
        console.log(text);
        // What the shard's own isolate spent a chunk (D1's local simulation runs in another).
        console.log(
          `the edge's isolate: ${((1000 * busyMs) / chunks.total).toFixed(0)} µs of CPU a chunk`,
        );
      }
      const firstTask = Math.min(...pool.map((d) => d.firstTaskAt ?? Number.POSITIVE_INFINITY));
      const answered = pool.reduce((n, d) => n + d.chunks, 0);
      if (answered < chunks.total)
        throw new Error(`donors answered ${answered} chunks of ${chunks.total}`);
      const dispatchSeconds = (completedAt - firstTask) / 1000;
      return {
        id,
        chunks: chunks.total,
        figures: {
          documents,
          submitSeconds: (submitted - t0) / 1000,
          documentsPerSecond: documents / ((submitted - t0) / 1000),
          dispatchSeconds,
          chunksPerSecond: chunks.total / dispatchSeconds,
          submitCpuPerDocument: (1e6 * (cpu1 - cpu0)) / documents,
          dispatchCpuPerChunk: (1e6 * (cpu3 - cpu2)) / chunks.total,
          bytesPerChunkToDonor: pool.reduce((n, d) => n + d.bytesIn, 0) / chunks.total,
          bytesPerChunkFromDonor: pool.reduce((n, d) => n + d.bytesOut, 0) / chunks.total,
          chunksPerTask: chunks.total / pool.reduce((n, d) => n + d.tasks, 0),
        },
      };
    } finally {
      await Promise.all(pool.map((d) => d.close()));
    }
  };
  /**
   * A job of WAITING_DOCUMENTS sentences submitted while the donors are connected and idle:
   * how long the first task took to reach one of them, and the 202 to come back, from the
   * request's first byte.
   */
  const waitingJob = async (jobSeed: number) => {
    const pool = donorPool();
    try {
      await Promise.all(pool.map((d) => d.connect()));
      const body = JSON.stringify({
        documents: sentences(WAITING_DOCUMENTS, jobSeed).map((text) => ({ text })),
        verification: "off",
      });
      const t0 = Date.now();
      const res = await fetch(`${edge.url}/v1/jobs`, { method: "POST", headers, body });
      const acceptedMs = Date.now() - t0;
      if (res.status !== 202) throw new Error(`submit failed: ${res.status} ${await res.text()}`);
      const { id } = (await res.json()) as { id: string };
      await waitForCompletion(edge.url, id, headers);
      const first = Math.min(...pool.map((d) => d.firstTaskAt ?? Number.POSITIVE_INFINITY));
      return { firstTaskMs: first - t0, acceptedMs };
    } finally {
      await Promise.all(pool.map((d) => d.close()));
    }
  };
  try {
    // Both paths warmed first, as on an edge that has run before: a fresh edge's first job pays
    // once for compiling them, building the language detector's tables, and creating the
    // vector index's object and D1's statements. A warm-up job, computed to the end by donors
    // that then leave.
    const warm = await fetch(`${edge.url}/v1/jobs`, {
      method: "POST",
      headers,
      body: JSON.stringify({
        documents: sentences(WARM_UP_DOCUMENTS, seed + 1).map((text) => ({
          text: `Warm-up: ${text}`,
        })),
        verification: "off",
      }),
    });
    if (warm.status !== 202) throw new Error(`warm-up failed: ${warm.status} ${await warm.text()}`);
    const { id: warmId } = (await warm.json()) as { id: string };
    const warmPool = donorPool();
    await Promise.all(warmPool.map((d) => d.connect()));
    await waitForCompletion(edge.url, warmId, headers);
    await Promise.all(warmPool.map((d) => d.close()));
    // Then the edge's first job of the measured size (other sentences of the same kind), and
    // the measured job: the first grows the runtime's memory and its databases' files to the
    // size such a job takes, which an edge that has been running has done already. Both are
    // reported.
    const first = await job(seed + 2, null);
    const measured = await job(seed, profile);
    const waiting = await waitingJob(seed + 3);
    const r0 = Date.now();
    let read = 0;
    for (let cursor: string | null = null; read === 0 || cursor; ) {
      const res = await fetch(
        `${edge.url}/v1/jobs/${measured.id}/chunks?limit=500${cursor ? `&cursor=${cursor}` : ""}`,
        { headers },
      );
      const page = (await res.json()) as { data: unknown[]; nextCursor: string | null };
      read += page.data.length;
      cursor = page.nextCursor;
      if (page.data.length === 0) break;
    }
    if (read !== measured.chunks) throw new Error(`read ${read} chunks of ${measured.chunks}`);
    const run: CapacityRun = {
      ...measured.figures,
      readSeconds: (Date.now() - r0) / 1000,
      firstJob: {
        documentsPerSecond: first.figures.documentsPerSecond,
        chunksPerSecond: first.figures.chunksPerSecond,
        submitCpuPerDocument: first.figures.submitCpuPerDocument,
        dispatchCpuPerChunk: first.figures.dispatchCpuPerChunk,
      },
      waiting,
    };
    return run;
  } finally {
    await edge.stop();
    await postgres?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function capacityBench(opts: {
  documents: number;
  donors: number;
  capacity: number;
  runs: number;
  /** Write a CPU profile of the edge during the first run to this file. */
  profile?: string;
  /** Another checkout (built, with node_modules) whose edge runs the same jobs, for ratios. */
  baselineDir?: string;
}): Promise<CapacityReport> {
  const runs: Record<ResultFrames, CapacityRun[]> = { binary: [], json: [] };
  const baselineRuns: CapacityRun[] = [];
  const baseline = opts.baselineDir ? await baselineHarness(opts.baselineDir) : null;
  const log = (r: number, what: string, run: CapacityRun) =>
    console.log(
      `capacity run ${r + 1}, ${what}: with donors waiting, a job of ${WAITING_DOCUMENTS}: first task after ${run.waiting.firstTaskMs} ms, 202 after ${run.waiting.acceptedMs} ms; submit ${run.documentsPerSecond.toFixed(0)} documents/s (${run.submitCpuPerDocument.toFixed(0)} µs CPU each), dispatch ${run.chunksPerSecond.toFixed(0)} chunks/s (${run.dispatchCpuPerChunk.toFixed(0)} µs CPU each), ${run.bytesPerChunkToDonor.toFixed(0)} B/chunk to donors, ${run.bytesPerChunkFromDonor.toFixed(0)} B/chunk from donors, ${run.chunksPerTask.toFixed(0)} chunks a task; the edge's first such job: submit ${run.firstJob.documentsPerSecond.toFixed(0)} documents/s (${run.firstJob.submitCpuPerDocument.toFixed(0)} µs), dispatch ${run.firstJob.chunksPerSecond.toFixed(0)} chunks/s (${run.firstJob.dispatchCpuPerChunk.toFixed(0)} µs)`,
    );
  const baselineRun = async (r: number) => {
    if (!baseline) return;
    // The baseline's donors offer binary frames, as the measured ones: an edge from before
    // them takes JSON instead.
    const run = await oneRun(
      baseline,
      opts.documents,
      opts.donors,
      opts.capacity,
      7000 + r,
      null,
      "binary",
    );
    log(r, "baseline edge", run);
    baselineRuns.push(run);
  };
  for (let r = 0; r < opts.runs; r++) {
    // By turns: the baseline first in every other run, so that neither edge always runs on a
    // machine the other has just warmed (or left busy).
    if (r % 2 === 1) await baselineRun(r);
    for (const frames of ["binary", "json"] as const) {
      const run = await oneRun(
        here,
        opts.documents,
        opts.donors,
        opts.capacity,
        7000 + r,
        r === 0 && frames === "binary" ? (opts.profile ?? null) : null,
        frames,
      );
      log(r, `${frames} results`, run);
      runs[frames].push(run);
    }
    if (r % 2 === 0) await baselineRun(r);
  }
  const mine = figures(runs.binary);
  const base = baselineRuns.length ? figures(baselineRuns) : null;
  return {
    donors: opts.donors,
    capacity: opts.capacity,
    frames: { binary: mine, json: figures(runs.json) },
    baseline:
      base && opts.baselineDir
        ? {
            dir: opts.baselineDir,
            figures: base,
            ratio: {
              chunksPerSecond: mine.median.chunksPerSecond / base.median.chunksPerSecond,
              documentsPerSecond: mine.median.documentsPerSecond / base.median.documentsPerSecond,
              dispatchCpu: base.median.dispatchCpuPerChunk / mine.median.dispatchCpuPerChunk,
              submitCpu: base.median.submitCpuPerDocument / mine.median.submitCpuPerDocument,
            },
          }
        : null,
  };
}

export interface BackendsReport {
  documents: number;
  /** Medians by backend, each over the same runs, interleaved. */
  backends: Record<Backend, CapacityFigures>;
  /** postgres / d1 for each median (above 1: Postgres is faster). */
  ratio: { documentsPerSecond: number; chunksPerSecond: number; readSpeed: number };
}

/**
 * The same job on both metadata backends in one run: D1 with the local vector index, and
 * Postgres (PGlite over the wire protocol, behind the WebSocket proxy) with pgvector. Each run
 * submits the same documents to a fresh system of each kind in turn, dispatches them to instant
 * donors, and reads every chunk back: what the metadata store and the index cost per chunk.
 */
export async function backendsBench(opts: {
  documents: number;
  donors: number;
  capacity: number;
  runs: number;
}): Promise<BackendsReport> {
  const runs: Record<Backend, CapacityRun[]> = { d1: [], postgres: [] };
  for (let r = 0; r < opts.runs; r++) {
    for (const backend of ["d1", "postgres"] as const) {
      const run = await oneRun(
        here,
        opts.documents,
        opts.donors,
        opts.capacity,
        9000 + r,
        null,
        "binary",
        backend,
      );
      console.log(
        `backends run ${r + 1}, ${backend}: submit ${run.documentsPerSecond.toFixed(0)} documents/s, dispatch ${run.chunksPerSecond.toFixed(0)} chunks/s, read every chunk ${(1000 * run.readSeconds).toFixed(0)} ms`,
      );
      runs[backend].push(run);
    }
  }
  const d1 = figures(runs.d1);
  const pg = figures(runs.postgres);
  return {
    documents: opts.documents,
    backends: { d1, postgres: pg },
    ratio: {
      documentsPerSecond: pg.median.documentsPerSecond / d1.median.documentsPerSecond,
      chunksPerSecond: pg.median.chunksPerSecond / d1.median.chunksPerSecond,
      readSpeed: d1.median.readSeconds / pg.median.readSeconds,
    },
  };
}

export interface ScalingReport {
  documents: number;
  /** Chunks/s of the same work on one shard and on two, per run. */
  oneShard: number[];
  twoShards: number[];
  /** What the second shard adds, as a share of the first: median(two) / median(one) - 1. */
  secondShardAdds: number;
  /** Chunks/s of the same work on two shards in two edges (workerd processes), per run. */
  twoApart: number[];
  /** What the second shard adds with a thread of its own: median(apart) / median(one) - 1. */
  secondShardApartAdds: number;
  /**
   * The edges' CPU a chunk dispatched (µs: their workerd runtimes' CPU from /proc over the
   * dispatch, over the chunks of both jobs), per run: on one shard, and on two in two edges.
   */
  oneShardCpu: number[];
  twoApartCpu: number[];
  /**
   * What a second shard adds where each has a core of its own (as in production, and as this
   * machine's two cores cannot show with donors beside them): the work a shard does with a
   * core, chunks per CPU-second, in two edges against one, median(oneCpu) / median(apartCpu).
   * 1.0 means the second shard's work costs what the first's does, so it adds as much.
   */
  secondShardPerCore: number;
}

/** A dispatch's rate and what it cost the edges' runtimes. */
interface ScalingRun {
  chunksPerSecond: number;
  /** µs of the edges' CPU a chunk. */
  cpuPerChunk: number;
}

/** Which of `n` shards owns `key` (a job id), as the edge places it (dispatch/shards.ts). */
const shardOf = (key: string, n: number) => fnv1a(key) % n;

/** The scaling runs' API headers (this checkout's development credentials). */
const scalingHeaders = {
  Authorization: `Bearer ${here.DEV_CREDENTIALS.apiKey}`,
  "Content-Type": "application/json",
};

/** A fresh local edge of `shards` shards for a scaling run, with its persistence folder. */
async function scalingEdge(shards: number) {
  const dir = mkdtempSync(path.join(os.tmpdir(), "p2pa-scaling-"));
  await here.prepareLocalDatabase(dir);
  const edge = await here.startEdge({
    port: await here.freePort(),
    persistTo: dir,
    vars: { DISPATCH_SHARDS: String(shards), VERIFY_CANARY_RATE: "0", VERIFICATION: "off" },
  });
  // Warmed as the capacity runs are (a job computed to the end by donors that then leave), so
  // that two edges, each with half the work, do not each pay a fresh runtime's first job.
  const warm = await submitSentences(
    edge.url,
    sentences(WARM_UP_DOCUMENTS, 7_777).map((text) => `Warm-up: ${text}`),
  );
  // A donor joins a shard at random: they keep joining until the job's shard has one.
  const warmPool: ScriptedDonor[] = [];
  const admin = { Authorization: `Bearer ${here.DEV_CREDENTIALS.adminKey}` };
  const covered = new Set<number>();
  while (covered.size < shards) {
    if (warmPool.length > 20 * shards) throw new Error("warm-up donors reached no shard");
    const d = instantDonor(edge.url, randomUnit(), 16);
    await d.connect();
    warmPool.push(d);
    const fleet = (await (await fetch(`${edge.url}/v1/workers`, { headers: admin })).json()) as {
      shards: { workers: { id: string }[] }[];
    };
    fleet.shards.forEach((sh, i) => {
      if (sh.workers.some((w) => w.id === d.workerId)) covered.add(i);
    });
  }
  await waitForCompletion(edge.url, warm.id, scalingHeaders);
  for (const d of warmPool) d.close();
  return {
    edge,
    runtime: await here.edgeRuntimePid(edge),
    async stop() {
      await edge.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Submits one job of these sentences (verification off) and returns its id and chunks. */
async function submitSentences(url: string, texts: string[]) {
  const res = await fetch(`${url}/v1/jobs`, {
    method: "POST",
    headers: scalingHeaders,
    body: JSON.stringify({ documents: texts.map((text) => ({ text })), verification: "off" }),
  });
  if (res.status !== 202) throw new Error(`submit failed: ${res.status} ${await res.text()}`);
  const job = (await res.json()) as { id: string; chunks: { total: number } };
  return { url, id: job.id, total: job.chunks.total };
}

/** A donor of binary results that answers every item with `answer` at once. */
const instantDonor = (url: string, answer: Float32Array, capacity: number) =>
  new ScriptedDonor(
    url,
    here.DEV_CREDENTIALS.workerToken,
    async (t) => t.items.map(() => answer),
    capacity,
    false,
    true,
  );

/** The CPU seconds these workerd runtimes have used, together. */
async function runtimesCpu(pids: number[]): Promise<number> {
  let total = 0;
  for (const pid of pids) total += await here.cpuSeconds(pid);
  return total;
}

/**
 * Chunks/s of `jobs` from the first task any donor of `pool` received to the last completion,
 * and the runtimes' CPU a chunk since `cpu0` (read before the donors connected).
 */
async function jobsRate(
  jobs: { url: string; id: string; total: number }[],
  pool: ScriptedDonor[],
  runtimes: number[],
  cpu0: number,
): Promise<ScalingRun> {
  const ends = await Promise.all(jobs.map((j) => waitForCompletion(j.url, j.id, scalingHeaders)));
  const cpu1 = await runtimesCpu(runtimes);
  const firstTask = Math.min(...pool.map((d) => d.firstTaskAt ?? Number.POSITIVE_INFINITY));
  const total = jobs.reduce((n, j) => n + j.total, 0);
  return {
    chunksPerSecond: total / ((Math.max(...ends.map((e) => e.completedAt)) - firstTask) / 1000),
    cpuPerChunk: ((cpu1 - cpu0) * 1e6) / total,
  };
}

/**
 * One run of the same work on `shards` shards: two jobs of half the documents each (with two
 * shards, one on each: a job that lands beside the other is deleted and sent again), and the
 * donors spread evenly over the shards (a donor that joins a full shard connects again).
 * Returns chunks/s from the first task to the last job's completion, and the edge's CPU a chunk.
 */
async function scalingRun(
  shards: number,
  documents: number,
  donors: number,
  capacity: number,
  seed: number,
): Promise<ScalingRun> {
  const admin = { Authorization: `Bearer ${here.DEV_CREDENTIALS.adminKey}` };
  const { edge, runtime, stop } = await scalingEdge(shards);
  const answer = randomUnit();
  const pool: ScriptedDonor[] = [];
  try {
    const texts = sentences(documents, seed);
    const half = Math.floor(documents / 2);
    const jobs: { url: string; id: string; total: number }[] = [];
    for (const [part, slice] of [texts.slice(0, half), texts.slice(half)].entries()) {
      for (let attempt = 0; ; attempt++) {
        const job = await submitSentences(edge.url, slice);
        const taken = jobs.map((j) => shardOf(j.id, shards));
        if (part === 0 || shards === 1 || !taken.includes(shardOf(job.id, shards))) {
          jobs.push(job);
          break;
        }
        await fetch(`${edge.url}/v1/jobs/${job.id}`, { method: "DELETE", headers: scalingHeaders });
        if (attempt > 20) throw new Error("could not place the second job on the other shard");
      }
    }
    const cpu0 = await runtimesCpu([runtime]);
    // Donors join a shard at random: one that lands on a full shard connects again.
    const perShard = Math.ceil(donors / shards);
    const placed = new Map<number, number>();
    for (let tries = 0; pool.length < donors; tries++) {
      if (tries > 20 * donors) throw new Error("could not spread the donors over the shards");
      const d = instantDonor(edge.url, answer, capacity);
      await d.connect();
      const fleet = (await (await fetch(`${edge.url}/v1/workers`, { headers: admin })).json()) as {
        shards: { workers: { id: string }[] }[];
      };
      const shard = fleet.shards.findIndex((s) => s.workers.some((w) => w.id === d.workerId));
      if (shard >= 0 && (placed.get(shard) ?? 0) < perShard) {
        placed.set(shard, (placed.get(shard) ?? 0) + 1);
        pool.push(d);
      } else d.close();
    }
    return await jobsRate(jobs, pool, [runtime], cpu0);
  } finally {
    for (const d of pool) d.close();
    await stop();
  }
}

/**
 * The same work on two shards that do not share a thread: two local edges (two workerd
 * processes), one shard each, each given one job of half the documents and half the donors.
 * Each edge has its own local D1 and vector index (a local D1 lives in one process), where a
 * deployment's shards share one D1 database and one Vectorize index, both services of their own.
 * Returns chunks/s of both jobs from the first task either edge sent to the later completion,
 * and the two runtimes' CPU a chunk.
 */
async function scalingRunApart(
  documents: number,
  donors: number,
  capacity: number,
  seed: number,
): Promise<ScalingRun> {
  const edges: Awaited<ReturnType<typeof scalingEdge>>[] = [];
  const answer = randomUnit();
  const pool: ScriptedDonor[] = [];
  try {
    for (let i = 0; i < 2; i++) edges.push(await scalingEdge(1));
    const urls = edges.map((e) => e.edge.url);
    const texts = sentences(documents, seed);
    const half = Math.floor(documents / 2);
    const jobs = await Promise.all(
      [texts.slice(0, half), texts.slice(half)].map((slice, i) =>
        submitSentences(urls[i] as string, slice),
      ),
    );
    for (let i = 0; i < donors; i++)
      pool.push(instantDonor(urls[i % 2] as string, answer, capacity));
    const runtimes = edges.map((e) => e.runtime);
    const cpu0 = await runtimesCpu(runtimes);
    await Promise.all(pool.map((d) => d.connect()));
    return await jobsRate(jobs, pool, runtimes, cpu0);
  } finally {
    for (const d of pool) d.close();
    for (const e of edges) await e.stop();
  }
}

/**
 * How a second Dispatcher shard adds to the first: the same documents on one shard and on two,
 * runs alternating. Here every shard runs in one local workerd process on two cores shared with
 * the donors, so this measures what one machine gives; in production each shard is a Durable
 * Object of its own, placed by Cloudflare.
 */
export async function scalingBench(opts: {
  documents: number;
  donors: number;
  capacity: number;
  runs: number;
}): Promise<ScalingReport> {
  const oneShard: number[] = [];
  const twoShards: number[] = [];
  const twoApart: number[] = [];
  const oneShardCpu: number[] = [];
  const twoApartCpu: number[] = [];
  const line = (run: ScalingRun) =>
    `dispatch ${run.chunksPerSecond.toFixed(0)} chunks/s (${run.cpuPerChunk.toFixed(0)} µs of edge CPU each)`;
  for (let r = 0; r < opts.runs; r++) {
    for (const shards of [1, 2]) {
      const run = await scalingRun(shards, opts.documents, opts.donors, opts.capacity, 8000 + r);
      console.log(`scaling run ${r + 1}, ${shards} shard(s): ${line(run)}`);
      (shards === 1 ? oneShard : twoShards).push(run.chunksPerSecond);
      if (shards === 1) oneShardCpu.push(run.cpuPerChunk);
    }
    const apart = await scalingRunApart(opts.documents, opts.donors, opts.capacity, 8000 + r);
    console.log(`scaling run ${r + 1}, 2 shards in two edges: ${line(apart)}`);
    twoApart.push(apart.chunksPerSecond);
    twoApartCpu.push(apart.cpuPerChunk);
  }
  return {
    documents: opts.documents,
    oneShard,
    twoShards,
    secondShardAdds: median(twoShards) / median(oneShard) - 1,
    twoApart,
    secondShardApartAdds: median(twoApart) / median(oneShard) - 1,
    oneShardCpu,
    twoApartCpu,
    secondShardPerCore: median(oneShardCpu) / median(twoApartCpu),
  };
}

export interface GrowthReport {
  documents: number;
  batches: number;
  /** Documents/s of each batch, in order, on this checkout's edge (and the baseline's). */
  rates: number[];
  baselineRates: number[] | null;
  /** Medians of the first and the last `ends` batches, and last over first. */
  first: number;
  last: number;
  lastOverFirst: number;
  baseline: { first: number; last: number; lastOverFirst: number; thisOverBaseline: number } | null;
}

/** Documents/s of `batches` submits of `documents` sentences each, one after another, on one edge. */
async function growthRun(harness: Harness, documents: number, batches: number): Promise<number[]> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "p2pa-growth-"));
  await harness.prepareLocalDatabase(dir);
  const edge = await harness.startEdge({
    port: await here.freePort(),
    persistTo: dir,
    vars: { DISPATCH_SHARDS: "1", VERIFY_CANARY_RATE: "0", VERIFICATION: "off" },
  });
  const rates: number[] = [];
  try {
    await submitSentences(edge.url, sentences(100, 999_999));
    for (let b = 0; b < batches; b++) {
      const texts = sentences(documents, 7_000 + b);
      const t0 = performance.now();
      await submitSentences(edge.url, texts);
      rates.push(documents / ((performance.now() - t0) / 1000));
    }
    return rates;
  } finally {
    await edge.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Submission as the store fills: `batches` jobs of `documents` one-sentence documents sent one
 * after another to one edge (no donors: every job stays queued, every document stays), so the
 * last batches land on a store already holding (batches - 1) x documents. A submit whose cost
 * grows with what is kept shows it here, where a fresh store hides it.
 */
export async function growthBench(opts: {
  documents: number;
  batches: number;
  baselineDir?: string;
}): Promise<GrowthReport> {
  const ends = Math.min(3, Math.floor(opts.batches / 2));
  const firstLast = (rates: number[]) => {
    const first = median(rates.slice(0, ends));
    const last = median(rates.slice(-ends));
    return { first, last, lastOverFirst: last / first };
  };
  const rates = await growthRun(here, opts.documents, opts.batches);
  console.log(`growth, this edge: ${rates.map((r) => r.toFixed(0)).join(" ")} documents/s`);
  const mine = firstLast(rates);
  let baselineRates: number[] | null = null;
  if (opts.baselineDir) {
    baselineRates = await growthRun(
      await baselineHarness(opts.baselineDir),
      opts.documents,
      opts.batches,
    );
    console.log(
      `growth, baseline edge: ${baselineRates.map((r) => r.toFixed(0)).join(" ")} documents/s`,
    );
  }
  const b = baselineRates ? firstLast(baselineRates) : null;
  return {
    documents: opts.documents,
    batches: opts.batches,
    rates,
    baselineRates,
    ...mine,
    baseline: b ? { ...b, thisOverBaseline: mine.last / b.last } : null,
  };
}
