import { TASK_SIZE, TERMINAL_STATUSES } from "@p2pa/shared";
import { expect, it } from "vitest";
import { answerChunks, call, KEYS, submit, TestWorker } from "./helpers.js";

interface Sse {
  event: string;
  id: string;
  data: Record<string, unknown>;
}

/** Reads SSE frames until `stop` says so or the stream ends. */
async function readEvents(
  res: Response,
  stop: (e: Sse, all: Sse[]) => boolean = () => false,
): Promise<Sse[]> {
  const reader = (res.body as ReadableStream<Uint8Array>)
    .pipeThrough(new TextDecoderStream())
    .getReader();
  const out: Sse[] = [];
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return out;
    buf += value;
    let i = buf.indexOf("\n\n");
    while (i >= 0) {
      const frame = buf.slice(0, i);
      buf = buf.slice(i + 2);
      i = buf.indexOf("\n\n");
      const f: Partial<Sse> = {};
      for (const line of frame.split("\n")) {
        if (line.startsWith("event: ")) f.event = line.slice(7);
        else if (line.startsWith("id: ")) f.id = line.slice(4);
        else if (line.startsWith("data: "))
          f.data = JSON.parse(line.slice(6)) as Record<string, unknown>;
      }
      if (!f.event) continue;
      out.push(f as Sse);
      if (stop(f as Sse, out)) {
        await reader.cancel();
        return out;
      }
    }
  }
}

async function runJob(jobChunks: number, w: TestWorker) {
  w.ready(Math.ceil(jobChunks / TASK_SIZE));
  await answerChunks(w, jobChunks);
}

const TERMINAL: readonly string[] = TERMINAL_STATUSES;

it("streams progress, per-chunk events and one terminal event, then closes", async () => {
  const j = await submit(100);
  const w = await TestWorker.connect();
  const res = await call(`/v1/jobs/${j.id}/events?chunks=true`);
  expect(res.status).toBe(200);
  expect(res.headers.get("Content-Type")).toMatch(/text\/event-stream/);
  const [events] = await Promise.all([readEvents(res), runJob(j.chunks.total, w)]);
  const chunks = events.filter((e) => e.event === "chunk");
  expect(chunks.length).toBe(j.chunks.total);
  expect(new Set(chunks.map((e) => e.data.chunkId)).size).toBe(j.chunks.total);
  const ids = events.filter((e) => e.event !== "progress").map((e) => Number(e.id));
  expect(ids).toEqual([...ids].sort((a, b) => a - b));
  expect(new Set(ids).size).toBe(ids.length);
  const last = events.at(-1);
  expect(last?.event).toBe("completed");
  expect(last?.data).toMatchObject({
    status: "completed",
    chunks: { total: j.chunks.total, done: j.chunks.total },
  });
  expect(events.filter((e) => TERMINAL.includes(e.event)).length).toBe(1);
  const progress = events.filter((e) => e.event === "progress");
  expect(progress.length).toBeGreaterThanOrEqual(1);
  // Coalesced: far fewer progress events than chunks.
  expect(progress.length).toBeLessThan(j.chunks.total / 4);
  w.ws.close();
});

it("resumes from Last-Event-ID without gaps or repeats, and answers 204 once the end was seen", async () => {
  const j = await submit(64);
  const w = await TestWorker.connect();
  const first = await call(`/v1/jobs/${j.id}/events?chunks=true`);
  const job = runJob(j.chunks.total, w);
  const part = await readEvents(
    first,
    (_e, all) => all.filter((x) => x.event === "chunk").length >= 20,
  );
  const lastId = part.filter((e) => e.event === "chunk").at(-1)?.id as string;
  await job;
  const rest = await readEvents(
    await call(`/v1/jobs/${j.id}/events?chunks=true`, { headers: { "Last-Event-ID": lastId } }),
  );
  const seen = [...part, ...rest].filter((e) => e.event === "chunk").map((e) => e.data.chunkId);
  expect(seen.length).toBe(j.chunks.total);
  expect(new Set(seen).size).toBe(j.chunks.total);
  const end = rest.at(-1);
  expect(end?.event).toBe("completed");
  const after = await call(`/v1/jobs/${j.id}/events`, {
    headers: { "Last-Event-ID": end?.id as string },
  });
  expect(after.status).toBe(204);
  expect(
    (await call(`/v1/jobs/${j.id}/events`, { headers: { "Last-Event-ID": "x" } })).status,
  ).toBe(422);
  w.ws.close();
});

it("ends a cancelled job's stream with a cancelled event", async () => {
  const j = await submit(30);
  const res = await call(`/v1/jobs/${j.id}/events`);
  const events = readEvents(res);
  await call(`/v1/jobs/${j.id}/cancel`, { method: "POST", json: {} });
  const all = await events;
  expect(all.at(-1)?.event).toBe("cancelled");
});

/** Reads of job records for live progress, over all shards (`/v1/metrics`). */
async function progressReads(): Promise<number> {
  const text = await (await call("/v1/metrics", { key: KEYS.admin })).text();
  return text
    .split("\n")
    .filter((l) => l.startsWith("p2pa_progress_reads_total"))
    .reduce((n, l) => n + Number(l.split(" ").at(-1)), 0);
}

it("pushes one job to fifty streams with a read per pass, not per stream, and reads nothing while it is idle", async () => {
  const j = await submit(64);
  const w = await TestWorker.connect();
  let opened = 0;
  const streams = await Promise.all(
    Array.from({ length: 50 }, () => call(`/v1/jobs/${j.id}/events?chunks=true`)),
  );
  const all = streams.map((res) =>
    readEvents(res, (e, seen) => {
      if (seen.length === 1) opened++;
      return TERMINAL.includes(e.event);
    }),
  );
  await expect.poll(() => opened, { timeout: 10_000 }).toBe(50);
  // A stream that opened during a pass gets one more pass of its own: let that one finish.
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  let before = await progressReads();
  for (let quiet = false; !quiet; ) {
    await sleep(300);
    const now = await progressReads();
    quiet = now === before;
    before = now;
  }
  // Fifty streams polling every 200 ms would read the job hundreds of times in this second.
  await sleep(1000);
  expect(await progressReads()).toBe(before);

  await runJob(j.chunks.total, w);
  for (const events of await Promise.all(all)) {
    expect(events.filter((e) => e.event === "chunk").length).toBe(j.chunks.total);
    expect(events.at(-1)).toMatchObject({
      event: "completed",
      data: { chunks: { done: j.chunks.total, total: j.chunks.total } },
    });
  }
  const tasks = Math.ceil(j.chunks.total / TASK_SIZE);
  // A pass per result, one for a held-back progress frame and one for the end, at most.
  const reads = (await progressReads()) - before;
  expect(reads).toBeGreaterThan(0);
  expect(reads).toBeLessThanOrEqual(tasks * 3 + 3);
  w.ws.close();
});
