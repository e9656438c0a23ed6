import { env, runInDurableObject } from "cloudflare:test";
import type { ApiKey, Quotas, Scope, Usage } from "@p2pa/shared";
import { describe, expect, it } from "vitest";
import { sha256Hex } from "../src/lib/crypto.js";
import { type AuditEntry, verifyChain } from "../src/tenant/audit.js";
import type { TenantLedger } from "../src/tenant/ledger.js";
import {
  call,
  errorOf,
  KEYS,
  keptOriginals,
  originalsOf,
  storedOriginal,
  TestWorker,
} from "./helpers.js";

// Access control as a client meets it: keys, scopes, limits, usage, the audit log, security
// headers and encryption at rest, all through the API. Tests that count anything run in a
// tenant of their own, so nothing another test does shows up in their numbers.

type NewKey = ApiKey & { secret: string };
type JobBody = { id: string; status: string; chunks: { total: number } };
type AuditPage = { data: AuditEntry[]; nextCursor: string | null };

const uid = () => crypto.randomUUID().slice(0, 8);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * A tenant of its own with `n` API keys, stored the way setup.ts stores the test keys (hashed,
 * no scopes column: every scope, admin included).
 */
async function seedTenant(label: string, n = 1) {
  const tenant = `acc-${label}-${uid()}`;
  const keys: { id: string; secret: string }[] = [];
  for (let i = 0; i < n; i++) {
    const secret = `seed_${label}_${i}_${crypto.randomUUID()}`;
    const id = `k_${label}_${i}_${uid()}`;
    await env.DB.prepare("INSERT INTO credentials (id, kind, tenant, hash) VALUES (?, 'api', ?, ?)")
      .bind(id, tenant, await sha256Hex(secret))
      .run();
    keys.push({ id, secret });
  }
  return { tenant, keys };
}

/** Creates a key through the API, as `as` (default: t1's key with every scope). */
async function createKey(body: Record<string, unknown>, as: string = KEYS.api): Promise<NewKey> {
  const res = await call("/v1/keys", { method: "POST", key: as, json: body });
  expect(res.status).toBe(201);
  return (await res.json()) as NewKey;
}

const docs = (n: number, tag = "doc") =>
  Array.from({ length: n }, (_, i) => ({ text: `${tag} number ${i} says something short.` }));

function submitAs(key: string, documents: { text: string }[], headers?: HeadersInit) {
  return call("/v1/jobs", { method: "POST", key, json: { documents }, headers });
}

async function acceptedJob(res: Response): Promise<JobBody> {
  expect(res.status).toBe(202);
  return (await res.json()) as JobBody;
}

function setTenantQuotas(tenant: string, quotas: Quotas, headers?: HeadersInit) {
  return call(`/v1/admin/tenants/${tenant}/quotas`, {
    method: "PUT",
    key: KEYS.admin,
    json: quotas,
    headers,
  });
}

async function auditPage(key: string, query = ""): Promise<AuditPage> {
  const res = await call(`/v1/audit${query}`, { key });
  expect(res.status).toBe(200);
  return (await res.json()) as AuditPage;
}

/** The whole log, page by page through the API, as a client would download it. */
async function downloadLog(key: string, limit = 500): Promise<AuditEntry[]> {
  const out: AuditEntry[] = [];
  let cursor: string | null = null;
  do {
    const page: AuditPage = await auditPage(
      key,
      `?limit=${limit}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`,
    );
    out.push(...page.data);
    cursor = page.nextCursor;
  } while (cursor);
  return out;
}

async function usageOf(key: string): Promise<Usage> {
  const res = await call("/v1/usage", { key });
  expect(res.status).toBe(200);
  return (await res.json()) as Usage;
}

const count = async (sql: string, ...args: unknown[]) =>
  (
    await env.DB.prepare(sql)
      .bind(...args)
      .first<{ n: number }>()
  )?.n;

describe("API keys", () => {
  it("shows a new key's secret once, authenticates with it, never lists it, and revokes it at once", async () => {
    const label = `reader-${uid()}`;
    const res = await call("/v1/keys", {
      method: "POST",
      json: { label, scopes: ["jobs:read"] },
    });
    expect(res.status).toBe(201);
    expect(res.headers.get("Cache-Control")).toBe("no-store");
    const key = (await res.json()) as NewKey;
    expect(res.headers.get("Location")).toBe(`/v1/keys/${key.id}`);
    expect(key.secret).toMatch(/^p2pa_sk_/);
    expect(key.prefix).toBe(key.secret.slice(0, 12));
    expect(key).toMatchObject({
      kind: "api",
      label,
      scopes: ["jobs:read"],
      quotas: {},
      expiresAt: null,
      lastUsedAt: null,
      revokedAt: null,
    });
    const hash = await sha256Hex(key.secret);

    // The secret works: authenticated and in scope, there is just no such job.
    expect(await errorOf(await call("/v1/jobs/job_none", { key: key.secret }))).toMatchObject({
      status: 404,
      code: "not_found",
    });

    // Listed without its secret or hash; its last use is recorded (off the request's path).
    let listed: ApiKey | undefined;
    let text = "";
    for (let i = 0; i < 40; i++) {
      text = await (await call("/v1/keys")).text();
      listed = (JSON.parse(text) as { data: ApiKey[] }).data.find((k) => k.id === key.id);
      if (listed?.lastUsedAt) break;
      await sleep(25);
    }
    expect(text).not.toContain(key.secret);
    expect(text).not.toContain(hash);
    expect(listed).toMatchObject({ id: key.id, label, prefix: key.prefix, scopes: ["jobs:read"] });
    expect(listed).not.toHaveProperty("secret");
    expect(listed).not.toHaveProperty("hash");
    expect(Date.parse(listed?.lastUsedAt ?? "")).toBeGreaterThanOrEqual(Date.parse(key.createdAt));

    const one = await call(`/v1/keys/${key.id}`);
    expect(one.status).toBe(200);
    const oneText = await one.text();
    expect(oneText).not.toContain(key.secret);
    expect(oneText).not.toContain(hash);
    expect(JSON.parse(oneText)).toMatchObject({ id: key.id, label, prefix: key.prefix });

    expect((await call(`/v1/keys/${key.id}`, { method: "DELETE" })).status).toBe(204);
    expect(await errorOf(await call("/v1/jobs/job_none", { key: key.secret }))).toMatchObject({
      status: 401,
      code: "unauthorized",
    });
    expect((await errorOf(await call(`/v1/keys/${key.id}`, { method: "DELETE" }))).status).toBe(
      404,
    );
    const after = (await (await call(`/v1/keys/${key.id}`)).json()) as ApiKey;
    expect(after.revokedAt).not.toBeNull();
  });

  it("gives new keys every scope but admin by default; without admin a key cannot manage keys", async () => {
    const key = await createKey({ label: `default-${uid()}` });
    expect(key.scopes).toEqual(["jobs:write", "jobs:read", "search", "webhooks"]);
    expect(key.scopes).not.toContain("admin");
    for (const res of [
      await call("/v1/keys", { key: key.secret }),
      await call("/v1/keys", { method: "POST", key: key.secret, json: { label: "sneaky" } }),
      await call(`/v1/keys/${key.id}`, { key: key.secret }),
      await call(`/v1/keys/${key.id}`, { method: "DELETE", key: key.secret }),
    ]) {
      const e = await errorOf(res);
      expect(e).toMatchObject({ status: 403, code: "forbidden", details: { required: "admin" } });
      expect(e.message).toMatch(/admin scope/);
    }
    // It still does what it may.
    expect((await call("/v1/jobs/job_none", { key: key.secret })).status).toBe(404);
  });

  it("hides one tenant's keys from another", async () => {
    const key = await createKey({ label: `mine-${uid()}`, scopes: ["jobs:read"] });
    expect((await call(`/v1/keys/${key.id}`, { key: KEYS.other })).status).toBe(404);
    expect(
      (
        await call(`/v1/keys/${key.id}`, {
          method: "PATCH",
          key: KEYS.other,
          json: { label: "taken" },
        })
      ).status,
    ).toBe(404);
    expect((await call(`/v1/keys/${key.id}`, { method: "DELETE", key: KEYS.other })).status).toBe(
      404,
    );
    const theirs = (await (await call("/v1/keys", { key: KEYS.other })).json()) as {
      data: ApiKey[];
    };
    expect(theirs.data.map((k) => k.id)).not.toContain(key.id);
    // Untouched by the attempts.
    expect((await call("/v1/jobs/job_none", { key: key.secret })).status).toBe(404);
    expect(((await (await call(`/v1/keys/${key.id}`)).json()) as ApiKey).label).toBe(key.label);
  });

  it("refuses an expiry in the past and refuses a key once it has expired", async () => {
    const past = new Date(Date.now() - 60_000).toISOString();
    expect(
      await errorOf(
        await call("/v1/keys", { method: "POST", json: { label: "old", expiresAt: past } }),
      ),
    ).toMatchObject({ status: 422, code: "validation_failed" });

    const expiresAt = new Date(Date.now() + 1500).toISOString();
    const key = await createKey({ label: `brief-${uid()}`, scopes: ["jobs:read"], expiresAt });
    const token = await createKey({ kind: "worker", label: `brief-${uid()}`, expiresAt });
    expect(key.expiresAt).toBe(expiresAt);
    expect(token.expiresAt).toBe(expiresAt);
    expect((await call("/v1/jobs/job_none", { key: key.secret })).status).toBe(404);
    (await TestWorker.connect({}, token.secret)).ws.close();

    await sleep(Date.parse(expiresAt) - Date.now() + 100);
    const e = await errorOf(await call("/v1/jobs/job_none", { key: key.secret }));
    expect(e).toMatchObject({ status: 401, code: "expired" });
    expect(e.message).toContain(expiresAt);
    // A worker learns it from the socket's close code, like any refused token.
    const res = await call("/v1/workers/connect", {
      key: token.secret,
      headers: { Upgrade: "websocket" },
    });
    expect(res.status).toBe(101);
    const ws = res.webSocket as WebSocket;
    const closed = new Promise<CloseEvent>((r) => ws.addEventListener("close", r));
    ws.accept();
    const ev = await closed;
    expect(ev.code).toBe(4401);
    expect(ev.reason).toMatch(/expired/);
  });

  it("creates worker tokens that connect as workers, and disconnects and refuses them once revoked", async () => {
    expect(
      (
        await errorOf(
          await call("/v1/keys", {
            method: "POST",
            json: { kind: "worker", label: "w", scopes: ["search"] },
          }),
        )
      ).status,
    ).toBe(422);
    const token = await createKey({ kind: "worker", label: `donor-${uid()}` });
    expect(token.secret).toMatch(/^p2pa_wt_/);
    expect(token).toMatchObject({ kind: "worker", scopes: [], prefix: token.secret.slice(0, 12) });

    const w = await TestWorker.connect({}, token.secret);
    const closed = new Promise<CloseEvent>((r) => w.ws.addEventListener("close", r));
    // A worker token is no API key.
    expect((await errorOf(await call("/v1/usage", { key: token.secret }))).status).toBe(403);

    expect((await call(`/v1/keys/${token.id}`, { method: "DELETE" })).status).toBe(204);
    expect((await closed).code).toBe(4401);

    const again = await call("/v1/workers/connect", {
      key: token.secret,
      headers: { Upgrade: "websocket" },
    });
    expect(again.status).toBe(101);
    const ws = again.webSocket as WebSocket;
    const refused = new Promise<CloseEvent>((r) => ws.addEventListener("close", r));
    ws.accept();
    const ev = await refused;
    expect(ev.code).toBe(4401);
    expect(ev.reason).toMatch(/invalid or revoked/);
  });
});

describe("scopes", () => {
  it("lets each key do what its scopes allow and nothing else", async () => {
    const scopes: Scope[] = ["jobs:write", "jobs:read", "search", "webhooks", "admin"];
    const k = Object.fromEntries(
      await Promise.all(
        scopes.map(async (s) => [
          s,
          (await createKey({ label: `${s}-${uid()}`, scopes: [s] })).secret,
        ]),
      ),
    ) as Record<Scope, string>;
    const forbidden = async (res: Response, required: Scope, granted: Scope) => {
      const e = await errorOf(res);
      expect(e).toMatchObject({
        status: 403,
        code: "forbidden",
        details: { required, granted: [granted] },
      });
      expect(e.message).toContain(required);
    };

    // jobs:write submits; jobs:read may not.
    const j = await acceptedJob(await submitAs(k["jobs:write"], docs(1, "scoped")));
    await forbidden(await submitAs(k["jobs:read"], docs(1)), "jobs:write", "jobs:read");

    // jobs:read reads; search (and jobs:write: writing is not reading) may not.
    expect((await call(`/v1/jobs/${j.id}`, { key: k["jobs:read"] })).status).toBe(200);
    expect((await call(`/v1/jobs/${j.id}/chunks`, { key: k["jobs:read"] })).status).toBe(200);
    await forbidden(await call(`/v1/jobs/${j.id}`, { key: k.search }), "jobs:read", "search");
    await forbidden(
      await call(`/v1/jobs/${j.id}`, { key: k["jobs:write"] }),
      "jobs:read",
      "jobs:write",
    );

    // search runs a search, embedded by a connected worker; jobs:read may not.
    const w = await TestWorker.connect();
    try {
      const pending = call("/v1/search", {
        method: "POST",
        key: k.search,
        json: { query: "scoped number 0" },
      });
      await w.answerEmbed(0, 3);
      const res = await pending;
      expect(res.status).toBe(200);
      expect(Array.isArray(((await res.json()) as { results: unknown[] }).results)).toBe(true);
    } finally {
      w.ws.close();
    }
    await forbidden(
      await call("/v1/search", { method: "POST", key: k["jobs:read"], json: { query: "x" } }),
      "search",
      "jobs:read",
    );

    // webhooks manages endpoints; jobs:write may not.
    const created = await call("/v1/webhooks", {
      method: "POST",
      key: k.webhooks,
      json: { url: `https://example.com/hooks/${uid()}` },
    });
    expect(created.status).toBe(201);
    const ep = (await created.json()) as { id: string };
    const list = (await (await call("/v1/webhooks", { key: k.webhooks })).json()) as {
      data: { id: string }[];
    };
    expect(list.data.map((e) => e.id)).toContain(ep.id);
    expect(
      (await call(`/v1/webhooks/${ep.id}`, { method: "DELETE", key: k.webhooks })).status,
    ).toBe(204);
    await forbidden(await call("/v1/webhooks", { key: k["jobs:write"] }), "webhooks", "jobs:write");

    // admin reads the audit log and, implying every scope, reads jobs too; webhooks may not.
    expect((await call("/v1/audit?limit=1", { key: k.admin })).status).toBe(200);
    expect((await call(`/v1/jobs/${j.id}`, { key: k.admin })).status).toBe(200);
    await forbidden(await call("/v1/audit", { key: k.webhooks }), "admin", "webhooks");
    await forbidden(await call("/v1/audit/verify", { key: k.search }), "admin", "search");

    expect(
      (await call(`/v1/jobs/${j.id}`, { method: "DELETE", key: k["jobs:write"] })).status,
    ).toBe(204);
  });

  it("publishes each route's scope in the OpenAPI document", async () => {
    const doc = (await (await call("/openapi.json", { key: null })).json()) as {
      paths: Record<string, Record<string, { security?: unknown }>>;
      components: { securitySchemes: Record<string, unknown> };
    };
    expect(doc.components.securitySchemes.bearer).toMatchObject({ type: "http", scheme: "bearer" });
    const expected: [string, string, Scope][] = [
      ["/v1/jobs", "post", "jobs:write"],
      ["/v1/jobs/{id}", "get", "jobs:read"],
      ["/v1/jobs/{id}", "delete", "jobs:write"],
      ["/v1/jobs/{id}/results", "get", "jobs:read"],
      ["/v1/search", "post", "search"],
      ["/v1/webhooks", "post", "webhooks"],
      ["/v1/keys", "post", "admin"],
      ["/v1/keys/{id}", "delete", "admin"],
      ["/v1/audit", "get", "admin"],
      ["/v1/tenant/encryption/rotate", "post", "admin"],
    ];
    for (const [path, method, scope] of expected)
      expect(doc.paths[path]?.[method]?.security, `${method} ${path}`).toEqual([
        { bearer: [scope] },
      ]);
  });
});

describe("request rate limits", () => {
  it("limits a key to its requests per minute with RateLimit headers; other keys are unaffected", async () => {
    const key = await createKey({ label: `limited-${uid()}`, scopes: ["jobs:read"] });
    const patched = await call(`/v1/keys/${key.id}`, {
      method: "PATCH",
      json: { quotas: { requestsPerMinute: 3 } },
    });
    expect(patched.status).toBe(200);
    expect(((await patched.json()) as ApiKey).quotas).toEqual({ requestsPerMinute: 3 });

    for (let i = 0; i < 3; i++) {
      const res = await call("/v1/usage", { key: key.secret });
      expect(res.status).toBe(200);
      expect(res.headers.get("RateLimit-Limit")).toBe("3");
      expect(res.headers.get("RateLimit-Remaining")).toBe(String(2 - i));
      expect(res.headers.get("RateLimit-Policy")).toBe("3;w=60");
    }
    const refused = await call("/v1/usage", { key: key.secret });
    const retry = Number(refused.headers.get("Retry-After"));
    expect(retry).toBeGreaterThanOrEqual(1);
    expect(retry).toBeLessThanOrEqual(60);
    expect(refused.headers.get("RateLimit-Limit")).toBe("3");
    expect(refused.headers.get("RateLimit-Remaining")).toBe("0");
    expect(Number(refused.headers.get("RateLimit-Reset"))).toBeGreaterThan(0);
    const e = await errorOf(refused);
    expect(e).toMatchObject({ status: 429, code: "rate_limited", details: { limit: 3 } });
    expect(e.message).toMatch(/this key/);

    // The tenant's other key goes on, with no limit of its own.
    const other = await call("/v1/usage");
    expect(other.status).toBe(200);
    expect(other.headers.get("RateLimit-Limit")).toBeNull();
  });

  it("applies an operator's tenant-wide limit to every key of the tenant at once", async () => {
    const { tenant, keys } = await seedTenant("rate", 2);
    const [a, b] = keys.map((k) => k.secret) as [string, string];
    // Used once before the change, so the tenant's (empty) limits are cached on this isolate.
    const before = await call("/v1/usage", { key: a });
    expect(before.status).toBe(200);
    expect(before.headers.get("RateLimit-Limit")).toBeNull();

    const put = await setTenantQuotas(tenant, { requestsPerMinute: 4 });
    expect(put.status).toBe(200);
    expect(await put.json()).toEqual({ requestsPerMinute: 4 });

    let remaining = 4;
    for (const key of [a, b, a, b]) {
      const res = await call("/v1/usage", { key });
      expect(res.status).toBe(200);
      expect(res.headers.get("RateLimit-Limit")).toBe("4");
      expect(res.headers.get("RateLimit-Remaining")).toBe(String(--remaining));
    }
    for (const key of [a, b]) {
      const res = await call("/v1/usage", { key });
      expect(Number(res.headers.get("Retry-After"))).toBeGreaterThanOrEqual(1);
      const e = await errorOf(res);
      expect(e).toMatchObject({ status: 429, code: "rate_limited" });
      expect(e.message).toMatch(/this tenant/);
    }
    // Another tenant is unaffected.
    expect((await call("/v1/usage", { key: KEYS.other })).status).toBe(200);

    const usage = await call(`/v1/admin/tenants/${tenant}/usage`, { key: KEYS.admin });
    expect(usage.status).toBe(200);
    expect(((await usage.json()) as Usage).quotas).toEqual({ requestsPerMinute: 4 });
  });

  it("keeps the operator routes to operators", async () => {
    for (const res of [
      await setTenantQuotasAs(KEYS.api, "t1"),
      await setTenantQuotasAs(KEYS.api, "t2"),
      await call("/v1/admin/tenants/t1/usage"),
      await call("/v1/admin/encryption/rewrap", { method: "POST", json: {} }),
    ])
      expect(await errorOf(res)).toMatchObject({ status: 403, code: "forbidden" });
  });
});

function setTenantQuotasAs(key: string, tenant: string) {
  return call(`/v1/admin/tenants/${tenant}/quotas`, {
    method: "PUT",
    key,
    json: { requestsPerMinute: 1_000_000 },
  });
}

describe("chunk quotas", () => {
  it("refuses a job over the tenant's chunks per day, keeping nothing of it", async () => {
    const { tenant, keys } = await seedTenant("daily", 1);
    const key = keys[0]?.secret as string;
    expect((await setTenantQuotas(tenant, { chunksPerDay: 5 })).status).toBe(200);
    // Line ends that normalising changes: each original is kept apart from its chunk.
    const crlf = (n: number, tag?: string) =>
      docs(n, tag).map((d) => ({ text: d.text.replace(" says", "\r\nsays") }));

    const first = await acceptedJob(await submitAs(key, crlf(3)));
    expect(first.chunks.total).toBe(3);
    expect(await keptOriginals(tenant)).toHaveLength(3);

    // A worker waiting for work while the refused job is submitted.
    const w = await TestWorker.connect();
    w.ready(16);
    const refused = await submitAs(key, crlf(3, "refused"));
    const retry = Number(refused.headers.get("Retry-After"));
    expect(retry).toBeGreaterThan(86_000);
    expect(retry).toBeLessThanOrEqual(86_400);
    expect(await errorOf(refused)).toMatchObject({
      status: 429,
      code: "quota_exceeded",
      details: { quota: "chunksPerDay", limit: 5, used: 3, requested: 3 },
    });

    // Nothing of the refused job: no row, no chunks, no raw object, no audit entry.
    expect(await count("SELECT count(*) AS n FROM jobs WHERE tenant = ?", tenant)).toBe(1);
    expect(
      await count(
        "SELECT count(*) AS n FROM chunks WHERE job_id IN (SELECT id FROM jobs WHERE tenant = ?)",
        tenant,
      ),
    ).toBe(3);
    expect(await keptOriginals(tenant)).toEqual(await originalsOf(first.id));
    const created = await auditPage(key, "?action=job.created");
    expect(created.data.map((e) => e.target)).toEqual([first.id]);
    // No volunteer saw its text: it was refused before any of its tasks went out.
    await new Promise((r) => setTimeout(r, 300));
    const sent = w.frames
      .filter((f) => f.type === "task")
      .flatMap((f) => (f.items as { text: string }[]).map((i) => i.text));
    expect(sent.filter((t) => t.includes("refused"))).toEqual([]);
    w.ws.close();

    // What still fits is accepted; deleting a job gives its chunks back.
    await acceptedJob(await submitAs(key, docs(2)));
    expect((await errorOf(await submitAs(key, docs(1)))).status).toBe(429);
    expect((await call(`/v1/jobs/${first.id}`, { method: "DELETE", key })).status).toBe(204);
    await acceptedJob(await submitAs(key, docs(3)));
  });

  it("refuses a job over the tenant's stored vectors until a job is deleted", async () => {
    const { tenant, keys } = await seedTenant("stored", 1);
    const key = keys[0]?.secret as string;
    expect((await setTenantQuotas(tenant, { storedVectors: 4 })).status).toBe(200);

    const first = await acceptedJob(await submitAs(key, docs(3)));
    const refused = await submitAs(key, docs(2));
    expect(refused.headers.get("Retry-After")).toBeNull();
    const e = await errorOf(refused);
    expect(e).toMatchObject({
      status: 429,
      code: "quota_exceeded",
      details: { quota: "storedVectors", limit: 4, used: 3, requested: 2 },
    });
    expect(await count("SELECT count(*) AS n FROM jobs WHERE tenant = ?", tenant)).toBe(1);

    expect((await call(`/v1/jobs/${first.id}`, { method: "DELETE", key })).status).toBe(204);
    expect((await usageOf(key)).storedVectors).toBe(0);
    const second = await acceptedJob(await submitAs(key, docs(2)));
    expect((await usageOf(key)).storedVectors).toBe(2);
    expect((await errorOf(await submitAs(key, docs(3)))).status).toBe(429);

    // A cancelled job gets no more vectors: its uncomputed chunks hold no room.
    expect(
      (await call(`/v1/jobs/${second.id}/cancel`, { method: "POST", key, json: {} })).status,
    ).toBe(200);
    expect((await usageOf(key)).storedVectors).toBe(0);
    await acceptedJob(await submitAs(key, docs(4)));
  });

  it("holds a key to the chunks per day set on it, apart from the tenant's other keys", async () => {
    const { keys } = await seedTenant("keyday", 2);
    const [admin, limited] = keys as [
      { id: string; secret: string },
      { id: string; secret: string },
    ];
    // Used before the change, so its credential is cached; the change must still apply now.
    expect((await call("/v1/usage", { key: limited.secret })).status).toBe(200);
    const patched = await call(`/v1/keys/${limited.id}`, {
      method: "PATCH",
      key: admin.secret,
      json: { quotas: { chunksPerDay: 2 } },
    });
    expect(patched.status).toBe(200);

    const over = await errorOf(await submitAs(limited.secret, docs(3)));
    expect(over).toMatchObject({
      status: 429,
      code: "quota_exceeded",
      details: { quota: "chunksPerDay", limit: 2, used: 0, requested: 3 },
    });
    expect(over.message).toMatch(/this key/);
    await acceptedJob(await submitAs(limited.secret, docs(2)));
    expect(await errorOf(await submitAs(limited.secret, docs(1)))).toMatchObject({
      status: 429,
      details: { used: 2, requested: 1 },
    });
    // The other key has no such limit.
    await acceptedJob(await submitAs(admin.secret, docs(3)));
  });
});

describe("usage", () => {
  it("reports the chunks, vectors and requests the tenant and each key used", async () => {
    const { tenant, keys } = await seedTenant("usage", 2);
    const [a, b] = keys as [{ id: string; secret: string }, { id: string; secret: string }];
    // With a limit, every request is counted before it is answered (none is counted late).
    expect((await setTenantQuotas(tenant, { requestsPerMinute: 1000 })).status).toBe(200);

    const requests = { [a.id]: 0, [b.id]: 0 };
    const chunks = { [a.id]: 0, [b.id]: 0 };
    const jobs: { id: string; by: string; chunks: number }[] = [];
    for (const [k, n] of [
      [a, 2],
      [a, 3],
      [b, 4],
    ] as const) {
      const j = await acceptedJob(await submitAs(k.secret, docs(n)));
      requests[k.id] = (requests[k.id] ?? 0) + 1;
      expect(j.chunks.total).toBe(n);
      chunks[k.id] = (chunks[k.id] ?? 0) + j.chunks.total;
      jobs.push({ id: j.id, by: k.id, chunks: j.chunks.total });
    }
    const total = () => jobs.reduce((s, j) => s + j.chunks, 0);
    const expectUsage = (u: Usage) => {
      expect(u).toMatchObject({
        tenant,
        quotas: { requestsPerMinute: 1000 },
        chunksLast24h: total(),
        storedVectors: total(),
        requestsLastMinute: (requests[a.id] ?? 0) + (requests[b.id] ?? 0),
      });
      expect(u.keys.map((k) => k.id).sort()).toEqual([a.id, b.id].sort());
      for (const k of u.keys)
        expect(k).toEqual({
          id: k.id,
          quotas: {},
          requestsLastMinute: requests[k.id],
          chunksLast24h: chunks[k.id],
        });
    };

    requests[a.id] = (requests[a.id] ?? 0) + 1;
    expectUsage(await usageOf(a.secret));

    // Deleting b's job takes its chunks out of both counts.
    const bJob = jobs.find((j) => j.by === b.id) as (typeof jobs)[number];
    expect((await call(`/v1/jobs/${bJob.id}`, { method: "DELETE", key: b.secret })).status).toBe(
      204,
    );
    jobs.splice(jobs.indexOf(bJob), 1);
    chunks[b.id] = 0;
    // The delete and the usage read itself.
    requests[b.id] = (requests[b.id] ?? 0) + 2;
    expectUsage(await usageOf(b.secret));

    // The operator sees the same numbers (its own requests count in its own tenant).
    const op = await call(`/v1/admin/tenants/${tenant}/usage`, { key: KEYS.admin });
    expect(op.status).toBe(200);
    expectUsage((await op.json()) as Usage);
  });
});

describe("audit log", () => {
  it("records who did what to which object, from where", async () => {
    const { tenant, keys } = await seedTenant("audit", 1);
    const { id: actor, secret: key } = keys[0] as { id: string; secret: string };
    const ip = "203.0.113.9";
    const from = { "CF-Connecting-IP": ip, "User-Agent": "access-test/1" };
    const as = (path: string, init: RequestInit & { json?: unknown } = {}) =>
      call(path, { ...init, key, headers: from });

    const job = await acceptedJob(
      await as("/v1/jobs", { method: "POST", json: { documents: docs(2) } }),
    );
    expect((await as(`/v1/jobs/${job.id}/cancel`, { method: "POST", json: {} })).status).toBe(200);
    const exported = await as(`/v1/jobs/${job.id}/results`);
    expect(exported.status).toBe(200);
    const lines = new TextDecoder()
      .decode(await exported.arrayBuffer())
      .trim()
      .split("\n");
    expect(lines).toHaveLength(2);
    expect((await as(`/v1/jobs/${job.id}`, { method: "DELETE" })).status).toBe(204);
    const hook = await as("/v1/webhooks", {
      method: "POST",
      json: { url: "https://example.com/audit-hook" },
    });
    expect(hook.status).toBe(201);
    const ep = (await hook.json()) as { id: string };
    expect((await as(`/v1/webhooks/${ep.id}`, { method: "DELETE" })).status).toBe(204);
    const made = await as("/v1/keys", { method: "POST", json: { label: "audited" } });
    expect(made.status).toBe(201);
    const newKey = (await made.json()) as NewKey;
    expect(
      (
        await as(`/v1/keys/${newKey.id}`, {
          method: "PATCH",
          json: { quotas: { requestsPerMinute: 50 } },
        })
      ).status,
    ).toBe(200);
    expect((await as(`/v1/keys/${newKey.id}`, { method: "DELETE" })).status).toBe(204);
    expect(
      (
        await setTenantQuotas(
          tenant,
          { chunksPerDay: 1000 },
          { "CF-Connecting-IP": "198.51.100.4" },
        )
      ).status,
    ).toBe(200);

    const log = await auditPage(key);
    expect(log.nextCursor).toBeNull();
    expect(log.data.map((e) => [e.seq, e.action, e.actor, e.target])).toEqual([
      [1, "job.created", actor, job.id],
      [2, "job.cancelled", actor, job.id],
      [3, "export.read", actor, job.id],
      [4, "job.deleted", actor, job.id],
      [5, "webhook.created", actor, ep.id],
      [6, "webhook.deleted", actor, ep.id],
      [7, "key.created", actor, newKey.id],
      [8, "quota.changed", actor, newKey.id],
      [9, "key.revoked", actor, newKey.id],
      [10, "quota.changed", "operator:c5", tenant],
    ]);
    for (const e of log.data.slice(0, 9))
      expect(e).toMatchObject({ tenant, ip, userAgent: "access-test/1" });
    const [created, , , , hookMade, , keyMade, keyQuota, , opQuota] = log.data as AuditEntry[];
    expect(created?.details).toMatchObject({ documents: 2, chunks: 2 });
    expect(hookMade?.details).toMatchObject({ url: "https://example.com/audit-hook" });
    expect(keyMade?.details).toMatchObject({ kind: "api", label: "audited" });
    expect(keyMade?.details).not.toHaveProperty("secret");
    expect(JSON.stringify(log.data)).not.toContain(newKey.secret);
    expect(keyQuota?.details).toEqual({ from: {}, to: { requestsPerMinute: 50 } });
    expect(opQuota).toMatchObject({
      ip: "198.51.100.4",
      details: { from: {}, to: { chunksPerDay: 1000 } },
    });

    // Filters.
    const actions = async (q: string) => (await auditPage(key, q)).data.map((e) => e.seq);
    expect(await actions("?action=job.")).toEqual([1, 2, 4]);
    expect(await actions("?action=job")).toEqual([]);
    expect(await actions("?action=quota.changed")).toEqual([8, 10]);
    expect(await actions("?actor=operator:c5")).toEqual([10]);
    expect(await actions(`?actor=${actor}&action=key.`)).toEqual([7, 9]);
    expect(await actions("?order=desc")).toEqual([10, 9, 8, 7, 6, 5, 4, 3, 2, 1]);
    expect(await actions("?order=desc&action=webhook.")).toEqual([6, 5]);
    const pivot = (log.data[4] as AuditEntry).at;
    const since = encodeURIComponent(pivot);
    expect(await actions(`?since=${since}`)).toEqual(
      log.data.filter((e) => e.at >= pivot).map((e) => e.seq),
    );
    expect(await actions(`?until=${since}`)).toEqual(
      log.data.filter((e) => e.at < pivot).map((e) => e.seq),
    );
    expect(
      await actions(`?since=${encodeURIComponent(new Date(Date.now() + 60_000).toISOString())}`),
    ).toEqual([]);
    expect((await errorOf(await call("/v1/audit?cursor=bogus!", { key }))).status).toBe(422);

    // Another tenant's log holds none of this.
    const t2 = (await auditPage(KEYS.other, "?limit=500")).data;
    expect(t2.some((e) => e.target === job.id || e.tenant === tenant)).toBe(false);
  });

  it("pages through a long log, verifies it on the server and on the client, and catches tampering", async () => {
    const { tenant, keys } = await seedTenant("chain", 1);
    const { id: actor, secret: key } = keys[0] as { id: string; secret: string };
    const N = 105;
    // A few entries through the API, then the system's own (retention purges), appended
    // straight to the ledger as the alarm does: a request costs far more than an entry.
    for (let i = 1; i <= 5; i++) {
      const res = await call("/v1/tenant/policy", {
        method: "PUT",
        key,
        json: { retention: { textDays: i } },
      });
      expect(res.status).toBe(200);
    }
    const ledger = env.TENANTS.get(env.TENANTS.idFromName(tenant));
    for (let i = 6; i <= N; i++)
      await ledger.append({
        actor: "system",
        action: "text.purged",
        target: `job_${i}`,
        details: { reason: "retention" },
      });

    const first = await auditPage(key);
    expect(first.data).toHaveLength(100);
    expect(first.nextCursor).not.toBeNull();
    const second = await auditPage(key, `?cursor=${first.nextCursor}`);
    expect(second.data.map((e) => e.seq)).toEqual([101, 102, 103, 104, 105]);
    expect(second.nextCursor).toBeNull();

    const all = await downloadLog(key, 40);
    expect(all.map((e) => e.seq)).toEqual(Array.from({ length: N }, (_, i) => i + 1));
    expect(all.every((e) => e.tenant === tenant)).toBe(true);
    expect(all.slice(0, 5).map((e) => [e.actor, e.action, e.details])).toEqual(
      [null, 1, 2, 3, 4].map((from, i) => [
        actor,
        "policy.changed",
        { retention: { textDays: { from, to: i + 1 } } },
      ]),
    );
    expect((await auditPage(key, `?actor=${actor}`)).data.map((e) => e.seq)).toEqual([
      1, 2, 3, 4, 5,
    ]);
    const purges = await auditPage(key, "?action=text.purged&limit=500");
    expect(purges.data).toHaveLength(N - 5);
    expect(purges.nextCursor).toBeNull();
    const purgePage = await auditPage(key, "?action=text.&limit=60&order=desc");
    expect(purgePage.data[0]?.seq).toBe(N);
    expect(purgePage.data).toHaveLength(60);
    const rest = await auditPage(
      key,
      `?action=text.&limit=60&order=desc&cursor=${purgePage.nextCursor}`,
    );
    expect(rest.data.map((e) => e.seq)).toEqual(Array.from({ length: 40 }, (_, i) => 45 - i));
    expect(rest.nextCursor).toBeNull();

    const desc: number[] = [];
    let cursor: string | null = null;
    do {
      const page: AuditPage = await auditPage(
        key,
        `?order=desc&limit=50${cursor ? `&cursor=${cursor}` : ""}`,
      );
      desc.push(...page.data.map((e) => e.seq));
      cursor = page.nextCursor;
    } while (cursor);
    expect(desc).toEqual(Array.from({ length: N }, (_, i) => N - i));

    const verified = await call("/v1/audit/verify", { key });
    expect(verified.status).toBe(200);
    const v = (await verified.json()) as {
      ok: boolean;
      entries: number;
      head: { seq: number; hash: string };
    };
    expect(v).toEqual({
      ok: true,
      entries: N,
      head: { seq: N, hash: (all[N - 1] as AuditEntry).hash },
    });

    // A client checks its download with the same code, against the head the server reports.
    expect(await verifyChain(all, v.head)).toMatchObject({ ok: true, entries: N });
    const edited = all.map((e) => (e.seq === 77 ? { ...e, target: "job_other" } : e));
    expect(await verifyChain(edited, v.head)).toMatchObject({ ok: false, firstBadSeq: 77 });
    expect(await verifyChain(all.slice(0, -1), v.head)).toMatchObject({
      ok: false,
      firstBadSeq: N,
    });

    // Someone with database access rewrites one entry: the server's check finds it.
    const k = 3;
    await runInDurableObject(
      env.TENANTS.get(env.TENANTS.idFromName(tenant)),
      async (_o: TenantLedger, state) => {
        state.storage.sql.exec(
          "UPDATE audit SET details = ? WHERE seq = ?",
          JSON.stringify({ retention: { textDays: { from: 2, to: 9999 } } }),
          k,
        );
      },
    );
    const after = (await (await call("/v1/audit/verify", { key })).json()) as {
      ok: boolean;
      firstBadSeq?: number;
      problem?: string;
    };
    expect(after).toMatchObject({ ok: false, firstBadSeq: k });
    expect(after.problem).toMatch(/hash/);
    // And so does the client, on a fresh download.
    expect(await verifyChain(await downloadLog(key), v.head)).toMatchObject({
      ok: false,
      firstBadSeq: k,
    });
  });

  it("notices a removed tail entry", async () => {
    const { tenant, keys } = await seedTenant("tail", 1);
    const key = keys[0]?.secret as string;
    for (let i = 0; i < 3; i++)
      await call("/v1/tenant/policy", {
        method: "PUT",
        key,
        json: { retention: { textDays: i } },
      });
    await runInDurableObject(
      env.TENANTS.get(env.TENANTS.idFromName(tenant)),
      async (_o: TenantLedger, state) => {
        state.storage.sql.exec("DELETE FROM audit WHERE seq = 3");
      },
    );
    expect(await (await call("/v1/audit/verify", { key })).json()).toMatchObject({
      ok: false,
      firstBadSeq: 3,
    });
  });
});

describe("security headers", () => {
  it("sends them on every kind of API answer", async () => {
    for (const res of [
      await call("/v1/usage"),
      await call("/v1/jobs/job_none", { key: null }),
      await call("/v1/jobs/job_none"),
      await call("/v1/no-such-route"),
      await call("/v1/keys", { method: "POST", json: { label: "" } }),
      await call("/openapi.json", { key: null }),
      await call("/healthz", { key: null }),
    ]) {
      const h = res.headers;
      const where = `${res.status} ${res.url}`;
      expect(h.get("X-Content-Type-Options"), where).toBe("nosniff");
      expect(h.get("Content-Security-Policy"), where).toMatch(/default-src 'none'/);
      expect(h.get("Content-Security-Policy"), where).toMatch(/frame-ancestors 'none'/);
      expect(h.get("Strict-Transport-Security"), where).toMatch(/max-age=\d+/);
      expect(h.get("Referrer-Policy"), where).toBe("no-referrer");
      expect(h.get("X-Frame-Options"), where).toMatch(/^(DENY|SAMEORIGIN)$/);
      await res.body?.cancel();
    }
  });
});

describe("encryption at rest", () => {
  const chunkTexts = async (jobId: string) =>
    (
      await env.DB.prepare("SELECT text FROM chunks WHERE job_id = ? ORDER BY id")
        .bind(jobId)
        .all<{ text: string }>()
    ).results.map((r) => r.text);
  const readBack = async (key: string, jobId: string) =>
    (
      (await (await call(`/v1/jobs/${jobId}/chunks`, { key })).json()) as {
        data: { text: string }[];
      }
    ).data.map((c) => c.text);

  it("keeps text sealed in D1 and R2, reads it back in the clear, and rotates the tenant key", async () => {
    const { tenant, keys } = await seedTenant("sealed", 1);
    const key = keys[0]?.secret as string;
    const secretText = `Confidential memo ${uid()} about the merger with Initech.`;
    // Sent with Windows line ends, so its original is not its chunk's text as it stands.
    const sentText = `Confidential note ${uid()}\r\non the Initech figures.`;
    const j1 = await acceptedJob(await submitAs(key, [{ text: secretText }, { text: sentText }]));

    const stored = await chunkTexts(j1.id);
    expect(stored).toHaveLength(2);
    for (const t of stored) {
      expect(t.startsWith("p2pa1.1.")).toBe(true);
      expect(t).not.toContain("Confidential");
      expect(t).not.toContain("Initech");
    }
    // A short text that is its only chunk is kept as that chunk (sealed above); another short
    // text's original is kept in D1, sealed as chunk text is.
    const [asChunk, ownKey] = await originalsOf(j1.id);
    expect(asChunk).toBe(`doc/${tenant}/${j1.id}/0/chunk`);
    expect(await storedOriginal(asChunk as string)).toBeNull();
    expect(ownKey).toBe(`doc/${tenant}/${j1.id}/1`);
    const raw = (await storedOriginal(ownKey as string)) as Uint8Array;
    expect(new TextDecoder().decode(raw).startsWith("p2pa1.1.")).toBe(true);
    const asText = new TextDecoder().decode(raw);
    expect(asText).not.toContain("Confidential");
    expect(asText).not.toContain("Initech");
    expect(await readBack(key, j1.id)).toEqual([secretText, sentText.replace("\r\n", "\n")]);

    const info = (await (await call("/v1/tenant/encryption", { key })).json()) as {
      versions: { version: number }[];
    };
    expect(info.versions.map((v) => v.version)).toEqual([1]);
    const rotated = await call("/v1/tenant/encryption/rotate", { method: "POST", key, json: {} });
    expect(rotated.status).toBe(200);
    const versions = (await rotated.json()) as {
      versions: { version: number; wrappedBy: string; createdAt: string }[];
    };
    expect(versions.versions.map((v) => v.version)).toEqual([1, 2]);
    expect(JSON.stringify(versions)).not.toMatch(/"(key|wrapped)"/);

    const laterText = `Second memo ${uid()} on the Initech integration.`;
    const j2 = await acceptedJob(await submitAs(key, [{ text: laterText }]));
    for (const t of await chunkTexts(j2.id)) {
      expect(t.startsWith("p2pa1.2.")).toBe(true);
      expect(t).not.toContain("Initech");
    }
    expect((await chunkTexts(j1.id))[0]?.startsWith("p2pa1.1.")).toBe(true);
    expect(await readBack(key, j1.id)).toEqual([secretText, sentText.replace("\r\n", "\n")]);
    expect(await readBack(key, j2.id)).toEqual([laterText]);

    const rotations = await auditPage(key, "?action=encryption.rotated");
    expect(rotations.data.map((e) => e.details)).toEqual([{ version: 2 }]);
  });
});
