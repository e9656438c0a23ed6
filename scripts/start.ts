/**
 * `npm start`: the whole system on this machine. Applies the D1 migrations, starts the edge
 * on http://127.0.0.1:8787 with local D1, R2, Durable Objects and the local vector index,
 * and one p2pa-worker. Ctrl-C stops everything.
 */
import path from "node:path";
import {
  DEV_CREDENTIALS,
  killTree,
  prepareLocalDatabase,
  ROOT,
  spawnWorker,
  startEdge,
} from "./lib/local-edge.js";

const port = Number(process.env.PORT ?? 8787);
const persistTo = path.join(ROOT, ".wrangler", "state");

console.log("p2pa: applying migrations to the local database…");
await prepareLocalDatabase(persistTo);
console.log("p2pa: starting the edge…");
const edge = await startEdge({ port, persistTo });
const worker = spawnWorker(
  edge.url,
  DEV_CREDENTIALS.workerToken,
  ["--threads", String(process.env.P2PA_THREADS ?? 2)],
  {},
  true,
);
worker.stdout?.pipe(process.stdout);
worker.stderr?.pipe(process.stderr);

const { apiKey, adminKey, workerToken } = DEV_CREDENTIALS;
console.log(`
p2pa is running at ${edge.url}
  API key (submitters):   ${apiKey}
  operator key (fleet):   ${adminKey}   (/v1/metrics, every worker)
  worker token (donors):  ${workerToken}
  OpenAPI document:       ${edge.url}/openapi.json

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
