import { type ChildProcess, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import {
  cpSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { readFile } from "node:fs/promises";
import { createServer } from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { allProcesses, isWithin, processCpu } from "./cpu-accounting.js";
import type { EdgeServerOptions } from "./edge-server.js";
import { migratePostgres } from "./pg-migrate.js";
import type { LocalPostgres } from "./postgres.js";

/** A TCP port free on 127.0.0.1 right now. */
export async function freePort(): Promise<number> {
  const srv = createServer();
  srv.listen(0, "127.0.0.1");
  await once(srv, "listening");
  const port = (srv.address() as { port: number }).port;
  await new Promise((r) => srv.close(r));
  return port;
}

/** Repository root. */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

/** Development credentials; documented in the README, seeded into the local D1 only. */
export const DEV_CREDENTIALS = {
  apiKey: "p2pa_dev_key",
  /** An operator's key: also sees the whole fleet and the metrics. */
  adminKey: "p2pa_dev_admin",
  workerToken: "p2pa_dev_worker",
  tenant: "dev",
} as const;

/** Environment for wrangler that keeps it offline and quiet. */
export const WRANGLER_ENV = {
  CI: "true",
  WRANGLER_SEND_METRICS: "false",
  WRANGLER_SEND_ERROR_REPORTS: "false",
  CLOUDFLARE_CF_FETCH_ENABLED: "false",
  WRANGLER_HIDE_BANNER: "true",
  NO_COLOR: "1",
};

const WRANGLER = path.join(ROOT, "node_modules", "wrangler", "bin", "wrangler.js");
const EDGE_SERVER = path.join(ROOT, "scripts", "lib", "edge-server.ts");

function run(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [WRANGLER, ...args], {
      cwd: ROOT,
      env: { ...process.env, ...WRANGLER_ENV },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (out += d));
    child.on("error", reject);
    child.on("close", (code) =>
      code === 0 ? resolve(out) : reject(new Error(`wrangler ${args.join(" ")} failed:\n${out}`)),
    );
  });
}

const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");

/**
 * Applies the D1 migrations to the local database and seeds the development credentials,
 * plus `workerTokens` (more donors of the development tenant, for tests that need several).
 */
export async function prepareLocalDatabase(
  persistTo: string,
  workerTokens: string[] = [],
  postgres?: LocalPostgres,
): Promise<void> {
  if (postgres) {
    // The metadata lives in Postgres: its migrations, then the same credentials.
    await migratePostgres(postgres.url, postgres.wsProxy);
    await postgres.exec(
      credentialRows(workerTokens)
        .map((r) => `${r.replace("INSERT OR IGNORE", "INSERT")} ON CONFLICT (id) DO NOTHING`)
        .join("; "),
    );
    return;
  }
  const seed = credentialRows(workerTokens).join("; ");
  // Each wrangler run takes some 6 s. A database prepared before for the same migrations and
  // seed (npm start's, started again) is left as it is; a new one is a copy of one wrangler
  // made for them (the tests start a new edge for every file).
  const d1 = path.join(persistTo, "v3", "d1");
  const fresh = !existsSync(d1);
  const key = templateKey(seed);
  const marker = path.join(persistTo, PREPARED_MARKER);
  if (!fresh && existsSync(marker) && readFileSync(marker, "utf8") === key) return;
  const template = path.join(D1_TEMPLATES, key);
  if (fresh && existsSync(template)) {
    cpSync(template, d1, { recursive: true });
  } else {
    await run(["d1", "migrations", "apply", "DB", "--local", "--persist-to", persistTo]);
    await run(["d1", "execute", "DB", "--local", "--persist-to", persistTo, "--command", seed]);
    if (fresh) keepTemplate(d1, template);
  }
  writeFileSync(marker, key);
}

/** Names what a local database was last prepared for (`templateKey`), beside it. */
const PREPARED_MARKER = ".p2pa-prepared";

/** Local databases made by wrangler, by what made them (migrations, wrangler, seed). */
const D1_TEMPLATES = path.join(ROOT, ".cache", "d1-templates");

/** What a fresh local database depends on: the migrations, wrangler.toml, wrangler, the seed. */
function templateKey(seed: string): string {
  const h = createHash("sha256");
  const migrations = path.join(ROOT, "migrations");
  const files = readdirSync(migrations).filter((f) => f.endsWith(".sql"));
  for (const f of files.sort()) h.update(f).update(readFileSync(path.join(migrations, f)));
  h.update(readFileSync(path.join(ROOT, "wrangler.toml")));
  h.update(readFileSync(path.join(ROOT, "node_modules", "wrangler", "package.json")));
  return h.update(seed).digest("hex").slice(0, 32);
}

/**
 * Keeps a copy of a database wrangler just made (SQLite's shared-memory index files left out:
 * they are rebuilt from the write-ahead log). Written aside and renamed into place, so a reader
 * never sees half of one; a copy that cannot be kept costs only the next start's time.
 */
function keepTemplate(d1: string, template: string): void {
  const aside = `${template}.${process.pid}.${randomBytes(4).toString("hex")}`;
  try {
    cpSync(d1, aside, { recursive: true, filter: (src) => !src.endsWith("-shm") });
    renameSync(aside, template);
  } catch {
    rmSync(aside, { recursive: true, force: true });
  }
}

/** The development credentials, plus `workerTokens`, as SQL inserts that keep existing rows. */
function credentialRows(workerTokens: string[]): string[] {
  const { apiKey, adminKey, workerToken, tenant } = DEV_CREDENTIALS;
  return [
    ...workerTokens.map(
      (t, i) =>
        `INSERT OR IGNORE INTO credentials (id, kind, tenant, hash, name) VALUES ('cred_test_worker_${i}', 'worker', '${tenant}', '${sha256(t)}', 'test donor ${i}')`,
    ),
    `INSERT OR IGNORE INTO credentials (id, kind, tenant, hash, name) VALUES ('cred_dev_api', 'api', '${tenant}', '${sha256(apiKey)}', 'development API key')`,
    `INSERT OR IGNORE INTO credentials (id, kind, tenant, hash, name) VALUES ('cred_dev_worker', 'worker', '${tenant}', '${sha256(workerToken)}', 'development worker token')`,
    `INSERT OR IGNORE INTO credentials (id, kind, tenant, hash, name) VALUES ('cred_dev_admin', 'admin', '${tenant}', '${sha256(adminKey)}', 'development operator key')`,
  ];
}

export interface LocalEdge {
  url: string;
  process: ChildProcess;
  /** The DevTools port of the Worker and its Durable Objects, when started with `inspect`. */
  inspectorPort?: number;
  /** Output so far, for diagnosing a failed test. */
  output(): string;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

export interface EdgeOptions {
  port: number;
  persistTo: string;
  vars?: Record<string, string>;
  /** Metadata and vectors in this Postgres (METADATA_BACKEND=postgres, VECTOR_BACKEND=pgvector). */
  postgres?: LocalPostgres;
  /** Echo wrangler's output (npm start); tests keep it. */
  inheritOutput?: boolean;
  /**
   * Attach the DevTools inspector (profiling, `npm start -- --inspect`): on this port, or on a
   * free one when `true`. Off by default, for what it costs (scripts/lib/edge-server.ts).
   */
  inspect?: boolean | number;
  /** Run the dev server and its runtime on these CPUs only (`onCpus`); any CPU by default. */
  cpus?: string;
}

/**
 * The command and arguments that run `command` on the given CPUs only (taskset's list: "0",
 * "1-3"), or as they are. The benchmark gives the edge and the donor cores of their own this
 * way, as they are on machines of their own once deployed (Linux).
 */
function onCpus(cpus: string | undefined, command: string, args: string[]): [string, string[]] {
  return cpus ? ["taskset", ["--cpu-list", cpus, command, ...args]] : [command, args];
}

/**
 * The deployment key that seals this local state's data (P2PA_DATA_KEYS), made on first use
 * and kept beside the state it protects, so a restart reads what the last run wrote.
 */
function localDataKeys(persistTo: string): string {
  const file = path.join(persistTo, "p2pa-data-keys");
  if (!existsSync(file)) {
    mkdirSync(persistTo, { recursive: true });
    writeFileSync(file, `local:${randomBytes(32).toString("base64")}`, { mode: 0o600 });
  }
  return readFileSync(file, "utf8").trim();
}

/**
 * Starts the edge on 127.0.0.1 with local D1, R2, Durable Objects and vector index: wrangler's
 * dev server in a process of its own (scripts/lib/edge-server.ts).
 */
export async function startEdge(opts: EdgeOptions): Promise<LocalEdge> {
  const vars = {
    VECTOR_BACKEND: "local",
    P2PA_DATA_KEYS: localDataKeys(opts.persistTo),
    ...(opts.postgres
      ? {
          METADATA_BACKEND: "postgres",
          VECTOR_BACKEND: "pgvector",
          DATABASE_URL: opts.postgres.url,
          PG_WS_PROXY: opts.postgres.wsProxy,
        }
      : {}),
    ...opts.vars,
  };
  const inspectorPort =
    opts.inspect === true
      ? await freePort()
      : typeof opts.inspect === "number"
        ? opts.inspect
        : undefined;
  const options: EdgeServerOptions = {
    port: opts.port,
    persistTo: opts.persistTo,
    vars,
    logLevel: opts.inheritOutput ? "info" : "warn",
    ...(inspectorPort === undefined ? {} : { inspectorPort }),
  };
  const [command, args] = onCpus(opts.cpus, process.execPath, [
    "--import",
    "tsx",
    EDGE_SERVER,
    JSON.stringify(options),
  ]);
  const child = spawn(command, args, {
    cwd: ROOT,
    env: { ...process.env, ...WRANGLER_ENV },
    stdio: ["ignore", "pipe", "pipe"],
    detached: process.platform !== "win32",
  });
  let log = "";
  const capture = (d: Buffer) => {
    log += d.toString();
    if (log.length > 200_000) log = log.slice(-100_000);
    if (opts.inheritOutput) process.stderr.write(d);
  };
  child.stdout?.on("data", capture);
  child.stderr?.on("data", capture);
  const url = `http://127.0.0.1:${opts.port}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`the edge exited with ${child.exitCode}:\n${log}`);
    try {
      const r = await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(2000) });
      if (r.ok) break;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) {
      killTree(child, "SIGKILL");
      throw new Error(`the edge did not become healthy in 60 s:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  return {
    url,
    process: child,
    ...(inspectorPort === undefined ? {} : { inspectorPort }),
    output: () => log,
    async stop(signal = "SIGTERM") {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const closed = once(child, "exit");
      killTree(child, signal);
      const timer = setTimeout(() => killTree(child, "SIGKILL"), 5000);
      await closed;
      clearTimeout(timer);
    },
  };
}

/**
 * The workerd process that runs the edge's code. The dev server starts two, both below it: a
 * proxy listening on the public port, and the runtime of the Worker and its Durable Objects
 * (on a port of its own), which is the one returned.
 */
export async function edgeRuntimePid(edge: LocalEdge): Promise<number> {
  const root = edge.process.pid as number;
  const publicPort = new URL(edge.url).port;
  const processes = await allProcesses();
  const runtimes: number[] = [];
  for (const [pid, { name }] of processes) {
    if (pid === root || !name.startsWith("workerd") || !isWithin(processes, pid, root)) continue;
    const args = (await readFile(`/proc/${pid}/cmdline`, "utf8")).split("\0");
    if (!args.includes(`--socket-addr=entry=127.0.0.1:${publicPort}`)) runtimes.push(pid);
  }
  if (runtimes.length !== 1)
    throw new Error(`found ${runtimes.length} workerd runtimes under the edge process ${root}`);
  return runtimes[0] as number;
}

/** CPU seconds (user and system) process `pid` has used so far, from /proc. */
export async function cpuSeconds(pid: number): Promise<number> {
  return (await processCpu(pid)).seconds;
}

/** Signals a process and its children (wrangler runs workerd as a child). */
export function killTree(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    try {
      child.kill(signal);
    } catch {
      // Already gone.
    }
  }
}

export const WORKER_BIN = path.join(ROOT, "apps", "worker-node", "bin", "p2pa-worker.js");

/**
 * Spawns a real `p2pa-worker` process. `detached` puts it in its own process group, so a
 * terminal's Ctrl-C reaches only the parent, which then stops it once (npm start); `cpus`
 * keeps it on those CPUs (`onCpus`).
 */
export function spawnWorker(
  server: string,
  token: string,
  extra: string[] = [],
  env: NodeJS.ProcessEnv = {},
  { detached = false, cpus }: { detached?: boolean; cpus?: string } = {},
): ChildProcess {
  const [command, args] = onCpus(cpus, process.execPath, [
    WORKER_BIN,
    "--server",
    server,
    ...extra,
  ]);
  // The token goes in the environment, as the README tells donors: a flag shows in `ps`.
  return spawn(command, args, {
    cwd: ROOT,
    env: {
      ...process.env,
      P2PA_TOKEN: token,
      P2PA_CACHE_DIR: path.join(ROOT, ".cache", "models"),
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
    detached,
  });
}

/** The longest a job status call took in this process: the edge's answer time under load. */
let slowestStatus = 0;
export const slowestStatusMs = () => slowestStatus;

/**
 * Polls a job until it ends and returns the completion time the edge recorded (so a status
 * call held up on its way back does not count). A status call that does not come back within
 * `callTimeoutMs` is asked again, as a client would: the dev server's local proxy sometimes
 * holds a request under load. Fails if the job ends other than completed, or after `timeoutMs`.
 */
export async function waitForCompletion<J extends { status: string; completedAt?: string | null }>(
  url: string,
  id: string,
  headers: Record<string, string>,
  { pollMs = 50, callTimeoutMs = 10_000, timeoutMs = 30 * 60_000 } = {},
): Promise<{ completedAt: number; job: J }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const t0 = performance.now();
    const res = await fetch(`${url}/v1/jobs/${id}`, {
      headers,
      signal: AbortSignal.timeout(callTimeoutMs),
    }).catch(() => null);
    slowestStatus = Math.max(slowestStatus, performance.now() - t0);
    if (res?.ok) {
      const job = (await res.json()) as J;
      if (job.status !== "queued" && job.status !== "running") {
        if (job.status !== "completed") throw new Error(`job ${id} ended ${job.status}`);
        return { completedAt: Date.parse(job.completedAt ?? "") || Date.now(), job };
      }
      if (Date.now() > deadline)
        throw new Error(`job ${id} did not complete: ${JSON.stringify(job)}`);
    }
    await new Promise((r) => setTimeout(r, pollMs));
  }
}
