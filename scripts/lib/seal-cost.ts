import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import * as here from "./local-edge.js";

type Harness = Pick<typeof here, "prepareLocalDatabase" | "startEdge" | "DEV_CREDENTIALS">;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

/** Submits the corpus as one job and reads every chunk back: the two timings that sealing adds to. */
async function submitAndRead(
  url: string,
  apiKey: string,
  passages: string[],
  chunking: { maxChars: number; overlap: number },
) {
  const auth = { Authorization: `Bearer ${apiKey}` };
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/jobs`, {
    method: "POST",
    headers: { ...auth, "Content-Type": "application/json" },
    body: JSON.stringify({ documents: passages.map((text) => ({ text })), chunking }),
  });
  if (res.status !== 202) throw new Error(`submit failed: ${res.status} ${await res.text()}`);
  const submitMs = performance.now() - t0;
  const { id } = (await res.json()) as { id: string };
  const t1 = performance.now();
  let chunks = 0;
  for (let cursor: string | null = ""; cursor !== null; ) {
    const page = (await (
      await fetch(`${url}/v1/jobs/${id}/chunks?limit=1000${cursor ? `&cursor=${cursor}` : ""}`, {
        headers: auth,
      })
    ).json()) as { data: { text: string }[]; nextCursor: string | null };
    chunks += page.data.length;
    cursor = page.nextCursor;
  }
  return { submitMs, readMs: performance.now() - t1, chunks };
}

/**
 * What data protection costs a job: the same submit and full read of every chunk, on this
 * checkout's edge (text sealed at rest, audit, scopes and limits) and on a baseline
 * checkout's edge (`--baseline-dir`, e.g. the release before them), both running at once on
 * this machine with runs interleaved, so noise hits both alike. Ratios are this/baseline.
 */
export async function encryptionCost(
  passages: string[],
  chunking: { maxChars: number; overlap: number },
  runs: number,
  baselineDir: string | undefined,
) {
  const sides: { name: string; harness: Harness; port: number }[] = [
    { name: "this", harness: here, port: await here.freePort() },
  ];
  if (baselineDir) {
    const harness = (await import(
      path.resolve(baselineDir, "scripts/lib/local-edge.ts")
    )) as Harness;
    sides.push({ name: "baseline", harness, port: await here.freePort() });
  }
  // Started inside the try, so an edge that did start is stopped when the next one fails.
  const edges: ((typeof sides)[number] & { dir: string; edge: here.LocalEdge })[] = [];
  const times = new Map(
    sides.map((e) => [e.name, { submit: [] as number[], read: [] as number[] }]),
  );
  let chunks = 0;
  try {
    for (const s of sides) {
      const dir = mkdtempSync(path.join(os.tmpdir(), `p2pa-bench-${s.name}-`));
      await s.harness.prepareLocalDatabase(dir);
      edges.push({ ...s, dir, edge: await s.harness.startEdge({ port: s.port, persistTo: dir }) });
    }
    // One warm-up job each, then alternating runs.
    for (let r = -1; r < runs; r++) {
      for (const e of r % 2 ? edges : [...edges].reverse()) {
        const t = await submitAndRead(
          e.edge.url,
          e.harness.DEV_CREDENTIALS.apiKey,
          passages,
          chunking,
        );
        chunks = t.chunks;
        if (r < 0) continue;
        times.get(e.name)?.submit.push(t.submitMs);
        times.get(e.name)?.read.push(t.readMs);
      }
    }
  } finally {
    for (const e of edges) {
      await e.edge.stop();
      rmSync(e.dir, { recursive: true, force: true });
    }
  }
  const mine = times.get("this") as { submit: number[]; read: number[] };
  const base = times.get("baseline");
  return {
    chunks,
    submitMs: { runs: mine.submit, median: median(mine.submit) },
    readAllChunksMs: { runs: mine.read, median: median(mine.read) },
    ...(base
      ? {
          baseline: {
            dir: baselineDir,
            submitMs: { runs: base.submit, median: median(base.submit) },
            readAllChunksMs: { runs: base.read, median: median(base.read) },
          },
          submitRatio: median(mine.submit.map((m, i) => m / (base.submit[i] as number))),
          readRatio: median(mine.read.map((m, i) => m / (base.read[i] as number))),
        }
      : {}),
  };
}
