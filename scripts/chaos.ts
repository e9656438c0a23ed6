/**
 * `npm run chaos`: the long soak. A job of a few thousand chunks on real workers while
 * workers are killed and restarted, the edge restarts twice, connections are cut (some
 * mid-frame) and a hostile peer sends every bad frame it can. Prints the table the README
 * quotes and writes bench-results/chaos.json.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { formatReport, runChaos } from "../test/chaos/run.js";
import { ROOT } from "./lib/local-edge.js";

const { values } = parseArgs({
  options: {
    documents: { type: "string", default: "2500" },
    workers: { type: "string", default: "4" },
    seed: { type: "string", default: "7" },
  },
});

const report = await runChaos({
  documents: Number(values.documents),
  workers: Number(values.workers),
  killEveryMs: 2000,
  cutEveryMs: 800,
  restartEdgeAt: [0.3, 0.7],
  hostile: true,
  seed: Number(values.seed),
  timeoutMs: 900_000,
  log: (l) => console.log(l),
});
console.log(formatReport(report));
mkdirSync(path.join(ROOT, "bench-results"), { recursive: true });
writeFileSync(
  path.join(ROOT, "bench-results", "chaos.json"),
  `${JSON.stringify(report, null, 2)}\n`,
);
const ok =
  report.status === "completed" && report.lost === 0 && report.doubled === 0 && report.api5xx === 0;
process.exit(ok ? 0 : 1);
