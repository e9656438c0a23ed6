import { Webhook } from "standardwebhooks";
import { describe, expect, it } from "vitest";
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
