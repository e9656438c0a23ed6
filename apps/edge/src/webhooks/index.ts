import { isTerminal, type WebhookEventType } from "@p2pa/shared";
import { AppError } from "../lib/errors.js";
import { checkTarget, parsePrivateTargets } from "./targets.js";

/** The tenant's webhook hub (one Durable Object per tenant). */
export function webhookHub(env: Env, tenant: string) {
  return env.WEBHOOKS.get(env.WEBHOOKS.idFromName(`tenant:${tenant}`));
}

/** Refuses webhook URLs the deployment does not allow (private networks, bad schemes). */
export function assertTargetAllowed(env: Env, url: string): void {
  const why = checkTarget(url, parsePrivateTargets(env.WEBHOOK_ALLOW_PRIVATE));
  if (why) throw new AppError(422, "unprocessable", `webhook url ${why}`, { url });
}

/** The webhook event for a job's terminal status. */
export function terminalEvent(status: string): WebhookEventType | null {
  return isTerminal(status) ? `job.${status}` : null;
}
