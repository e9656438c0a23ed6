import { createRoute } from "@hono/zod-openapi";
import { ApiKey, CreateKeyRequest, type Scope, UpdateKeyRequest } from "@p2pa/shared";
import { z } from "zod";
import { router } from "../app.js";
import { shardsFrom } from "../dispatch/shards.js";
import { forgetCredential, requireAuth, scoped } from "../lib/auth.js";
import { newId, sha256Hex } from "../lib/crypto.js";
import { AppError, notFound } from "../lib/errors.js";
import { modelIds } from "../lib/models.js";
import { audit } from "../tenant/audit-log.js";
import { errors, IdParam, json } from "./openapi.js";

const Id = IdParam;
const admin = scoped("admin");

/** What a new key may do when its creator names no scopes: everything but administration. */
const DEFAULT_SCOPES: Scope[] = ["jobs:write", "jobs:read", "search", "webhooks"];

const create = createRoute({
  method: "post",
  path: "/v1/keys",
  operationId: "createKey",
  summary: "Create an API key or a worker token; its secret is returned once",
  ...admin,
  request: {
    body: { content: { "application/json": { schema: CreateKeyRequest } }, required: true },
  },
  responses: { 201: json(ApiKey, "The key, with its secret"), ...errors },
});
const list = createRoute({
  method: "get",
  path: "/v1/keys",
  operationId: "listKeys",
  summary: "The tenant's keys and worker tokens (never their secrets)",
  ...admin,
  responses: { 200: json(z.object({ data: z.array(ApiKey) }), "Keys, newest first"), ...errors },
});
const get = createRoute({
  method: "get",
  path: "/v1/keys/{id}",
  operationId: "getKey",
  summary: "One key",
  ...admin,
  request: { params: Id },
  responses: { 200: json(ApiKey, "The key"), ...errors },
});
const update = createRoute({
  method: "patch",
  path: "/v1/keys/{id}",
  operationId: "updateKey",
  summary: "Rename a key or change its own limits",
  ...admin,
  request: {
    params: Id,
    body: { content: { "application/json": { schema: UpdateKeyRequest } }, required: true },
  },
  responses: { 200: json(ApiKey, "The key"), ...errors },
});
const revoke = createRoute({
  method: "delete",
  path: "/v1/keys/{id}",
  operationId: "revokeKey",
  summary: "Revoke a key or worker token (connected workers using it are disconnected)",
  ...admin,
  request: { params: Id },
  responses: { 204: { description: "Revoked" }, ...errors },
});

/** A new secret: a kind prefix and 160 random bits. */
const newSecret = (kind: "api" | "worker") => newId(kind === "api" ? "p2pa_sk" : "p2pa_wt", 32);

export const keyRoutes = router();
keyRoutes.use("/v1/keys", requireAuth("api"));
keyRoutes.use("/v1/keys/*", requireAuth("api"));

keyRoutes
  .openapi(create, async (c) => {
    const body = c.req.valid("json");
    const tenant = c.get("credential").tenant;
    if (body.expiresAt && Date.parse(body.expiresAt) <= Date.now()) {
      throw new AppError(422, "validation_failed", "expiresAt must be in the future");
    }
    if (body.kind === "worker" && body.scopes) {
      throw new AppError(422, "validation_failed", "worker tokens carry no scopes");
    }
    const secret = newSecret(body.kind);
    const id = newId(body.kind === "api" ? "key" : "wtk");
    const store = c.var.store;
    await store.createCredential({
      id,
      kind: body.kind,
      tenant,
      hash: await sha256Hex(secret),
      label: body.label,
      prefix: secret.slice(0, 12),
      scopes: body.kind === "api" ? [...new Set(body.scopes ?? DEFAULT_SCOPES)] : null,
      expiresAt: body.expiresAt ? new Date(body.expiresAt).toISOString() : null,
      quotas: body.quotas ?? null,
    });
    const key = await store.getCredential(tenant, id);
    if (!key) throw new Error(`key ${id} vanished after insert`);
    await audit(c, "key.created", id, {
      kind: key.kind,
      label: key.label,
      scopes: key.scopes,
      expiresAt: key.expiresAt,
      quotas: key.quotas,
    });
    return c.json({ ...key, secret }, 201, {
      Location: `/v1/keys/${id}`,
      "Cache-Control": "no-store",
    });
  })
  .openapi(list, async (c) => {
    return c.json({ data: await c.var.store.listCredentials(c.get("credential").tenant) }, 200);
  })
  .openapi(get, async (c) => {
    const key = await c.var.store.getCredential(
      c.get("credential").tenant,
      c.req.valid("param").id,
    );
    if (!key) throw notFound("key");
    return c.json(key, 200);
  })
  .openapi(update, async (c) => {
    const { id } = c.req.valid("param");
    const patch = c.req.valid("json");
    const tenant = c.get("credential").tenant;
    const store = c.var.store;
    const before = await store.getCredential(tenant, id);
    if (!before || before.revokedAt) throw notFound("key");
    if (before.kind === "admin")
      throw new AppError(403, "forbidden", "operator keys are managed by the operator");
    await store.updateCredential(tenant, id, patch);
    forgetCredential(id);
    const key = (await store.getCredential(tenant, id)) ?? before;
    if (patch.quotas !== undefined)
      await audit(c, "quota.changed", id, { from: before.quotas, to: key.quotas });
    if (patch.label !== undefined)
      await audit(c, "key.changed", id, { label: { from: before.label, to: key.label } });
    return c.json(key, 200);
  })
  .openapi(revoke, async (c) => {
    const { id } = c.req.valid("param");
    const tenant = c.get("credential").tenant;
    const store = c.var.store;
    const key = await store.getCredential(tenant, id);
    if (!key || key.revokedAt) throw notFound("key");
    if (key.kind === "admin")
      throw new AppError(403, "forbidden", "operator keys are managed by the operator");
    await store.revokeTenantCredential(tenant, id);
    forgetCredential(id);
    // A revoked worker token's live connections close now, on every shard.
    if (key.kind === "worker")
      await Promise.all(
        modelIds(c.env).flatMap((m) => shardsFrom(c.env, m, 0).map((s) => s.revalidateNow())),
      );
    await audit(c, "key.revoked", id, { kind: key.kind, label: key.label });
    return c.body(null, 204);
  });
