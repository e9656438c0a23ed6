import { expect, it } from "vitest";
import { formatReport, runChaos } from "../chaos/run.js";

// The short chaos run; `npm run chaos` runs the long soak with the same harness.
it("survives killed workers, an edge restart, cut connections and a hostile peer without losing or doubling a chunk", async () => {
  const report = await runChaos({
    documents: 700,
    workers: 3,
    killEveryMs: 2500,
    cutEveryMs: 1200,
    restartEdgeAt: [0.4],
    hostile: true,
    seed: 42,
    timeoutMs: 180_000,
    log: (l) => console.log(l),
  });
  console.log(formatReport(report));
  expect(report.status).toBe("completed");
  expect(report.lost).toBe(0);
  expect(report.doubled).toBe(0);
  expect(report.vectors).toBe(report.chunks);
  expect(report.api5xx).toBe(0);
  expect(report.faults["edge restart"]?.injected).toBe(1);
  expect(report.faults["worker SIGKILL"]?.injected ?? 0).toBeGreaterThan(0);
  expect(report.hostile?.errorFrames ?? 0).toBeGreaterThan(5);
  expect(report.hostile?.rejectedResults ?? 0).toBeGreaterThanOrEqual(1);
}, 420_000);
