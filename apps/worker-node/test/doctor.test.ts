import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseConfig } from "../src/config.js";
import { type CheckResult, meetsRange, runDoctor } from "../src/doctor.js";
import { writeTinyModelFolder } from "./fixtures/tiny-bert.js";

// `p2pa-worker doctor` against real HTTP servers on this machine (none listening, one that
// refuses the token, one that takes it) and the real use-lite model, converted into a cache
// folder of the test's own: what a donor sees and the exit code a script gets.

let cacheDir: string;
const servers: Server[] = [];

beforeAll(async () => {
  cacheDir = await mkdtemp(path.join(os.tmpdir(), "p2pa-doctor-"));
});

afterAll(async () => {
  for (const s of servers) s.close();
  await rm(cacheDir, { recursive: true, force: true });
});

/** A server answering the worker's probe with `status` (and `body`), as an edge would. */
async function answering(status: number, body?: unknown): Promise<string> {
  const server = createServer((req, res) => {
    // Only the route and a bearer token make it a worker's probe.
    if (req.url !== "/v1/workers/connect" || !req.headers.authorization?.startsWith("Bearer ")) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(status, { "Content-Type": "application/json" });
    res.end(body === undefined ? "" : JSON.stringify(body));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  servers.push(server);
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/**
 * A server that takes the token and lists the models it serves (`GET /v1/models/{id}`: 200, or
 * 404 model_not_found naming them), as an edge with a model list does.
 */
async function serving(models: Record<string, number>): Promise<string> {
  const server = createServer((req, res) => {
    const json = (status: number, body: unknown) => {
      res.writeHead(status, { "Content-Type": "application/json" });
      res.end(JSON.stringify(body));
    };
    if (!req.headers.authorization?.startsWith("Bearer ")) return json(401, {});
    if (req.url === "/v1/workers/connect") return json(426, {});
    const id = /^\/v1\/models\/([^/]+)$/.exec(req.url ?? "")?.[1];
    if (id === undefined) return json(404, { error: { code: "not_found", message: "no route" } });
    const dimension = models[decodeURIComponent(id)];
    if (dimension === undefined)
      return json(404, {
        error: {
          code: "model_not_found",
          message: `model ${id} is not served here`,
          details: { available: Object.keys(models) },
        },
      });
    json(200, { id, object: "model", dimension, maxTokens: 128, workers: 1 });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  servers.push(server);
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** A folder holding the tiny test model, whose manifest calls it `tiny-bert`. */
async function tinyFolder(): Promise<string> {
  return writeTinyModelFolder(path.join(cacheDir, "folders", "tiny-bert"), "tiny-bert");
}

/** An address where nothing listens: a port the system gave out and took back. */
async function nobodyThere(): Promise<string> {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  await new Promise((r) => server.close(r));
  return `http://127.0.0.1:${port}`;
}

interface Run {
  code: number;
  text: string;
}

async function doctor(
  argv: string[],
  opts: { tty?: boolean; env?: NodeJS.ProcessEnv; nodeVersion?: string } = {},
): Promise<Run> {
  const action = parseConfig(
    ["doctor", "--token", "wt_test", "--cache-dir", cacheDir, "--threads", "1", ...argv],
    {},
  );
  if (action.kind !== "doctor") throw new Error(`expected doctor, got ${action.kind}`);
  let text = "";
  const out = {
    isTTY: opts.tty ?? false,
    write(s: string) {
      text += s;
      return true;
    },
  } as unknown as NodeJS.WriteStream;
  const code = await runDoctor(action.config, {
    json: action.json,
    out,
    env: opts.env ?? {},
    ...(opts.nodeVersion ? { nodeVersion: opts.nodeVersion } : {}),
  });
  return { code, text };
}

/** The report's line for a check, and the hint under it. */
function lineOf(text: string, name: string): string {
  const lines = text.split("\n");
  const i = lines.findIndex((l) => new RegExp(`^\\S+\\s+${name}\\s`).test(l));
  if (i < 0) throw new Error(`no line for ${name} in:\n${text}`);
  const hint = lines[i + 1]?.startsWith("     fix:") ? `\n${lines[i + 1]}` : "";
  return `${lines[i]}${hint}`;
}

describe("p2pa-worker doctor", () => {
  it("fails on a server that is not there, says what to check, and skips the rest", async () => {
    const url = await nobodyThere();
    const started = Date.now();
    const run = await doctor(["--server", url]);
    // One try, not the minute of retries a normal start allows.
    expect(Date.now() - started).toBeLessThan(5000);
    expect(run.code).toBe(1);
    expect(lineOf(run.text, "node")).toMatch(
      /^ok\s+node\s+Node\.js \d+\.\d+\.\d+ \(needs >=20\.3\)/,
    );
    expect(lineOf(run.text, "server")).toMatch(
      new RegExp(`^FAIL\\s+server\\s+cannot reach the server at ${url} \\(ECONNREFUSED\\)`),
    );
    expect(lineOf(run.text, "server")).toContain(
      "fix: Check --server and that the server is running.",
    );
    for (const later of ["token", "model", "device"])
      expect(lineOf(run.text, later)).toMatch(
        new RegExp(`^skip\\s+${later}\\s+not run: the server check failed$`),
      );
    expect(run.text.trimEnd().split("\n").at(-1)).toBe(
      "the server check failed: fix it and run doctor again",
    );
  });

  it("fails the token check on 401, with the server reached", async () => {
    const run = await doctor(["--server", await answering(401)]);
    expect(run.code).toBe(1);
    expect(lineOf(run.text, "server")).toMatch(/^ok\s+server\s+http:\/\/127\.0\.0\.1:\d+ answered/);
    expect(lineOf(run.text, "token")).toMatch(
      /^FAIL\s+token\s+the server rejected the token\n\s+fix: Ask the operator for a worker token\./,
    );
    expect(lineOf(run.text, "model")).toMatch(/^skip\s+model\s+not run: the token check failed/);
  });

  it("tells an API key and a quarantined token apart on 403", async () => {
    const apiKey = await doctor([
      "--server",
      await answering(403, { error: { code: "forbidden" } }),
    ]);
    expect(lineOf(apiKey.text, "token")).toContain("that token is an API key, not a worker token");
    const quarantined = await doctor([
      "--server",
      await answering(403, { error: { code: "quarantined", message: "wrong vectors" } }),
    ]);
    expect(quarantined.code).toBe(1);
    expect(lineOf(quarantined.text, "token")).toContain(
      "the server quarantined this token: wrong vectors",
    );
  });

  it("takes a refusal of the default model at the probe as a server that took the token", async () => {
    // A server that checks the model before the upgrade: the token was checked first.
    for (const [status, code] of [
      [404, "model_not_found"],
      [422, "unprocessable"],
    ] as const) {
      const url = await answering(status, {
        error: { code, message: "unknown model use-lite", details: { available: ["minilm"] } },
      });
      // A cache of its own: the test of a first load below wants the shared one empty.
      const own = path.join(cacheDir, "probe");
      const run = await doctor(["--server", url, "--json", "--cache-dir", own]);
      const report = JSON.parse(run.text) as { checks: CheckResult[] };
      expect(report.checks.slice(1, 3)).toEqual([
        { name: "server", ok: true, detail: expect.stringMatching(/answered in \d+ ms$/) },
        { name: "token", ok: true, detail: "accepted as a worker token" },
      ]);
    }
    // Any other 404 is no p2pa server.
    const run = await doctor(["--server", await answering(404, { error: { code: "not_found" } })]);
    expect(lineOf(run.text, "server")).toMatch(/^FAIL\s+server\s+unexpected answer 404/);
  });

  it("fails the server check on something that is not a p2pa server", async () => {
    const run = await doctor(["--server", await answering(200)]);
    expect(run.code).toBe(1);
    expect(lineOf(run.text, "server")).toMatch(
      /^FAIL\s+server\s+unexpected answer 200 from .*\/v1\/workers\/connect\n\s+fix: Is --server a p2pa server\?/,
    );
    expect(lineOf(run.text, "token")).toMatch(/^skip/);
  });

  it("passes every check against a server that takes the token, with the real model", async () => {
    const run = await doctor(["--server", await answering(426), "--device", "cpu"]);
    expect(run.code, run.text).toBe(0);
    expect(lineOf(run.text, "token")).toMatch(/^ok\s+token\s+accepted as a worker token$/);
    const model = lineOf(run.text, "model");
    expect(model).toMatch(
      /^ok\s+model\s+use-lite loaded into .*use-lite in \d+ ms; 512 dimensions, \d+\.\d ms per embedding$/,
    );
    expect(model).toContain(cacheDir);
    expect(lineOf(run.text, "device")).toMatch(
      /^ok\s+device\s+cpu \(execution providers: cpu; 1 session of 1 thread\), as --device cpu asks$/,
    );
    expect(run.text.trimEnd().split("\n").at(-1)).toBe("all 5 checks passed");
    // A second run finds the converted model in the cache.
    const again = await doctor(["--server", await answering(426)]);
    expect(again.code).toBe(0);
    expect(lineOf(again.text, "model")).toMatch(/use-lite loaded from /);
  });

  it("says plainly when --device cuda cannot start CUDA (the worker would use the CPU)", async () => {
    const run = await doctor(["--server", await answering(426), "--device", "cuda"]);
    const device = lineOf(run.text, "device");
    // This machine may have a working CUDA provider; then the check passes on CUDA.
    if (device.startsWith("ok")) {
      expect(device).toMatch(/^ok\s+device\s+cuda \(execution providers: cuda, cpu/);
      return;
    }
    expect(run.code).toBe(1);
    expect(lineOf(run.text, "model")).toMatch(/^ok/);
    expect(device).toMatch(
      /^FAIL\s+device\s+--device cuda, but no CUDA session could start \(.+\); the worker would run on the CPU instead/,
    );
    expect(device).toContain("--onnxruntime-node-install=cuda12");
  });

  it("fails a Node.js older than the package's engines, before anything else", async () => {
    const run = await doctor(["--server", await answering(426)], { nodeVersion: "18.19.0" });
    expect(run.code).toBe(1);
    expect(lineOf(run.text, "node")).toMatch(
      /^FAIL\s+node\s+Node\.js 18\.19\.0 is too old: p2pa-worker needs >=20\.3\n\s+fix: Install Node\.js 20\.3 or newer/,
    );
    expect(lineOf(run.text, "server")).toMatch(/^skip\s+server\s+not run: the node check failed/);
  });

  it("prints one JSON object with --json", async () => {
    const run = await doctor(["--server", await answering(401), "--json"]);
    expect(run.code).toBe(1);
    const report = JSON.parse(run.text) as { ok: boolean; checks: CheckResult[] };
    expect(report.ok).toBe(false);
    expect(report.checks.map((c) => [c.name, c.ok])).toEqual([
      ["node", true],
      ["server", true],
      ["token", false],
      ["model", false],
      ["device", false],
    ]);
    expect(report.checks[2]).toEqual({
      name: "token",
      ok: false,
      detail: "the server rejected the token",
      hint: "Ask the operator for a worker token.",
    });
    expect(report.checks[3]).toMatchObject({ skipped: true });
    expect(report.checks[0]).not.toHaveProperty("hint");
  });

  it("marks checks ✓ and ✗ on a terminal, and in words with NO_COLOR", async () => {
    const url = await answering(401);
    const tty = await doctor(["--server", url], { tty: true });
    expect(tty.text).toMatch(/✓.*node/);
    expect(tty.text).toMatch(/✗.*token/);
    expect(tty.text).toContain("Ask the operator for a worker token.");
    expect(tty.text).not.toMatch(/^(ok|FAIL) /m);
    const plain = await doctor(["--server", url], { tty: true, env: { NO_COLOR: "1" } });
    expect(plain.text).not.toMatch(/[✓✗]/);
    expect(plain.text).not.toContain("\x1b[");
    expect(plain.text).toMatch(/^FAIL\s+token/m);
  });
});

describe("p2pa-worker doctor with several models", () => {
  it("checks each model, saying plainly which one the server does not serve", async () => {
    const tiny = await tinyFolder();
    const url = await serving({ "use-lite": 512 });
    const run = await doctor(["--server", url, "--device", "cpu", "--model", `use-lite,${tiny}`]);
    expect(run.code).toBe(1);
    expect(lineOf(run.text, "model use-lite")).toMatch(
      /^ok\s+model use-lite use-lite loaded (into|from) .* in \d+ ms; 512 dimensions, \d+\.\d ms per embedding; the server serves it$/,
    );
    expect(lineOf(run.text, `model ${tiny}`)).toBe(
      `FAIL model ${tiny} the server at ${url} does not serve model "tiny-bert"; it serves: use-lite. Start with --model <one of them>, or ask its operator to add it`,
    );
    expect(lineOf(run.text, "device")).toMatch(
      new RegExp(`^skip\\s+device\\s+not run: the model ${tiny} check failed$`),
    );
  });

  it("checks the models after one the server does not serve, and asks before loading it", async () => {
    const tiny = await tinyFolder();
    const url = await serving({ "tiny-bert": 32, minilm: 384 });
    const run = await doctor([
      "--server",
      url,
      "--device",
      "cpu",
      "--model",
      "use-lite",
      "--model",
      tiny,
      "--json",
    ]);
    expect(run.code).toBe(1);
    const report = JSON.parse(run.text) as { ok: boolean; checks: CheckResult[] };
    expect(report.checks.map((c) => [c.name, c.ok, c.skipped ?? false])).toEqual([
      ["node", true, false],
      ["server", true, false],
      ["token", true, false],
      ["model use-lite", false, false],
      [`model ${tiny}`, true, false],
      ["device", false, true],
    ]);
    expect(report.checks[3]?.detail).toBe(
      `the server at ${url} does not serve model "use-lite"; it serves: tiny-bert, minilm. Start with --model <one of them>, or ask its operator to add it`,
    );
    expect(report.checks[4]?.detail).toMatch(
      /^tiny-bert loaded from .*; 32 dimensions.*; the server serves it$/,
    );
  });
});

describe("engines ranges", () => {
  it("compares versions part by part", () => {
    expect(meetsRange("20.3.0", ">=20.3")).toBe(true);
    expect(meetsRange("v20.20.2", ">=20.3")).toBe(true);
    expect(meetsRange("20.2.9", ">=20.3")).toBe(false);
    expect(meetsRange("22.0.0", ">=20.3.1")).toBe(true);
    expect(meetsRange("9.9.9", ">=20")).toBe(false);
    expect(() => meetsRange("20.0.0", "^20")).toThrow(/not of the form/);
  });
});
