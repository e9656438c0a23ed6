/**
 * `npm run chaos`: the long soak. A job of a few thousand chunks on real workers while
 * workers are killed and restarted, the edge restarts twice, connections are cut (some
 * mid-frame) and a hostile peer sends every bad frame it can. Prints the table the README
 * quotes and writes bench-results/chaos.json.
 *
 * `npm run chaos -- --day [--minutes 10]`: a day in the life of one system instead: hundreds
 * of jobs in bursts, idle gaps past hibernation, real-time calls, workers joining, leaving and
 * dying, edge restarts; every job must complete within a bound and the edge's picture of every
 * worker's window must match the worker's own. `--donors N` gives the workers N distinct
 * tokens in turn, so results are verified across donors (and no honest one may be outvoted).
 * Writes bench-results/chaos-day.json.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { formatDay, runDay } from "../test/chaos/day.js";
import { formatReport, runChaos } from "../test/chaos/run.js";
import { ROOT } from "./lib/local-edge.js";

const { values } = parseArgs({
  options: {
    documents: { type: "string", default: "2500" },
    workers: { type: "string", default: "4" },
    seed: { type: "string", default: "7" },
    day: { type: "boolean", default: false },
    donors: { type: "string", default: "1" },
    minutes: { type: "string", default: "10" },
  },
});

const write = (name: string, report: unknown) => {
  mkdirSync(path.join(ROOT, "bench-results"), { recursive: true });
  writeFileSync(path.join(ROOT, "bench-results", name), `${JSON.stringify(report, null, 2)}\n`);
};

if (values.day) {
  const report = await runDay({
    minutes: Number(values.minutes),
    maxWorkers: Number(values.workers),
    donors: Number(values.donors),
    edgeRestarts: 3,
    jobBoundMs: 120_000,
    seed: Number(values.seed),
    log: (l) => console.log(l),
  });
  console.log(formatDay(report));
  write("chaos-day.json", report);
  const ok =
    report.completed === report.jobs &&
    report.late.length === 0 &&
    report.disagreements.length === 0 &&
    report.vectors === report.chunks &&
    report.stalls === 0 &&
    report.api5xx === 0 &&
    // Every donor here is honest: none may ever be outvoted or quarantined.
    report.donors.every((d) => d.disagreed === 0 && d.quarantinedAt === null);
  process.exit(ok ? 0 : 1);
}

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
write("chaos.json", report);
const ok =
  report.status === "completed" && report.lost === 0 && report.doubled === 0 && report.api5xx === 0;
process.exit(ok ? 0 : 1);
