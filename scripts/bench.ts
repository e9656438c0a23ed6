/**
 * `npm run bench`: the pipeline's throughput against the model alone, on one corpus.
 *   (a) the default model called directly in-process (same batch size, threads and sessions as
 *       the worker: `--sessions`, default the worker's own choice);
 *   (b) the same chunks through the local edge and one p2pa-worker, submit to `completed`.
 * Prints chunks/s for each, the ratio b/a (median of runs; each (b) against the mean of the (a)
 * runs before and after it), and writes bench-results/bench.json.
 * `--submit ndjson` sends (b)'s documents as an NDJSON stream, whose first batches reach the
 * worker while the rest is still being taken (figures in bench[.sections].ndjson.json).
 *
 * Then the coordinator's capacity (scripts/lib/capacity-bench.ts): chunks/s one Dispatcher shard moves
 * with donors that answer at once, documents/s submitted, and bytes on the wire per chunk; and
 * submission as the store fills (`--growth-batches` jobs one after another on one edge).
 *
 * Then the embedding cache on the coordinator's path (scripts/lib/cache-bench.ts): a job whose
 * every result two donors confirm, so every vector is cached as it is stored, and the same
 * texts again, every chunk a cache hit (`--baseline-dir`: against a baseline checkout's edge).
 *
 * Then the cost of verification: the same corpus through the edge and two workers of two
 * different tokens, once with verification off and twice with the default policy (auto) on
 * one system: a first job while both donors are new (every result confirmed by the other),
 * and a second once they have earned trust (spot checks only).
 *
 * Then what data protection costs (text sealed at rest, audit, scopes, limits): submit and
 * read of the corpus against a baseline checkout's edge (`--baseline-dir`), in one run.
 *
 * Then search (scripts/lib/search-bench.ts): latency over `--vectors` stored vectors against
 * one embeddings call, the index's recall@10 against exact search, and recall@1/@5 of the
 * vector, keyword and hybrid modes on paraphrase and exact-term queries.
 *
 * Then re-indexing (scripts/lib/reindex-bench.ts): the corpus submitted again with 90% of its
 * documents unchanged, against its first index, on one system in the same run.
 */
import { type ChildProcess, execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { createP2paClient } from "@p2pa/shared/client";
import {
  benchEmbedder,
  defaultSessions,
  loadModelPool,
} from "../apps/worker-node/src/model/index.js";
import { cacheBench, describeCacheRun } from "./lib/cache-bench.js";
import { backendsBench, capacityBench, growthBench, scalingBench } from "./lib/capacity-bench.js";
import { BENCH_CHUNKING, useLiteChunker } from "./lib/chunking.js";
import { generatedPassages } from "./lib/corpus.js";
import {
  type CpuGroup,
  cpuSnapshot,
  cpuSplit,
  isWithin,
  type ProcessCpu,
} from "./lib/cpu-accounting.js";
import { indexClientBench } from "./lib/index-client-bench.js";
import {
  DEV_CREDENTIALS,
  edgeRuntimePid,
  freePort,
  type LocalEdge,
  prepareLocalDatabase,
  ROOT,
  spawnWorker,
  startEdge,
} from "./lib/local-edge.js";
import { reindexBench } from "./lib/reindex-bench.js";
import { encryptionCost } from "./lib/seal-cost.js";
import { searchBench } from "./lib/search-bench.js";

const ALL_SECTIONS = [
  "pipeline",
  "capacity",
  "growth",
  "backends",
  "scaling",
  "cache",
  "verification",
  "encryption",
  "search",
  "reindex",
  "index-client",
];
const { values } = parseArgs({
  options: {
    runs: { type: "string", default: "3" },
    chunks: { type: "string", default: "2000" },
    // Where the pipeline section runs its parts: "shared" (the edge, the worker and (a) on all
    // the machine's cores, as `npm start` runs them) or "split" (the donor's model, in (a) and in
    // the worker, on the first core, and the edge and the client on the others, as a donor's
    // machine and the edge are apart once deployed; Linux, at least two cores).
    placement: { type: "string", default: "shared" },
    threads: { type: "string" },
    // Sessions of the model side by side, in (a) and in the worker (default: the worker's).
    sessions: { type: "string" },
    "batch-size": { type: "string", default: "32" },
    "verify-runs": { type: "string", default: "1" },
    only: { type: "string", default: ALL_SECTIONS.join(",") },
    vectors: { type: "string", default: "100000" },
    "search-queries": { type: "string", default: "200" },
    // The coordinator's capacity: one-sentence documents in one job, instant donors.
    "capacity-documents": { type: "string", default: "10000" },
    "capacity-donors": { type: "string", default: "4" },
    "capacity-window": { type: "string", default: "16" },
    // Submission as the store fills: this many batches of capacity-documents, one edge.
    "growth-batches": { type: "string", default: "30" },
    // The same job on D1 and on Postgres: documents per run.
    "backend-documents": { type: "string", default: "2000" },
    profile: { type: "boolean", default: false },
    // How the pipeline section submits: one JSON request (the job is taken whole before any
    // task goes out), or an NDJSON stream (batches of 500 documents, dispatched as they come).
    submit: { type: "string", default: "json" },
    // Another checkout (built, with node_modules) to compare data protection's cost against.
    "baseline-dir": { type: "string" },
  },
});
const runs = Number(values.runs);
if (values.submit !== "json" && values.submit !== "ndjson")
  throw new Error(`--submit is json or ndjson, not ${values.submit}`);
const submitAs = values.submit;
const sections = new Set(values.only.split(","));
if (values.placement !== "shared" && values.placement !== "split")
  throw new Error(`--placement is shared or split, not ${values.placement}`);
const placement = values.placement;
const machineCores = os.availableParallelism();
if (placement === "split" && machineCores < 2) throw new Error("--placement split needs two cores");
/** The CPUs the donor's model runs on, and the rest's, where the parts are apart. */
const donorCpus = placement === "split" ? "0" : undefined;
const edgeCpus =
  placement !== "split" ? undefined : machineCores === 2 ? "1" : `1-${machineCores - 1}`;
const threads = Number(values.threads ?? (placement === "split" ? 1 : machineCores));

/**
 * Keeps this process, every thread it has and those they start, on `cpus` (taskset's list):
 * (a)'s model on the donor's core, the client's waiting beside the edge. Nothing where the
 * parts share the machine.
 */
function pinSelf(cpus: string | undefined) {
  if (cpus)
    execFileSync("taskset", ["--all-tasks", "--cpu-list", "--pid", cpus, String(process.pid)]);
}
const sessions = values.sessions === undefined ? undefined : Number(values.sessions);
/** The worker's flags for the threads and sessions (a) runs with. */
const modelFlags = [
  "--threads",
  String(threads),
  ...(sessions === undefined ? [] : ["--sessions", String(sessions)]),
];
const batchSize = Number(values["batch-size"]);
const cacheDir = path.join(ROOT, ".cache", "models");

// Chunk exactly as the edge does for use-lite (token window included), so (a) and (b)
// embed the same texts.
const chunking = BENCH_CHUNKING;
const { chunk } = useLiteChunker();
/** Documents as submitted and the chunks the edge cuts them into (what (a) embeds). */
interface Corpus {
  name: string;
  documents: string[];
  texts: string[];
}
/**
 * The two corpora of the pipeline section, drawn from the passage generator from `firstSeed`
 * on: long chunks (passages of 100 to 200 words), and one sentence a document (where a task's
 * fixed costs show most), no two of them the same.
 */
function corpora(firstSeed: number): { passages: string[]; long: Corpus; short: Corpus } {
  const passages: string[] = [];
  const texts: string[] = [];
  for (let seed = firstSeed; texts.length < Number(values.chunks); seed++) {
    for (const p of generatedPassages(100, 200, 800, seed)) {
      passages.push(p);
      texts.push(...chunk(p));
    }
  }
  // Each sentence once: the edge computes a text repeated within a job once, where (a) would
  // embed every repeat (the generator repeats about one sentence in twelve).
  const sentences = [
    ...new Set(passages.flatMap((p) => p.split(/(?<=[.!?])\s+/)).filter((x) => x.length > 0)),
  ].slice(0, Number(values.chunks));
  return {
    passages,
    long: { name: "long chunks", documents: passages, texts },
    short: {
      name: "one sentence a document",
      documents: sentences,
      texts: sentences.flatMap((x) => chunk(x)),
    },
  };
}
const { passages, long, short } = corpora(2026);
/**
 * Texts of the same kind and number, none the same as the corpus's: the first job of each
 * fresh edge in (b), so the one measured runs on an edge that has taken a job of its size (a
 * fresh edge's first large submit compiles as it goes and takes about twice as long).
 */
const firstJobs = corpora(3026);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

/**
 * (a) once: chunks/s, and the CPU seconds this process (the model's threads) used for them. On
 * the donor's core where the parts are apart; this process then goes back beside the edge.
 */
async function direct(corpus: Corpus): Promise<{ perSecond: number; coreSeconds: number }> {
  pinSelf(donorCpus);
  const embedder = await loadModelPool("use-lite", {
    cacheDir,
    threads,
    ...(sessions === undefined ? {} : { sessions }),
  });
  // Warm-up: every session once.
  await Promise.all(
    Array.from({ length: embedder.parallelism }, () =>
      embedder.embed(corpus.texts.slice(0, batchSize)),
    ),
  );
  const cpu = process.cpuUsage();
  const { perSecond } = await benchEmbedder(embedder, corpus.texts, batchSize);
  const used = process.cpuUsage(cpu);
  await embedder.dispose();
  pinSelf(edgeCpus);
  return { perSecond, coreSeconds: (used.user + used.system) / 1e6 };
}

const SECOND_DONOR = "p2pa_bench_second_donor";
const headers = {
  Authorization: `Bearer ${DEV_CREDENTIALS.apiKey}`,
  "Content-Type": "application/json",
};

/**
 * Submits the corpus as one job and waits for it: chunks/s from submit to the completion time
 * the edge records, and how long the submit itself took (request to 202: chunking and storing,
 * before any task can go out). It waits on the job's event stream, as a client watching it live
 * does (one connection the edge pushes to, where polling would cost both sides CPU on the
 * cores the model runs on).
 */
async function runJob(
  url: string,
  verification: "auto" | "off",
  corpus: Corpus = long,
): Promise<{ chunksPerSecond: number; submitMs: number }> {
  const documents = corpus.documents.map((text) => ({ text }));
  const t0 = Date.now();
  const res = await fetch(
    `${url}/v1/jobs`,
    submitAs === "json"
      ? { method: "POST", headers, body: JSON.stringify({ documents, chunking, verification }) }
      : {
          method: "POST",
          headers: { ...headers, "Content-Type": "application/x-ndjson" },
          body: [{ job: { chunking, verification } }, ...documents]
            .map((line) => JSON.stringify(line))
            .join("\n"),
        },
  );
  if (res.status !== 202) throw new Error(`submit failed: ${res.status} ${await res.text()}`);
  const { id, chunks } = (await res.json()) as { id: string; chunks: { total: number } };
  const submitMs = Date.now() - t0;
  if (chunks.total !== corpus.texts.length)
    throw new Error(`edge made ${chunks.total} chunks, expected ${corpus.texts.length}`);
  const end = await createP2paClient({ server: url, key: DEV_CREDENTIALS.apiKey }).watch(id, {})
    .done;
  if (end.status !== "completed") throw new Error(`job ended ${end.status}`);
  return {
    chunksPerSecond: corpus.texts.length / ((Date.parse(end.completedAt ?? "") - t0) / 1000),
    submitMs,
  };
}

/** Task results the edge took, by outcome (stored, accepted = held for confirmation). */
async function resultCounts(url: string): Promise<Record<string, number>> {
  const text = await (
    await fetch(`${url}/v1/metrics`, {
      headers: { Authorization: `Bearer ${DEV_CREDENTIALS.adminKey}` },
    })
  ).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^p2pa_results_total\{kind="(\w+)"\} (\d+)$/gm))
    out[m[1] as string] = Number(m[2]);
  return out;
}

/**
 * Verification's cost: two workers (two donors, `threads / 2` threads each) on one system;
 * off, then auto with new donors, then auto with donors that earned trust in that first job.
 */
async function verificationCost() {
  const out: Record<string, { chunksPerSecond: number; resultsPerTask: number }> = {};
  for (const mode of ["off", "auto"] as const) {
    const dir = mkdtempSync(path.join(os.tmpdir(), "p2pa-bench-"));
    await prepareLocalDatabase(dir, [SECOND_DONOR]);
    const edge = await startEdge({ port: 8790, persistTo: dir });
    const each = ["--threads", String(Math.max(1, threads / 2)), "--batch-size", String(batchSize)];
    const workers = [
      spawnWorker(edge.url, DEV_CREDENTIALS.workerToken, each),
      spawnWorker(edge.url, SECOND_DONOR, each),
    ];
    try {
      await warmUp(edge.url);
      const jobs = mode === "off" ? ["off"] : ["auto, new donors", "auto, trusted donors"];
      for (const label of jobs) {
        const before = await resultCounts(edge.url);
        const { chunksPerSecond } = await runJob(edge.url, mode);
        const after = await resultCounts(edge.url);
        const delta = (k: string) => (after[k] ?? 0) - (before[k] ?? 0);
        const tasks = delta("stored");
        out[label] = {
          chunksPerSecond,
          resultsPerTask: (tasks + delta("accepted")) / Math.max(1, tasks),
        };
      }
    } finally {
      for (const w of workers) w.kill("SIGKILL");
      await edge.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  }
  return out;
}

/** One-chunk documents that no corpus holds, for warming a fresh edge. */
const warmUpDocuments = Array.from(
  { length: 100 },
  (_, i) =>
    `Warm-up note ${i + 1} checks that the edge has compiled its submit path before the timing starts.`,
);
const EDGE_WARM_UP: Corpus = {
  name: "warm-up",
  documents: warmUpDocuments,
  texts: warmUpDocuments,
};

/** Waits for a worker and warms its model, as (a) is warmed. */
async function warmUp(url: string) {
  for (let ok = false; !ok; await new Promise((r) => setTimeout(r, 200))) {
    const r = await fetch(`${url}/v1/embeddings`, {
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
}

/**
 * One job of (b): chunks/s, the shares of its wall time the model ran and the submit took, and
 * the CPU seconds each part of the system used over it (`cores`, see `coresOf`).
 */
interface JobFigures {
  chunksPerSecond: number;
  modelBusy: number;
  submitShare: number;
  cores: Record<string, number>;
}

/**
 * (b): the corpus through the edge and one worker, as the second large job of a fresh edge
 * (`first`, other texts of the same kind, is its first); both measured. Also how busy the
 * worker's model was over each job's wall time, from the worker's own count of time in the
 * model (--status-port).
 */
async function endToEnd(
  corpus: Corpus,
  first: Corpus,
): Promise<{ first: JobFigures; measured: JobFigures }> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "p2pa-bench-"));
  await prepareLocalDatabase(dir);
  const edge = await startEdge({ port: 8790, persistTo: dir, cpus: edgeCpus });
  const statusPort = await freePort();
  const worker = spawnWorker(
    edge.url,
    DEV_CREDENTIALS.workerToken,
    [...modelFlags, "--batch-size", String(batchSize), "--status-port", String(statusPort)],
    {},
    { cpus: donorCpus },
  );
  const inferenceMs = async () =>
    (
      (await (await fetch(`http://127.0.0.1:${statusPort}/status`)).json()) as {
        stats: { inferenceMs: number };
      }
    ).stats.inferenceMs;
  let groups: CpuGroup[] = [];
  const job = async (texts: Corpus): Promise<JobFigures> => {
    const before = await inferenceMs();
    const cpu = await cpuSnapshot();
    const { chunksPerSecond, submitMs } = await runJob(edge.url, "off", texts);
    const cores = cpuSplit(cpu, await cpuSnapshot(), groups);
    const wallMs = (1000 * texts.texts.length) / chunksPerSecond;
    return {
      chunksPerSecond,
      modelBusy: ((await inferenceMs()) - before) / wallMs,
      submitShare: submitMs / wallMs,
      cores,
    };
  };
  try {
    await warmUp(edge.url);
    groups = coresOf(worker, edge, await edgeRuntimePid(edge));
    // A small job first (the language detector's tables built, the submit path compiled
    // once), then a large one of other texts (the corpus's own would be answered from the
    // embedding cache), then the corpus.
    await runJob(edge.url, "off", EDGE_WARM_UP);
    return { first: await job(first), measured: await job(corpus) };
  } finally {
    worker.kill("SIGKILL");
    await edge.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * What each part of the local system is, for the CPU it uses over a job of (b): the worker's
 * process (its model, and its own I/O), the edge's runtime (the Worker, its Durable Objects and
 * the local D1 and R2 they use), the rest of the local dev server (wrangler's proxy in front of
 * the runtime, its bundler, its Node process: none of them part of the edge as deployed), and
 * this benchmark as the client (its submit and its polls). The rest of the machine's busy time
 * is `other` (cpu-accounting.ts).
 */
function coresOf(worker: ChildProcess, edge: LocalEdge, runtime: number): CpuGroup[] {
  const within = (root: number | undefined) => (pid: number, all: Map<number, ProcessCpu>) =>
    root !== undefined && isWithin(all, pid, root);
  return [
    ["worker", within(worker.pid)],
    ["edge runtime", (pid) => pid === runtime],
    ["dev server", within(edge.process.pid)],
    ["client", within(process.pid)],
  ];
}

/** "the worker 13.9 core-s (87%), …": a job's CPU by part, with each part's share of the machine's. */
function coresLine(cores: Record<string, number>): string {
  const machine = cores.machine ?? 0;
  return Object.entries(cores)
    .filter(([name]) => name !== "machine")
    .map(
      ([name, s]) =>
        `${name} ${s.toFixed(2)} (${((100 * s) / Math.max(machine, 1e-9)).toFixed(1)}%)`,
    )
    .join(", ");
}

/**
 * (a) and (b) on one corpus, alternating, `runs` times, with (a) once more at the end: each (b)
 * is compared with the mean of the (a) before and after it, so a machine that slows down or
 * speeds up over the section (a shared one does, by several per cent a minute) moves both
 * sides of a ratio alike. Chunks/s, ratios, model busy.
 */
async function pipeline(corpus: Corpus, first: Corpus) {
  console.log(
    `corpus ${corpus.name}: ${corpus.documents.length} documents, ${corpus.texts.length} chunks, ${Math.round(corpus.texts.reduce((n, t) => n + t.length, 0) / corpus.texts.length)} chars on average; threads ${threads}, sessions ${sessions ?? defaultSessions({ threads })}, batch ${batchSize}; submitted as ${submitAs}; ${placement === "split" ? `the model on CPU ${donorCpus}, the edge and the client on ${edgeCpus}` : "the parts share the machine"}; ${runs} runs`,
  );
  const alone: { perSecond: number; coreSeconds: number }[] = [await direct(corpus)];
  const a: number[] = [(alone[0] as { perSecond: number }).perSecond];
  const b: number[] = [];
  /** The worker's model: share of the job's wall time it was computing, per run of (b). */
  const busy: number[] = [];
  const ratios: number[] = [];
  /** The same for each fresh edge's first large job (other texts of the same kind). */
  const firstRatios: number[] = [];
  const firstBusy: number[] = [];
  /** CPU seconds by part over each (b), and `alone`: what (a) used for the same chunks. */
  const cores: Record<string, number>[] = [];
  const line = (j: JobFigures, ratio: number) =>
    `${j.chunksPerSecond.toFixed(1)} chunks/s, b/a ${ratio.toFixed(3)}, model busy ${(100 * j.modelBusy).toFixed(1)}% of the job's wall time (the submit ${(100 * j.submitShare).toFixed(1)}% of it)`;
  for (let r = 0; r < runs; r++) {
    const e2e = await endToEnd(corpus, first);
    const next = await direct(corpus);
    alone.push(next);
    a.push(next.perSecond);
    b.push(e2e.measured.chunksPerSecond);
    busy.push(e2e.measured.modelBusy);
    firstBusy.push(e2e.first.modelBusy);
    const around = ((a[r] as number) + (a[r + 1] as number)) / 2;
    ratios.push(e2e.measured.chunksPerSecond / around);
    firstRatios.push(e2e.first.chunksPerSecond / around);
    const aloneCores = ((alone[r]?.coreSeconds ?? 0) + (next.coreSeconds ?? 0)) / 2;
    cores.push({ ...e2e.measured.cores, alone: aloneCores });
    console.log(
      `${corpus.name}, run ${r + 1}: (a) direct ${a[r]?.toFixed(1)} then ${a[r + 1]?.toFixed(1)} chunks/s\n  (b) end-to-end ${line(e2e.measured, ratios[r] as number)}\n  the fresh edge's first large job: ${line(e2e.first, firstRatios[r] as number)}\n  CPU seconds over (b), of ${(e2e.measured.cores.machine ?? 0).toFixed(2)} the machine was busy: ${coresLine(e2e.measured.cores)}; (a) used ${aloneCores.toFixed(2)} for the same chunks`,
    );
  }
  const out = {
    corpus: { documents: corpus.documents.length, chunks: corpus.texts.length },
    direct: { chunksPerSecond: a, median: median(a) },
    endToEnd: { chunksPerSecond: b, median: median(b), modelBusy: busy },
    ratio: { perRun: ratios, median: median(ratios) },
    firstJob: { ratio: firstRatios, modelBusy: firstBusy },
    cores,
  };
  console.log(
    `${corpus.name}, median: (a) ${out.direct.median.toFixed(1)} chunks/s  (b) ${out.endToEnd.median.toFixed(1)} chunks/s  b/a ${out.ratio.median.toFixed(3)}; model busy ${(100 * median(busy)).toFixed(1)}% of the job's wall time; a fresh edge's first large job b/a ${median(firstRatios).toFixed(3)}, model busy ${(100 * median(firstBusy)).toFixed(1)}%`,
  );
  return out;
}
const pipelines = sections.has("pipeline")
  ? {
      placement,
      long: await pipeline(long, firstJobs.long),
      short: await pipeline(short, firstJobs.short),
    }
  : null;
// The sections after run on the whole machine.
pinSelf(placement === "split" ? `0-${machineCores - 1}` : undefined);
/** The instant donors every coordinator section uses, and how many runs it takes. */
const fleet = {
  donors: Number(values["capacity-donors"]),
  capacity: Number(values["capacity-window"]),
  runs,
};
const capacity = sections.has("capacity")
  ? await capacityBench({
      documents: Number(values["capacity-documents"]),
      ...fleet,
      ...(values.profile
        ? { profile: path.join(ROOT, "bench-results", "capacity.cpuprofile") }
        : {}),
      ...(values["baseline-dir"] ? { baselineDir: values["baseline-dir"] } : {}),
    })
  : null;
const growth = sections.has("growth")
  ? await growthBench({
      documents: Number(values["capacity-documents"]),
      batches: Number(values["growth-batches"]),
      ...(values["baseline-dir"] ? { baselineDir: values["baseline-dir"] } : {}),
    })
  : null;
const backends = sections.has("backends")
  ? await backendsBench({
      documents: Number(values["backend-documents"]),
      ...fleet,
    })
  : null;
const scaling = sections.has("scaling")
  ? await scalingBench({
      documents: Number(values["capacity-documents"]),
      ...fleet,
    })
  : null;
const cache = sections.has("cache")
  ? await cacheBench({
      documents: Number(values["capacity-documents"]),
      ...fleet,
      ...(values["baseline-dir"] ? { baselineDir: values["baseline-dir"] } : {}),
    })
  : null;
const verification: Record<string, { chunksPerSecond: number[]; resultsPerTask: number[] }> = {};
for (let r = 0; r < (sections.has("verification") ? Number(values["verify-runs"]) : 0); r++) {
  for (const [label, v] of Object.entries(await verificationCost())) {
    verification[label] ??= { chunksPerSecond: [], resultsPerTask: [] };
    verification[label].chunksPerSecond.push(v.chunksPerSecond);
    verification[label].resultsPerTask.push(v.resultsPerTask);
  }
}
const encryption = sections.has("encryption")
  ? await encryptionCost(passages, chunking, runs, values["baseline-dir"])
  : null;
const searchReport = sections.has("search")
  ? await searchBench({
      vectors: Number(values.vectors),
      queries: Number(values["search-queries"]),
      threads,
    })
  : null;
const reindex = sections.has("reindex")
  ? await reindexBench({ passages, runs, threads, batchSize })
  : null;
const indexClient = sections.has("index-client") ? await indexClientBench({ runs }) : null;
const result = {
  date: new Date().toISOString(),
  machine: { cpus: os.availableParallelism(), node: process.version },
  threads,
  sessions: sessions ?? defaultSessions({ threads }),
  batchSize,
  runs,
  submit: submitAs,
  pipeline: pipelines,
  capacity,
  growth,
  backends,
  scaling,
  cache,
  verification,
  encryption,
  search: searchReport,
  reindex,
  indexClient,
};
if (capacity) {
  for (const [frames, { median: c, runs: rs }] of Object.entries(capacity.frames))
    console.log(
      `coordinator capacity, ${frames} results (one shard, ${capacity.donors} instant donors of window ${capacity.capacity}, median of ${rs.length}): dispatch ${c.chunksPerSecond.toFixed(0)} chunks/s (${c.dispatchCpuPerChunk.toFixed(0)} µs of edge CPU each), submit ${c.documentsPerSecond.toFixed(0)} documents/s (${c.submitCpuPerDocument.toFixed(0)} µs each); per chunk ${c.bytesPerChunkToDonor.toFixed(0)} B to donors, ${c.bytesPerChunkFromDonor.toFixed(0)} B from donors; the edge's first such job: dispatch ${c.firstJob.chunksPerSecond.toFixed(0)} chunks/s, submit ${c.firstJob.documentsPerSecond.toFixed(0)} documents/s (${c.firstJob.submitCpuPerDocument.toFixed(0)} µs each); a job submitted to donors waiting: first task after ${c.waiting.firstTaskMs} ms, 202 after ${c.waiting.acceptedMs} ms`,
    );
  const b = capacity.baseline;
  if (b)
    console.log(
      `  baseline edge (${b.dir}): dispatch ${b.figures.median.chunksPerSecond.toFixed(0)} chunks/s, submit ${b.figures.median.documentsPerSecond.toFixed(0)} documents/s, ${b.figures.median.bytesPerChunkFromDonor.toFixed(0)} B/chunk from donors; with donors waiting first task after ${b.figures.median.waiting.firstTaskMs} ms, 202 after ${b.figures.median.waiting.acceptedMs} ms; this/baseline: dispatch ${b.ratio.chunksPerSecond.toFixed(2)}x, submit ${b.ratio.documentsPerSecond.toFixed(2)}x; edge CPU baseline/this: dispatch ${b.ratio.dispatchCpu.toFixed(2)}x, submit ${b.ratio.submitCpu.toFixed(2)}x`,
    );
}
if (cache) {
  console.log(
    `embedding cache (one shard, ${cache.donors} instant donors of two credentials, ${cache.documents} documents, median of ${cache.runs.length}): ${describeCacheRun(cache.median)}`,
  );
  const b = cache.baseline;
  if (b) {
    const m = cache.median;
    console.log(
      `  baseline edge (${b.dir}): ${describeCacheRun(b.median)}; this/baseline: confirmed ${(m.confirmed.chunksPerSecond / b.median.confirmed.chunksPerSecond).toFixed(2)}x, cached ${(m.cached.documentsPerSecond / b.median.cached.documentsPerSecond).toFixed(2)}x; edge CPU baseline/this: confirmed ${(b.median.confirmed.cpuPerChunk / m.confirmed.cpuPerChunk).toFixed(2)}x, cached ${(b.median.cached.cpuPerDocument / m.cached.cpuPerDocument).toFixed(2)}x`,
    );
  }
}
if (growth) {
  const g = growth;
  const held = (g.batches - 1) * g.documents;
  console.log(
    `submission as the store fills (${g.batches} jobs of ${g.documents} documents, one edge): first ${g.first.toFixed(0)} documents/s, last ${g.last.toFixed(0)} with ${held} documents already kept (${g.lastOverFirst.toFixed(2)}x)` +
      (g.baseline
        ? `; baseline first ${g.baseline.first.toFixed(0)}, last ${g.baseline.last.toFixed(0)} (${g.baseline.lastOverFirst.toFixed(2)}x); this/baseline at the last ${g.baseline.thisOverBaseline.toFixed(2)}x`
        : ""),
  );
}
if (backends) {
  const { d1, postgres } = backends.backends;
  const line = (name: string, f: typeof d1) =>
    `${name}: submit ${f.median.documentsPerSecond.toFixed(0)} documents/s, dispatch ${f.median.chunksPerSecond.toFixed(0)} chunks/s, read every chunk ${(1000 * f.median.readSeconds).toFixed(0)} ms`;
  console.log(
    `metadata backends, the same ${backends.documents}-document job (instant donors, median of ${d1.runs.length}):
  ${line("D1 + local index", d1)}
  ${line("Postgres + pgvector", postgres)}
  postgres/d1: submit ${backends.ratio.documentsPerSecond.toFixed(2)}x, dispatch ${backends.ratio.chunksPerSecond.toFixed(2)}x, read ${backends.ratio.readSpeed.toFixed(2)}x`,
  );
}
if (indexClient)
  console.log(
    `handing vectors to the index, CPU of the calling thread a 512-dimension vector (workerd, calls of ${indexClient.vectors}, median of ${indexClient.runs.length}): the Vectorize binding's client ${indexClient.binding.toFixed(1)} µs; a hand-over to index writers ${indexClient.handOver.toFixed(1)} µs (${(indexClient.binding / indexClient.handOver).toFixed(0)}x less); the local index's RPC ${indexClient.clone.toFixed(1)} µs`,
  );
if (scaling)
  console.log(
    `shard scaling, ${scaling.documents} documents in two jobs (median of ${scaling.oneShard.length}): one shard ${median(scaling.oneShard).toFixed(0)} chunks/s, two shards ${median(scaling.twoShards).toFixed(0)} chunks/s (the second adds ${(100 * scaling.secondShardAdds).toFixed(0)}% of the first); two shards in two edges ${median(scaling.twoApart).toFixed(0)} chunks/s (the second adds ${(100 * scaling.secondShardApartAdds).toFixed(0)}%); edge CPU a chunk ${median(scaling.oneShardCpu).toFixed(0)} µs on one shard, ${median(scaling.twoApartCpu).toFixed(0)} µs in two edges: with a core each, the second shard adds ${scaling.secondShardPerCore.toFixed(2)}x of the first`,
  );
const off = median(verification.off?.chunksPerSecond ?? [1]);
for (const [label, v] of Object.entries(verification)) {
  const cps = median(v.chunksPerSecond);
  console.log(
    `verification ${label}: ${cps.toFixed(1)} chunks/s (${(cps / off).toFixed(2)}x of off), ${median(v.resultsPerTask).toFixed(2)} results computed per task stored`,
  );
}
if (encryption) {
  const e = encryption;
  console.log(
    `data protection (sealing, audit, scopes, limits): submit of ${e.chunks} chunks ${e.submitMs.median.toFixed(0)} ms, reading them all ${e.readAllChunksMs.median.toFixed(0)} ms` +
      (e.baseline
        ? `; baseline ${e.baseline.submitMs.median.toFixed(0)} / ${e.baseline.readAllChunksMs.median.toFixed(0)} ms; ratio submit ${e.submitRatio?.toFixed(2)}x, read ${e.readRatio?.toFixed(2)}x`
        : " (no --baseline-dir: no ratio)"),
  );
}
if (searchReport) {
  const s = searchReport;
  const ms = (x: { p50: number; p99: number }) =>
    `p50 ${x.p50.toFixed(1)} ms, p99 ${x.p99.toFixed(1)} ms`;
  console.log(
    `search over ${s.vectors} vectors (${s.queries} queries, stored in ${s.fillSeconds.toFixed(0)} s, slowest job status call meanwhile ${(s.slowestStatusMs / 1000).toFixed(1)} s): embeddings ${ms(s.embeddingsMs)}`,
  );
  for (const [mode, m] of Object.entries(s.searchMs)) console.log(`  search ${mode}: ${ms(m)}`);
  console.log(
    `  vector search over one embedding: p50 +${s.overEmbeddingMs.p50.toFixed(1)} ms, p99 +${s.overEmbeddingMs.p99.toFixed(1)} ms; recall@10 against exact ${s.recallAt10.toFixed(3)}`,
  );
  for (const [mode, kinds] of Object.entries(s.quality))
    for (const [kind, q] of Object.entries(kinds))
      console.log(
        `  ${mode} on ${kind} queries (${q.n}): recall@1 ${q.at1.toFixed(3)}, recall@5 ${q.at5.toFixed(3)}`,
      );
}
if (reindex)
  console.log(
    `re-index with 90% unchanged: ${reindex.median.reindexDocsPerSecond.toFixed(0)} documents/s against ${reindex.median.firstDocsPerSecond.toFixed(0)} for the first index; wall time ratio ${reindex.median.ratio.toFixed(3)} (median of ${reindex.runs.length})`,
  );
mkdirSync(path.join(ROOT, "bench-results"), { recursive: true });
// A partial run (--only) does not overwrite the full run's figures.
const outFile =
  (sections.size === ALL_SECTIONS.length ? "bench" : `bench.${[...sections].join("+")}`) +
  (placement === "split" ? ".split" : "") +
  (submitAs === "json" ? ".json" : `.${submitAs}.json`);
writeFileSync(path.join(ROOT, "bench-results", outFile), `${JSON.stringify(result, null, 2)}\n`);
console.log(`wrote bench-results/${outFile}`);
