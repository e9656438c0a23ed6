import { createServer, type IncomingHttpHeaders, request, type Server } from "node:http";
import { gunzipSync } from "node:zlib";
import { type Chunk, type Job, TERMINAL_STATUSES, type WebhookEndpoint } from "@p2pa/shared";
import { EventSource } from "eventsource";
import { Webhook } from "standardwebhooks";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generatedPassages } from "../../scripts/lib/corpus.js";
import {
  allChunks,
  type ChunkEvent,
  cuttableProxy,
  DEV_CREDENTIALS,
  freePort,
  type System,
  startSystem,
  type WebhookDeliveryList,
  type WebhookPayload,
  waitForJob,
} from "./harness.js";

interface Received {
  headers: IncomingHttpHeaders;
  body: string;
  at: number;
  answered: number;
}

/** A webhook receiver on loopback that answers with the codes it is given, in turn. */
async function receiver(
  codes: (n: number) => number,
): Promise<{ url: string; got: Received[]; server: Server }> {
  const got: Received[] = [];
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", () => {
      const answered = codes(got.length);
      got.push({ headers: req.headers, body, at: Date.now(), answered });
      res.writeHead(answered).end();
    });
  });
  const port = await freePort();
  await new Promise<void>((r) => server.listen(port, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${port}/hook`, got, server };
}

const SCHEDULE = [0, 1, 1, 2];
let sys: System;

beforeAll(async () => {
  sys = await startSystem({
    vars: { WEBHOOK_SCHEDULE: SCHEDULE.join(","), WEBHOOK_PROGRESS_SECONDS: "1" },
  });
  await sys.addWorker(["--threads", "2"]);
}, 180_000);

afterAll(async () => {
  await sys?.stop();
});

async function until<T>(
  what: string,
  f: () => Promise<T | null | undefined | false>,
  timeoutMs = 60_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe("webhooks, end to end", () => {
  it("retries a receiver that is down, then delivers once, signed, under one webhook-id", async () => {
    const rx = await receiver((n) => (n < 2 ? 503 : 200));
    const ep = await sys.api<WebhookEndpoint & { secret: string }>("/v1/webhooks", {
      json: { url: rx.url },
    });
    expect(ep.status).toBe(201);
    const job = await sys.api<Job>("/v1/jobs", {
      json: { documents: [{ text: "Webhooks should arrive once." }] },
    });
    await waitForJob(sys, job.body.id);
    await until("the delivery", async () => rx.got.find((g) => g.answered === 200));
    const wh = new Webhook(ep.body.secret);
    for (const g of rx.got) {
      const payload = wh.verify(g.body, g.headers as Record<string, string>) as WebhookPayload;
      expect(payload).toMatchObject({
        type: "job.completed",
        data: { id: job.body.id, status: "completed" },
      });
    }
    expect(rx.got.map((g) => g.answered)).toEqual([503, 503, 200]);
    expect(new Set(rx.got.map((g) => g.headers["webhook-id"])).size).toBe(1);
    // Tampering with what arrived, or replaying it much later, fails verification.
    const first = rx.got[0] as Received;
    expect(() =>
      wh.verify(first.body.replace("completed", "failed"), first.headers as Record<string, string>),
    ).toThrow();
    const later = {
      ...(first.headers as Record<string, string>),
      "webhook-timestamp": String(Math.floor(Date.now() / 1000) - 3600),
    };
    expect(() => wh.verify(first.body, later)).toThrow();

    const deliveries = await until("the delivered record", async () => {
      const d = await sys.api<WebhookDeliveryList>(`/v1/webhooks/${ep.body.id}/deliveries`);
      return d.body.data.find((x) => x.status === "delivered") ? d.body.data : null;
    });
    expect(deliveries[0]).toMatchObject({
      id: first.headers["webhook-id"],
      status: "delivered",
      attempts: 3,
    });
    expect(deliveries[0]?.attemptLog.map((a) => a.responseCode)).toEqual([503, 503, 200]);

    // Redelivery sends the same message again, under the same id.
    const again = await sys.api(
      `/v1/webhooks/${ep.body.id}/deliveries/${deliveries[0]?.id}/redeliver`,
      { method: "POST", json: {} },
    );
    expect(again.status).toBe(202);
    await until("the redelivery", async () => rx.got.length === 4);
    expect(rx.got[3]?.headers["webhook-id"]).toBe(first.headers["webhook-id"]);
    await sys.api(`/v1/webhooks/${ep.body.id}`, { method: "DELETE" });
    rx.server.close();
  }, 120_000);

  it("gives up on a receiver that never recovers: exhausted, with attempts on the schedule", async () => {
    const rx = await receiver(() => 500);
    const job = await sys.api<Job>("/v1/jobs", {
      json: { documents: [{ text: "Nobody is listening." }], webhook: { url: rx.url } },
    });
    expect(job.body.webhook?.secret).toMatch(/^whsec_/);
    await waitForJob(sys, job.body.id);
    const hook = job.body.webhook as Required<NonNullable<Job["webhook"]>>;
    const d = await until(
      "exhaustion",
      async () => {
        const r = await sys.api<WebhookDeliveryList>(`/v1/webhooks/${hook.id}/deliveries`);
        return r.body.data[0]?.status === "exhausted" ? r.body.data[0] : null;
      },
      30_000,
    );
    expect(d.attempts).toBe(SCHEDULE.length);
    expect(d.nextAttemptAt).toBeNull();
    expect(rx.got.length).toBe(SCHEDULE.length);
    const wh = new Webhook(hook.secret);
    for (const g of rx.got)
      expect(() => wh.verify(g.body, g.headers as Record<string, string>)).not.toThrow();
    // Gaps between attempts follow the schedule (±10% jitter, plus alarm latency).
    const times = d.attemptLog.map((a) => Date.parse(a.at));
    for (let i = 1; i < times.length; i++) {
      const gap = ((times[i] as number) - (times[i - 1] as number)) / 1000;
      expect(gap).toBeGreaterThanOrEqual((SCHEDULE[i] as number) * 0.9 - 0.05);
      expect(gap).toBeLessThan((SCHEDULE[i] as number) * 1.1 + 1.5);
    }
    rx.server.close();
  }, 120_000);
});

describe("webhook delivery under a slow receiver and an edge restart", () => {
  it("times out an attempt that hangs, and keeps retrying across an edge restart until delivered", async () => {
    // Attempt 1 hangs past WEBHOOK_TIMEOUT_MS; later attempts get 503 until the edge has been
    // killed and restarted; attempts resume from Durable Object storage and one is delivered.
    let n = 0;
    let restarted = false;
    const got: { id: string; status: number }[] = [];
    const hold: import("node:http").ServerResponse[] = [];
    const server = createServer((req, res) => {
      const i = n++;
      req.resume();
      if (i === 0) {
        hold.push(res);
        return;
      }
      // Refuse until the edge has restarted, so the delivery can only come from retry state
      // that survived the restart.
      const status = restarted ? 200 : 503;
      got.push({ id: String(req.headers["webhook-id"]), status });
      res.writeHead(status).end();
    });
    const port = await freePort();
    await new Promise<void>((r) => server.listen(port, "127.0.0.1", r));
    const slow = await sys.api<WebhookEndpoint>("/v1/webhooks", {
      json: { url: `http://127.0.0.1:${port}/slow`, events: ["job.completed"] },
    });
    const job = await sys.api<Job>("/v1/jobs", {
      json: { documents: [{ text: "Deliver me through a restart." }] },
    });
    await waitForJob(sys, job.body.id);
    await until("the 503 attempt", async () => got.length >= 1, 30_000);
    await sys.restartEdge();
    restarted = true;
    await until(
      "delivery after the restart",
      async () => got.some((g) => g.status === 200),
      60_000,
    );
    const d = await until("the delivered record", async () => {
      const r = await sys.api<WebhookDeliveryList>(`/v1/webhooks/${slow.body.id}/deliveries`);
      return r.body.data[0]?.status === "delivered" ? r.body.data[0] : null;
    });
    expect(d.attemptLog[0]).toMatchObject({
      responseCode: null,
      error: expect.stringMatching(/timeout|abort/i),
    });
    expect(d.attemptLog.at(-1)?.responseCode).toBe(200);
    expect(new Set(got.map((g) => g.id)).size).toBe(1);
    for (const r of hold) r.destroy();
    server.close();
    await sys.api(`/v1/webhooks/${slow.body.id}`, { method: "DELETE" });
  }, 180_000);
});

describe("live progress and export, end to end", () => {
  let big: Job;

  it("an eventsource client cut off mid-job resumes without losing or repeating events", async () => {
    // A TCP proxy in front of the edge lets the test cut the stream like a network would.
    const proxy = await cuttableProxy(sys.edge.url);

    // An endpoint for throttled progress events only, while the big job runs.
    const progressRx = await receiver(() => 200);
    const progressEp = await sys.api<WebhookEndpoint & { secret: string }>("/v1/webhooks", {
      json: { url: progressRx.url, events: ["job.progress"] },
    });
    const documents = generatedPassages(2400, 200, 800, 5).map((text) => ({ text }));
    const submittedAt = Date.now();
    big = (await sys.api<Job>("/v1/jobs", { json: { documents } })).body;
    const chunkIds: string[] = [];
    const ids: number[] = [];
    let terminal: string | null = null;
    let cut = false;
    let reconnects = 0;
    let lastId: string | null = null;
    /** When the stream last delivered a byte (events, or the server's keepalive comments). */
    let lastByteAt = Date.now();
    // What the client saw go wrong, in order: a stream that ends without its terminal event
    // shows here instead of as a bare timeout.
    const errors: string[] = [];
    const note = (what: string) =>
      errors.push(`${((Date.now() - submittedAt) / 1000).toFixed(1)} s: ${what}`);
    /**
     * Streams the test opened again itself, as a resilient client does: after a 503 (which
     * EventSource never retries) and after 25 s without a byte, when a healthy stream has had
     * a keepalive comment (sent every 15 s). Both resume from the last event id.
     */
    let reopened = 0;
    let es: EventSource | undefined;
    const done = new Promise<void>((resolve, reject) => {
      const fail = (why: string) =>
        reject(new Error(`${why} (${chunkIds.length} chunk events):\n${errors.join("\n")}`));
      const reopen = (why: string) => {
        note(`opening the stream again: ${why}`);
        es?.close();
        if (++reopened > 4) return fail("the event stream kept failing");
        lastByteAt = Date.now();
        setTimeout(open, 1000);
      };
      const open = () => {
        const source = new EventSource(`${proxy.url}/v1/jobs/${big.id}/events?chunks=true`, {
          fetch: async (url, init) => {
            const res = await fetch(url, {
              ...init,
              headers: {
                ...init.headers,
                Authorization: `Bearer ${DEV_CREDENTIALS.apiKey}`,
                ...(lastId ? { "Last-Event-ID": lastId } : {}),
              },
            });
            if (!res.body) return res;
            const body = res.body.pipeThrough(
              new TransformStream<Uint8Array, Uint8Array>({
                transform(chunk, out) {
                  lastByteAt = Date.now();
                  out.enqueue(chunk);
                },
              }),
            );
            return new Response(body, { status: res.status, headers: res.headers });
          },
        });
        es = source;
        source.addEventListener("open", () => reconnects++);
        source.addEventListener("progress", (e) => {
          lastId = e.lastEventId;
        });
        source.addEventListener("chunk", (e) => {
          lastId = e.lastEventId;
          chunkIds.push((JSON.parse(e.data) as ChunkEvent).chunkId);
          ids.push(Number(e.lastEventId));
          if (!cut && chunkIds.length >= 300) {
            cut = true;
            proxy.cut();
          }
        });
        for (const t of TERMINAL_STATUSES) {
          source.addEventListener(t, () => {
            terminal = t;
            source.close();
            resolve();
          });
        }
        source.addEventListener("error", (e) => {
          const { code, message } = e as unknown as { code?: number; message?: string };
          note(`${code ?? "-"} ${message ?? ""}`);
          if (source !== es || source.readyState !== EventSource.CLOSED) return;
          if (code === 503) reopen("503");
          else fail("the event stream closed without a terminal event");
        });
      };
      open();
      const watch = setInterval(() => {
        if (terminal) return clearInterval(watch);
        if (Date.now() - lastByteAt > 25_000) reopen("25 s without a byte");
      }, 5000);
    });
    await done;
    if (reopened)
      console.log(`event stream opened again ${reopened} time(s):\n${errors.join("\n")}`);
    const ranSeconds = (Date.now() - submittedAt) / 1000;
    await proxy.close();
    // job.progress arrives signed, throttled to at most one a second (WEBHOOK_PROGRESS_SECONDS=1).
    const wh = new Webhook(progressEp.body.secret);
    const progress = progressRx.got
      .map((g) => wh.verify(g.body, g.headers as Record<string, string>) as WebhookPayload)
      .filter((p) => p.data.id === big.id);
    expect(progress.length).toBeGreaterThanOrEqual(2);
    expect(progress.length).toBeLessThanOrEqual(Math.ceil(ranSeconds) + 1);
    expect(progress.every((p) => p.type === "job.progress")).toBe(true);
    const counts = progress.map((p) => p.data.chunks.done);
    expect(counts).toEqual([...counts].sort((a, b) => a - b));
    await sys.api(`/v1/webhooks/${progressEp.body.id}`, { method: "DELETE" });
    progressRx.server.close();
    expect(terminal).toBe("completed");
    expect(reconnects).toBeGreaterThanOrEqual(2);
    expect(chunkIds.length).toBe(big.chunks.total);
    expect(new Set(chunkIds).size).toBe(big.chunks.total);
    expect(ids).toEqual([...ids].sort((a, b) => a - b));
  }, 240_000);

  it("exports a multi-thousand-chunk job as NDJSON equal line by line to the chunks API, gzipped only on request", async () => {
    const job = await waitForJob<Job>(sys, big.id);
    expect(job.status).toBe("completed");
    const api = await allChunks(sys, big.id);
    const raw = await new Promise<Buffer>((resolve, reject) => {
      const req = request(`${sys.edge.url}/v1/jobs/${big.id}/results`, {
        headers: { Authorization: `Bearer ${DEV_CREDENTIALS.apiKey}`, "Accept-Encoding": "gzip" },
      });
      req.on("response", (res) => {
        expect(res.headers["content-encoding"]).toBe("gzip");
        const parts: Buffer[] = [];
        res.on("data", (d: Buffer) => parts.push(d));
        res.on("end", () => resolve(Buffer.concat(parts)));
      });
      req.on("error", reject);
      req.end();
    });
    const lines = gunzipSync(raw).toString("utf8").trimEnd().split("\n");
    // A client that does not ask for gzip (curl without --compressed) gets plain NDJSON, though
    // the runtime hands the Worker "br, gzip" whatever the client sent.
    const plain = await new Promise<{ encoding: string | undefined; body: Buffer }>(
      (resolve, reject) => {
        const req = request(`${sys.edge.url}/v1/jobs/${big.id}/results`, {
          headers: { Authorization: `Bearer ${DEV_CREDENTIALS.apiKey}` },
        });
        req.on("response", (res) => {
          const parts: Buffer[] = [];
          res.on("data", (d: Buffer) => parts.push(d));
          res.on("end", () =>
            resolve({ encoding: res.headers["content-encoding"], body: Buffer.concat(parts) }),
          );
        });
        req.on("error", reject);
        req.end();
      },
    );
    expect(plain.encoding).toBeUndefined();
    expect(plain.body.toString("utf8").trimEnd().split("\n")).toEqual(lines);
    expect(lines.length).toBe(api.length);
    expect(api.length).toBeGreaterThan(2000);
    lines.forEach((line, i) => {
      const l = JSON.parse(line) as Pick<Chunk, "id" | "text" | "vector">;
      const c = api[i];
      expect(l.id).toBe(c?.id);
      expect(l.text).toBe(c?.text);
      expect(l.vector).toEqual(c?.vector);
    });
  }, 180_000);
});
