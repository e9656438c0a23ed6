import type { ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { generatedPassages, rng } from "../../scripts/lib/corpus.js";
import {
  DEV_CREDENTIALS,
  freePort,
  type LocalEdge,
  prepareLocalDatabase,
  spawnWorker,
  startEdge,
} from "../../scripts/lib/local-edge.js";
import { type HostileReport, runHostileClient } from "./hostile.js";
import { CuttingProxy } from "./proxy.js";

export interface ChaosOptions {
  documents: number;
  workers: number;
  /** Mean interval between SIGKILLs of a random worker (it is restarted). */
  killEveryMs: number;
  /** Mean interval between connection cuts at the proxy. */
  cutEveryMs: number;
  /** Restart the edge when this fraction of chunks is done (0 disables). */
  restartEdgeAt: number[];
  hostile: boolean;
  seed: number;
  timeoutMs: number;
  log?: (line: string) => void;
}

export interface ChaosReport {
  jobId: string;
  status: string;
  chunks: number;
  faults: Record<string, { injected: number; survived: number }>;
  lost: number;
  doubled: number;
  vectors: number;
  api5xx: number;
  apiCalls: number;
  baselineSeconds: number;
  seconds: number;
  hostile: HostileReport | null;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Api {
  calls: number;
  fiveXX: number;
  get<T>(url: string): Promise<T | null>;
  post<T>(url: string, body: unknown): Promise<{ status: number; body: T } | null>;
}

function api(base: () => string): Api {
  const a: Api = {
    calls: 0,
    fiveXX: 0,
    async get<T>(p: string) {
      a.calls++;
      // The fleet-wide views are the operator's.
      const key = p.startsWith("/v1/workers") ? DEV_CREDENTIALS.adminKey : DEV_CREDENTIALS.apiKey;
      try {
        const r = await fetch(`${base()}${p}`, {
          headers: { Authorization: `Bearer ${key}` },
          signal: AbortSignal.timeout(30_000),
        });
        if (r.status >= 500) a.fiveXX++;
        return r.ok ? ((await r.json()) as T) : null;
      } catch {
        return null; // The edge is restarting: no answer is not a 5xx.
      }
    },
    async post<T>(p: string, body: unknown) {
      a.calls++;
      const r = await fetch(`${base()}${p}`, {
        method: "POST",
        headers: {
          Authorization: `Bearer ${DEV_CREDENTIALS.apiKey}`,
          "Content-Type": "application/json",
        },
        body: JSON.stringify(body),
      });
      if (r.status >= 500) a.fiveXX++;
      return { status: r.status, body: (await r.json()) as T };
    },
  };
  return a;
}

interface JobOut {
  id: string;
  status: string;
  chunks: { total: number; done: number; failed: number };
}

/** Reads a job's whole event log and counts chunk events per chunk id. */
async function storedResults(base: string, jobId: string): Promise<Map<string, number>> {
  const res = await fetch(`${base}/v1/jobs/${jobId}/events?chunks=true`, {
    headers: { Authorization: `Bearer ${DEV_CREDENTIALS.apiKey}` },
  });
  const text = await res.text();
  const counts = new Map<string, number>();
  for (const frame of text.split("\n\n")) {
    if (!frame.includes("event: chunk")) continue;
    const data = frame.split("\n").find((l) => l.startsWith("data: "));
    if (!data) continue;
    const { chunkId, status } = JSON.parse(data.slice(6)) as { chunkId: string; status: string };
    if (status === "done") counts.set(chunkId, (counts.get(chunkId) ?? 0) + 1);
  }
  return counts;
}

/**
 * Runs one job on the real local edge and real workers twice: once clean (the baseline) and
 * once while faults are injected. Returns what survived and what it cost.
 */
export async function runChaos(o: ChaosOptions): Promise<ChaosReport> {
  const log = o.log ?? (() => {});
  const random = rng(o.seed);
  const documents = generatedPassages(o.documents, 300, 1500, o.seed).map((text) => ({ text }));
  const dir = mkdtempSync(path.join(os.tmpdir(), "p2pa-chaos-"));
  await prepareLocalDatabase(dir);
  const edgePort = await freePort();
  // Short leases so work held by a killed worker comes back quickly.
  const vars = { LEASE_MS: "6000" };
  let edge: LocalEdge = await startEdge({ port: edgePort, persistTo: dir, vars });
  const proxy = new CuttingProxy(edgePort, await freePort());
  await proxy.start();
  const client = api(() => edge.url);
  const workers: ChildProcess[] = [];
  const workerLog: string[] = [];
  let spawned = 0;
  const spawn = () => {
    // Every other worker runs its model as two sessions (calls of several tasks in flight at
    // once), the others as one.
    const sessions = spawned++ % 2 === 0 ? "1" : "2";
    const w = spawnWorker(proxy.url, DEV_CREDENTIALS.workerToken, [
      "--threads",
      sessions,
      "--sessions",
      sessions,
    ]);
    // Drain the pipes (a full pipe would stall the worker) and keep the lines for diagnosis.
    const keep = (d: Buffer) => {
      workerLog.push(
        ...d
          .toString()
          .trimEnd()
          .split("\n")
          .map((l) => `[${w.pid}] ${l}`),
      );
      if (workerLog.length > 400) workerLog.splice(0, workerLog.length - 400);
    };
    w.stdout?.on("data", keep);
    w.stderr?.on("data", keep);
    return w;
  };
  for (let i = 0; i < o.workers; i++) workers.push(spawn());

  const waitDone = async (id: string, deadline: number): Promise<JobOut> => {
    for (;;) {
      const j = await client.get<JobOut>(`/v1/jobs/${id}`);
      if (j && j.status !== "queued" && j.status !== "running") return j;
      if (Date.now() > deadline)
        throw new Error(`job ${id} not finished in time: ${JSON.stringify(j)}`);
      await sleep(200);
    }
  };

  const faults: ChaosReport["faults"] = {};
  const fault = (kind: string) => {
    faults[kind] ??= { injected: 0, survived: 0 };
    (faults[kind] as { injected: number }).injected++;
  };
  try {
    // Baseline: the same job with no faults.
    const t0 = Date.now();
    // The same documents twice, both computed: the cache would serve the second from the first.
    const base = await client.post<JobOut>("/v1/jobs", { documents, cache: false });
    if (base?.status !== 202) throw new Error(`baseline submit failed: ${JSON.stringify(base)}`);
    await waitDone(base.body.id, Date.now() + o.timeoutMs);
    const baselineSeconds = (Date.now() - t0) / 1000;
    log(`baseline: ${base.body.chunks.total} chunks in ${baselineSeconds.toFixed(1)} s`);

    const t1 = Date.now();
    const sub = await client.post<JobOut>("/v1/jobs", { documents, cache: false });
    if (sub?.status !== 202) throw new Error(`submit failed: ${JSON.stringify(sub)}`);
    const job = sub.body;
    let hostile: HostileReport | null = null;
    const hostileRun = o.hostile
      ? runHostileClient(edge.url, DEV_CREDENTIALS.workerToken)
          .then((r) => {
            hostile = r;
          })
          .catch((err) => log(`hostile client stopped early: ${(err as Error).message}`))
      : Promise.resolve();
    if (o.hostile) fault("hostile peer");

    const restarts = [...o.restartEdgeAt].sort();
    let nextKill = Date.now() + o.killEveryMs * (0.5 + random());
    let nextCut = Date.now() + o.cutEveryMs * (0.5 + random());
    let finished: JobOut | null = null;
    const deadline = Date.now() + o.timeoutMs;
    while (!finished) {
      const j = await client.get<JobOut>(`/v1/jobs/${job.id}`);
      if (j && j.status !== "queued" && j.status !== "running") {
        finished = j;
        break;
      }
      if (Date.now() > deadline)
        throw new Error(`job not finished under faults: ${JSON.stringify(j)}`);
      const progress = j ? (j.chunks.done + j.chunks.failed) / j.chunks.total : 0;
      if (restarts.length && progress >= (restarts[0] as number)) {
        restarts.shift();
        fault("edge restart");
        log(`restarting the edge at ${(progress * 100).toFixed(0)}%`);
        await edge.stop("SIGKILL");
        edge = await startEdge({ port: edgePort, persistTo: dir, vars });
      }
      if (Date.now() >= nextKill) {
        const i = Math.floor(random() * workers.length);
        workers[i]?.kill("SIGKILL");
        fault("worker SIGKILL");
        await sleep(300);
        workers[i] = spawn();
        nextKill = Date.now() + o.killEveryMs * (0.5 + random());
      }
      if (Date.now() >= nextCut) {
        const mid = random() < 0.5;
        if (proxy.cutOne(mid, random)) fault(mid ? "connection cut mid-frame" : "connection cut");
        nextCut = Date.now() + o.cutEveryMs * (0.5 + random());
      }
      await sleep(100);
    }
    await hostileRun;
    const seconds = (Date.now() - t1) / 1000;

    const stored = await storedResults(edge.url, job.id);
    const chunkIds: string[] = [];
    for (let cursor: string | null = null, first = true; first || cursor; first = false) {
      const page: { data: { id: string; status: string }[]; nextCursor: string | null } | null =
        await client.get(
          `/v1/jobs/${job.id}/chunks?limit=1000${cursor ? `&cursor=${cursor}` : ""}`,
        );
      if (!page) throw new Error("could not list chunks");
      chunkIds.push(...page.data.filter((c) => c.status === "done").map((c) => c.id));
      cursor = page.nextCursor;
    }
    const lost = job.chunks.total - chunkIds.filter((id) => (stored.get(id) ?? 0) >= 1).length;
    const doubled = [...stored.values()].filter((n) => n > 1).length;
    const fleet = await client.get<{ vectors: number }>("/v1/workers");
    const ok = finished.status === "completed" && lost === 0 && doubled === 0;
    for (const f of Object.values(faults)) f.survived = ok ? f.injected : 0;
    return {
      jobId: job.id,
      status: finished.status,
      chunks: job.chunks.total,
      faults,
      lost,
      doubled,
      // Both jobs' chunks are in the index: the baseline's and this one's.
      vectors: (fleet?.vectors ?? 0) - base.body.chunks.total,
      api5xx: client.fiveXX,
      apiCalls: client.calls,
      baselineSeconds,
      seconds,
      hostile,
    };
  } finally {
    for (const w of workers) w.kill("SIGKILL");
    await proxy.stop();
    await edge.stop("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The report as a table for people. */
export function formatReport(r: ChaosReport): string {
  const rows = Object.entries(r.faults).map(([k, f]) => `| ${k} | ${f.injected} | ${f.survived} |`);
  return [
    `job ${r.jobId}: ${r.status}, ${r.chunks} chunks`,
    "",
    "| fault | injected | survived |",
    "| --- | --- | --- |",
    ...rows,
    "",
    "| outcome | value |",
    "| --- | --- |",
    `| chunks lost | ${r.lost} |`,
    `| chunks doubled | ${r.doubled} |`,
    `| vectors stored / chunks | ${r.vectors} / ${r.chunks} |`,
    `| API 5xx answers | ${r.api5xx} of ${r.apiCalls} calls |`,
    `| time without faults | ${r.baselineSeconds.toFixed(1)} s |`,
    `| time with faults | ${r.seconds.toFixed(1)} s (+${(r.seconds - r.baselineSeconds).toFixed(1)} s) |`,
    r.hostile
      ? `| hostile peer | ${r.hostile.framesSent} bad frames, ${r.hostile.errorFrames} typed errors, ${r.hostile.rejectedResults} results rejected, closed with ${r.hostile.closeCode} |`
      : "",
  ].join("\n");
}
