/**
 * `npm start`: the whole system on this machine. Applies the D1 migrations, starts the edge
 * on http://127.0.0.1:8787 with local D1, R2, Durable Objects and the local vector index,
 * and one p2pa-worker. Ctrl-C stops everything.
 *
 * `npm start -- --postgres` (or P2PA_POSTGRES=1): metadata and vectors in a local Postgres with
 * pgvector instead (PGlite, kept in .wrangler/postgres, behind the WebSocket proxy the Neon
 * driver needs), as a deployment on Neon would run.
 *
 * `npm start -- --inspect` (or P2PA_INSPECT=1): the edge's Worker and Durable Objects open to
 * Chrome DevTools on 127.0.0.1:9229 (chrome://inspect). Off by default: with it attached, the
 * dev server reports every D1 call and object request to DevTools, which costs CPU and disk.
 */
import path from "node:path";
import { parseArgs } from "node:util";
import {
  DEV_CREDENTIALS,
  killTree,
  prepareLocalDatabase,
  ROOT,
  spawnWorker,
  startEdge,
} from "./lib/local-edge.js";
import { type LocalPostgres, startPostgres } from "./lib/postgres.js";

const port = Number(process.env.PORT ?? 8787);
const persistTo = path.join(ROOT, ".wrangler", "state");

const { values: flags } = parseArgs({
  options: { postgres: { type: "boolean" }, inspect: { type: "boolean" } },
});
const usePostgres = flags.postgres === true || process.env.P2PA_POSTGRES === "1";
const inspectorPort = flags.inspect === true || process.env.P2PA_INSPECT === "1" ? 9229 : null;

let postgres: LocalPostgres | undefined;
if (usePostgres) {
  console.log("p2pa: starting the local Postgres (PGlite with pgvector)…");
  postgres = await startPostgres({ dataDir: path.join(ROOT, ".wrangler", "postgres") });
}
console.log(`p2pa: preparing the local ${postgres ? "Postgres" : "database"}…`);
await prepareLocalDatabase(persistTo, [], postgres);
console.log("p2pa: starting the edge…");
const edge = await startEdge({
  port,
  persistTo,
  ...(postgres ? { postgres } : {}),
  ...(inspectorPort ? { inspect: inspectorPort } : {}),
});
const worker = spawnWorker(
  edge.url,
  DEV_CREDENTIALS.workerToken,
  ["--threads", String(process.env.P2PA_THREADS ?? 2)],
  {},
  { detached: true },
);
worker.stdout?.pipe(process.stdout);
worker.stderr?.pipe(process.stderr);

const { apiKey, adminKey, workerToken } = DEV_CREDENTIALS;
console.log(`
p2pa is running at ${edge.url}${postgres ? " (metadata and vectors in Postgres)" : ""}
  API key (submitters):   ${apiKey}
  operator key (fleet):   ${adminKey}   (/v1/metrics, every worker)
  worker token (donors):  ${workerToken}
  OpenAPI document:       ${edge.url}/openapi.json${inspectorPort ? `\n  DevTools inspector:     127.0.0.1:${inspectorPort} (chrome://inspect)` : ""}

Try:
  curl -s ${edge.url}/v1/jobs -H 'Authorization: Bearer ${apiKey}' -H 'Content-Type: application/json' \\
    -d '{"documents":[{"text":"The cat sat on the mat."},{"text":"Stock markets fell sharply today."}]}'
  curl -s ${edge.url}/v1/search -H 'Authorization: Bearer ${apiKey}' -H 'Content-Type: application/json' \\
    -d '{"query":"a kitten resting on a rug","topK":1}'

Ctrl-C stops everything.
`);

let stopping = false;
async function shutdown() {
  if (stopping) return;
  stopping = true;
  console.log("\np2pa: stopping…");
  if (worker.exitCode === null) {
    const exited = new Promise((r) => worker.once("exit", r));
    worker.kill("SIGINT");
    await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
    if (worker.exitCode === null) killTree(worker, "SIGKILL");
  }
  await edge.stop();
  await postgres?.stop();
  process.exit(0);
}
process.on("SIGINT", shutdown);
process.on("SIGTERM", shutdown);
worker.on("exit", (code) => {
  if (!stopping) console.error(`p2pa: the worker exited (${code}); the edge keeps running`);
});
edge.process.on("exit", (code) => {
  if (!stopping) {
    console.error(`p2pa: the edge exited (${code})`);
    process.exit(1);
  }
});
