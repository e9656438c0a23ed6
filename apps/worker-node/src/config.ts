import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { z } from "zod";
import { UserError } from "./errors.js";

export const HELP = `p2pa-worker: donate compute to a p2pa server

Usage: P2PA_TOKEN=TOKEN p2pa-worker --server URL [options]
       P2PA_TOKEN=TOKEN p2pa-worker doctor --server URL [options] [--json]

Give the worker join token from the operator in the environment, as P2PA_TOKEN: a --token
flag works too, but other users of this machine can read it in the process list (ps).

Options (each also read from the environment variable shown):
  --server URL        the p2pa edge, e.g. https://p2pa.example.com (P2PA_SERVER)
                      https:// or wss://; http:// and ws:// only to this machine
                      (localhost, 127.0.0.0/8, ::1) unless --insecure is given
  --token TOKEN       worker join token; shows in ps, so prefer     (P2PA_TOKEN)
  --insecure          allow http:// or ws:// to another machine; the token and
                      all texts then travel unencrypted            (P2PA_INSECURE=1)
  --model ID|PATH|URL model to serve (default: use-lite)           (P2PA_MODEL)
                      ID: use-lite (built in) or a model the server lists (loaded
                      from the manifest it names); PATH: a model folder; URL: a
                      p2pa-model.json manifest. Repeat --model, or separate with
                      commas (P2PA_MODEL=use-lite,minilm), to serve several at
                      once: one connection each, the models taking turns on the
                      threads. A model the server does not serve ends the worker.
  --device D          auto, cpu or cuda (default: auto, the best found) (P2PA_DEVICE)
  --threads N         inference threads (default: all cores)       (P2PA_THREADS)
  --sessions N        copies of the model running side by side, on different
                      batches, the threads shared between them (default: on the
                      CPU one per thread up to 4, as memory allows; on a GPU 1):
                      sessions of fewer threads keep their pace when other programs
                      use the cores                               (P2PA_SESSIONS)
  --priority P        low or normal (default: low): low runs the model at the
                      lowest scheduling priority, so it only takes the cores this
                      machine's other programs leave idle     (P2PA_PRIORITY)
  --batch-size N      texts per inference batch (default: 32)      (P2PA_BATCH_SIZE)
  --name NAME         how this worker shows on the dashboard       (P2PA_NAME)
  --cache-dir DIR     where models are kept (default: ~/.cache/p2pa) (P2PA_CACHE_DIR)
  --status-port N     serve this worker's state as JSON on http://127.0.0.1:N/status
                      (default: off)                               (P2PA_STATUS_PORT)
  --wait-for-server S seconds to keep trying a server it cannot reach at start, as
                      while it restarts (default: 60; 0: ask once)
                                                              (P2PA_WAIT_FOR_SERVER)
  -h, --help          show this help
  -v, --version       print the version

p2pa-worker doctor checks this machine and the settings above without taking any work:
Node.js version, that the server answers, that it accepts the token as a worker token,
that the server serves each model, that each loads from --cache-dir and embeds a sentence,
and which device runs them (for --device cuda, whether CUDA can start; a normal start would
fall back to the CPU). Each check prints ok or FAIL with what to do; later checks are
skipped after a failure (each model is still checked). It exits 0 when every check passed,
1 otherwise.
  --json              print one JSON object {ok, checks: [{name, ok, detail, hint?}]}

On a terminal the worker shows one live line: state, model and device, chunks per second,
how busy the model was (share of the last few seconds spent computing), tasks it holds
(leased and not yet finished), and the chunks the server credited it with; with several
models, their sums (without a terminal, each model's own too, every 10 s).

Stop with Ctrl-C: the worker finishes or hands back what it holds and exits.
The worker keeps no copy of the text it processes; only model files are cached.

Exit codes: 0 stopped, 2 bad settings, 3 the server cannot be reached or is not a p2pa
server, 4 the server refused the token or closed the connection for good, 5 a model cannot
be found or loaded, 6 the server does not serve a model asked for, 1 an internal error,
130 a second Ctrl-C.`;

/** What the worker serves when neither --model nor P2PA_MODEL names a model. */
const DEFAULT_MODEL = "use-lite";

/** Printed at start-up when the token came from argv, which `ps` shows to every local user. */
export const TOKEN_FLAG_WARNING =
  "--token is visible to other users of this machine in the process list; set P2PA_TOKEN in the environment instead";

/** Hosts a plain-text connection may go to: it never leaves this machine. */
export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.toLowerCase().replace(/\.$/, "");
  if (h === "localhost" || h === "[::1]" || h === "::1") return true;
  // URL parsing has already turned IPv4 forms such as 127.1 or 0x7f.1 into dotted quads.
  return /^127\.\d+\.\d+\.\d+$/.test(h);
}

function envFlag(name: string, value: string | undefined): boolean {
  if (value === undefined) return false;
  const v = value.trim().toLowerCase();
  if (v === "1" || v === "true" || v === "yes") return true;
  if (v === "" || v === "0" || v === "false" || v === "no") return false;
  throw new UserError(
    `${name} must be 1 or 0, got "${value}"`,
    "Run p2pa-worker --help for the options.",
  );
}

const positiveInt = (name: string, max: number) =>
  z.coerce
    .number({ error: `${name} must be a number` })
    .int(`${name} must be a whole number`)
    .min(1, `${name} must be at least 1`)
    .max(max, `${name} must be at most ${max}`);

const Config = z.object({
  server: z
    .string({ error: "--server is required (or set P2PA_SERVER)" })
    .url("--server must be a URL such as http://127.0.0.1:8787")
    .refine(
      (u) => /^(https?|wss?):\/\//.test(u),
      "--server must start with http://, https://, ws:// or wss://",
    ),
  token: z
    .string({ error: "--token is required (or set P2PA_TOKEN)" })
    .min(1, "--token must not be empty"),
  models: z.array(z.string()).min(1).default([DEFAULT_MODEL]),
  device: z
    .enum(["auto", "cpu", "cuda"], { error: "--device must be auto, cpu or cuda" })
    .default("auto"),
  threads: positiveInt("--threads", 256).default(Math.max(1, os.availableParallelism())),
  /** Absent: loadModelPool picks (defaultSessions, within memory). */
  sessions: positiveInt("--sessions", 64).optional(),
  priority: z.enum(["low", "normal"], { error: "--priority must be low or normal" }).default("low"),
  batchSize: positiveInt("--batch-size", 1024).default(32),
  name: z.string().max(128).default(os.hostname()),
  cacheDir: z
    .string()
    .default(path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), ".cache"), "p2pa")),
  statusPort: positiveInt("--status-port", 65535).optional(),
  waitForServer: z.coerce
    .number({ error: "--wait-for-server must be a number of seconds" })
    .int("--wait-for-server must be a whole number of seconds")
    .min(0, "--wait-for-server must be 0 or more")
    .max(86_400, "--wait-for-server must be at most 86400 (a day)")
    .default(60),
});
export type WorkerConfig = z.infer<typeof Config>;

export type CliAction =
  | { kind: "help" }
  | { kind: "version" }
  /** `warnings` are for the person starting the worker, one line each, before it connects. */
  | { kind: "run"; config: WorkerConfig; warnings: string[] }
  /** `p2pa-worker doctor`: the same settings, checked instead of run. */
  | { kind: "doctor"; config: WorkerConfig; warnings: string[]; json: boolean };

/** Reads flags, then the environment; throws UserError with what to fix. */
export function parseConfig(argv: string[], env: NodeJS.ProcessEnv): CliAction {
  let values: Record<string, string | string[] | boolean | undefined>;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: argv,
      options: {
        server: { type: "string" },
        token: { type: "string" },
        model: { type: "string", multiple: true },
        device: { type: "string" },
        threads: { type: "string" },
        sessions: { type: "string" },
        priority: { type: "string" },
        "batch-size": { type: "string" },
        name: { type: "string" },
        "cache-dir": { type: "string" },
        "status-port": { type: "string" },
        "wait-for-server": { type: "string" },
        insecure: { type: "boolean" },
        json: { type: "boolean" },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "v" },
      },
      strict: true,
      allowPositionals: true,
    }));
  } catch (err) {
    throw new UserError(`${(err as Error).message}`, "Run p2pa-worker --help for the options.");
  }
  if (values.help) return { kind: "help" };
  if (values.version) return { kind: "version" };
  const command = commandOf(positionals);
  if (values.json && command !== "doctor")
    throw new UserError(
      "--json is for p2pa-worker doctor",
      "Run p2pa-worker --help for the options.",
    );
  const pick = (flag: string, envName: string) =>
    (values[flag] as string | undefined) ?? env[envName] ?? undefined;
  const raw = {
    server: pick("server", "P2PA_SERVER"),
    token: pick("token", "P2PA_TOKEN"),
    models: modelsFrom((values.model as string[] | undefined) ?? env.P2PA_MODEL),
    device: pick("device", "P2PA_DEVICE"),
    threads: pick("threads", "P2PA_THREADS"),
    sessions: pick("sessions", "P2PA_SESSIONS"),
    priority: pick("priority", "P2PA_PRIORITY"),
    batchSize: pick("batch-size", "P2PA_BATCH_SIZE"),
    name: pick("name", "P2PA_NAME"),
    cacheDir: pick("cache-dir", "P2PA_CACHE_DIR"),
    statusPort: pick("status-port", "P2PA_STATUS_PORT"),
    waitForServer: pick("wait-for-server", "P2PA_WAIT_FOR_SERVER"),
  };
  const parsed = Config.safeParse(
    Object.fromEntries(Object.entries(raw).filter(([, v]) => v !== undefined)),
  );
  if (!parsed.success) {
    throw new UserError(
      parsed.error.issues.map((i) => i.message).join("\n"),
      "Run p2pa-worker --help for the options.",
    );
  }
  const config = parsed.data;
  const warnings: string[] = [];
  if (values.token !== undefined) warnings.push(TOKEN_FLAG_WARNING);
  const server = new URL(config.server);
  if (/^(http|ws):$/.test(server.protocol) && !isLoopbackHost(server.hostname)) {
    if (!(values.insecure === true || envFlag("P2PA_INSECURE", env.P2PA_INSECURE))) {
      throw new UserError(
        `--server ${server.origin} is not encrypted: the worker token and every text would travel in clear`,
        `Use https:// or wss://, or pass --insecure (P2PA_INSECURE=1) if you trust every network between here and ${server.hostname}.`,
      );
    }
    warnings.push(
      `--insecure: the worker token and every text travel unencrypted to ${server.host}`,
    );
  }
  return command === "doctor"
    ? { kind: "doctor", config, warnings, json: values.json === true }
    : { kind: "run", config, warnings };
}

/**
 * The models asked for, in order, without repeats: --model may be given several times and each
 * value (and P2PA_MODEL) may list several, separated by commas.
 */
function modelsFrom(given: string[] | string | undefined): string[] | undefined {
  if (given === undefined) return undefined;
  const models: string[] = [];
  for (const value of Array.isArray(given) ? given : [given]) {
    for (const part of value.split(",")) {
      const model = part.trim();
      if (!model)
        throw new UserError(
          `--model "${value}" has an empty model name`,
          "Name each model: an id such as use-lite, a model folder or a manifest URL, separated by commas.",
        );
      if (!models.includes(model)) models.push(model);
    }
  }
  return models;
}

/** The one subcommand there is, or none (run the worker). */
function commandOf(positionals: string[]): "doctor" | null {
  const [first, ...rest] = positionals;
  if (first === undefined) return null;
  if (first !== "doctor")
    throw new UserError(
      `unknown command "${first}"`,
      "The only command is doctor; run p2pa-worker --help for the options.",
    );
  if (rest.length)
    throw new UserError(
      `unexpected argument "${rest[0]}"`,
      "Run p2pa-worker --help for the options.",
    );
  return "doctor";
}
