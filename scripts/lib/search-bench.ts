/**
 * `npm run bench -- --only search`: what search costs and how well each mode finds things,
 * through the API of one local system.
 *
 * Latency: the local index is filled with `vectors` vectors (default 100,000, 512 dimensions)
 * through the real pipeline, answered by a scripted donor that returns realistic vectors
 * (mixtures of real embeddings, see `synthetic`) so that no model has to run 100,000 times;
 * then a real p2pa-worker embeds every query. For each query, one `/v1/embeddings` call and
 * one `/v1/search` (topK 10) alternate, so both see the same machine; the report gives both
 * p50s and p99s and their differences. Recall@10 of the index is measured against exact
 * search over the same vectors, computed here.
 *
 * Quality: the evaluation corpus (scripts/lib/search-corpus.ts) is indexed by the real model in
 * its own collection, and recall@1/@5 of each mode is reported for paraphrase queries and for
 * exact-term queries (codes, names, rare terms).
 */
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { decodeVector } from "@p2pa/shared";
import { loadModel } from "../../apps/worker-node/src/model/index.js";
import { generatedPassages, rng, TOPICS } from "./corpus.js";
import {
  DEV_CREDENTIALS,
  freePort,
  killTree,
  prepareLocalDatabase,
  ROOT,
  slowestStatusMs,
  spawnWorker,
  startEdge,
  waitForCompletion,
} from "./local-edge.js";
import { ScriptedDonor } from "./scripted-donor.js";
import { searchCorpus } from "./search-corpus.js";

const DIM = 512;
const PER_REQUEST = 10_000;
const MODES = ["vector", "keyword", "hybrid"] as const;

export interface SearchBenchReport {
  vectors: number;
  queries: number;
  embeddingsMs: { p50: number; p99: number };
  searchMs: Record<(typeof MODES)[number], { p50: number; p99: number }>;
  /** search p50/p99 minus embeddings p50/p99, vector mode. */
  overEmbeddingMs: { p50: number; p99: number };
  recallAt10: number;
  fillSeconds: number;
  /** The slowest job status call while the vectors were being stored. */
  slowestStatusMs: number;
  quality: Record<string, Record<string, { at1: number; at5: number; n: number }>>;
}

const headers = {
  Authorization: `Bearer ${DEV_CREDENTIALS.apiKey}`,
  "Content-Type": "application/json",
};

const quantile = (xs: number[], q: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))] as number;
};

function sentences(count: number, seed: number): string[] {
  const out: string[] = [];
  for (const p of generatedPassages(Math.ceil(count / 3), 200, 600, seed))
    for (const s of p.split(/(?<=\.)\s+/)) if (s.length > 20) out.push(s);
  return out.slice(0, count);
}

function normalise(v: Float32Array): Float32Array {
  let n = 0;
  for (const x of v) n += x * x;
  n = Math.sqrt(n) || 1;
  for (let i = 0; i < v.length; i++) v[i] = (v[i] as number) / n;
  return v;
}

/**
 * Vector `i` of the bulk: a normalised mixture of three real embeddings with a little noise, so
 * the index holds what real data looks like (clustered, with the model's non-zero mean) rather
 * than uniform noise, on which every approximate method looks worse than it is.
 */
function synthetic(base: Float32Array[], i: number): Float32Array {
  const r = rng(i * 2654435761 + 1);
  const pick = () => base[Math.floor(r() * base.length)] as Float32Array;
  const [a, b, c] = [pick(), pick(), pick()];
  const v = new Float32Array(DIM);
  for (let d = 0; d < DIM; d++)
    v[d] = (a[d] as number) + 0.5 * (b[d] as number) + 0.25 * (c[d] as number) + (r() - 0.5) * 0.02;
  return normalise(v);
}

async function api<T>(
  url: string,
  pathname: string,
  body?: unknown,
  extra: Record<string, string> = {},
): Promise<T> {
  const res = await fetch(`${url}${pathname}`, {
    method: body === undefined ? "GET" : "POST",
    headers: { ...headers, ...extra },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  if (!res.ok) throw new Error(`${pathname}: ${res.status} ${await res.text()}`);
  return (await res.json()) as T;
}

/**
 * Submits a job as a careful client does: under an Idempotency-Key, sent again on a 503 or a
 * dropped connection (wrangler dev restarts its runtime now and then under this load), so a
 * retry never makes a second job.
 */
async function submit(url: string, key: string, body: unknown): Promise<{ id: string }> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await api<{ id: string }>(url, "/v1/jobs", body, { "Idempotency-Key": key });
    } catch (err) {
      if (attempt >= 5 || !/503|fetch failed/.test(String(err))) throw err;
      await new Promise((r) => setTimeout(r, 2000 * attempt));
    }
  }
}

async function waitForJobs(url: string, ids: string[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (const id of ids)
    await waitForCompletion(url, id, headers, {
      pollMs: 500,
      callTimeoutMs: 60_000,
      timeoutMs: Math.max(0, deadline - Date.now()),
    });
}

async function waitForWorker(url: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await api(url, "/v1/embeddings", { model: "use-lite", input: "warm up" });
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

async function timed<T>(f: () => Promise<T>): Promise<[number, T]> {
  const t0 = performance.now();
  const out = await f();
  return [performance.now() - t0, out];
}

export async function searchBench(opts: {
  vectors: number;
  queries: number;
  threads: number;
  log?: (s: string) => void;
}): Promise<SearchBenchReport> {
  const log = opts.log ?? ((s: string) => console.log(s));
  const dir = mkdtempSync(path.join(os.tmpdir(), "p2pa-search-bench-"));
  // Canaries are known-answer checks a scripted donor would fail; verification is off per job.
  await prepareLocalDatabase(dir);
  const edge = await startEdge({
    port: await freePort(),
    persistTo: dir,
    vars: { VERIFY_CANARY_RATE: "0", MAX_BACKLOG_TASKS: "1000000" },
  });
  let worker: ReturnType<typeof spawnWorker> | undefined;
  try {
    log(`search: embedding the base set for ${opts.vectors} synthetic vectors...`);
    const model = await loadModel("use-lite", {
      cacheDir: path.join(ROOT, ".cache", "models"),
      threads: opts.threads,
    });
    const baseTexts = sentences(1500, 11);
    const base: Float32Array[] = [];
    for (let i = 0; i < baseTexts.length; i += 32)
      base.push(...(await model.embed(baseTexts.slice(i, i + 32))));
    await model.dispose();

    // Fill: one document per vector, answered by the scripted donor from the record number.
    const bulk = Array.from({ length: opts.vectors }, (_, i) => synthetic(base, i));
    const donor = new ScriptedDonor(
      edge.url,
      DEV_CREDENTIALS.workerToken,
      async (task) =>
        task.items.map((it) => bulk[Number(/^Record (\d+)\./.exec(it.text)?.[1])] as Float32Array),
      64,
    );
    await donor.connect();
    const t0 = performance.now();
    const jobIds: string[] = [];
    for (let start = 0; start < opts.vectors; start += PER_REQUEST) {
      const documents = Array.from(
        { length: Math.min(PER_REQUEST, opts.vectors - start) },
        (_, k) => ({
          id: `bulk-${start + k}`,
          text: `Record ${start + k}. ${baseTexts[(start + k) % baseTexts.length]}`,
        }),
      );
      const job = await submit(edge.url, `bulk-${start}`, {
        documents,
        collection: "bulk",
        verification: "off",
      });
      jobIds.push(job.id);
      log(`search: submitted ${start + documents.length} documents`);
    }
    await waitForJobs(edge.url, jobIds, 30 * 60_000);
    const fillSeconds = (performance.now() - t0) / 1000;
    donor.close();
    log(`search: ${opts.vectors} vectors stored in ${fillSeconds.toFixed(1)} s`);

    worker = spawnWorker(edge.url, DEV_CREDENTIALS.workerToken, [
      "--threads",
      String(opts.threads),
    ]);
    await waitForWorker(edge.url, 120_000);

    // The evaluation corpus, embedded by the real model, in its own collection.
    const corpus = searchCorpus();
    const evalJob = await submit(edge.url, "eval", {
      documents: corpus.documents.map((d) => ({ id: d.id, text: d.text, metadata: d.metadata })),
      collection: "eval",
      verification: "off",
    });
    await waitForJobs(edge.url, [evalJob.id], 10 * 60_000);

    // Latency and recall@10 over the whole index.
    const queries = [
      ...TOPICS.map((t) => t.paraphrase),
      ...corpus.queries.map((q) => q.query),
      ...sentences(opts.queries, 99),
    ].slice(0, opts.queries);
    const search = (query: string, mode: string) =>
      api<{ results: { chunk: { documentId: string } }[] }>(edge.url, "/v1/search", {
        query,
        topK: 10,
        mode,
      });
    for (const q of queries.slice(0, 5)) await search(q, "hybrid"); // loads the index, warms up
    const embedMs: number[] = [];
    const searchMs: Record<string, number[]> = { vector: [], keyword: [], hybrid: [] };
    let recallSum = 0;
    for (const q of queries) {
      const [e, embedded] = await timed(() =>
        api<{ data: { embedding: number[] | string }[] }>(edge.url, "/v1/embeddings", {
          model: "use-lite",
          input: q,
        }),
      );
      embedMs.push(e);
      for (const mode of MODES) {
        const [s, found] = await timed(() => search(q, mode));
        searchMs[mode]?.push(s);
        if (mode !== "vector") continue;
        const raw = embedded.data[0]?.embedding;
        const qv = normalise(
          typeof raw === "string"
            ? (decodeVector(raw) as Float32Array)
            : Float32Array.from(raw ?? []),
        );
        recallSum += overlapAt10(
          bulk,
          qv,
          found.results.map((r) => r.chunk.documentId),
        );
      }
    }
    const stat = (xs: number[]) => ({ p50: quantile(xs, 0.5), p99: quantile(xs, 0.99) });
    const embeddings = stat(embedMs);
    const byMode = Object.fromEntries(
      MODES.map((m) => [m, stat(searchMs[m] ?? [])]),
    ) as SearchBenchReport["searchMs"];

    // Quality per mode on the evaluation corpus.
    const quality: SearchBenchReport["quality"] = {};
    for (const mode of MODES) {
      const tally: Record<string, { at1: number; at5: number; n: number }> = {};
      for (const q of corpus.queries) {
        const r = await api<{ results: { chunk: { documentId: string } }[] }>(
          edge.url,
          "/v1/search",
          { query: q.query, topK: 5, mode, collections: ["eval"] },
        );
        const ids = r.results.map((x) => x.chunk.documentId);
        tally[q.kind] ??= { at1: 0, at5: 0, n: 0 };
        const t = tally[q.kind] as { at1: number; at5: number; n: number };
        t.n++;
        if (ids[0] === q.expect) t.at1++;
        if (ids.includes(q.expect)) t.at5++;
      }
      quality[mode] = Object.fromEntries(
        Object.entries(tally).map(([k, t]) => [k, { at1: t.at1 / t.n, at5: t.at5 / t.n, n: t.n }]),
      );
    }
    return {
      vectors: opts.vectors,
      queries: queries.length,
      embeddingsMs: embeddings,
      searchMs: byMode,
      overEmbeddingMs: {
        p50: byMode.vector.p50 - embeddings.p50,
        p99: byMode.vector.p99 - embeddings.p99,
      },
      recallAt10: recallSum / queries.length,
      fillSeconds,
      slowestStatusMs: slowestStatusMs(),
      quality,
    };
  } catch (err) {
    console.error(`search bench failed; the edge said:\n${edge.output().slice(-8000)}`);
    throw err;
  } finally {
    if (worker) killTree(worker, "SIGTERM");
    await edge.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Share of the exact top 10 (over the bulk vectors, by cosine) that the search returned. Only
 * bulk documents count, so the evaluation corpus in the same index does not skew it: the
 * exact top 10 is taken over the bulk, and the search's answer is compared after leaving out
 * anything else (at most a few evaluation chunks ever rank that high).
 */
function overlapAt10(bulk: Float32Array[], q: Float32Array, found: string[]): number {
  const scores = new Float32Array(bulk.length);
  for (let i = 0; i < bulk.length; i++) {
    const v = bulk[i] as Float32Array;
    let s = 0;
    for (let d = 0; d < DIM; d++) s += (v[d] as number) * (q[d] as number);
    scores[i] = s;
  }
  const exact = [...scores.keys()].sort((a, b) => (scores[b] as number) - (scores[a] as number));
  const got = new Set(found.filter((id) => id.startsWith("bulk-")));
  const want = exact.slice(0, got.size).map((i) => `bulk-${i}`);
  if (want.length === 0) return 1;
  return want.filter((id) => got.has(id)).length / want.length;
}
