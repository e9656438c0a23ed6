import { createRoute } from "@hono/zod-openapi";
import {
  CreateWebhookRequest,
  DEFAULT_WEBHOOK_EVENTS,
  UpdateWebhookRequest,
  WebhookDelivery,
  WebhookEndpoint,
} from "@p2pa/shared";
import { z } from "zod";
import { router } from "../app.js";
import { requireAuth, scoped } from "../lib/auth.js";
import { notFound } from "../lib/errors.js";
import { audit } from "../tenant/audit-log.js";
import { assertTargetAllowed, webhookHub } from "../webhooks/index.js";
import { newSecret } from "../webhooks/signing.js";
import { errors, IdParam, json } from "./openapi.js";

const Id = IdParam;
const manage = scoped("webhooks");

const create = createRoute({
  method: "post",
  path: "/v1/webhooks",
  operationId: "createWebhook",
  summary: "Add a webhook endpoint; its signing secret is returned once",
  ...manage,
  request: {
    body: { content: { "application/json": { schema: CreateWebhookRequest } }, required: true },
  },
  responses: { 201: json(WebhookEndpoint, "The endpoint, with its secret"), ...errors },
});
const list = createRoute({
  method: "get",
  path: "/v1/webhooks",
  operationId: "listWebhooks",
  summary: "The account's webhook endpoints",
  ...manage,
  responses: { 200: json(z.object({ data: z.array(WebhookEndpoint) }), "Endpoints"), ...errors },
});
const update = createRoute({
  method: "patch",
  path: "/v1/webhooks/{id}",
  operationId: "updateWebhook",
  summary: "Change an endpoint's URL or events (its secret stays)",
  ...manage,
  request: {
    params: Id,
    body: {
      content: { "application/json": { schema: UpdateWebhookRequest } },
      required: true,
    },
  },
  responses: { 200: json(WebhookEndpoint, "The endpoint"), ...errors },
});
const remove = createRoute({
  method: "delete",
  path: "/v1/webhooks/{id}",
  operationId: "deleteWebhook",
  summary: "Remove an endpoint; its pending deliveries are cancelled",
  ...manage,
  request: { params: Id },
  responses: { 204: { description: "Removed" }, ...errors },
});
const deliveries = createRoute({
  method: "get",
  path: "/v1/webhooks/{id}/deliveries",
  operationId: "listWebhookDeliveries",
  summary: "Deliveries to an endpoint, newest first, with every attempt",
  ...manage,
  request: { params: Id },
  responses: { 200: json(z.object({ data: z.array(WebhookDelivery) }), "Deliveries"), ...errors },
});
const redeliver = createRoute({
  method: "post",
  path: "/v1/webhooks/{id}/deliveries/{deliveryId}/redeliver",
  operationId: "redeliverWebhook",
  summary: "Send a delivery again (same webhook-id), from the start of the schedule",
  ...manage,
  request: { params: Id.extend({ deliveryId: z.string().min(1).max(64) }) },
  responses: {
    202: json(z.object({ id: z.string(), status: z.literal("pending") }), "Queued"),
    ...errors,
  },
});

export const webhookRoutes = router();
webhookRoutes.use("/v1/webhooks", requireAuth("api"));
webhookRoutes.use("/v1/webhooks/*", requireAuth("api"));

webhookRoutes
  .openapi(create, async (c) => {
    const body = c.req.valid("json");
    assertTargetAllowed(c.env, body.url);
    const secret = newSecret();
    const ep = await webhookHub(c.env, c.get("credential").tenant).createEndpoint({
      url: body.url,
      events: body.events ?? DEFAULT_WEBHOOK_EVENTS,
      jobId: null,
      secret,
    });
    await audit(c, "webhook.created", ep.id, { url: ep.url, events: ep.events });
    return c.json({ ...ep, secret }, 201, { Location: `/v1/webhooks/${ep.id}` });
  })
  .openapi(list, async (c) => {
    return c.json(
      { data: await webhookHub(c.env, c.get("credential").tenant).listEndpoints() },
      200,
    );
  })
  .openapi(update, async (c) => {
    const { id } = c.req.valid("param");
    const patch = c.req.valid("json");
    if (patch.url !== undefined) assertTargetAllowed(c.env, patch.url);
    const r = await webhookHub(c.env, c.get("credential").tenant).updateEndpoint(id, patch);
    if (!r) throw notFound("webhook endpoint");
    await audit(c, "webhook.changed", id, {
      ...(patch.url !== undefined ? { url: { from: r.before.url, to: r.after.url } } : {}),
      ...(patch.events !== undefined
        ? { events: { from: r.before.events, to: r.after.events } }
        : {}),
    });
    return c.json(r.after, 200);
  })
  .openapi(remove, async (c) => {
    const ok = await webhookHub(c.env, c.get("credential").tenant).deleteEndpoint(
      c.req.valid("param").id,
    );
    if (!ok) throw notFound("webhook endpoint");
    await audit(c, "webhook.deleted", c.req.valid("param").id);
    return c.body(null, 204);
  })
  .openapi(deliveries, async (c) => {
    const hub = webhookHub(c.env, c.get("credential").tenant);
    const { id } = c.req.valid("param");
    if (!(await hub.hasEndpoint(id))) throw notFound("webhook endpoint");
    return c.json({ data: await hub.deliveries(id) }, 200);
  })
  .openapi(redeliver, async (c) => {
    const { id, deliveryId } = c.req.valid("param");
    if (!(await webhookHub(c.env, c.get("credential").tenant).redeliver(id, deliveryId)))
      throw notFound("delivery");
    await audit(c, "webhook.changed", id, { redelivered: deliveryId });
    return c.json({ id: deliveryId, status: "pending" as const }, 202);
  });
