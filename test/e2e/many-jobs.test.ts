import type { ChildProcess } from "node:child_process";
import type { EmbeddingsResponse, Job, SearchResponse } from "@p2pa/shared";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { windowDisagreements } from "../../scripts/lib/agreement.js";
import {
  allChunks,
  DEV_CREDENTIALS,
  freePort,
  type System,
  startSystem,
  waitForJob,
} from "./harness.js";

/**
 * One running system through twenty ordinary jobs, as a user lives with it: sizes from 1 to
 * 2,000 documents, some back to back, some after idle gaps longer than a Durable Object's
 * hibernation timeout, real-time calls between them, and the worker restarted once. Every job
 * must complete within a bound, and after each one the Dispatcher's picture of the worker's
 * window must equal the worker's own.
 */

const JOB_BOUND_MS = 90_000;
/**
 * Longer than the 10 s after which an idle Durable Object may be hibernated, plus the seconds
 * the coordinator keeps working after a job reads completed (its end: webhooks, pruning the
 * versions it replaced). 12 s was not enough once documents had versions.
 */
const IDLE_GAP_MS = 25_000;

type Step = { jobs: number[]; sameTextsAs?: number } | { idle: number } | { restartWorker: true };

// Job numbers count from 1 in submission order.
const PLAN: Step[] = [
  { jobs: [200] },
  { jobs: [200], sameTextsAs: 1 }, // the same texts again: the case that stalled first
  { jobs: [1, 50] }, // back to back
  { jobs: [300] },
  { idle: IDLE_GAP_MS },
  { jobs: [7, 400, 120] },
  { jobs: [1] },
  { restartWorker: true },
  { jobs: [900] },
  { idle: IDLE_GAP_MS },
  { jobs: [33, 2, 64] },
  { jobs: [2000] },
  { jobs: [1, 1, 5] },
  { jobs: [250] },
  { jobs: [10, 90] },
];

let sys: System;
let worker: ChildProcess;
let statusPort: number;

async function startWorker() {
  statusPort = await freePort();
  worker = await sys.addWorker(["--threads", "1", "--status-port", String(statusPort)]);
}

beforeAll(async () => {
  sys = await startSystem();
  await startWorker();
}, 180_000);

afterAll(async () => {
  await sys?.stop();
});

const documentsFor = (k: number, n: number) =>
  Array.from({ length: n }, (_, i) => ({
    id: `doc-${i}`,
    text: `Document ${i} of job ${k} talks about topic ${i % 17} and what follows from it.`,
  }));

async function realtimeCalls() {
  const emb = await sys.api<EmbeddingsResponse>("/v1/embeddings", {
    json: { model: "use-lite", input: ["hello world", "a second input"] },
  });
  expect(emb.status).toBe(200);
  expect(emb.body.data.map((d) => d.embedding.length)).toEqual([512, 512]);
  const search = await sys.api<SearchResponse>("/v1/search", {
    json: { query: "what topic 3 talks about", topK: 3 },
  });
  expect(search.status).toBe(200);
  expect(search.body.results.length).toBe(3);
}

/** The edge's and the worker's accounts of the worker's window and credits, once all work is acked. */
async function windowsAgree(): Promise<string[]> {
  let last: string[] = [];
  // A result's ack may still be on the wire when the job reads completed.
  for (let i = 0; i < 20; i++) {
    last = await windowDisagreements(sys.edge.url, [statusPort], { credits: true });
    if (last.length === 0) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  return last;
}

describe("one system through many jobs", () => {
  it("completes twenty jobs of varied sizes across idle gaps, real-time calls and a worker restart", async () => {
    let k = 0;
    const finished: { k: number; n: number; id: string; seconds: number }[] = [];
    const started = Date.now();
    await realtimeCalls().catch(() => {}); // the index is empty: only a warm-up
    for (const step of PLAN) {
      if ("idle" in step) {
        await new Promise((r) => setTimeout(r, step.idle));
        continue;
      }
      if ("restartWorker" in step) {
        worker.kill("SIGTERM");
        await new Promise((r) => worker.once("exit", r));
        await startWorker();
        continue;
      }
      const batch: { k: number; n: number; id: string; at: number }[] = [];
      for (const n of step.jobs) {
        k += 1;
        // A job of texts already seen would be skipped (same ids) or served from the
        // embedding cache: the repeats are sent as new documents with the cache off, so the
        // same texts are dispatched again, as in the stall this test was written for.
        const repeat = step.sameTextsAs !== undefined;
        const documents = documentsFor(step.sameTextsAs ?? k, n).map((d) =>
          repeat ? { text: d.text } : d,
        );
        const res = await sys.api<Job>("/v1/jobs", {
          json: { documents, ...(repeat ? { cache: false } : {}) },
        });
        expect(res.status, JSON.stringify(res.body)).toBe(202);
        batch.push({ k, n, id: res.body.id, at: Date.now() });
      }
      for (const b of batch) {
        let job: Job;
        try {
          job = await waitForJob<Job>(sys, b.id, JOB_BOUND_MS);
        } catch (err) {
          const workers = await sys.api("/v1/workers", { admin: true });
          throw new Error(
            `job ${b.k} (${b.n} docs) did not complete after ${finished.length} jobs: ${(err as Error).message}\n/v1/workers: ${JSON.stringify(workers.body)}`,
          );
        }
        expect(job).toMatchObject({ status: "completed", chunks: { done: b.n, failed: 0 } });
        finished.push({ k: b.k, n: b.n, id: b.id, seconds: (Date.now() - b.at) / 1000 });
      }
      expect(await windowsAgree(), `after job ${k}`).toEqual([]);
      await realtimeCalls();
    }
    expect(k).toBe(20);
    expect(finished.map((f) => f.k)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    // Nothing stalled behind the scenes either: the watchdog never had to step in.
    const metrics = await fetch(`${sys.edge.url}/v1/metrics`, {
      headers: { Authorization: `Bearer ${DEV_CREDENTIALS.adminKey}` },
    }).then((r) => r.text());
    expect(metrics).toMatch(/^p2pa_dispatch_stalls_total 0$/m);
    // The idle gaps really did put the coordinator to sleep: it started again after them.
    const starts = Number(metrics.match(/^p2pa_coordinator_starts_total (\d+)$/m)?.[1]);
    expect(starts).toBeGreaterThanOrEqual(2);
    const health = await fetch(`${sys.edge.url}/healthz`);
    expect(health.status).toBe(200);
    // What the edge lists as done, the vector index holds: every chunk still kept (versions
    // later jobs superseded are pruned) comes back with its vector.
    let kept = 0;
    for (const f of finished) {
      const chunks = await allChunks(sys, f.id);
      kept += chunks.length;
      expect(
        chunks.filter((c) => c.status !== "done" || c.vector?.length !== 512).map((c) => c.id),
        `job ${f.k}`,
      ).toEqual([]);
    }
    expect(kept).toBeGreaterThanOrEqual(2000);
    console.log(
      `20 jobs in ${((Date.now() - started) / 1000).toFixed(0)} s; slowest ${Math.max(...finished.map((f) => f.seconds)).toFixed(1)} s; coordinator starts: ${starts}`,
    );
  }, 600_000);
});
