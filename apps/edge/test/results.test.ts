import { TASK_SIZE } from "@p2pa/shared";
import { expect, it } from "vitest";
import { answerChunks, call, job, KEYS, submit, TestWorker } from "./helpers.js";

async function completedJob(nDocs: number) {
  const j = await submit(nDocs);
  const w = await TestWorker.connect();
  w.ready(Math.ceil(j.chunks.total / TASK_SIZE));
  await answerChunks(w, j.chunks.total);
  w.ws.close();
  expect((await job(j.id)).status).toBe("completed");
  return j;
}

async function chunksApi(id: string) {
  const out: { id: string; text: string; vector?: number[] }[] = [];
  let cursor: string | null = null;
  do {
    const page = (await (
      await call(
        `/v1/jobs/${id}/chunks?limit=1000&includeVectors=true${cursor ? `&cursor=${cursor}` : ""}`,
      )
    ).json()) as {
      data: typeof out;
      nextCursor: string | null;
    };
    out.push(...page.data);
    cursor = page.nextCursor;
  } while (cursor);
  return out;
}

it("streams every chunk with its vector as NDJSON, equal line by line to the chunks API", async () => {
  const j = await completedJob(450); // more than two export pages
  const res = await call(`/v1/jobs/${j.id}/results`);
  expect(res.status).toBe(200);
  expect(res.headers.get("Content-Type")).toMatch(/application\/x-ndjson/);
  const lines = (await res.text())
    .trimEnd()
    .split("\n")
    .map((l) => JSON.parse(l) as { id: string; text: string; vector: number[] });
  const api = await chunksApi(j.id);
  expect(lines.length).toBe(j.chunks.total);
  expect(lines.map((l) => l.id)).toEqual(api.map((c) => c.id));
  lines.forEach((l, i) => {
    expect(l.text).toBe(api[i]?.text);
    expect(l.vector).toEqual(api[i]?.vector);
    expect(l.vector.length).toBe(512);
  });
});

it("gzips the export when the client accepts it", async () => {
  const j = await completedJob(20);
  const res = await call(`/v1/jobs/${j.id}/results`, { headers: { "Accept-Encoding": "gzip" } });
  expect(res.headers.get("Content-Encoding")).toBe("gzip");
  // The runtime's fetch decodes gzip transparently, as browsers do; the e2e suite reads the raw bytes.
  const text = await res.text();
  expect(text.trimEnd().split("\n").length).toBe(j.chunks.total);
});

it("answers 404 for another tenant's or an unknown job", async () => {
  const unknown = await call("/v1/jobs/job_nope/results");
  expect(unknown.status).toBe(404);
  const unknownBody = (await unknown.json()) as { error: { code: string } };
  // A job of tenant t1 with its results in, asked for with tenant t2's key.
  const j = await completedJob(3);
  const mine = await chunksApi(j.id);
  expect(mine).toHaveLength(3);
  const theirs = await call(`/v1/jobs/${j.id}/results`, { key: KEYS.other });
  expect(theirs.status).toBe(404);
  expect(theirs.headers.get("Content-Type")).toMatch(/application\/json/);
  const text = await theirs.text();
  // The same answer as for a job that does not exist, and nothing of t1's job in it.
  expect((JSON.parse(text) as { error: { code: string } }).error.code).toBe(unknownBody.error.code);
  for (const c of mine) {
    expect(text).not.toContain(c.id);
    expect(text).not.toContain(c.text);
  }
  // The job is there for its own tenant: the 404 is the tenancy check, not a missing job.
  const own = await call(`/v1/jobs/${j.id}/results`);
  expect(own.status).toBe(200);
  expect((await own.text()).trimEnd().split("\n")).toHaveLength(3);
});
