/**
 * The machine's own PostgreSQL (Debian's postgresql package, /usr/lib/postgresql/<major>/bin),
 * started on a throwaway cluster for the tests: a second, separate server beside PGlite, with
 * real concurrent sessions (PGlite runs every connection on one backend). Null when no such
 * installation is there, so callers skip what needs it.
 *
 * The cluster lives in a temporary folder, listens on 127.0.0.1 on a free port, trusts local
 * connections (it holds nothing but test data), and is reached by the Neon driver through the
 * WebSocket proxy of scripts/lib/postgres.ts. Postgres refuses to run as root: as root, its
 * programs run as the `postgres` user.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync, readdirSync, rmSync } from "node:fs";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { startWsProxy } from "./postgres.js";

const run = promisify(execFile);

/** A running cluster of the system's PostgreSQL and its WebSocket proxy. */
export interface SystemPostgres {
  /** Connection string (`DATABASE_URL`). */
  url: string;
  /** The Neon driver's `wsProxy` setting for this server (`PG_WS_PROXY`). */
  wsProxy: string;
  /** Stops the server and deletes the cluster. */
  stop(): Promise<void>;
}
const ROOT = "/usr/lib/postgresql";

/** The newest installed server's bin folder, or null. */
function serverBin(): string | null {
  if (!existsSync(ROOT)) return null;
  const majors = readdirSync(ROOT)
    .filter((v) => /^\d+$/.test(v) && existsSync(path.join(ROOT, v, "bin", "postgres")))
    .sort((a, b) => Number(b) - Number(a));
  return majors[0] ? path.join(ROOT, majors[0], "bin") : null;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/** The postgres user's ids when this process is root (Postgres refuses to run as root). */
async function postgresUser(): Promise<{ uid: number; gid: number } | undefined> {
  if (process.getuid?.() !== 0) return undefined;
  const id = async (flag: string) => Number((await run("id", [flag, "postgres"])).stdout.trim());
  return { uid: await id("-u"), gid: await id("-g") };
}

/** Starts a throwaway cluster of the system's PostgreSQL; null when none is installed. */
export async function startSystemPostgres(
  options: { keepProcessAlive?: boolean } = {},
): Promise<SystemPostgres | null> {
  const bin = serverBin();
  if (!bin) return null;
  const dir = await mkdtemp(path.join(tmpdir(), "p2pa-pg-"));
  // The postgres user must own the folder it initialises.
  await chmod(dir, 0o777);
  const data = path.join(dir, "data");
  const user = await postgresUser();
  await run(
    path.join(bin, "initdb"),
    ["-D", data, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8"],
    { ...user },
  );
  const port = await freePort();
  const args = [
    "-D",
    data,
    "-p",
    String(port),
    "-h",
    "127.0.0.1",
    "-k",
    dir,
    "-c",
    "fsync=off",
    "-c",
    "max_connections=200",
  ];
  const server: ChildProcess = spawn(path.join(bin, "postgres"), args, {
    stdio: ["ignore", "ignore", "pipe"],
    ...user,
  });
  let log = "";
  server.stderr?.on("data", (b: Buffer) => {
    log = (log + b.toString()).slice(-4000);
  });
  const ready = path.join(bin, "pg_isready");
  for (let i = 0; ; i++) {
    if (server.exitCode !== null) throw new Error(`postgres exited at start:\n${log}`);
    try {
      await run(ready, ["-h", "127.0.0.1", "-p", String(port), "-U", "postgres"]);
      break;
    } catch {
      if (i > 150) throw new Error(`postgres did not start:\n${log}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  const address = `127.0.0.1:${port}`;
  const proxy = await startWsProxy([address]);
  const stop = async () => {
    await proxy.stop();
    if (server.exitCode === null) {
      const exited = new Promise((r) => server.once("exit", r));
      server.kill("SIGINT");
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
  };
  if (options.keepProcessAlive === false) {
    proxy.unref();
    server.unref();
    server.stderr?.removeAllListeners("data");
    (server.stderr as unknown as { unref?: () => void } | null)?.unref?.();
    // The cluster goes with the process that started it (immediate shutdown: nothing to keep).
    process.once("exit", () => {
      server.kill("SIGQUIT");
      rmSync(dir, { recursive: true, force: true });
    });
  }
  return { url: `postgres://postgres@${address}/postgres`, wsProxy: proxy.wsProxy, stop };
}
