import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawnWorker } from "../../scripts/lib/local-edge.js";
import { DEV_CREDENTIALS, type System, startSystem } from "./harness.js";

// `p2pa-worker doctor` as a donor runs it, against the real edge: the built program, the
// development tokens, and the model cache the other end-to-end workers use.

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function doctor(token: string, args: string[] = []): Promise<Run> {
  const child = spawnWorker(sys.edge.url, token, ["doctor", ...args], { NO_COLOR: "1" });
  let stdout = "";
  let stderr = "";
  child.stdout?.on("data", (d) => (stdout += d));
  child.stderr?.on("data", (d) => (stderr += d));
  return new Promise((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

let sys: System;

beforeAll(async () => {
  sys = await startSystem();
}, 180_000);

afterAll(async () => {
  await sys?.stop();
});

describe("p2pa-worker doctor against the real edge", () => {
  it("passes every check with the development worker token", async () => {
    const run = await doctor(DEV_CREDENTIALS.workerToken, ["--threads", "1", "--device", "cpu"]);
    expect(run.code, `${run.stdout}\n${run.stderr}`).toBe(0);
    const lines = run.stdout.trimEnd().split("\n");
    expect(lines.map((l) => l.split(/\s+/).slice(0, 2).join(" "))).toEqual([
      "ok node",
      "ok server",
      "ok token",
      "ok model",
      "ok device",
      "all 5",
    ]);
    expect(run.stdout).toMatch(/ok\s+model\s+use-lite .*512 dimensions, \d+\.\d ms per embedding/);
  });

  it("says an API key is not a worker token, and exits 1", async () => {
    const run = await doctor(DEV_CREDENTIALS.apiKey, ["--json"]);
    expect(run.code).toBe(1);
    const report = JSON.parse(run.stdout) as {
      ok: boolean;
      checks: { name: string; ok: boolean; detail: string; hint?: string }[];
    };
    expect(report.ok).toBe(false);
    expect(report.checks.map((c) => [c.name, c.ok])).toEqual([
      ["node", true],
      ["server", true],
      ["token", false],
      ["model", false],
      ["device", false],
    ]);
    expect(report.checks[2]).toMatchObject({
      detail: "that token is an API key, not a worker token",
      hint: "Use the worker token the operator gave you.",
    });
  });
});
