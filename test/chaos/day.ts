import type { ChildProcess } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { windowDisagreements } from "../../scripts/lib/agreement.js";
import { rng } from "../../scripts/lib/corpus.js";
import {
  DEV_CREDENTIALS,
  freePort,
  type LocalEdge,
  prepareLocalDatabase,
  spawnWorker,
  startEdge,
} from "../../scripts/lib/local-edge.js";

/**
 * A day in the life of one running system, compressed: hundreds of jobs of varied size in
 * bursts, idle gaps longer than Durable Object hibernation, search and embedding calls in
 * between, workers joining, leaving gracefully and being killed, and edge restarts. After every
 * burst the edge's and each worker's picture of the worker's window must agree, and every job
 * must complete within a bound.
 */
export interface DayOptions {
  /** How long jobs keep coming. */
  minutes: number;
  /** Workers come and go between 1 and this many. */
  maxWorkers: number;
  /**
   * Distinct worker tokens the workers join with, in turn (1: every worker is one donor, so
   * nothing is verified; more: results are confirmed across donors and canaries checked).
   */
  donors?: number;
  /** Edge restarts, spread evenly over the day. */
  edgeRestarts: number;
  /** Every job must complete within this long after it was submitted. */
  jobBoundMs: number;
  seed: number;
  log?: (line: string) => void;
}

export interface DayReport {
  seconds: number;
  jobs: number;
  chunks: number;
  completed: number;
  /** Jobs that did not complete within the bound (or at all). */
  late: { id: string; docs: number; status: string; seconds: number }[];
  jobSeconds: { p50: number; p95: number; max: number };
  realtime: { calls: number; failed: number; p50ms: number; p95ms: number };
  faults: Record<string, number>;
  /** Window disagreements between edge and workers found at quiet moments. */
  disagreements: string[];
  windowChecks: number;
  vectors: number;
  stalls: number;
  coordinatorStarts: number;
  api5xx: number;
  /** The first few 5xx answers, for diagnosis. */
  errors5xx: string[];
  /** Every donor's verification record at the end (all honest: none may be outvoted). */
  donors: { donor: string; agreed: number; disagreed: number; quarantinedAt: number | null }[];
  /** Results stored after a second donor confirmed them. */
  confirmed: number;
}

interface LiveWorker {
  process: ChildProcess;
  statusPort: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const quantile = (xs: number[], q: number) => {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))] as number;
};

export async function runDay(o: DayOptions): Promise<DayReport> {
  const log = o.log ?? (() => {});
  const random = rng(o.seed);
  const dir = mkdtempSync(path.join(os.tmpdir(), "p2pa-day-"));
  const donorTokens = Array.from(
    { length: Math.max(0, (o.donors ?? 1) - 1) },
    (_, i) => `p2pa_day_donor_${i}`,
  );
  await prepareLocalDatabase(dir, donorTokens);
  const tokens = [DEV_CREDENTIALS.workerToken, ...donorTokens];
  let joined = 0;
  const port = await freePort();
  // The default lease (60 s, heartbeats every 15 s), so an idle shard really hibernates; a
  // killed worker's tasks come back after the 5 s reconnect grace anyway.
  const vars = {};
  let edge: LocalEdge = await startEdge({ port, persistTo: dir, vars });
  let restarting = false;
  let api5xx = 0;
  const errors5xx: string[] = [];
  const request = async <T>(p: string, body?: unknown): Promise<{ status: number; body: T }> => {
    const r = await fetch(`${edge.url}${p}`, {
      method: body === undefined ? "GET" : "POST",
      headers: {
        // The fleet-wide views are the operator's.
        Authorization: `Bearer ${/^\/v1\/(workers|metrics)/.test(p) ? DEV_CREDENTIALS.adminKey : DEV_CREDENTIALS.apiKey}`,
        "Content-Type": "application/json",
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(30_000),
    });
    const text = await r.text();
    // 503 no_capacity with Retry-After is the API saying "no worker right now, come back":
    // a client retries it (below). Anything else at 5xx is the product failing.
    const noCapacity = r.status === 503 && text.includes('"no_capacity"');
    if (r.status >= 500 && !restarting && !noCapacity) {
      api5xx++;
      if (errors5xx.length < 10) errors5xx.push(`${p} -> ${r.status} ${text.slice(0, 300)}`);
    }
    return { status: r.status, body: (text ? JSON.parse(text) : null) as T };
  };
  /** Retries while the edge is restarting; any other failure is the product's. */
  const call = async <T>(p: string, body?: unknown): Promise<{ status: number; body: T }> => {
    for (let i = 0; ; i++) {
      try {
        return await request<T>(p, body);
      } catch (err) {
        if (i >= 50) throw err;
        await sleep(200);
      }
    }
  };

  const faults: Record<string, number> = {};
  const fault = (k: string) => {
    faults[k] = (faults[k] ?? 0) + 1;
  };
  const workers: LiveWorker[] = [];
  const join = async () => {
    const statusPort = await freePort();
    // Every other worker runs its model as two sessions, the others as one.
    const sessions = joined % 2 === 0 ? "1" : "2";
    const p = spawnWorker(edge.url, tokens[joined++ % tokens.length] as string, [
      "--threads",
      sessions,
      "--sessions",
      sessions,
      "--status-port",
      String(statusPort),
    ]);
    // Drain the pipes (a full pipe would stall the worker), keeping the last lines to say
    // why a worker ended that nobody stopped.
    const tail: string[] = [];
    const keep = (d: Buffer) => {
      tail.push(...d.toString().trimEnd().split("\n"));
      tail.splice(0, Math.max(0, tail.length - 20));
    };
    p.stdout?.on("data", keep);
    p.stderr?.on("data", keep);
    const entry = { process: p, statusPort };
    p.once("exit", (code, signal) => {
      if (workers.includes(entry))
        log(`a worker exited unasked (${code ?? signal}):\n${tail.join("\n")}`);
    });
    workers.push(entry);
    fault("worker joined");
  };
  const leave = async (kill: boolean) => {
    if (workers.length <= 1) return;
    const [w] = workers.splice(Math.floor(random() * workers.length), 1);
    if (!w) return;
    const exited = once(w.process, "exit");
    w.process.kill(kill ? "SIGKILL" : "SIGTERM");
    await exited;
    fault(kill ? "worker killed" : "worker left");
  };
  /** Waits until every live worker serves its status and says it is connected. */
  const settled = async () => {
    const deadline = Date.now() + 60_000;
    for (;;) {
      const states = await Promise.all(
        workers.map((w) =>
          fetch(`http://127.0.0.1:${w.statusPort}/status`, { signal: AbortSignal.timeout(2000) })
            .then((r) => r.json() as Promise<{ stats: { state: string } | null }>)
            .then((s) => s.stats?.state)
            .catch(() => undefined),
        ),
      );
      if (states.every((s) => s === "connected")) return;
      if (Date.now() > deadline) throw new Error(`workers not connected: ${states.join(", ")}`);
      await sleep(250);
    }
  };

  const started = Date.now();
  const end = started + o.minutes * 60_000;
  const restartAt = Array.from(
    { length: o.edgeRestarts },
    (_, i) => started + ((i + 1) * (end - started)) / (o.edgeRestarts + 1),
  );
  const jobTimes: number[] = [];
  const late: DayReport["late"] = [];
  const realtimeMs: number[] = [];
  let realtimeFailed = 0;
  const disagreements: string[] = [];
  let windowChecks = 0;
  let jobs = 0;
  let chunks = 0;
  let completed = 0;
  const sizes = () => {
    const r = random();
    if (r < 0.45) return 1 + Math.floor(random() * 10);
    if (r < 0.8) return 10 + Math.floor(random() * 90);
    if (r < 0.97) return 100 + Math.floor(random() * 400);
    return 1000 + Math.floor(random() * 1000);
  };
  try {
    await join();
    await settled();
    let burst = 0;
    while (Date.now() < end) {
      burst++;
      // Workers come and go between bursts, sometimes while a burst runs (below).
      const churn = random();
      if (churn < 0.1 && workers.length < o.maxWorkers) await join();
      else if (churn < 0.15) await leave(false);
      else if (churn < 0.2) await leave(true);
      if (restartAt.length && Date.now() >= (restartAt[0] as number)) {
        restartAt.shift();
        log(`restarting the edge (burst ${burst})`);
        restarting = true;
        await edge.stop("SIGKILL");
        edge = await startEdge({ port, persistTo: dir, vars });
        restarting = false;
        fault("edge restart");
      }
      // A burst of one to four jobs, back to back.
      const inBurst = 1 + Math.floor(random() * 4);
      const submitted: { id: string; docs: number; at: number }[] = [];
      for (let i = 0; i < inBurst; i++) {
        const docs = sizes();
        const documents = Array.from({ length: docs }, (_, d) => ({
          text: `Note ${d} of job ${jobs} in burst ${burst}: item ${Math.floor(random() * 1e6)} is about topic ${d % 23}.`,
        }));
        const res = await call<{ id: string; chunks: { total: number } }>("/v1/jobs", {
          documents,
        });
        if (res.status !== 202)
          throw new Error(`submit -> ${res.status} ${JSON.stringify(res.body)}`);
        jobs++;
        chunks += res.body.chunks.total;
        submitted.push({ id: res.body.id, docs, at: Date.now() });
      }
      // Sometimes a worker joins or dies while the burst is in flight.
      if (random() < 0.1) {
        if (random() < 0.5 && workers.length < o.maxWorkers) await join();
        else await leave(true);
      }
      // Real-time traffic between and during jobs.
      for (const body of [
        ["/v1/embeddings", { model: "use-lite", input: [`query ${burst}`] }],
        ["/v1/search", { query: `what is topic ${burst % 23} about`, topK: 5 }],
      ] as const) {
        const t = performance.now();
        let r = await call(body[0], body[1]).catch(() => null);
        if (r?.status === 503) {
          // As a client does: wait as long as Retry-After says (a worker just left), once.
          fault("real-time call retried after 503");
          await sleep(2000);
          r = await call(body[0], body[1]).catch(() => null);
        }
        if (r?.status === 200) realtimeMs.push(performance.now() - t);
        else {
          realtimeFailed++;
          log(`real-time ${body[0]} failed: ${r?.status} ${JSON.stringify(r?.body).slice(0, 200)}`);
        }
      }
      for (const s of submitted) {
        for (;;) {
          const j = await call<{ status: string }>(`/v1/jobs/${s.id}`);
          const waited = Date.now() - s.at;
          if (j.body.status === "completed") {
            completed++;
            jobTimes.push(waited / 1000);
            if (waited > o.jobBoundMs)
              late.push({ id: s.id, docs: s.docs, status: "completed", seconds: waited / 1000 });
            break;
          }
          if (j.body.status !== "queued" && j.body.status !== "running") {
            late.push({ id: s.id, docs: s.docs, status: j.body.status, seconds: waited / 1000 });
            break;
          }
          if (waited > 3 * o.jobBoundMs) {
            const fleet = await call("/v1/workers");
            late.push({ id: s.id, docs: s.docs, status: j.body.status, seconds: waited / 1000 });
            log(`job ${s.id} stuck ${j.body.status}: ${JSON.stringify(fleet.body)}`);
            throw new Error(`job ${s.id} (${s.docs} docs) stuck ${j.body.status}`);
          }
          await sleep(200);
        }
      }
      // A quiet moment: both sides must tell the same story about every worker's window.
      await settled();
      let found: string[] = [];
      for (let i = 0; i < 30; i++) {
        found = await windowDisagreements(
          edge.url,
          workers.map((w) => w.statusPort),
        ).catch((err: Error) => [`could not compare: ${err.message}`]);
        if (found.length === 0) break;
        await sleep(100);
      }
      windowChecks++;
      if (found.length) {
        log(`burst ${burst}: ${found.join("; ")}`);
        disagreements.push(...found.map((f) => `burst ${burst}: ${f}`));
      }
      if (burst % 10 === 0)
        log(
          `${((Date.now() - started) / 1000).toFixed(0)} s: ${completed}/${jobs} jobs, ${chunks} chunks, ${workers.length} workers`,
        );
      // Now and then the system sits idle long enough for the coordinator to hibernate.
      if (random() < 0.06) {
        fault("idle gap over hibernation");
        await sleep(11_000 + random() * 3000);
      } else await sleep(random() * 1500);
    }
    const metrics = await (
      await fetch(`${edge.url}/v1/metrics`, {
        headers: { Authorization: `Bearer ${DEV_CREDENTIALS.adminKey}` },
      })
    ).text();
    const metric = (name: string) =>
      Number(metrics.match(new RegExp(`^${name} (\\d+)$`, "m"))?.[1] ?? Number.NaN);
    const fleet = await call<{ vectors: number }>("/v1/workers");
    return {
      seconds: (Date.now() - started) / 1000,
      jobs,
      chunks,
      completed,
      late,
      jobSeconds: {
        p50: quantile(jobTimes, 0.5),
        p95: quantile(jobTimes, 0.95),
        max: Math.max(0, ...jobTimes),
      },
      realtime: {
        calls: realtimeMs.length + realtimeFailed,
        failed: realtimeFailed,
        p50ms: quantile(realtimeMs, 0.5),
        p95ms: quantile(realtimeMs, 0.95),
      },
      faults,
      disagreements,
      windowChecks,
      vectors: fleet.body.vectors,
      stalls: metric("p2pa_dispatch_stalls_total"),
      coordinatorStarts: metric("p2pa_coordinator_starts_total"),
      donors: (
        (fleet.body as { shards?: { donors?: DayReport["donors"] }[] }).shards ?? []
      ).flatMap((s) => s.donors ?? []),
      confirmed: metric("p2pa_results_confirmed_total"),
      api5xx,
      errors5xx,
    };
  } finally {
    for (const w of workers) w.process.kill("SIGKILL");
    await edge.stop("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The report as a table for people. */
export function formatDay(r: DayReport): string {
  return [
    "| day in the life | value |",
    "| --- | --- |",
    `| wall time | ${r.seconds.toFixed(0)} s |`,
    `| jobs completed / submitted | ${r.completed} / ${r.jobs} |`,
    `| chunks | ${r.chunks} (vectors stored: ${r.vectors}) |`,
    `| job time p50 / p95 / max | ${r.jobSeconds.p50.toFixed(1)} / ${r.jobSeconds.p95.toFixed(1)} / ${r.jobSeconds.max.toFixed(1)} s |`,
    `| jobs over the bound | ${r.late.length} |`,
    `| real-time calls (failed) | ${r.realtime.calls} (${r.realtime.failed}), p50 ${r.realtime.p50ms.toFixed(0)} ms, p95 ${r.realtime.p95ms.toFixed(0)} ms |`,
    ...Object.entries(r.faults).map(([k, n]) => `| ${k} | ${n} |`),
    `| window checks (disagreements) | ${r.windowChecks} (${r.disagreements.length}) |`,
    `| stalls repaired by the watchdog | ${r.stalls} |`,
    `| coordinator starts | ${r.coordinatorStarts} |`,
    `| API 5xx answers | ${r.api5xx} |`,
    `| results confirmed by a second donor | ${r.confirmed} |`,
    `| donors (agreed / outvoted / quarantined) | ${r.donors.map((d) => `${d.agreed}/${d.disagreed}/${d.quarantinedAt ? "yes" : "no"}`).join(", ") || "-"} |`,
  ].join("\n");
}
