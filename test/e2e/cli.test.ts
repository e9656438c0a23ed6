import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import type { Job, SearchResponse, WorkerList } from "@p2pa/shared";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generatedPassages } from "../../scripts/lib/corpus.js";
import { ROOT } from "../../scripts/lib/local-edge.js";
import { cuttableProxy, DEV_CREDENTIALS, type System, startSystem } from "./harness.js";

const P2PA = path.join(ROOT, "apps", "worker-node", "bin", "p2pa.js");

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the real `p2pa` program as a user would, with the server and key from the environment. */
function p2pa(
  args: string[],
  env: Record<string, string> = {},
  onStderr?: (soFar: string) => void,
): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [P2PA, ...args], {
      env: {
        ...process.env,
        P2PA_SERVER: sys.edge.url,
        P2PA_API_KEY: DEV_CREDENTIALS.apiKey,
        NO_COLOR: "1",
        ...env,
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => {
      stderr += d;
      onStderr?.(stderr);
    });
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

let sys: System;
let dir: string;

beforeAll(async () => {
  sys = await startSystem();
  await sys.addWorker(["--threads", "2"]);
  dir = mkdtempSync(path.join(os.tmpdir(), "p2pa-cli-"));
  mkdirSync(path.join(dir, "notes", "sub"), { recursive: true });
  writeFileSync(
    path.join(dir, "notes", "cats.md"),
    "# Pets\n\nThe cat sat on the warm mat by the fire and purred all evening.\n",
  );
  writeFileSync(
    path.join(dir, "notes", "sub", "markets.txt"),
    "Stock markets fell sharply today as investors worried about rising interest rates.\n",
  );
  writeFileSync(
    path.join(dir, "page.html"),
    "<html><head><title>Garden</title></head><body><h1>Garden</h1><p>Tomatoes need full sun and regular watering through the summer.</p></body></html>",
  );
  writeFileSync(path.join(dir, "photo.png"), Buffer.from([0x89, 0x50, 0x4e, 0x47]));
}, 180_000);

afterAll(async () => {
  await sys?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("p2pa command line", () => {
  let job: Job;

  it("submits a folder, follows it to the end and names documents by their path in it", async () => {
    const run = await p2pa(["submit", dir, "--collection", "cli", "--json"]);
    expect(run.stderr).toContain("skipped");
    expect(run.stderr).toContain("photo.png");
    expect(run.code, run.stderr).toBe(0);
    const jobs = JSON.parse(run.stdout) as Job[];
    expect(jobs).toHaveLength(1);
    job = jobs[0] as Job;
    expect(job).toMatchObject({ status: "completed", collection: "cli", documents: 3 });
    expect(job.chunks.done).toBe(job.chunks.total);
    expect(job.chunks.total).toBeGreaterThanOrEqual(3);
    const docs = (
      await sys.api<{ data: { id: string }[] }>("/v1/documents?collection=cli&limit=10")
    ).body.data.map((d) => d.id);
    expect(docs.sort()).toEqual(["notes/cats.md", "notes/sub/markets.txt", "page.html"]);
  });

  it("sends a folder again without computing anything that did not change", async () => {
    const run = await p2pa(["submit", dir, "--collection", "cli"]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toMatch(/submitted 3 documents in 1 job \(3 unchanged\)/);
    // A table on stdout, with the job's state.
    expect(run.stdout).toMatch(/^ID\s+STATUS\s+PROGRESS/m);
    expect(run.stdout).toContain("completed");
  });

  it("searches, as a table and as JSON, with metadata filters", async () => {
    const table = await p2pa([
      "search",
      "a kitten resting on a rug",
      "--collection",
      "cli",
      "-n",
      "2",
    ]);
    expect(table.code, table.stderr).toBe(0);
    const lines = table.stdout.trim().split("\n");
    expect(lines[0]).toMatch(/^#\s+SCORE\s+DOCUMENT\s+WHERE\s+TEXT/);
    expect(lines[1]).toContain("notes/cats.md");
    expect(lines[1]).toContain("Pets");

    const filtered = await p2pa([
      "search",
      "a kitten resting on a rug",
      "--json",
      "--filter",
      "documentId=notes/sub/markets.txt",
    ]);
    expect(filtered.code, filtered.stderr).toBe(0);
    const res = JSON.parse(filtered.stdout) as SearchResponse;
    expect(res.results.length).toBeGreaterThan(0);
    expect(res.results.every((r) => r.chunk.documentId === "notes/sub/markets.txt")).toBe(true);

    const bad = await p2pa(["search", "x", "--filter", "no operator"]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain("expected key=value");
  });

  it("lists jobs, shows one, lists workers and exports a job's vectors", async () => {
    const jobs = await p2pa(["jobs", "--json", "--collection", "cli"]);
    expect(jobs.code, jobs.stderr).toBe(0);
    expect((JSON.parse(jobs.stdout) as { data: Job[] }).data.map((j) => j.id)).toContain(job.id);
    const table = await p2pa(["jobs"]);
    expect(table.stdout).toMatch(new RegExp(`^${job.id}\\s+completed\\s+100%`, "m"));

    const one = await p2pa(["job", job.id]);
    expect(one.code, one.stderr).toBe(0);
    expect(one.stdout).toMatch(new RegExp(`chunks\\s+${job.chunks.total} done, 0 failed`));

    const workers = await p2pa(["workers", "--json"]);
    const list = JSON.parse(workers.stdout) as WorkerList;
    const all = list.shards.flatMap((s) => s.workers);
    expect(all).toHaveLength(1);
    expect(all[0]).toMatchObject({ device: "cpu", threads: 2, models: ["use-lite"] });
    expect((await p2pa(["workers"])).stdout).toMatch(/^1 worker, [\d.]+ chunks\/s$/m);

    const exported = await p2pa(["export", job.id]);
    expect(exported.code, exported.stderr).toBe(0);
    const rows = exported.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { documentId: string; vector: number[] });
    expect(rows).toHaveLength(job.chunks.total);
    expect(rows.every((r) => r.vector.length === 512)).toBe(true);
  });

  it("says what is wrong with a bad key, an unknown job or an unreachable server", async () => {
    const badKey = await p2pa(["jobs"], { P2PA_API_KEY: "p2pa_wrong" });
    expect(badKey.code).toBe(4);
    expect(badKey.stderr).toMatch(/unauthorized, HTTP 401/);
    expect(badKey.stderr).toContain("Check --key");

    const unknown = await p2pa(["job", "job_nope"]);
    expect(unknown.code).toBe(3);
    expect(unknown.stderr).toMatch(/not_found, HTTP 404/);

    const away = await p2pa(["jobs", "--server", "http://127.0.0.1:9"]);
    expect(away.code).toBe(3);
    expect(away.stderr).toContain("cannot reach the server");

    const noKey = await p2pa(["jobs"], { P2PA_API_KEY: "" });
    expect(noKey.code).toBe(2);
    expect(noKey.stderr).toContain("P2PA_API_KEY");
  });

  it("follows a running job through a cut connection to its end", async () => {
    const proxy = await cuttableProxy(sys.edge.url);
    try {
      const documents = generatedPassages(600, 200, 800, 11).map((text) => ({ text }));
      const big = (await sys.api<Job>("/v1/jobs", { json: { documents, collection: "cli-big" } }))
        .body;
      // Every connection is cut once the first progress line is out, as a flaky network would.
      let cut = false;
      const run = await p2pa(["watch", big.id], { P2PA_SERVER: proxy.url }, (err) => {
        if (!cut && /chunks \d+\//.test(err)) {
          cut = true;
          proxy.cut();
        }
      });
      expect(cut).toBe(true);
      expect(run.code, run.stderr).toBe(0);
      expect(run.stderr).toContain(`resumed following job ${big.id}`);
      expect(run.stdout).toMatch(new RegExp(`^${big.id}\\s+completed\\s+100%`, "m"));
      // Progress lines on a non-terminal: the last one is the whole job.
      expect(run.stderr).toContain(`chunks ${big.chunks.total}/${big.chunks.total}`);
    } finally {
      await proxy.close();
    }
  });
});
