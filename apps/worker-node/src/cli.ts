import { createRequire } from "node:module";
import { HELP, parseConfig } from "./config.js";
import { type LoadedModel, loadOnDevice, pickDevice } from "./device.js";
import { runDoctor } from "./doctor.js";
import { UserError } from "./errors.js";
import { preflight } from "./preflight.js";
import { StatusReporter, serveStatus } from "./status.js";
import { Worker } from "./worker.js";

const require = createRequire(import.meta.url);
const { version } = require("../package.json") as { version: string };

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
  if (action.kind === "doctor")
    return runDoctor(config, { json: action.json, out: process.stdout, env: process.env });
  const url = await preflight(config.server, config.token, (line) =>
    process.stderr.write(`${new Date().toISOString()} ${line}\n`),
  );
  let worker: Worker | null = null;
  const picked = pickDevice(config.device);
  const label = { model: config.model, device: picked.name as string, threads: config.threads };
  const status = new StatusReporter(() => worker, label);
  status.log(`loading model ${config.model} on ${picked.name} (cache ${config.cacheDir})`);
  let loaded: LoadedModel;
  try {
    loaded = await loadOnDevice(config.model, picked, {
      cacheDir: config.cacheDir,
      threads: config.threads,
      onTruncate: (e) =>
        status.log(
          `a text over the model's window (${e.tokens} > ${e.maxTokens} tokens) was truncated`,
        ),
    });
  } catch (err) {
    throw new UserError(
      `cannot load model ${config.model}: ${(err as Error).message}`,
      "Check --model and --cache-dir.",
      5,
    );
  }
  const { embedder, device } = loaded;
  if (loaded.cudaError) status.log(`CUDA unavailable (${loaded.cudaError}); using the CPU`);
  label.device = device.name;
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
      await serveStatus(config.statusPort, status);
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
