import { createRequire } from "node:module";
import { ErrorCode } from "@p2pa/shared";
import { HELP, parseConfig } from "./config.js";
import { pickDevice } from "./device.js";
import { UserError } from "./errors.js";
import { type Embedder, loadModel } from "./model/index.js";
import { StatusReporter, serveStatus } from "./status.js";
import { Worker } from "./worker.js";

const require = createRequire(import.meta.url);
const { version } = require("../package.json") as { version: string };

/** Checks the server answers and takes the token before any socket is opened. */
/** How long the worker keeps trying a server it cannot reach at start before it gives up. */
const REACH_TRIES_MS = 60_000;

async function preflight(server: string, token: string, log: (line: string) => void): Promise<URL> {
  const base = new URL(server.replace(/^ws/, "http"));
  const probe = new URL("/v1/workers/connect", base);
  let res: Response | null = null;
  // A server that is restarting or briefly unreachable is waited for, as the connection is
  // once running; a wrong address still fails within a minute, with what to check.
  const deadline = Date.now() + REACH_TRIES_MS;
  for (let delay = 500; res === null; delay = Math.min(delay * 2, 8000)) {
    try {
      res = await fetch(probe, {
        headers: { Authorization: `Bearer ${token}` },
        signal: AbortSignal.timeout(10_000),
      });
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
      if (Date.now() + delay > deadline)
        throw new UserError(
          `cannot reach the server at ${base.origin} (${cause})`,
          "Check --server and that the server is running.",
          3,
        );
      log(`cannot reach ${base.origin} yet (${cause}); trying again in ${delay / 1000} s`);
      await new Promise((r) => setTimeout(r, delay));
    }
  }
  if (res.status === 401)
    throw new UserError("the server rejected the token", "Ask the operator for a worker token.", 4);
  if (res.status === 403) {
    const body = (await res.json().catch(() => null)) as {
      error?: { code?: string; message?: string };
    } | null;
    if (body?.error?.code === ErrorCode.enum.quarantined)
      throw new UserError(
        `the server quarantined this token: ${body.error.message ?? ""}`,
        "Check this machine's model and hardware, then ask the operator for a new token.",
        4,
      );
    throw new UserError(
      "that token is an API key, not a worker token",
      "Use the worker token the operator gave you.",
      4,
    );
  }
  if (res.status !== 426)
    throw new UserError(
      `unexpected answer ${res.status} from ${probe.href}`,
      "Is --server a p2pa server?",
      3,
    );
  const ws = new URL(probe);
  ws.protocol = base.protocol === "https:" ? "wss:" : "ws:";
  return ws;
}

export async function main(argv: string[]): Promise<number> {
  const action = parseConfig(argv, process.env);
  if (action.kind === "help") {
    process.stdout.write(`${HELP}\n`);
    return 0;
  }
  if (action.kind === "version") {
    process.stdout.write(`${version}\n`);
    return 0;
  }
  const { config } = action;
  for (const w of action.warnings) process.stderr.write(`p2pa-worker: warning: ${w}\n`);
  const url = await preflight(config.server, config.token, (line) =>
    process.stderr.write(`${new Date().toISOString()} ${line}\n`),
  );
  let worker: Worker | null = null;
  let device = pickDevice(config.device);
  const label = { model: config.model, device: device.name as string, threads: config.threads };
  const status = new StatusReporter(() => worker, label);
  status.log(`loading model ${config.model} on ${device.name} (cache ${config.cacheDir})`);
  const load = () =>
    loadModel(config.model, {
      cacheDir: config.cacheDir,
      threads: config.threads,
      executionProviders: device.executionProviders,
      onTruncate: (e) =>
        status.log(
          `a text over the model's window (${e.tokens} > ${e.maxTokens} tokens) was truncated`,
        ),
    });
  let embedder: Embedder;
  try {
    try {
      embedder = await load();
    } catch (err) {
      if (device.name !== "cuda") throw err;
      // CUDA was chosen or found but cannot start a session here: the CPU always can.
      status.log(`CUDA unavailable (${(err as Error).message}); using the CPU`);
      device = pickDevice("cpu");
      label.device = device.name;
      embedder = await load();
    }
  } catch (err) {
    throw new UserError(
      `cannot load model ${config.model}: ${(err as Error).message}`,
      "Check --model and --cache-dir.",
      5,
    );
  }
  url.searchParams.set("model", embedder.manifest.id);
  status.log(
    `model ready: ${embedder.manifest.id} (${embedder.manifest.dimension} dimensions); connecting to ${url.origin}`,
  );

  let fatal: string | null = null;
  const done = new Promise<void>((resolve) => {
    worker = new Worker({
      url: url.href,
      token: config.token,
      embedder,
      batchSize: config.batchSize,
      threads: config.threads,
      device: device.name,
      name: config.name,
      version,
      onEvent: (event, detail) => {
        if (event === "connected") status.log(`connected as ${detail?.workerId}`);
        else if (event === "disconnected")
          status.log(
            `disconnected (${detail?.code}${detail?.reason ? ` ${detail.reason}` : ""}); reconnecting`,
          );
        else if (event === "rejected") status.log(`result rejected: ${detail?.reason}`);
        else if (event === "edge_error")
          status.log(`server says: ${detail?.code} ${detail?.message}`);
        else if (event === "fatal") {
          fatal = `the server closed the connection for good (${detail?.code} ${detail?.reason})`;
          resolve();
        }
      },
    });
    let stopping = false;
    const onSignal = (sig: NodeJS.Signals) => {
      if (stopping) {
        status.log(`${sig} again: exiting now; the server requeues unfinished work`);
        process.exit(130);
      }
      stopping = true;
      status.log(
        `${sig}: finishing current work, handing back the rest (Ctrl-C again to quit at once)`,
      );
      void worker?.stop().then(resolve);
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
  });
  status.start();
  if (config.statusPort !== undefined) {
    try {
      await serveStatus(config.statusPort, () => worker, label);
    } catch (err) {
      throw new UserError(
        `cannot serve status on 127.0.0.1:${config.statusPort} (${(err as Error).message})`,
        "Pick a free port for --status-port.",
      );
    }
    status.log(`status on http://127.0.0.1:${config.statusPort}/status`);
  }
  await done;
  status.stop();
  await embedder.dispose();
  if (fatal) throw new UserError(fatal, undefined, 4);
  const s = (worker as Worker | null)?.stats;
  const busy = s ? (100 * s.inferenceMs) / Math.max(1, Date.now() - s.startedAt) : 0;
  status.log(
    `stopped: ${s?.tasksDone ?? 0} tasks, ${s?.chunksDone ?? 0} chunks, ${s?.embedsDone ?? 0} queries; model busy ${busy.toFixed(0)}% of the time`,
  );
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    if (err instanceof UserError) {
      process.stderr.write(`p2pa-worker: ${err.message}\n${err.hint ? `${err.hint}\n` : ""}`);
      process.exit(err.exitCode);
    }
    process.stderr.write(`p2pa-worker: internal error: ${(err as Error)?.stack ?? err}\n`);
    process.exit(1);
  },
);
