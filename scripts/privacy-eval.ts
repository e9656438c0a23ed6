/**
 * `npx tsx scripts/privacy-eval.ts`: how well the edge's personal-data masker does on the
 * labelled corpus (recall per kind, share of ordinary numbers and URLs wrongly masked), and
 * how fast it is, median of 5 runs over ~5 MB cut into chunks the size the edge sends.
 * Prints a Markdown table and writes bench-results/privacy.json.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { maskPersonalData, PII_KINDS } from "../apps/edge/src/privacy/mask.js";
import { buildPrivacyCorpus, mixedText, scoreCorpus } from "../apps/edge/test/privacy/corpus.js";
import { ROOT } from "./lib/local-edge.js";

const { values } = parseArgs({
  options: {
    mb: { type: "string", default: "5" },
    runs: { type: "string", default: "5" },
    chunk: { type: "string", default: "800" },
  },
});
const bytes = Number(values.mb) * 1_000_000;
const runs = Number(values.runs);
const chunkChars = Number(values.chunk);

const corpus = buildPrivacyCorpus();
const score = scoreCorpus(corpus, (t) => maskPersonalData(t, PII_KINDS).text);
const pct = (n: number, d: number) => (d === 0 ? 0 : (100 * n) / d);

const chunksOf = (text: string) => {
  const out: string[] = [];
  for (let i = 0; i < text.length; i += chunkChars) out.push(text.slice(i, i + chunkChars));
  return out;
};
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

/** MB/s (UTF-16 length / 1e6, as the edge holds text) of one pass over the text. */
function pass(chunks: string[], chars: number): number {
  const t0 = performance.now();
  for (const c of chunks) maskPersonalData(c, PII_KINDS);
  return chars / 1e6 / ((performance.now() - t0) / 1000);
}

/**
 * The first pass runs mostly unoptimised code; an edge isolate lives for many requests, so
 * `runs` passes are timed after three warm-up passes, and the first is reported apart.
 */
function throughput(text: string): { firstPass: number; runs: number[]; median: number } {
  const chunks = chunksOf(text);
  const firstPass = pass(chunks, text.length);
  for (let r = 0; r < 2; r++) pass(chunks, text.length);
  const perRun = Array.from({ length: runs }, () => pass(chunks, text.length));
  return { firstPass, runs: perRun, median: median(perRun) };
}

// Mixed: one sentence in five from the corpus (personal data, tricky numbers, URLs), the
// rest plain prose. Ordinary: plain prose only, the common case at the edge.
const mixed = mixedText(corpus, bytes, 7, 0.2);
const ordinary = mixedText(corpus, bytes, 9, 0);
const speed = { mixed: throughput(mixed), ordinary: throughput(ordinary) };

const rows = PII_KINDS.map((kind) => {
  const { items, masked } = score.perKind[kind];
  return { kind, items, masked, recall: pct(masked, items) };
});
const lines = [
  "| kind | items | recall |",
  "| --- | ---: | ---: |",
  ...rows.map((r) => `| ${r.kind} | ${r.items} | ${r.recall.toFixed(2)}% |`),
  "",
  "| negatives | items | wrongly masked |",
  "| --- | ---: | ---: |",
  `| ordinary numbers | ${score.negatives.items} | ${pct(score.negatives.wrong, score.negatives.items).toFixed(2)}% |`,
  `| ordinary URLs | ${score.plainUrls.items} | ${pct(score.plainUrls.wrong, score.plainUrls.items).toFixed(2)}% |`,
  "",
  `Throughput (${chunkChars}-char chunks, all kinds, median of ${runs} runs after warm-up): ` +
    `${speed.mixed.median.toFixed(1)} MB/s on ${(mixed.length / 1e6).toFixed(1)} MB of mixed text ` +
    `(first, cold pass ${speed.mixed.firstPass.toFixed(1)}), ` +
    `${speed.ordinary.median.toFixed(1)} MB/s on ${(ordinary.length / 1e6).toFixed(1)} MB of ordinary prose ` +
    `(cold ${speed.ordinary.firstPass.toFixed(1)}).`,
];
console.log(lines.join("\n"));
const byCategory = Object.entries(score.negatives.byCategory)
  .filter(([, v]) => v.wrong > 0)
  .map(([k, v]) => `${k} ${v.wrong}/${v.items}`);
if (byCategory.length) console.log(`\nwrongly masked by category: ${byCategory.join(", ")}`);
for (const m of score.misses.slice(0, 10))
  console.log(`missed ${m.kind}: ${JSON.stringify(m.value)}`);
for (const w of score.wrong.slice(0, 10))
  console.log(`wrongly masked ${w.category}: ${JSON.stringify(w.got)}`);

const result = {
  date: new Date().toISOString(),
  machine: { cpus: os.availableParallelism(), cpu: os.cpus()[0]?.model, node: process.version },
  kinds: rows,
  negatives: {
    items: score.negatives.items,
    wronglyMasked: score.negatives.wrong,
    wronglyMaskedPct: pct(score.negatives.wrong, score.negatives.items),
    byCategory: score.negatives.byCategory,
  },
  plainUrls: {
    items: score.plainUrls.items,
    wronglyMasked: score.plainUrls.wrong,
    wronglyMaskedPct: pct(score.plainUrls.wrong, score.plainUrls.items),
  },
  damagedContext: score.damagedContext,
  throughput: {
    chunkChars,
    mixed: { mb: mixed.length / 1e6, corpusShare: 0.2, ...speed.mixed },
    ordinary: { mb: ordinary.length / 1e6, corpusShare: 0, ...speed.ordinary },
  },
  misses: score.misses.slice(0, 50),
  wronglyMasked: score.wrong.slice(0, 50),
};
mkdirSync(path.join(ROOT, "bench-results"), { recursive: true });
writeFileSync(
  path.join(ROOT, "bench-results", "privacy.json"),
  `${JSON.stringify(result, null, 2)}\n`,
);
console.log("\nwrote bench-results/privacy.json");
