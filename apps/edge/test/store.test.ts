import { env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { openStore } from "../src/db/open.js";
import type { NewJob } from "../src/db/store.js";

function newJob(id: string, chunks: number): NewJob {
  return {
    id,
    tenant: "t1",
    model: "use-lite",
    chunking: { maxChars: 1000, overlap: 100 },
    verification: "auto",
    pool: "any",
    piiMask: [],
    textRetentionDays: null,
    createdBy: null,
    idempotencyKey: null,
    requestHash: null,
    createdAt: new Date().toISOString(),
    documents: [{ seq: 0, id: "doc", metadata: { k: "v" }, chars: 10 * chunks }],
    // More chunks than one statement can carry, to exercise the statement splitting.
    chunks: Array.from({ length: chunks }, (_, i) => ({
      id: `${id}.00000.${String(i).padStart(5, "0")}`,
      documentSeq: 0,
      documentId: "doc",
      index: i,
      text: `chunk ${i}`,
      start: i * 10,
      end: i * 10 + 9,
    })),
  };
}

describe("D1Store", () => {
  it("creates a job with all its chunks in one transaction", async () => {
    const store = openStore(env);
    const { job, created } = await store.createJob(newJob("job_a", 250));
    expect(created).toBe(true);
    expect(job).toMatchObject({
      status: "queued",
      documents: 1,
      chunks: { total: 250, done: 0, failed: 0 },
    });
    expect((await store.listChunks("t1", "job_a", null, 1000)).length).toBe(250);
    await expect(store.createJob(newJob("job_a", 3))).rejects.toThrow();
    expect((await store.listChunks("t1", "job_a", null, 1000)).length).toBe(250);
  });

  it("counts each chunk once however often its result is recorded, then settles the status", async () => {
    const store = openStore(env);
    await store.createJob(newJob("job_b", 120));
    const ids = (await store.listChunks("t1", "job_b", null, 1000)).map((c) => c.id);
    await store.recordDone("job_b", ids.slice(0, 100));
    await store.recordDone("job_b", ids.slice(50, 100)); // replay
    expect((await store.getJob("t1", "job_b"))?.chunks).toEqual({
      total: 120,
      done: 100,
      failed: 0,
    });
    await store.recordFailed("job_b", ids.slice(90, 110), "poison");
    expect((await store.getJob("t1", "job_b"))?.chunks).toEqual({
      total: 120,
      done: 100,
      failed: 10,
    });
    expect((await store.getJob("t1", "job_b"))?.status).toBe("queued");
    await store.recordDone("job_b", ids.slice(110));
    const job = await store.getJob("t1", "job_b");
    expect(job).toMatchObject({
      status: "completed_with_errors",
      chunks: { total: 120, done: 110, failed: 10 },
    });
    expect(job?.completedAt).toBeTruthy();
    const failed = (await store.getChunks("t1", ids.slice(105, 106)))[0];
    expect(failed).toMatchObject({ status: "failed", error: "poison" });
  });

  it("completes a job whose every chunk is done, and fails one whose every chunk failed", async () => {
    const store = openStore(env);
    await store.createJob(newJob("job_c", 5));
    await store.createJob(newJob("job_d", 5));
    const c = (await store.listChunks("t1", "job_c", null, 10)).map((x) => x.id);
    const d = (await store.listChunks("t1", "job_d", null, 10)).map((x) => x.id);
    await store.recordDone("job_c", c);
    await store.recordFailed("job_d", d, "bad");
    expect((await store.getJob("t1", "job_c"))?.status).toBe("completed");
    expect((await store.getJob("t1", "job_d"))?.status).toBe("failed");
  });
});
