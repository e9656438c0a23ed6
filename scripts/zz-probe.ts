import { execSync, spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { rng } from "./lib/corpus.js";
import * as mine from "./lib/local-edge.js";

const here: typeof mine = process.env.BASE
  ? await import(`${process.env.BASE}/scripts/lib/local-edge.ts`)
  : mine;

import { EdgeProfiler } from "./lib/profile.js";

const WORDS =
  "river bridge library garden museum festival harbour market school station orchard tower valley council".split(
    " ",
  );
function sentences(n: number, seed: number): string[] {
  const r = rng(seed);
  const pick = () => WORDS[Math.floor(r() * WORDS.length)] as string;
  return Array.from(
    { length: n },
    (_, i) =>
      `Note ${seed}-${i}: the ${pick()} near the ${pick()} opened after the ${pick()} closed.`,
  );
}
const headers = {
  Authorization: `Bearer ${here.DEV_CREDENTIALS.apiKey}`,
  "Content-Type": "application/json",
};
const dir = mkdtempSync(path.join(os.tmpdir(), "p2pa-probe-"));
await here.prepareLocalDatabase(dir);
const edge = await here.startEdge({
  port: await here.freePort(),
  persistTo: dir,
  vars: { DISPATCH_SHARDS: "1", VERIFY_CANARY_RATE: "0", VERIFICATION: "off" },
});
const post = (docs: string[]) =>
  fetch(`${edge.url}/v1/jobs`, {
    method: "POST",
    headers,
    body: JSON.stringify({ documents: docs.map((text) => ({ text })), verification: "off" }),
  });
const w = await post(sentences(100, 99));
console.log("warm", w.status);
const n = Number(process.env.DOCS ?? 10000);
const perfOut = process.env.PERF;
for (let r = 0; r < Number(process.env.ROUNDS ?? 3); r++) {
  const body = sentences(n, r + 1);
  let perf;
  if (perfOut && r === 1) {
    const pids = execSync("pgrep -d, workerd").toString().trim();
    perf = spawn("perf", ["record", "-F", "999", "-g", "-p", pids, "-o", perfOut], {
      stdio: "ignore",
    });
    await new Promise((r) => setTimeout(r, 500));
  }
  const prof = process.env.PROF && r === 1 ? await EdgeProfiler.start(edge.inspectorPort) : null;
  const t0 = performance.now();
  const res = await post(body);
  const ms = performance.now() - t0;
  if (prof) console.log((await prof.stop("/tmp/submit.cpuprofile", 40)).text);
  if (perf) {
    perf.kill("SIGINT");
    await new Promise((r) => perf.on("exit", r));
  }
  console.log(
    `round ${r}: ${res.status} ${ms.toFixed(0)} ms, ${(n / (ms / 1000)).toFixed(0)} docs/s`,
  );
}
await edge.stop();
