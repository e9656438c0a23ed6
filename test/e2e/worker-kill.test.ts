import type { Job } from "@p2pa/shared";
import { afterAll, beforeAll, expect, it } from "vitest";
import { generatedPassages } from "../../scripts/lib/corpus.js";
import { allChunks, type FleetStats, type System, startSystem, waitForJob } from "./harness.js";

let sys: System;

beforeAll(async () => {
  sys = await startSystem();
}, 120_000);

afterAll(async () => {
  await sys?.stop();
});

it("a worker killed with SIGKILL mid-job loses nothing and doubles nothing", async () => {
  const victim = await sys.addWorker();
  await sys.addWorker();
  const documents = generatedPassages(1200, 300, 700, 11).map((text) => ({ text }));
  const submitted = await sys.api<Job>("/v1/jobs", { json: { documents } });
  expect(submitted.status).toBe(202);
  const id = submitted.body.id;

  // Kill once the job is well under way, so the victim holds leases.
  for (;;) {
    const { body } = await sys.api<Job>(`/v1/jobs/${id}`);
    if (body.chunks.done >= body.chunks.total * 0.2) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  victim.kill("SIGKILL");
  const before = (await sys.api<Job>(`/v1/jobs/${id}`)).body;
  expect(before.chunks.done).toBeLessThan(before.chunks.total);

  const job = await waitForJob<Job>(sys, id, 180_000);
  expect(job.status).toBe("completed");
  expect(job.chunks).toEqual({
    total: submitted.body.chunks.total,
    done: submitted.body.chunks.total,
    failed: 0,
    cached: 0,
  });
  const chunks = await allChunks(sys, id);
  expect(chunks.length).toBe(job.chunks.total);
  expect(chunks.every((c) => c.status === "done" && c.vector?.length === 512)).toBe(true);
  const stats = await sys.api<FleetStats>("/v1/workers", { admin: true });
  expect(stats.body.vectors).toBe(job.chunks.total);
}, 300_000);
