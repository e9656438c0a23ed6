import { createRoute } from "@hono/zod-openapi";
import { AuditEntrySchema, AuditQuery, Quotas, TenantPolicy, Usage } from "@p2pa/shared";
import { z } from "zod";
import { router } from "../app.js";
import { keyringFor } from "../db/open.js";
import type { MetadataStore } from "../db/store.js";
import { clientAddress, forgetCredential, hasScope, requireAuth, scoped } from "../lib/auth.js";
import { AppError } from "../lib/errors.js";
import { decodeCursor } from "../tenant/audit.js";
import { audit } from "../tenant/audit-log.js";
import { eraseTenant } from "../tenant/erase.js";
import { forgetTenantQuotas, ledger, tenantQuotas } from "../tenant/limits.js";
import { errors, json } from "./openapi.js";

const admin = scoped("admin");
const TenantParam = z.object({ tenant: z.string().regex(/^[\w.-]{1,64}$/) });

const VerifyResult = z
  .object({
    ok: z.boolean(),
    entries: z.number().int(),
    head: z.object({ seq: z.number().int(), hash: z.string() }),
    firstBadSeq: z.number().int().optional(),
    problem: z.string().optional(),
  })
  .meta({ id: "AuditVerifyResult" });

const EncryptionInfo = z
  .object({
    versions: z.array(
      z.object({ version: z.number().int(), wrappedBy: z.string(), createdAt: z.string() }),
    ),
  })
  .meta({ id: "EncryptionInfo" });

const usage = createRoute({
  method: "get",
  path: "/v1/usage",
  operationId: "getUsage",
  summary: "The tenant's usage against its limits, in total and per key (admin keys: every key)",
  responses: { 200: json(Usage, "Usage"), ...errors },
});
const auditList = createRoute({
  method: "get",
  path: "/v1/audit",
  operationId: "listAuditEntries",
  summary: "The tenant's audit log: who did what, when, from where",
  ...admin,
  request: { query: AuditQuery },
  responses: {
    200: json(
      z.object({ data: z.array(AuditEntrySchema), nextCursor: z.string().nullable() }),
      "Entries",
    ),
    ...errors,
  },
});
const auditVerify = createRoute({
  method: "get",
  path: "/v1/audit/verify",
  operationId: "verifyAuditLog",
  summary: "Recompute the audit log's hash chain: any changed or removed entry shows",
  ...admin,
  responses: { 200: json(VerifyResult, "The chain's state"), ...errors },
});
const getPolicy = createRoute({
  method: "get",
  path: "/v1/tenant/policy",
  operationId: "getTenantPolicy",
  summary: "The tenant's default text retention",
  ...admin,
  responses: { 200: json(TenantPolicy, "Policy"), ...errors },
});
const putPolicy = createRoute({
  method: "put",
  path: "/v1/tenant/policy",
  operationId: "setTenantPolicy",
  summary: "Set the tenant's default text retention (jobs may choose their own)",
  ...admin,
  request: { body: { content: { "application/json": { schema: TenantPolicy } }, required: true } },
  responses: { 200: json(TenantPolicy, "Policy"), ...errors },
});
const encryption = createRoute({
  method: "get",
  path: "/v1/tenant/encryption",
  operationId: "getTenantEncryption",
  summary: "The tenant's data key versions (never the keys)",
  ...admin,
  responses: { 200: json(EncryptionInfo, "Key versions"), ...errors },
});
const rotate = createRoute({
  method: "post",
  path: "/v1/tenant/encryption/rotate",
  operationId: "rotateTenantKey",
  summary: "Start a new data key: new text is sealed with it, older text stays readable",
  ...admin,
  responses: { 200: json(EncryptionInfo, "Key versions"), ...errors },
});
const erase = createRoute({
  method: "delete",
  path: "/v1/tenant",
  operationId: "eraseTenant",
  summary: "Erase the tenant: every job, document, vector, webhook, key, audit entry and data key",
  ...admin,
  request: { query: z.object({ confirm: z.string().max(64) }) },
  responses: {
    200: json(z.object({ erased: z.string(), jobs: z.number().int() }), "Erased"),
    ...errors,
  },
});
const operatorQuotas = createRoute({
  method: "put",
  path: "/v1/admin/tenants/{tenant}/quotas",
  operationId: "setTenantQuotas",
  summary: "Operator: set a tenant's limits",
  request: {
    params: TenantParam,
    body: { content: { "application/json": { schema: Quotas } }, required: true },
  },
  responses: { 200: json(Quotas, "The tenant's limits"), ...errors },
});
const operatorUsage = createRoute({
  method: "get",
  path: "/v1/admin/tenants/{tenant}/usage",
  operationId: "getTenantUsage",
  summary: "Operator: a tenant's usage",
  request: { params: TenantParam },
  responses: { 200: json(Usage, "Usage"), ...errors },
});
const operatorErase = createRoute({
  method: "delete",
  path: "/v1/admin/tenants/{tenant}",
  operationId: "eraseTenantAsOperator",
  summary: "Operator: erase a tenant",
  request: { params: TenantParam },
  responses: {
    200: json(z.object({ erased: z.string(), jobs: z.number().int() }), "Erased"),
    ...errors,
  },
});
const rewrap = createRoute({
  method: "post",
  path: "/v1/admin/encryption/rewrap",
  operationId: "rewrapTenantKeys",
  summary:
    "Operator: rewrap every tenant key with the current deployment key (rotating P2PA_DATA_KEYS)",
  responses: {
    200: json(z.object({ rewrapped: z.number().int(), remaining: z.number().int() }), "Done"),
    ...errors,
  },
});

async function usageOf(env: Env, store: MetadataStore, tenant: string): Promise<Usage> {
  const [quotas, keys, chunks, byKey, rate] = await Promise.all([
    tenantQuotas(env, tenant),
    store.listCredentials(tenant),
    store.chunkUsage(tenant, ""),
    store.chunksByKey(tenant),
    ledger(env, tenant).usage(),
  ]);
  return {
    tenant,
    quotas,
    requestsLastMinute: rate.requestsLastMinute.tenant ?? 0,
    chunksLast24h: chunks.tenantLast24h,
    storedVectors: chunks.storedVectors,
    keys: keys
      .filter((k) => k.kind !== "worker" && !k.revokedAt)
      .map((k) => ({
        id: k.id,
        quotas: k.quotas,
        requestsLastMinute: rate.requestsLastMinute[`key:${k.id}`] ?? 0,
        chunksLast24h: byKey.get(k.id) ?? 0,
      })),
  };
}

export const tenantRoutes = router();
for (const path of ["/v1/usage", "/v1/audit", "/v1/audit/*", "/v1/tenant", "/v1/tenant/*"])
  tenantRoutes.use(path, requireAuth("api"));
tenantRoutes.use("/v1/admin/*", requireAuth("admin"));

tenantRoutes
  .openapi(usage, async (c) => {
    const cred = c.get("credential");
    const all = await usageOf(c.env, c.var.store, cred.tenant);
    // Only an admin key sees the tenant's other keys; any other key sees itself.
    const keys = hasScope(cred, "admin") ? all.keys : all.keys.filter((k) => k.id === cred.id);
    return c.json({ ...all, keys }, 200);
  })
  .openapi(auditList, async (c) => {
    const q = c.req.valid("query");
    if (q.cursor && decodeCursor(q.cursor) === null)
      throw new AppError(422, "validation_failed", "invalid cursor");
    const page = await ledger(c.env, c.get("credential").tenant).list({
      ...(q.cursor ? { after: q.cursor } : {}),
      limit: q.limit,
      order: q.order,
      ...(q.action ? { action: q.action } : {}),
      ...(q.actor ? { actor: q.actor } : {}),
      ...(q.since ? { since: new Date(q.since).toISOString() } : {}),
      ...(q.until ? { until: new Date(q.until).toISOString() } : {}),
    });
    return c.json(page, 200);
  })
  .openapi(auditVerify, async (c) =>
    c.json(await ledger(c.env, c.get("credential").tenant).verify(), 200),
  )
  .openapi(getPolicy, async (c) => {
    const s = await c.var.store.tenantSettings(c.get("credential").tenant);
    return c.json({ retention: { textDays: s?.textRetentionDays ?? null } }, 200);
  })
  .openapi(putPolicy, async (c) => {
    const body = c.req.valid("json");
    const tenant = c.get("credential").tenant;
    const store = c.var.store;
    const before = (await store.tenantSettings(tenant))?.textRetentionDays ?? null;
    await store.putTenantSettings(tenant, { textRetentionDays: body.retention.textDays });
    await audit(c, "policy.changed", tenant, {
      retention: { textDays: { from: before, to: body.retention.textDays } },
    });
    return c.json(body, 200);
  })
  .openapi(encryption, async (c) =>
    c.json(await keyringFor(c.env).keyInfo(c.get("credential").tenant), 200),
  )
  .openapi(rotate, async (c) => {
    const tenant = c.get("credential").tenant;
    const keyring = keyringFor(c.env);
    const version = await keyring.rotateTenantKey(tenant);
    await audit(c, "encryption.rotated", tenant, { version });
    return c.json(await keyring.keyInfo(tenant), 200);
  })
  .openapi(erase, async (c) => {
    const tenant = c.get("credential").tenant;
    if (c.req.valid("query").confirm !== tenant) {
      throw new AppError(
        422,
        "validation_failed",
        `erasing a tenant cannot be undone: repeat its name as ?confirm=${tenant}`,
      );
    }
    const keys = await c.var.store.listCredentials(tenant);
    const r = await eraseTenant(c.env, tenant);
    for (const k of keys) forgetCredential(k.id);
    return c.json({ erased: tenant, jobs: r.jobs }, 200);
  })
  .openapi(operatorQuotas, async (c) => {
    const { tenant } = c.req.valid("param");
    const quotas = c.req.valid("json");
    const store = c.var.store;
    const before = (await store.tenantSettings(tenant))?.quotas ?? {};
    await store.putTenantSettings(tenant, { quotas });
    forgetTenantQuotas(tenant);
    const op = c.get("credential");
    // The tenant's own log says who changed its limits.
    await ledger(c.env, tenant).append({
      actor: `operator:${op.id}`,
      action: "quota.changed",
      target: tenant,
      ip: clientAddress(c),
      userAgent: c.req.header("User-Agent")?.slice(0, 256) ?? null,
      details: { from: before, to: quotas },
    });
    return c.json(quotas, 200);
  })
  .openapi(operatorUsage, async (c) =>
    c.json(await usageOf(c.env, c.var.store, c.req.valid("param").tenant), 200),
  )
  .openapi(operatorErase, async (c) => {
    const { tenant } = c.req.valid("param");
    if (tenant === c.get("credential").tenant) {
      throw new AppError(
        422,
        "validation_failed",
        "an operator erases its own tenant with DELETE /v1/tenant",
      );
    }
    const keys = await c.var.store.listCredentials(tenant);
    const r = await eraseTenant(c.env, tenant);
    for (const k of keys) forgetCredential(k.id);
    await audit(c, "tenant.erased", tenant, { jobs: r.jobs });
    return c.json({ erased: tenant, jobs: r.jobs }, 200);
  })
  .openapi(rewrap, async (c) => c.json(await keyringFor(c.env).rewrap(), 200));
