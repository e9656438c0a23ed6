/**
 * `npx tsx scripts/index-recall.ts`: how well the local vector index's search (the in-memory
 * form in apps/edge/src/vector/memory.ts, the code LocalVectorIndex runs) finds the exact
 * nearest neighbours of real queries, and how fast, in plain Node.
 *
 * Vectors are made from real embeddings: ~4,000 distinct sentences embedded in-process with
 * use-lite, then `--vectors` mixtures of two or three of them with random weights plus small
 * gaussian noise, normalised, so that the index holds many near neighbours the way a corpus of
 * overlapping chunks does. Queries are embeddings of other texts: held-out sentences cut down
 * to query length, and the TOPICS paraphrases.
 *
 * Prints recall@k against exact (brute-force) search for several rescore counts and for the
 * default rule, p50/p99 query time for both, and memory per vector. Embeddings are cached in
 * .cache/index-recall/ so reruns skip the model.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import v8 from "node:v8";
import vm from "node:vm";
import {
  type Entry,
  type KeyTest,
  MemoryIndex,
  rescoreCount,
} from "../apps/edge/src/vector/memory.js";
import { norm, type Scored, TopK } from "../apps/edge/src/vector/topk.js";
import { loadModel } from "../apps/worker-node/src/model/index.js";
import { generatedPassages, rng, TOPICS } from "./lib/corpus.js";
import { ROOT } from "./lib/local-edge.js";

const { values: opts } = parseArgs({
  options: {
    vectors: { type: "string", default: "100000" },
    base: { type: "string", default: "4000" },
    queries: { type: "string", default: "250" },
    noise: { type: "string", default: "0.01" },
    rescore: { type: "string", default: "100,200,400,800,1600" },
    threads: { type: "string", default: String(Math.min(2, os.availableParallelism())) },
    seed: { type: "string", default: "2026" },
  },
});
const TOTAL = Number(opts.vectors);
const BASE = Number(opts.base);
const QUERIES = Number(opts.queries);
const NOISE = Number(opts.noise);
const SWEEP = opts.rescore.split(",").map(Number);
const JOBS = 10;
const rand = rng(Number(opts.seed));

// --- Texts --------------------------------------------------------------------------------

/** Distinct generated sentences, in a seeded order; the corpus has 10,000 combinations. */
function sentences(): string[] {
  const seen = new Set<string>();
  for (let seed = Number(opts.seed); seen.size < 10_000 && seed < Number(opts.seed) + 400; seed++)
    for (const p of generatedPassages(40, 200, 800, seed))
      for (const s of p.split(/(?<=\.)\s+/)) if (s.length > 0) seen.add(s.trim());
  return [...seen];
}

const pool = sentences();
if (pool.length < BASE + QUERIES) throw new Error(`only ${pool.length} distinct sentences`);
const baseTexts = [...pool.slice(0, BASE - TOPICS.length), ...TOPICS.map((t) => t.text)];
// Queries are shorter than passages: a held-out sentence without its closing phrase, or
// lower-cased without its subject, plus the hand-written paraphrases.
const queryTexts = [
  ...TOPICS.map((t) => t.paraphrase),
  ...pool.slice(BASE, BASE + QUERIES - TOPICS.length).map((s, i) => {
    const words = s.replace(/\.$/, "").split(" ");
    return i % 2 === 0
      ? words.slice(0, Math.max(4, words.length - 3)).join(" ")
      : words.slice(2).join(" ").toLowerCase();
  }),
];

async function embedAll(texts: string[], name: string): Promise<Float32Array[]> {
  const dir = path.join(ROOT, ".cache", "index-recall");
  const key = Buffer.from(
    await crypto.subtle.digest("SHA-256", new TextEncoder().encode(texts.join("\n"))),
  )
    .toString("hex")
    .slice(0, 16);
  const file = path.join(dir, `${name}-${key}.f32`);
  if (existsSync(file)) {
    const raw = readFileSync(file);
    const all = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
    const d = all.length / texts.length;
    return texts.map((_, i) => all.slice(i * d, (i + 1) * d));
  }
  const model = await loadModel("use-lite", {
    cacheDir: path.join(ROOT, ".cache", "models"),
    threads: Number(opts.threads),
  });
  const out: Float32Array[] = [];
  const t0 = performance.now();
  for (let i = 0; i < texts.length; i += 32)
    out.push(...(await model.embed(texts.slice(i, i + 32))));
  await model.dispose();
  console.log(
    `embedded ${texts.length} ${name} texts in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
  mkdirSync(dir, { recursive: true });
  const flat = new Float32Array(out.length * (out[0]?.length ?? 0));
  out.forEach((v, i) => {
    flat.set(v, i * v.length);
  });
  writeFileSync(file, Buffer.from(flat.buffer));
  return out;
}

const base = await embedAll(baseTexts, "base");
const queries = await embedAll(queryTexts, "queries");
const DIMS = base[0]?.length ?? 0;

// --- Vectors ------------------------------------------------------------------------------

function gaussian(): number {
  // Box–Muller; 1 - rand() keeps the logarithm finite.
  return Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
}

const data = new Float32Array(TOTAL * DIMS);
const ids: string[] = [];
const jobs: string[] = [];
const mix = new Float64Array(DIMS);
for (let n = 0; n < TOTAL; n++) {
  mix.fill(0);
  const parts = rand() < 0.5 ? 2 : 3;
  for (let p = 0; p < parts; p++) {
    const e = base[Math.floor(rand() * base.length)] as Float32Array;
    const w = 0.2 + rand();
    for (let i = 0; i < DIMS; i++) mix[i] = (mix[i] as number) + w * (e[i] as number);
  }
  for (let i = 0; i < DIMS; i++) mix[i] = (mix[i] as number) + NOISE * gaussian();
  const len = norm(mix);
  for (let i = 0; i < DIMS; i++) data[n * DIMS + i] = (mix[i] as number) / len;
  ids.push(`chunk-${String(n).padStart(6, "0")}`);
  jobs.push(`job-${n % JOBS}`);
}
const vectorAt = (n: number) => data.subarray(n * DIMS, (n + 1) * DIMS);
// Unit length only up to float32 rounding: divided by, as the index does, so scores agree.
const norms = Float64Array.from({ length: TOTAL }, (_, n) => norm(vectorAt(n)));

// --- Exact search: the reference --------------------------------------------------------

/** A full scan, written as tight as JS allows (offsets, no views), so the comparison is fair. */
function exact(q: Float32Array, topK: number, keep?: (n: number) => boolean): Scored[] {
  const top = new TopK(topK);
  const qNorm = norm(q);
  for (let n = 0; n < TOTAL; n++) {
    if (keep && !keep(n)) continue;
    const off = n * DIMS;
    let s0 = 0;
    let s1 = 0;
    let s2 = 0;
    let s3 = 0;
    for (let i = 0; i < DIMS; i += 4) {
      s0 += (q[i] as number) * (data[off + i] as number);
      s1 += (q[i + 1] as number) * (data[off + i + 1] as number);
      s2 += (q[i + 2] as number) * (data[off + i + 2] as number);
      s3 += (q[i + 3] as number) * (data[off + i + 3] as number);
    }
    const score = (s0 + s1 + s2 + s3) / (qNorm * (norms[n] as number));
    if (top.admits(score, ids[n] as string)) top.push(ids[n] as string, score, null);
  }
  return top.items;
}

// --- The index under test ---------------------------------------------------------------

function gc(): void {
  v8.setFlagsFromString("--expose-gc");
  (vm.runInNewContext("gc") as () => void)();
}
const heap = () => {
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
};
gc();
const before = heap();
let t = performance.now();
const index = MemoryIndex.from(
  DIMS,
  ["tenant", "jobId"],
  (function* (): Generator<Entry> {
    for (let n = 0; n < TOTAL; n++)
      yield { id: ids[n] as string, namespace: null, values: vectorAt(n), fields: ["t1", jobs[n]] };
  })(),
  TOTAL,
);
const buildMs = performance.now() - t;
gc();
const bytesPerVector = (heap() - before) / TOTAL;

// --- Measurements -----------------------------------------------------------------------

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))] as number;
};
const recall = (got: Scored[], want: Scored[]) => {
  if (want.length === 0) return 1;
  const w = new Set(want.map((m) => m.id));
  return got.filter((m) => w.has(m.id)).length / want.length;
};

// The product always filters by tenant (here: every vector), and often by job (1 in 10).
const tenant: KeyTest = { key: "tenant", test: (v) => v === "t1" };
const job: KeyTest = { key: "jobId", test: (v) => v === "job-3" };
const inJob = (n: number) => jobs[n] === "job-3";

interface Case {
  label: string;
  topK: number;
  search: (q: Float32Array) => Scored[];
  /** Which exact answer to compare with: unfiltered, or within job-3. */
  reference?: "job";
}
const cases: Case[] = [
  { label: "exact scan, topK 100", topK: 100, search: (q) => exact(q, 100) },
  ...SWEEP.map((r) => ({
    label: `topK 10, R ${r}`,
    topK: 10,
    search: (q: Float32Array) => index.search(q, 10, { rescore: r }),
  })),
  ...[1, 10, 50, 100].map((k) => ({
    label: `topK ${k}, default R ${rescoreCount(k)}`,
    topK: k,
    search: (q: Float32Array) => index.search(q, k),
  })),
  {
    label: "topK 10, default R, tenant filter (all match)",
    topK: 10,
    search: (q) => index.search(q, 10, { tests: [tenant] }),
  },
  {
    label: `topK 10, default R, tenant + job filter (1 in ${JOBS})`,
    topK: 10,
    search: (q) => index.search(q, 10, { tests: [tenant, job] }),
    reference: "job",
  },
];

// Interleaved: each query runs every case in turn, so that changes in the machine's speed
// (a shared VM) fall on all cases alike instead of on whichever ran at the time.
for (const c of cases) for (const q of queries.slice(0, 10)) c.search(q);
const ms = cases.map((): number[] => []);
const answers = cases.map((): Scored[][] => []);
const scored = cases.map(() => 0);
for (const q of queries) {
  cases.forEach((c, i) => {
    t = performance.now();
    const a = c.search(q);
    (ms[i] as number[]).push(performance.now() - t);
    (answers[i] as Scored[][]).push(a);
    scored[i] = (scored[i] as number) + index.lastSearch.scored;
  });
}
const exactTop = answers[0] as Scored[][];
const exactInJob = queries.map((q) => exact(q, 10, inJob));

console.log(
  `${TOTAL.toLocaleString("en")} vectors × ${DIMS} dims (mixtures of 2–3 of ${base.length} real ` +
    `embeddings, noise σ ${NOISE}), ${queries.length} real-text queries, node ${process.version}`,
);
console.log(
  `in-memory form: built in ${buildMs.toFixed(0)} ms, ${bytesPerVector.toFixed(0)} bytes per vector ` +
    `(values ${DIMS * 4}, code ${Math.ceil(DIMS / 32) * 4}, norm 8; the rest ids, maps, columns)\n`,
);
cases.forEach((c, i) => {
  const times = ms[i] as number[];
  const line = [`${c.label.padEnd(52)} p50 ${pct(times, 0.5).toFixed(2).padStart(6)} ms`];
  line.push(`p99 ${pct(times, 0.99).toFixed(2).padStart(6)} ms`);
  if (i > 0) {
    const rec = (answers[i] as Scored[][]).map((a, qi) => {
      const want =
        c.reference === "job" ? exactInJob[qi] : (exactTop[qi] as Scored[]).slice(0, c.topK);
      return recall(a, want as Scored[]);
    });
    const mean = rec.reduce((a, b) => a + b, 0) / rec.length;
    const perfect = rec.filter((x) => x === 1).length;
    // Ties at the Hamming cutoff are all scored, so a few more than R are.
    const perQuery = (scored[i] as number) / queries.length;
    line.push(
      `recall@${c.topK} ${mean.toFixed(4)} (${perfect}/${rec.length} exact, ${perQuery.toFixed(0)} scored)`,
    );
  }
  console.log(line.join(", "));
});
