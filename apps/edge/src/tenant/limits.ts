import { Quotas } from "@p2pa/shared";
import { openStore } from "../db/open.js";
import type { Credential } from "../db/store.js";
import { AppError } from "../lib/errors.js";

// A tenant's own limits, cached per isolate like credentials: a change applies within this.
const CACHE_MS = 30_000;
const tenantCache = new Map<string, { at: number; quotas: Quotas }>();

/** The deployment's limits for tenants that have none of their own (`DEFAULT_QUOTAS`). */
function defaultQuotas(env: Env): Quotas {
  const raw: string = env.DEFAULT_QUOTAS;
  if (!raw) return {};
  const parsed = Quotas.safeParse(JSON.parse(raw));
  if (!parsed.success) throw new Error(`DEFAULT_QUOTAS is invalid: ${parsed.error.message}`);
  return parsed.data;
}

/** A tenant's limits: its own settings over the deployment's defaults. */
export async function tenantQuotas(env: Env, tenant: string): Promise<Quotas> {
  const hit = tenantCache.get(tenant);
  if (hit && Date.now() - hit.at < CACHE_MS) return hit.quotas;
  const own = (await openStore(env).tenantSettings(tenant))?.quotas ?? {};
  const quotas = { ...defaultQuotas(env), ...own };
  if (tenantCache.size > 10_000) tenantCache.clear();
  tenantCache.set(tenant, { at: Date.now(), quotas });
  return quotas;
}

/** Forgets a tenant's cached limits (after they changed on this isolate). */
export function forgetTenantQuotas(tenant: string): void {
  tenantCache.delete(tenant);
}

export function ledger(env: Env, tenant: string) {
  return env.TENANTS.get(env.TENANTS.idFromName(tenant));
}

/** The IETF RateLimit headers for the tightest of the limits that applied. */
function rateHeaders(r: { limit: number; remaining: number; resetSeconds: number }) {
  return {
    "RateLimit-Limit": String(r.limit),
    "RateLimit-Remaining": String(r.remaining),
    "RateLimit-Reset": String(r.resetSeconds),
    "RateLimit-Policy": `${r.limit};w=60`,
  };
}

/**
 * Counts an API request against its key's and its tenant's requests per minute. Returns the
 * RateLimit headers to send, or null when no limit applies (then the request is counted for
 * usage off the request's path, through `defer`); throws 429 with Retry-After when a limit
 * is reached.
 */
export async function limitRequests(
  env: Env,
  cred: Credential,
  defer: (p: Promise<unknown>) => void,
): Promise<Record<string, string> | null> {
  const tenant = await tenantQuotas(env, cred.tenant);
  const keyLimit = cred.quotas.requestsPerMinute ?? 0;
  const tenantLimit = tenant.requestsPerMinute ?? 0;
  const hit = ledger(env, cred.tenant).hit([
    { key: `key:${cred.id}`, limit: keyLimit },
    { key: "tenant", limit: tenantLimit },
  ]);
  if (keyLimit <= 0 && tenantLimit <= 0) {
    defer(hit.catch(() => undefined));
    return null;
  }
  const r = await hit;
  const headers = rateHeaders(r);
  if (!r.allowed) {
    throw new AppError(
      429,
      "rate_limited",
      `${r.blockedBy === "tenant" ? "this tenant" : "this key"} may send ${r.limit} requests a minute; retry in ${r.retryAfterSeconds} s`,
      { limit: r.limit, retryAfterSeconds: r.retryAfterSeconds },
      { ...headers, "Retry-After": String(r.retryAfterSeconds) },
    );
  }
  return headers;
}

/**
 * Refuses a submit that would take the key or the tenant over its chunks per day or the
 * tenant over its stored vectors. Counted from D1's jobs (the truth), so deleting a job
 * gives its room back.
 */
export async function assertChunkQuota(env: Env, cred: Credential, chunks: number): Promise<void> {
  const tenant = await tenantQuotas(env, cred.tenant);
  const limits = [
    { who: "key", limit: cred.quotas.chunksPerDay ?? 0 },
    { who: "tenant", limit: tenant.chunksPerDay ?? 0 },
  ];
  const stored = tenant.storedVectors ?? 0;
  if (!limits.some((l) => l.limit > 0) && stored <= 0) return;
  const store = openStore(env);
  const usage = await store.chunkUsage(cred.tenant, cred.id);
  for (const { who, limit } of limits) {
    const used = who === "key" ? usage.keyLast24h : usage.tenantLast24h;
    if (limit > 0 && used + chunks > limit) {
      // The window frees room as the oldest jobs in it turn a day old.
      const oldest = who === "key" ? usage.keyOldestAt : usage.tenantOldestAt;
      const retry = oldest
        ? Math.max(1, Math.ceil((Date.parse(oldest) + 86_400_000 - Date.now()) / 1000))
        : 3600;
      throw new AppError(
        429,
        "quota_exceeded",
        `this ${who} may submit ${limit} chunks a day; ${used} used, the job has ${chunks}`,
        { quota: "chunksPerDay", limit, used, requested: chunks },
        { "Retry-After": String(retry) },
      );
    }
  }
  if (stored > 0 && usage.storedVectors + chunks > stored) {
    throw new AppError(
      429,
      "quota_exceeded",
      `this tenant may keep ${stored} vectors; ${usage.storedVectors} are kept, the job has ${chunks}. Delete jobs or ask the operator for more`,
      { quota: "storedVectors", limit: stored, used: usage.storedVectors, requested: chunks },
    );
  }
}
