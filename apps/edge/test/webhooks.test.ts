import { env, runInDurableObject } from "cloudflare:test";
import type { WebhookDelivery as Delivery } from "@p2pa/shared";
import { Webhook } from "standardwebhooks";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { WebhookHub } from "../src/webhooks/hub.js";
import { webhookHub } from "../src/webhooks/index.js";
import { delayBefore, parseSchedule } from "../src/webhooks/schedule.js";
import { newSecret, sign } from "../src/webhooks/signing.js";
import { checkTarget, classifyHost } from "../src/webhooks/targets.js";
import { call, errorOf, KEYS } from "./helpers.js";

describe("webhook signatures", () => {
  it("verify with the official standardwebhooks library, and fail when tampered or stale", async () => {
    const secret = newSecret();
    expect(secret).toMatch(/^whsec_[A-Za-z0-9+/]+=*$/);
    const body = JSON.stringify({ type: "job.completed", data: { id: "job_x" } });
    const ts = Math.floor(Date.now() / 1000);
    const headers = {
      "webhook-id": "msg_1",
      "webhook-timestamp": String(ts),
      "webhook-signature": await sign(secret, "msg_1", ts, body),
    };
    const wh = new Webhook(secret);
    expect(wh.verify(body, headers)).toEqual(JSON.parse(body));
    expect(() => wh.verify(body.replace("job_x", "job_y"), headers)).toThrow();
    expect(() => new Webhook(newSecret()).verify(body, headers)).toThrow();
    const old = ts - 3600;
    const stale = {
      ...headers,
      "webhook-timestamp": String(old),
      "webhook-signature": await sign(secret, "msg_1", old, body),
    };
    expect(() => wh.verify(body, stale)).toThrow(/timestamp/i);
  });
});

describe("retry schedule", () => {
  it("follows the schedule with at most 10% jitter and ends after the last attempt", () => {
    const s = parseSchedule("0,5,300");
    expect(s).toEqual([0, 5, 300]);
    for (let i = 0; i < 50; i++) {
      const d = delayBefore(s, 2) as number;
      expect(d).toBeGreaterThanOrEqual(270_000);
      expect(d).toBeLessThanOrEqual(330_000);
    }
    expect(delayBefore(s, 0)).toBe(0);
    expect(delayBefore(s, 3)).toBeNull();
    expect(parseSchedule("1,x")).toEqual(parseSchedule(undefined));
    expect(parseSchedule(undefined)).toHaveLength(8);
  });
});

describe("webhook targets", () => {
  it("tells loopback, private and public hosts apart", () => {
    for (const h of ["127.0.0.1", "localhost", "api.localhost", "[::1]", "127.8.9.1"])
      expect(classifyHost(h), h).toBe("loopback");
    for (const h of [
      "10.0.0.5",
      "172.16.3.4",
      "192.168.1.1",
      "169.254.169.254",
      "100.64.0.1",
      "[fd00::1]",
      "[fe80::1]",
      "intranet",
      "db.internal",
      "printer.local",
      "0.0.0.0",
      "[::ffff:10.0.0.1]",
    ]) {
      expect(classifyHost(h), h).toBe("private");
    }
    for (const h of ["example.com", "8.8.8.8", "172.32.0.1", "[2606:4700::1111]"])
      expect(classifyHost(h), h).toBe("public");
  });

  it("allows only what the deployment's policy allows", () => {
    expect(checkTarget("https://hooks.example.com/x", "none")).toBeNull();
    expect(checkTarget("http://hooks.example.com/x", "none")).toMatch(/https/);
    expect(checkTarget("http://127.0.0.1:9000/hook", "none")).toMatch(/loopback/);
    expect(checkTarget("http://127.0.0.1:9000/hook", "loopback")).toBeNull();
    expect(checkTarget("http://10.1.2.3/hook", "loopback")).toMatch(/private/);
    expect(checkTarget("http://169.254.169.254/latest/meta-data", "loopback")).toMatch(/private/);
    expect(checkTarget("http://10.1.2.3/hook", "all")).toBeNull();
    expect(checkTarget("ftp://example.com", "all")).toMatch(/http/);
    expect(checkTarget("https://user:pw@example.com", "all")).toMatch(/credentials/);
    expect(checkTarget("nonsense", "all")).toMatch(/valid URL/);
  });
});

describe("webhook endpoints API", () => {
  it("creates an endpoint with a secret shown once, lists, and deletes it", async () => {
    const res = await call("/v1/webhooks", {
      method: "POST",
      json: { url: "http://127.0.0.1:9/hook", events: ["job.completed"] },
    });
    expect(res.status).toBe(201);
    const ep = (await res.json()) as { id: string; secret: string; events: string[] };
    expect(ep.secret).toMatch(/^whsec_/);
    expect(ep.events).toEqual(["job.completed"]);
    const list = (await (await call("/v1/webhooks")).json()) as {
      data: { id: string; secret?: string }[];
    };
    expect(list.data.map((e) => e.id)).toContain(ep.id);
    expect(list.data.every((e) => e.secret === undefined)).toBe(true);
    expect((await call("/v1/webhooks", { key: KEYS.other })).status).toBe(200);
    expect(
      ((await (await call("/v1/webhooks", { key: KEYS.other })).json()) as { data: unknown[] })
        .data,
    ).toEqual([]);
    expect((await call(`/v1/webhooks/${ep.id}/deliveries`)).status).toBe(200);
    expect(
      (await call(`/v1/webhooks/${ep.id}`, { method: "DELETE", key: KEYS.other })).status,
    ).toBe(404);
    expect((await call(`/v1/webhooks/${ep.id}`, { method: "DELETE" })).status).toBe(204);
    expect((await call(`/v1/webhooks/${ep.id}`, { method: "DELETE" })).status).toBe(404);
    expect((await call(`/v1/webhooks/${ep.id}/deliveries`)).status).toBe(404);
  });

  it("changes an endpoint's url and events, logs the change, and forgets its secret on delete", async () => {
    const ep = (await (
      await call("/v1/webhooks", {
        method: "POST",
        json: { url: "http://127.0.0.1:9/a", events: ["job.completed"] },
      })
    ).json()) as { id: string; secret: string };
    const patch = (json: unknown, key: string = KEYS.api) =>
      call(`/v1/webhooks/${ep.id}`, { method: "PATCH", json, key });
    expect((await patch({ url: "http://127.0.0.1:9/b" }, KEYS.other)).status).toBe(404);
    expect((await errorOf(await patch({}))).code).toBe("validation_failed");
    expect((await errorOf(await patch({ url: "http://10.0.0.1/x" }))).status).toBe(422);
    const changed = await patch({ url: "http://127.0.0.1:9/b", events: ["job.failed"] });
    expect(changed.status).toBe(200);
    expect(await changed.json()).toMatchObject({
      id: ep.id,
      url: "http://127.0.0.1:9/b",
      events: ["job.failed"],
    });
    const log = (await (await call("/v1/audit?action=webhook.changed&order=desc")).json()) as {
      data: { target: string; actor: string; details: Record<string, unknown> }[];
    };
    expect(log.data[0]).toMatchObject({
      target: ep.id,
      actor: "c1",
      details: {
        url: { from: "http://127.0.0.1:9/a", to: "http://127.0.0.1:9/b" },
        events: { from: ["job.completed"], to: ["job.failed"] },
      },
    });
    expect((await call(`/v1/webhooks/${ep.id}`, { method: "DELETE" })).status).toBe(204);
    expect((await patch({ url: "http://127.0.0.1:9/c" })).status).toBe(404);
    const kept = await runInDurableObject(webhookHub(env, "t1"), (_: WebhookHub, state) =>
      state.storage.sql
        .exec<{ url: string; secret: string }>(
          "SELECT url, secret FROM endpoints WHERE id = ?",
          ep.id,
        )
        .toArray(),
    );
    expect(kept).toEqual([{ url: "", secret: "" }]);
  });

  it("refuses private targets, unknown event types and missing urls", async () => {
    expect(
      await errorOf(
        await call("/v1/webhooks", { method: "POST", json: { url: "http://10.0.0.1/x" } }),
      ),
    ).toMatchObject({
      status: 422,
      code: "unprocessable",
    });
    expect(
      (
        await call("/v1/webhooks", {
          method: "POST",
          json: { url: "https://example.com", events: ["job.exploded"] },
        })
      ).status,
    ).toBe(422);
    expect((await call("/v1/webhooks", { method: "POST", json: {} })).status).toBe(422);
    const job = await call("/v1/jobs", {
      method: "POST",
      json: { documents: [{ text: "x" }], webhook: { url: "http://192.168.0.1/x" } },
    });
    expect(job.status).toBe(422);
  });

  it("returns a job's own webhook secret once, at submission", async () => {
    const res = await call("/v1/jobs", {
      method: "POST",
      json: { documents: [{ text: "hello" }], webhook: { url: "http://127.0.0.1:9/job-hook" } },
    });
    expect(res.status).toBe(202);
    const job = (await res.json()) as {
      id: string;
      webhook: { id: string; url: string; secret?: string };
    };
    expect(job.webhook.secret).toMatch(/^whsec_/);
    const again = (await (await call(`/v1/jobs/${job.id}`)).json()) as {
      webhook: { id: string; secret?: string };
    };
    expect(again.webhook).toEqual({ id: job.webhook.id, url: "http://127.0.0.1:9/job-hook" });
  });
});

const vars = env as unknown as Record<string, string>;
const varsBefore = { ...vars };
afterEach(() => {
  vi.restoreAllMocks();
  for (const k of ["WEBHOOK_ALLOW_PRIVATE", "WEBHOOK_TIMEOUT_MS"])
    vars[k] = varsBefore[k] as string;
});

const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async function endpoint(hub: DurableObjectStub<WebhookHub>, url: string, jobId: string | null) {
  return hub.createEndpoint({
    url,
    events: ["job.completed", "job.progress"],
    jobId,
    secret: SECRET,
  });
}

/** The endpoint's newest delivery once it has had an attempt (the hub's alarm sends it). */
async function attempted(hub: DurableObjectStub<WebhookHub>, endpointId: string) {
  const deadline = Date.now() + 4000;
  for (;;) {
    const d = (await hub.deliveries(endpointId))[0] as Delivery | undefined;
    if (d && d.attempts > 0) return d;
    if (Date.now() > deadline) throw new Error(`no attempt for ${endpointId}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Stands in for the network: `/hang` never answers, `/os` fails with OS error text. */
function fakeNetwork() {
  const real = globalThis.fetch.bind(globalThis);
  const seen: string[] = [];
  vi.spyOn(globalThis, "fetch").mockImplementation((input, init) => {
    const url = input instanceof Request ? input.url : String(input);
    seen.push(url);
    const path = new URL(url).pathname;
    if (path === "/hang")
      return new Promise((_, reject) =>
        init?.signal?.addEventListener("abort", () => reject(init.signal?.reason)),
      );
    if (path === "/os")
      return Promise.reject(new TypeError("connect ECONNREFUSED 127.0.0.1:9 (os error 111)"));
    if (path === "/busy") return Promise.resolve(new Response("busy", { status: 503 }));
    if (path === "/ok") return Promise.resolve(new Response(null, { status: 204 }));
    return real(input, init);
  });
  return seen;
}

describe("webhook attempt log", () => {
  it("records a closed port and a hanging listener as the same coarse outcome, with no latency or error text", async () => {
    vars.WEBHOOK_TIMEOUT_MS = "100";
    fakeNetwork();
    const hub = webhookHub(env, "t-attempt-log");
    // Port 9 on loopback has no listener: a real refused connection.
    const closed = await endpoint(hub, "http://127.0.0.1:9/closed", null);
    const hang = await endpoint(hub, "http://127.0.0.1:9/hang", null);
    const os = await endpoint(hub, "http://127.0.0.1:9/os", null);
    expect(await hub.emit("job.completed", "job_log", { id: "job_log" })).toBe(3);
    const got = {
      closed: await attempted(hub, closed.id),
      hang: await attempted(hub, hang.id),
      os: await attempted(hub, os.id),
    };
    const expected = { closed: "connection_failed", hang: "timeout", os: "connection_failed" };
    for (const [name, d] of Object.entries(got)) {
      expect(d.lastLatencyMs, name).toBeNull();
      expect(d.lastResponseCode, name).toBeNull();
      expect(d.attemptLog, name).toHaveLength(1);
      expect(Object.keys(d.attemptLog[0] ?? {}).sort(), name).toEqual([
        "at",
        "error",
        "latencyMs",
        "responseCode",
      ]);
      expect(d.attemptLog[0], name).toMatchObject({
        responseCode: null,
        latencyMs: null,
        error: expected[name as keyof typeof expected],
      });
      expect(JSON.stringify(d), name).not.toMatch(
        /ECONNREFUSED|os error|refused|connection lost|internal error|TypeError|Error:|abort/i,
      );
    }
    for (const ep of [closed, hang, os]) await hub.deleteEndpoint(ep.id);
  });

  it("keeps the status and a rounded latency when a response came", async () => {
    fakeNetwork();
    const hub = webhookHub(env, "t-attempt-response");
    const busy = await endpoint(hub, "http://127.0.0.1:9/busy", null);
    const ok = await endpoint(hub, "http://127.0.0.1:9/ok", null);
    await hub.emit("job.completed", "job_resp", { id: "job_resp" });
    const b = await attempted(hub, busy.id);
    const o = await attempted(hub, ok.id);
    expect(b).toMatchObject({ status: "pending", lastResponseCode: 503 });
    expect(b.attemptLog[0]).toMatchObject({ responseCode: 503, error: "http_error" });
    expect(o).toMatchObject({ status: "delivered", lastResponseCode: 204 });
    expect(o.attemptLog[0]).toMatchObject({ responseCode: 204, error: null });
    for (const d of [b, o]) {
      expect(d.attemptLog[0]?.latencyMs).toEqual(expect.any(Number));
      expect((d.attemptLog[0]?.latencyMs as number) % 10).toBe(0);
    }
    await hub.deleteEndpoint(busy.id);
  });

  it("rewrites attempts logged by the previous schema to the coarse outcome", async () => {
    const hub = webhookHub(env, "t-attempt-migrate");
    await runInDurableObject(hub, async (o: WebhookHub, state) => {
      const sql = state.storage.sql;
      sql.exec("DROP TABLE attempts");
      sql.exec(
        "CREATE TABLE attempts (delivery_id TEXT NOT NULL, at TEXT NOT NULL, response_code INTEGER, latency_ms INTEGER NOT NULL, error TEXT)",
      );
      sql.exec("DROP TABLE deleted_jobs");
      sql.exec(
        "INSERT INTO deliveries (id, endpoint_id, event_type, payload, status, created_at, last_response_code, last_latency_ms) VALUES ('msg_old', 'whep_old', 'job.completed', '{}', 'exhausted', '2026-01-01T00:00:00Z', NULL, 3)",
      );
      for (const [code, latency, error] of [
        [null, 3, "Error: Network connection lost."],
        [null, 15001, "TimeoutError: The operation was aborted due to timeout"],
        [503, 44, null],
        [200, 121, null],
      ] as const)
        sql.exec(
          "INSERT INTO attempts VALUES ('msg_old', '2026-01-01T00:00:00Z', ?, ?, ?)",
          code,
          latency,
          error,
        );
      sql.exec("UPDATE meta SET value = '1' WHERE key = 'webhooks'");
      (o as unknown as { migrate(): void }).migrate();
      expect(sql.exec("SELECT * FROM attempts ORDER BY rowid").toArray()).toEqual([
        {
          delivery_id: "msg_old",
          at: "2026-01-01T00:00:00Z",
          response_code: null,
          latency_ms: null,
          error: "connection_failed",
        },
        {
          delivery_id: "msg_old",
          at: "2026-01-01T00:00:00Z",
          response_code: null,
          latency_ms: null,
          error: "timeout",
        },
        {
          delivery_id: "msg_old",
          at: "2026-01-01T00:00:00Z",
          response_code: 503,
          latency_ms: 40,
          error: "http_error",
        },
        {
          delivery_id: "msg_old",
          at: "2026-01-01T00:00:00Z",
          response_code: 200,
          latency_ms: 120,
          error: null,
        },
      ]);
      expect(sql.exec("SELECT last_latency_ms FROM deliveries WHERE id = 'msg_old'").one()).toEqual(
        { last_latency_ms: null },
      );
    });
  });
});

describe("webhook delivery re-checks the target", () => {
  it("cancels deliveries to an endpoint the deployment's policy no longer allows, without sending", async () => {
    const seen = fakeNetwork();
    const hub = webhookHub(env, "t-recheck");
    // Registered while loopback was allowed; the deployment then tightens to public only.
    const ep = await endpoint(hub, "http://127.0.0.1:9/ok", null);
    vars.WEBHOOK_ALLOW_PRIVATE = "none";
    await hub.emit("job.completed", "job_recheck", { id: "job_recheck" });
    const d = await attempted(hub, ep.id);
    expect(d).toMatchObject({ status: "cancelled", attempts: 1, nextAttemptAt: null });
    expect(d.attemptLog).toEqual([
      { at: expect.any(String), responseCode: null, latencyMs: null, error: "target_not_allowed" },
    ]);
    expect(seen).toEqual([]);
  });
});

describe("WebhookHub.deleteJob", () => {
  it("queues a job's terminal event once per endpoint however often it is handed over, and each progress event", async () => {
    fakeNetwork();
    const hub = webhookHub(env, "t-once");
    const busy = await endpoint(hub, "http://127.0.0.1:9/busy?once", null);
    const ok = await endpoint(hub, "http://127.0.0.1:9/ok?once", null);
    // A shard retries a hand-over until it knows it arrived: the same event may come again,
    // even while the first is still on its way.
    const data = { id: "job_once", status: "completed" };
    const [first, second] = await Promise.all([
      hub.emit("job.completed", "job_once", data),
      hub.emit("job.completed", "job_once", data),
    ]);
    expect(first + second).toBe(2);
    expect(await hub.emit("job.completed", "job_once", data)).toBe(0);
    expect(await hub.emit("job.progress", "job_once", data)).toBe(2);
    expect(await hub.emit("job.progress", "job_once", data)).toBe(2);
    for (const ep of [busy, ok]) {
      const list = await hub.deliveries(ep.id);
      expect(list.filter((d) => d.eventType === "job.completed")).toHaveLength(1);
      expect(list.filter((d) => d.eventType === "job.progress")).toHaveLength(2);
    }
    // Each endpoint's delivery of the event has an id of its own.
    const ids = await Promise.all(
      [busy, ok].map(
        async (ep) =>
          (await hub.deliveries(ep.id)).find((d) => d.eventType === "job.completed")?.id,
      ),
    );
    expect(new Set(ids).size).toBe(2);
    for (const ep of [busy, ok]) await hub.deleteEndpoint(ep.id);
  });

  it("removes the job's endpoints and deliveries, and drops its later events", async () => {
    fakeNetwork();
    const hub = webhookHub(env, "t-delete-job");
    const own = await endpoint(hub, "http://127.0.0.1:9/busy?own", "job_gone");
    const other = await endpoint(hub, "http://127.0.0.1:9/busy?other", "job_kept");
    const tenant = await endpoint(hub, "http://127.0.0.1:9/busy?tenant", null);
    expect(await hub.emit("job.progress", "job_gone", { id: "job_gone" })).toBe(2);
    expect(await hub.emit("job.completed", "job_kept", { id: "job_kept" })).toBe(2);
    // A first attempt fails (503), so a retry is pending and an attempt is logged.
    await attempted(hub, own.id);

    expect(await hub.deleteJob("job_gone")).toEqual({
      endpoints: 1,
      pendingDeliveries: 2,
      deliveries: 2,
    });

    expect(await hub.hasEndpoint(own.id)).toBe(false);
    expect(await hub.hasEndpoint(other.id)).toBe(true);
    expect(await hub.hasEndpoint(tenant.id)).toBe(true);
    expect((await hub.deliveries(tenant.id)).map((d) => d.jobId)).toEqual(["job_kept"]);
    expect(await hub.emit("job.completed", "job_gone", { id: "job_gone" })).toBe(0);
    await runInDurableObject(hub, async (_o: WebhookHub, state) => {
      const sql = state.storage.sql;
      expect(sql.exec("SELECT id FROM endpoints WHERE job_id = 'job_gone'").toArray()).toEqual([]);
      expect(
        sql
          .exec("SELECT id FROM deliveries WHERE job_id = 'job_gone' OR payload LIKE '%job_gone%'")
          .toArray(),
      ).toEqual([]);
      expect(
        sql
          .exec(
            "SELECT delivery_id FROM attempts WHERE delivery_id NOT IN (SELECT id FROM deliveries)",
          )
          .toArray(),
      ).toEqual([]);
      expect(
        sql
          .exec(
            "SELECT count(*) AS n FROM deliveries WHERE job_id = 'job_kept' AND status = 'pending'",
          )
          .one(),
      ).toEqual({ n: 2 });
    });

    expect(await hub.deleteJob("job_gone")).toEqual({
      endpoints: 0,
      pendingDeliveries: 0,
      deliveries: 0,
    });
    await hub.deleteEndpoint(other.id);
    await hub.deleteEndpoint(tenant.id);
  });
});
