import type { AuditAction } from "@p2pa/shared";
import type { Context } from "hono";
import { type AppEnv, clientAddress } from "../lib/auth.js";
import { ledger } from "./limits.js";

/**
 * Records what the caller just did in its tenant's audit log: who (the key id), what, on
 * which target, from where. Awaited, so a response never reports an action the log missed.
 */
export async function audit(
  c: Context<AppEnv>,
  action: AuditAction,
  target: string | null,
  details: Record<string, unknown> = {},
): Promise<void> {
  const cred = c.get("credential");
  await ledger(c.env, cred.tenant).append({
    actor: cred.id,
    action,
    target,
    ip: clientAddress(c),
    userAgent: c.req.header("User-Agent")?.slice(0, 256) ?? null,
    details,
  });
}
