/**
 * `npx tsx scripts/search-corpus-check.ts [--verbose]`: checks the search evaluation corpus
 * (scripts/lib/search-corpus.ts) and shows, in-process, what each search mode makes of it.
 *
 * 1. Validates it: ids unique and well-formed, each document one to three sentences of at most
 *    400 characters, every query's expected document present, enough queries of each kind, and
 *    no paraphrase sharing a content word with its passage. Exits 1 on any failure.
 * 2. Embeds every document and query with use-lite and prints vector recall@1/@5 per kind.
 * 3. Ranks with a small BM25 (k1 1.2, b 0.75, the keyword index's word rules) and prints keyword
 *    recall@1/@5 per kind, and reciprocal rank fusion of both (k 60) as a hybrid.
 *
 * Ties count against the expected document (it ranks below every document scoring the same),
 * and a document with no matching word is never a keyword hit.
 */

import path from "node:path";
import { parseArgs } from "node:util";
import { fuse, fusionMatches } from "../apps/edge/src/search/fuse.js";
import { MAX_QUERY_WORDS, STOPWORDS, words } from "../apps/edge/src/search/words.js";
import { loadModel } from "../apps/worker-node/src/model/index.js";
import { ROOT } from "./lib/local-edge.js";
import { type EvalDocument, type EvalQuery, searchCorpus } from "./lib/search-corpus.js";

const { values } = parseArgs({ options: { verbose: { type: "boolean", default: false } } });

/**
 * Words that carry no subject (function words), for the paraphrase overlap check. Everything
 * else counts as a content word, light verbs such as "make" and "get" included.
 */
const FUNCTION_WORDS = new Set([
  ...STOPWORDS,
  ...(
    "about above across after again against all also am any around away back be because been " +
    "before " +
    "being below between both down during each either else every few further here hers herself " +
    "him himself his just more most much must neither nor off once only other others ought out " +
    "over own same shall she should some such through toward towards under until up upon very " +
    "while whose within without yet yours s t don won isn aren doesn didn can't won't ll ve re d"
  ).split(" "),
]);

/** A word with a plural or common inflection removed, so "stars"/"star", "baked"/"bake" meet. */
function stem(w: string): string {
  for (const [suffix, repl] of [
    ["ies", "y"],
    ["ing", ""],
    ["ed", ""],
    ["es", ""],
    ["ly", ""],
    ["s", ""],
  ] as const) {
    if (w.endsWith(suffix) && w.length - suffix.length >= 3 && !w.endsWith("ss"))
      return w.slice(0, w.length - suffix.length) + repl;
  }
  return w;
}
/** A word without a plural -s: the overlap rule the brief states. */
const singular = (w: string) =>
  w.length > 3 && w.endsWith("s") && !w.endsWith("ss") ? w.slice(0, -1) : w;

function contentOverlap(a: string, b: string): string[] {
  const content = (t: string) => words(t).filter((w) => !FUNCTION_WORDS.has(w));
  const keys = (t: string) => new Set(content(t).flatMap((w) => [singular(w), stem(w)]));
  const ka = keys(a);
  return [...new Set(content(b).filter((w) => ka.has(singular(w)) || ka.has(stem(w))))];
}

function validate(documents: EvalDocument[], queries: EvalQuery[]): string[] {
  const errors: string[] = [];
  const ids = new Map<string, EvalDocument>();
  for (const d of documents) {
    if (ids.has(d.id)) errors.push(`duplicate id ${d.id}`);
    ids.set(d.id, d);
    if (!/^[\w.:@/-]+$/.test(d.id) || d.id.length > 128) errors.push(`bad id ${d.id}`);
    if (d.text.length > 400) errors.push(`${d.id}: ${d.text.length} characters`);
    const sentences = d.text.split(/(?<=[.!?])\s+(?=[A-Z])/).filter((s) => s.trim());
    if (sentences.length < 1 || sentences.length > 3 || !/[.!?]$/.test(d.text))
      errors.push(`${d.id}: ${sentences.length} sentences (or no final stop)`);
    if (/[^\x20-\x7e\u00c0-\u024f]/.test(d.text)) errors.push(`${d.id}: unexpected characters`);
  }
  for (const q of queries) {
    const doc = ids.get(q.expect);
    if (!doc) {
      errors.push(`query "${q.query}" expects missing ${q.expect}`);
      continue;
    }
    if (q.kind === "paraphrase") {
      const shared = contentOverlap(doc.text, q.query);
      if (shared.length > 0) errors.push(`paraphrase "${q.query}" shares: ${shared.join(", ")}`);
    }
  }
  const kinds = (k: EvalDocument["metadata"]["kind"]) =>
    documents.filter((d) => d.metadata.kind === k).length;
  const minimum = (what: string, n: number, min: number) => {
    if (n < min) errors.push(`${what}: ${n}, want at least ${min}`);
  };
  minimum("topic passages", kinds("topic"), 40);
  minimum("paraphrase queries", queries.filter((q) => q.kind === "paraphrase").length, 40);
  minimum("exact queries", queries.filter((q) => q.kind === "exact").length, 45);
  minimum("products", kinds("product"), 20);
  minimum("people", kinds("person"), 12);
  minimum("rare terms", kinds("term"), 12);
  minimum("filler", kinds("filler"), 90);
  // No two documents with the same text (filler is deduplicated too).
  const texts = new Set(documents.map((d) => d.text));
  if (texts.size !== documents.length) errors.push("duplicate document texts");
  return errors;
}

/** 1-based rank of `expect` among scores (ties count against it); Infinity if not a hit. */
function rankOf(scores: Float64Array, expect: number, needPositive: boolean): number {
  const s = scores[expect] as number;
  if (needPositive && !(s > 0)) return Number.POSITIVE_INFINITY;
  let rank = 1;
  for (let i = 0; i < scores.length; i++) if (i !== expect && (scores[i] as number) >= s) rank++;
  return rank;
}

/** BM25 as FTS5 computes it: idf log((N - n + 0.5) / (n + 0.5)), floored just above zero. */
function bm25Index(texts: string[], k1 = 1.2, b = 0.75) {
  const docs = texts.map((t) => {
    const tf = new Map<string, number>();
    const ws = words(t);
    for (const w of ws) tf.set(w, (tf.get(w) ?? 0) + 1);
    return { tf, len: ws.length };
  });
  const df = new Map<string, number>();
  for (const d of docs) for (const w of d.tf.keys()) df.set(w, (df.get(w) ?? 0) + 1);
  const avg = docs.reduce((a, d) => a + d.len, 0) / docs.length;
  const n = docs.length;
  return (query: string): Float64Array => {
    const all = [...new Set(words(query))];
    const content = all.filter((w) => !STOPWORDS.has(w));
    const terms = (content.length > 0 ? content : all).slice(0, MAX_QUERY_WORDS);
    const scores = new Float64Array(n);
    for (const w of terms) {
      const nw = df.get(w) ?? 0;
      if (nw === 0) continue;
      const idf = Math.max(1e-6, Math.log((n - nw + 0.5) / (nw + 0.5)));
      docs.forEach((d, i) => {
        const f = d.tf.get(w) ?? 0;
        if (f > 0)
          scores[i] =
            (scores[i] as number) + (idf * f * (k1 + 1)) / (f + k1 * (1 - b + (b * d.len) / avg));
      });
    }
    return scores;
  };
}

async function embedAll(texts: string[]): Promise<Float32Array[]> {
  const m = await loadModel("use-lite", {
    cacheDir: path.join(ROOT, ".cache", "models"),
    threads: 2,
  });
  const out: Float32Array[] = [];
  try {
    for (let i = 0; i < texts.length; i += 32) {
      for (const v of await m.embed(texts.slice(i, i + 32))) {
        let norm = 0;
        for (const x of v) norm += x * x;
        norm = Math.sqrt(norm) || 1;
        out.push(v.map((x) => x / norm));
      }
    }
  } finally {
    await m.dispose();
  }
  return out;
}

const dot = (a: Float32Array, b: Float32Array) => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] as number) * (b[i] as number);
  return s;
};

/**
 * Hybrid as the edge ranks it (apps/edge/src/search): the top 50 of each list, keyword matches
 * kept by `fusionMatches`, fused by `fuse`; as scores, so `rankOf` can read a rank from them.
 */
function hybridScores(
  vectorScores: Float64Array,
  keywordScores: Float64Array,
  held: (doc: number) => number,
  asked: number,
): Float64Array {
  const top = (scores: Float64Array, needPositive: boolean) =>
    [...scores.keys()]
      .filter((i) => !needPositive || (scores[i] as number) > 0)
      .sort((x, y) => (scores[y] as number) - (scores[x] as number) || x - y)
      .slice(0, 50)
      .map((i) => ({ id: String(i), score: scores[i] as number }));
  const keyword = fusionMatches(
    top(keywordScores, true).map((r) => ({ ...r, held: held(Number(r.id)), asked })),
  );
  const out = new Float64Array(vectorScores.length);
  for (const r of fuse([top(vectorScores, false), keyword])) out[Number(r.id)] = r.score;
  return out;
}

const { documents, queries } = searchCorpus();
const errors = validate(documents, queries);
for (const e of errors) console.error(`FAIL ${e}`);
if (errors.length > 0) process.exit(1);
const count = (k: string) => documents.filter((d) => d.metadata.kind === k).length;
console.log(
  `corpus ok: ${documents.length} documents (topic ${count("topic")}, product ${count("product")}, ` +
    `person ${count("person")}, term ${count("term")}, filler ${count("filler")}), ` +
    `${queries.length} queries (paraphrase ${queries.filter((q) => q.kind === "paraphrase").length}, ` +
    `exact ${queries.filter((q) => q.kind === "exact").length})`,
);

const index = new Map(documents.map((d, i) => [d.id, i]));
const t0 = performance.now();
const vecs = await embedAll([...documents.map((d) => d.text), ...queries.map((q) => q.query)]);
console.log(`embedded ${vecs.length} texts in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
const docVecs = vecs.slice(0, documents.length);
const bm25 = bm25Index(documents.map((d) => d.text));
const docWords = documents.map((d) => new Set(words(d.text)));
/** The words of a query the keyword index looks for (as `queryTerms` in terms.ts chooses). */
function queryWords(query: string): string[] {
  const all = [...new Set(words(query))];
  const content = all.filter((w) => !STOPWORDS.has(w));
  return (content.length > 0 ? content : all).slice(0, MAX_QUERY_WORDS);
}

type Mode = "vector" | "keyword" | "hybrid";
const rows: { group: string; mode: Mode; rank: number; query: EvalQuery; top: string }[] = [];
queries.forEach((q, qi) => {
  const expect = index.get(q.expect) as number;
  const qv = vecs[documents.length + qi] as Float32Array;
  const vector = Float64Array.from(docVecs, (d) => dot(d, qv));
  const keyword = bm25(q.query);
  const terms = queryWords(q.query);
  const hybrid = hybridScores(
    vector,
    keyword,
    (doc) => terms.filter((w) => docWords[doc]?.has(w)).length,
    terms.length,
  );
  const sub = q.kind === "exact" ? (documents[expect] as EvalDocument).metadata.kind : "paraphrase";
  for (const [mode, scores, needPositive] of [
    ["vector", vector, false],
    ["keyword", keyword, true],
    ["hybrid", hybrid, false],
  ] as const) {
    let best = 0;
    for (let i = 1; i < scores.length; i++)
      if ((scores[i] as number) > (scores[best] as number)) best = i;
    const rank = rankOf(scores, expect, needPositive);
    for (const group of new Set([q.kind, `  exact/${sub}`]))
      if (group !== "  exact/paraphrase")
        rows.push({ group, mode, rank, query: q, top: (documents[best] as EvalDocument).id });
  }
});

const groups = ["paraphrase", "exact", "  exact/product", "  exact/person", "  exact/term"];
const modes: Mode[] = ["vector", "keyword", "hybrid"];
console.log(
  `\n${"queries".padEnd(18)}${"n".padStart(4)}  ${modes.map((m) => `${m} r@1  r@5`.padStart(18)).join("")}`,
);
for (const g of groups) {
  const mine = rows.filter((r) => r.group === g);
  const n = mine.length / modes.length;
  const cells = modes.map((m) => {
    const rs = mine.filter((r) => r.mode === m);
    const at = (k: number) => (rs.filter((r) => r.rank <= k).length / rs.length).toFixed(2);
    return `${at(1)}  ${at(5)}`.padStart(18);
  });
  console.log(`${g.padEnd(18)}${String(n).padStart(4)}  ${cells.join("")}`);
}

if (values.verbose) {
  console.log("\nmisses at rank 1:");
  for (const r of rows)
    if (!r.group.startsWith(" ") && r.rank > 1)
      console.log(
        `  ${r.mode.padEnd(8)} ${r.query.kind.padEnd(11)} rank ${String(r.rank).padStart(4)}  "${r.query.query}" -> top ${r.top} (want ${r.query.expect})`,
      );
}
