import { createRequire } from "node:module";
import { HELP, parseConfig } from "./config.js";
import { pickDevice } from "./device.js";
import { runDoctor } from "./doctor.js";
import { UserError } from "./errors.js";
import { InferenceGate } from "./inference-gate.js";
import { describeSessions } from "./model/index.js";
import { httpBase, preflight } from "./preflight.js";
import { loadServedModel, type ServedLoad } from "./resolve-model.js";
import { ModelNotServed } from "./served.js";
import { type StatusLabel, StatusReporter, serveStatus } from "./status.js";
import { Worker, type WorkerStats } from "./worker.js";
import { WorkerGroup } from "./worker-group.js";

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
  const log = (line: string) => process.stderr.write(`${new Date().toISOString()} ${line}\n`);
  const url = await preflight(config.server, config.token, config.waitForServer * 1000, log);
  const base = httpBase(config.server);
  const several = config.models.length > 1;
  let group: WorkerGroup | null = null;
  const picked = pickDevice(config.device);
  const label: StatusLabel = {
    model: config.models.join(","),
    device: picked.name as string,
    threads: config.threads,
  };
  const status = new StatusReporter(() => group, label);
  const models: ServedLoad[] = [];
  try {
    for (const spec of config.models) {
      const about = several ? `${spec}: ` : "";
      status.log(`loading model ${spec} on ${picked.name} (cache ${config.cacheDir})`);
      const loaded = await loadServedModel(spec, {
        base,
        token: config.token,
        device: picked,
        load: {
          cacheDir: config.cacheDir,
          threads: config.threads,
          ...(config.sessions === undefined ? {} : { sessions: config.sessions }),
          priority: config.priority,
          onTruncate: (e) =>
            status.log(
              `${about}a text over the model's window (${e.tokens} > ${e.maxTokens} tokens) was truncated`,
            ),
        },
        log: (line) => status.log(line),
      });
      models.push(loaded);
      if (loaded.cudaError)
        status.log(`${about}CUDA unavailable (${loaded.cudaError}); using the CPU`);
    }
    const ids = models.map((m) => m.embedder.manifest.id);
    const twice = ids.find((id, i) => ids.indexOf(id) !== i);
    if (twice)
      throw new UserError(
        `two --model values are both model ${twice}`,
        "Name each model once: one connection serves it.",
      );
  } catch (err) {
    await Promise.all(models.map((m) => m.embedder.dispose()));
    throw err;
  }
  label.device = [...new Set(models.map((m) => m.device.name))].join("+");
  label.sessions = Math.max(...models.map((m) => m.embedder.parallelism));
  if (several) label.model = models.map((m) => m.embedder.manifest.id).join(",");
  for (const { embedder } of models)
    status.log(
      `model ready: ${embedder.manifest.id} (${embedder.manifest.dimension} dimensions, ${describeSessions(embedder.parallelism, config.threads)}); connecting to ${url.origin}`,
    );

  /** Why the worker ends other than by a signal: the first connection closed for good. */
  let ending: UserError | null = null;
  let stopping = false;
  let finished!: () => void;
  const done = new Promise<void>((resolve) => {
    finished = resolve;
  });
  const stopAll = () => {
    stopping = true;
    void workers.stop().then(finished);
  };
  /** A connection ended for good: the worker ends, with `err`, once the others have drained. */
  const end = (err: UserError, id: string, why: string) => {
    ending ??= err;
    if (stopping) return;
    if (several) status.log(`${id}: ${why}; stopping the other models' connections`);
    stopAll();
  };
  // Models take turns on the cores: each model's sessions share every thread.
  const gate = several ? new InferenceGate() : undefined;
  const workers = new WorkerGroup(
    models.map(({ embedder, device }) => {
      const id = embedder.manifest.id;
      const about = several ? `${id}: ` : "";
      const connect = new URL(url);
      connect.searchParams.set("model", id);
      const worker = new Worker({
        url: connect.href,
        token: config.token,
        embedder,
        batchSize: config.batchSize,
        threads: config.threads,
        device: device.name,
        name: config.name,
        version,
        ...(gate ? { gate } : {}),
        onEvent: (event, detail) => {
          if (event === "connected") status.log(`${about}connected as ${detail?.workerId}`);
          else if (event === "disconnected")
            status.log(
              `${about}disconnected (${detail?.code}${detail?.reason ? ` ${detail.reason}` : ""}); reconnecting`,
            );
          else if (event === "rejected") status.log(`${about}result rejected: ${detail?.reason}`);
          else if (event === "edge_error")
            status.log(`${about}server says: ${detail?.code} ${detail?.message}`);
          else if (event === "fatal")
            end(
              new UserError(
                `the server closed the ${several ? `${id} ` : ""}connection for good (${detail?.code} ${detail?.reason})`,
                undefined,
                4,
              ),
              id,
              "closed for good",
            );
          else if (event === "not_served")
            end(
              new ModelNotServed(base.origin, id, (detail?.available as string[]) ?? []),
              id,
              "the server does not serve this model",
            );
        },
      });
      return { model: id, worker };
    }),
  );
  group = workers;
  const onSignal = (sig: NodeJS.Signals) => {
    if (stopping) {
      status.log(`${sig} again: exiting now; the server requeues unfinished work`);
      process.exit(130);
    }
    status.log(
      `${sig}: finishing current work, handing back the rest (Ctrl-C again to quit at once)`,
    );
    stopAll();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
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
  await Promise.all(models.map((m) => m.embedder.dispose()));
  if (ending) throw ending;
  status.log(`stopped: ${summary(workers)}`);
  return 0;
}

/** What the worker did, for its last line: counts, how busy the model was, each model's own. */
function summary(group: WorkerGroup): string {
  const counts = (s: WorkerStats) =>
    `${s.tasksDone} tasks, ${s.chunksDone} chunks, ${s.embedsDone} queries`;
  const s = group.stats;
  const busy = (100 * s.inferenceMs) / Math.max(1, Date.now() - s.startedAt);
  const line = `${counts(s)}; model busy ${busy.toFixed(0)}% of the time`;
  if (group.members.length < 2) return line;
  return `${line} (${group.members.map((m) => `${m.model}: ${counts(m.worker.stats)}`).join("; ")})`;
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
