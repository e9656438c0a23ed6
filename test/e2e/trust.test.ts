import path from "node:path";
import type { Job } from "@p2pa/shared";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Embedder, loadModel } from "../../apps/worker-node/src/model/index.js";
import { generatedPassages } from "../../scripts/lib/corpus.js";
import { ROOT } from "../../scripts/lib/local-edge.js";
import { randomUnit, ScriptedDonor, type TaskFrame } from "../../scripts/lib/scripted-donor.js";
import {
  allChunks,
  cosine,
  type FleetStats,
  type System,
  startSystem,
  waitForJob,
} from "./harness.js";

/**
 * Untrusted donors on real parts: two real p2pa-worker processes (two tokens) beside a
 * scripted liar (plausible random unit vectors), a lazy donor (one vector for everything) and
 * later a turncoat that builds a clean record and then lies. Every stored vector must be the
 * model's own output, the dishonest donors must be quarantined, and no honest one ever
 * marked wrong.
 */
const TOKENS = {
  honest2: "p2pa_test_honest_2",
  liar: "p2pa_test_liar",
  lazy: "p2pa_test_lazy",
  turncoat: "p2pa_test_turncoat",
};
// prepareLocalDatabase names extra tokens cred_test_worker_<i> in this order.
const CRED = {
  liar: "cred_test_worker_1",
  lazy: "cred_test_worker_2",
  turncoat: "cred_test_worker_3",
};
const HONEST = ["cred_dev_worker", "cred_test_worker_0"];
const MIN_COSINE = 0.999;

let sys: System;
let model: Embedder;

const records = async () => {
  const { body } = await sys.api<FleetStats>("/v1/workers", {
    admin: true,
  });
  return body.shards.flatMap((s) => s.donors ?? []);
};

beforeAll(async () => {
  // A high spot-check rate, so a trusted turncoat is caught within a job of this size; and
  // tasks of 32 chunks whatever the donors' pace, so a donor earns trust (10 agreements)
  // within that job too.
  sys = await startSystem({
    workerTokens: [TOKENS.honest2, TOKENS.liar, TOKENS.lazy, TOKENS.turncoat],
    vars: { VERIFY_SPOT_RATE: "0.3", TASK_WORK_MS: "1" },
  });
  model = await loadModel("use-lite", {
    cacheDir: path.join(ROOT, ".cache", "models"),
    threads: 1,
  });
  await sys.addWorker(["--threads", "1"]);
  await sys.addWorker(["--threads", "1"], TOKENS.honest2);
}, 180_000);

afterAll(async () => {
  await model?.dispose();
  await sys?.stop();
});

/** Every chunk of the job holds the vector the model itself gives its text. */
async function assertModelsOwnVectors(jobId: string) {
  const chunks = await allChunks(sys, jobId);
  const reference = await model.embed(chunks.map((c) => c.text ?? ""));
  const worst = Math.min(...chunks.map((c, i) => cosine(c.vector ?? [], reference[i] ?? [])));
  expect(worst).toBeGreaterThanOrEqual(MIN_COSINE);
}

describe("dishonest donors beside honest ones", () => {
  it("stores only the model's own vectors and quarantines a liar and a lazy donor", async () => {
    const liar = new ScriptedDonor(sys.edge.url, TOKENS.liar, async (t) =>
      t.items.map(() => randomUnit()),
    );
    const same = randomUnit();
    const lazy = new ScriptedDonor(sys.edge.url, TOKENS.lazy, async (t) => t.items.map(() => same));
    await liar.connect();
    await lazy.connect();
    const documents = generatedPassages(500, 120, 400, 91).map((text) => ({ text }));
    const res = await sys.api<Job>("/v1/jobs", { json: { documents } });
    expect(res.status).toBe(202);
    const job = await waitForJob<Job>(sys, res.body.id, 240_000);
    expect(job).toMatchObject({ status: "completed", chunks: { failed: 0 } });
    await assertModelsOwnVectors(job.id);
    expect(liar.closeCode).toBe(4403);
    expect(lazy.closeCode).toBe(4403);
    const r = await records();
    for (const d of [CRED.liar, CRED.lazy]) {
      expect(r.find((x) => x.donor === d)?.quarantinedAt).not.toBeNull();
    }
    for (const d of HONEST) {
      const mine = r.find((x) => x.donor === d);
      expect(mine?.agreed).toBeGreaterThan(0);
      expect(mine?.disagreed).toBe(0);
    }
    // Quarantined tokens are refused at the door from now on.
    const again = new ScriptedDonor(sys.edge.url, TOKENS.liar, async (t) =>
      t.items.map(() => randomUnit()),
    );
    await again.connect().catch(() => {});
    await new Promise((r) => setTimeout(r, 500));
    expect(again.closeCode).toBe(4403);
  }, 300_000);

  it("catches a turncoat that lies after a clean record, and heals what it stored", async () => {
    let lying = false;
    const turncoat = new ScriptedDonor(sys.edge.url, TOKENS.turncoat, async (t: TaskFrame) =>
      lying ? t.items.map(() => randomUnit()) : model.embed(t.items.map((i) => i.text)),
    );
    await turncoat.connect();
    const submit = async (n: number, seed: number) => {
      const documents = generatedPassages(n, 120, 400, seed).map((text) => ({ text }));
      const res = await sys.api<Job>("/v1/jobs", { json: { documents } });
      expect(res.status).toBe(202);
      return res.body.id;
    };
    // Honest until its record says it is trusted, then it lies on the work that comes after.
    // Its results wait for confirmation until then, so it may have computed a whole job by
    // the time the confirmations make it trusted: jobs go on until it is.
    const jobs: string[] = [];
    const deadline = Date.now() + 240_000;
    while (!lying) {
      if (Date.now() > deadline) throw new Error("the turncoat never earned trust");
      if ((await records()).find((x) => x.donor === CRED.turncoat)?.trusted) {
        lying = true;
        break;
      }
      const last = jobs.at(-1);
      const status = last ? (await sys.api<Job>(`/v1/jobs/${last}`)).body.status : null;
      if (status === null || !["queued", "running"].includes(status))
        jobs.push(await submit(1800, 92 + jobs.length));
      await new Promise((r) => setTimeout(r, 300));
    }
    // A job after trust: some of its results are stored unchecked, some spot-checked.
    jobs.push(await submit(1800, 192));
    for (const id of jobs)
      expect((await waitForJob<Job>(sys, id, 240_000)).status).toBe("completed");
    // Caught by spot checks, quarantined, and what it stored unconfirmed is computed again.
    for (;;) {
      const mine = (await records()).find((x) => x.donor === CRED.turncoat);
      if (mine?.quarantinedAt) break;
      if (Date.now() > deadline + 120_000)
        throw new Error(`turncoat never caught: ${JSON.stringify(mine)}`);
      await new Promise((r) => setTimeout(r, 300));
    }
    expect(turncoat.closeCode).toBe(4403);
    for (;;) {
      const { body } = await sys.api<FleetStats>("/v1/workers", { admin: true });
      const open = body.shards.reduce(
        (n, s) => n + (s.tasks.pending ?? 0) + (s.tasks.leased ?? 0) + (s.tasks.storing ?? 0),
        0,
      );
      if (open === 0) break;
      if (Date.now() > deadline + 240_000) throw new Error("recomputation did not finish");
      await new Promise((r) => setTimeout(r, 300));
    }
    for (const id of jobs) await assertModelsOwnVectors(id);
    const r = await records();
    for (const d of HONEST) expect(r.find((x) => x.donor === d)?.disagreed).toBe(0);
  }, 420_000);

  it("sends volunteers no personal data when a job masks it, and keeps the original for its owner", async () => {
    // An honest donor that keeps every frame it receives (a second connection of a token).
    const seen = new ScriptedDonor(
      sys.edge.url,
      TOKENS.honest2,
      async (t) => model.embed(t.items.map((i) => i.text)),
      4,
    );
    await seen.connect();
    const personal = [
      "dana.kowalski@example.net",
      "+1-202-555-0143",
      "4539 1488 0343 6467",
      "DE89 3704 0044 0532 0130 00",
      "10.20.30.40",
      "078-05-1120",
    ];
    const documents = Array.from({ length: 120 }, (_, i) => ({
      text: `Ticket ${i}: ${personal[i % personal.length]} wrote about order ORD-${1000 + i} and a late delivery.`,
    }));
    const res = await sys.api<Job>("/v1/jobs", {
      json: { documents, privacy: { mask: "all" }, verification: "off" },
    });
    expect(res.status).toBe(202);
    const job = await waitForJob<Job>(sys, res.body.id, 120_000);
    expect(job.status).toBe("completed");
    const tasks = seen.received.filter((f) => f.type === "task");
    expect(tasks.length).toBeGreaterThan(0);
    const frames = JSON.stringify(seen.received);
    for (const item of personal) expect(frames).not.toContain(item);
    expect(frames).toContain("<EMAIL>");
    const owner = (await allChunks(sys, job.id, false)).map((c) => c.text).join("\n");
    for (const item of personal) expect(owner).toContain(item);
    seen.close();
  }, 180_000);
});
