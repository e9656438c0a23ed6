import { env } from "cloudflare:test";
import { PROTOCOL_VERSION } from "@p2pa/shared";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sha256Hex } from "../../src/lib/crypto.js";
import { PGLITE } from "../backends.js";
import { answerChunks, call, job, KEYS, submit, TestWorker } from "../helpers.js";

// The whole pipeline with its metadata on Postgres: this file's Worker, Dispatcher and keyring
// read METADATA_BACKEND from the same env, set before any of them is made.
(env as unknown as Record<string, string>).METADATA_BACKEND = "postgres";

const open: TestWorker[] = [];

beforeAll(async () => {
  // The test credentials test/setup.ts gives D1, in Postgres (once, if it is shared).
  const creds: [string, string, string, string][] = [
    ["c1", "api", "t1", KEYS.api],
    ["c2", "api", "t2", KEYS.other],
    ["c3", "worker", "t1", KEYS.worker],
  ];
  for (const [id, kind, tenant, key] of creds)
    await PGLITE.query(
      "INSERT INTO credentials (id, kind, tenant, hash) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
      [id, kind, tenant, await sha256Hex(key)],
    );
});

afterAll(() => {
  for (const w of open.splice(0)) w.ws.close();
  (env as unknown as Record<string, string>).METADATA_BACKEND = "d1";
});

/** Answers the worker's tasks until `chunks` are done, with a heartbeat after each result. */
async function workThrough(w: TestWorker, chunks: number) {
  await answerChunks(w, chunks, () =>
    w.send({ type: "heartbeat", v: PROTOCOL_VERSION, leaseIds: [], capacity: 2 }),
  );
}

describe("the pipeline with metadata on Postgres", () => {
  it("reports the database healthy through the store, and 503 when it is not configured", async () => {
    const res = await call("/healthz", { key: null });
    expect(((await res.json()) as { checks: { database: string } }).checks.database).toBe("ok");
    const vars = env as unknown as Record<string, string | undefined>;
    const url = vars.DATABASE_URL;
    vars.DATABASE_URL = "";
    try {
      const down = await call("/healthz", { key: null });
      expect(down.status).toBe(503);
      expect(((await down.json()) as { checks: { database: string } }).checks.database).toBe(
        "unreachable",
      );
      const refused = await call("/v1/jobs");
      expect(refused.status).toBe(503);
      expect(((await refused.json()) as { error: { code: string } }).error.code).toBe(
        "not_configured",
      );
    } finally {
      vars.DATABASE_URL = url;
    }
  });

  it("runs jobs end to end: submit, compute, count, search, delete, with nothing in D1", async () => {
    const w = await TestWorker.connect();
    open.push(w);
    w.ready(2);
    const jobs = [];
    // Several jobs of different sizes, one after another on one worker.
    for (const docs of [70, 1, 33]) {
      // Idle long enough between jobs that the Dispatcher's connections end and open again.
      if (jobs.length === 2) await new Promise((r) => setTimeout(r, 2_500));
      const j = await submit(docs);
      await workThrough(w, docs);
      expect(await job(j.id)).toMatchObject({
        status: "completed",
        chunks: { total: docs, done: docs, failed: 0 },
      });
      jobs.push(j.id);
    }
    const [stored] = await PGLITE.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM jobs WHERE id = ANY(?::text[])",
      [jobs],
    );
    expect(stored?.n).toBe(3);
    const [d1] = (await env.DB.prepare("SELECT count(*) AS n FROM jobs").all<{ n: number }>())
      .results;
    expect(d1?.n).toBe(0);

    // The keyword index (on Postgres) finds the one document with this number, text opened
    // with the tenant's key (on Postgres too).
    const search = await call("/v1/search", {
      method: "POST",
      json: { query: "number 41", mode: "keyword", topK: 3, includeText: true },
    });
    expect(search.status).toBe(200);
    const { results } = (await search.json()) as {
      results: { chunk: { jobId: string; text?: string } }[];
    };
    expect(results[0]?.chunk.jobId).toBe(jobs[0]);
    expect(results[0]?.chunk.text).toMatch(/^Document number 41 says/);
    // A filter is compiled for Postgres by the store (same semantics as on D1 and Vectorize).
    const hits = async (filter: Record<string, unknown>) => {
      const r = await call("/v1/search", {
        method: "POST",
        json: { query: "number 41", mode: "keyword", topK: 3, filter },
      });
      expect(r.status).toBe(200);
      return ((await r.json()) as { results: { chunk: { jobId: string } }[] }).results;
    };
    expect((await hits({ jobId: jobs[0] }))[0]?.chunk.jobId).toBe(jobs[0]);
    expect(
      await hits({ jobId: { $in: [jobs[1], jobs[2]] }, collection: "default" }),
    ).not.toContainEqual(
      expect.objectContaining({ chunk: expect.objectContaining({ jobId: jobs[0] }) }),
    );
    expect(await hits({ collection: "elsewhere" })).toEqual([]);

    const listed = (await (await call("/v1/jobs?limit=10")).json()) as { data: { id: string }[] };
    expect(listed.data.map((j) => j.id)).toEqual(expect.arrayContaining(jobs));

    expect((await call(`/v1/jobs/${jobs[1]}`, { method: "DELETE" })).status).toBe(204);
    expect((await call(`/v1/jobs/${jobs[1]}`)).status).toBe(404);
    const [left] = await PGLITE.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM chunks WHERE job_id = ?",
      [jobs[1]],
    );
    expect(left?.n).toBe(0);
  });
});
