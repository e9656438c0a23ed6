import { SCOPES, type Scope } from "@p2pa/shared";
import type { Context } from "hono";
import { createMiddleware } from "hono/factory";
import { openStore } from "../db/open.js";
import type { Credential, MetadataStore } from "../db/store.js";
import { limitRequests } from "../tenant/limits.js";
import { sha256Hex } from "./crypto.js";
import { AppError } from "./errors.js";

export type AppEnv = {
  Bindings: Env;
  /** `store`: this request's metadata store, set for every `/v1/*` route (see createApp). */
  Variables: { credential: Credential; store: MetadataStore };
};

// Credentials are looked up by hash; a short per-isolate cache keeps D1 off the hot path.
// Revocation takes effect within CACHE_MS (at once on the isolate that revoked).
const CACHE_MS = 30_000;
const cache = new Map<string, { at: number; cred: Credential | null }>();
// When each credential's last use was last written: at most once a minute per key.
const TOUCH_MS = 60_000;
const touched = new Map<string, number>();

/** The secret in `Authorization: Bearer <secret>`, or null. */
export function bearer(header: string | undefined | null): string | null {
  const m = header?.match(/^Bearer\s+(\S+)\s*$/i);
  return m?.[1] ?? null;
}

/**
 * Credentials from the `P2PA_CREDENTIALS` secret: lines of `kind:tenant:sha256hex` (kind is
 * `api`, `admin` or `worker`), so a deployment can be bootstrapped before any key is in D1. Only
 * hashes are kept there too; `npm run keys` prints a new key with its line.
 */
export function secretCredentials(raw: string | undefined): Map<string, Credential> {
  const out = new Map<string, Credential>();
  for (const line of (raw ?? "").split(/[\n,]/)) {
    const m = line.trim().match(/^(api|admin|worker):([\w.-]{1,64}):([0-9a-f]{64})$/);
    if (m)
      out.set(m[3] as string, {
        id: `secret:${(m[3] as string).slice(0, 12)}`,
        kind: m[1] as Credential["kind"],
        tenant: m[2] as string,
        scopes: [...SCOPES],
        quotas: {},
        expiresAt: null,
      });
  }
  return out;
}

/** Forgets cached lookups of a credential, so its revocation or change applies on this isolate now. */
export function forgetCredential(id: string): void {
  for (const [hash, hit] of cache) if (hit.cred?.id === id) cache.delete(hash);
}

/** Resolves a presented secret to its credential (D1 first, then the deployment secret), or null. */
export async function lookupCredential(env: Env, secret: string): Promise<Credential | null> {
  const hash = await sha256Hex(secret);
  const hit = cache.get(hash);
  const fresh = hit && Date.now() - hit.at < CACHE_MS ? hit.cred : undefined;
  const cred =
    fresh !== undefined
      ? fresh
      : ((await openStore(env).findCredential(hash)) ??
        secretCredentials(env.P2PA_CREDENTIALS).get(hash) ??
        null);
  if (fresh === undefined) {
    if (cache.size > 10_000) cache.clear();
    cache.set(hash, { at: Date.now(), cred });
  }
  // An expired key is refused at once, cached or not.
  if (cred?.expiresAt && Date.parse(cred.expiresAt) <= Date.now())
    return { ...cred, expired: true };
  return cred;
}

/** Whether a credential holds a scope: operators and `admin` keys hold them all. */
export function hasScope(cred: Credential, scope: Scope): boolean {
  return cred.kind === "admin" || cred.scopes.includes("admin") || cred.scopes.includes(scope);
}

/** Where the request came from, for the audit log. */
export function clientAddress(c: Context): string | null {
  return (
    c.req.header("CF-Connecting-IP") ??
    c.req.header("X-Forwarded-For")?.split(",")[0]?.trim() ??
    null
  );
}

/**
 * Requires `Authorization: Bearer <secret>` of the given credential kind. An operator's
 * (`admin`) key is also an API key of its tenant; operator-only routes ask for `admin`. API
 * requests are then counted against the key's and the tenant's request rate.
 */
export function requireAuth(kind: Credential["kind"] | "any") {
  return createMiddleware<AppEnv>(async (c, next) => {
    // Routers mounted on overlapping paths each guard their own: authenticate (and count) once.
    if (c.get("credential")) {
      const have = c.get("credential").kind;
      if (kind === "any" || have === kind || (kind === "api" && have === "admin")) return next();
    }
    const secret = bearer(c.req.header("Authorization"));
    if (!secret) {
      throw new AppError(
        401,
        "unauthorized",
        "missing credentials: send Authorization: Bearer <key>",
        undefined,
        {
          "WWW-Authenticate": 'Bearer realm="p2pa"',
        },
      );
    }
    const cred = await lookupCredential(c.env, secret);
    if (!cred) throw new AppError(401, "unauthorized", "invalid or revoked credentials");
    if (cred.expired) {
      throw new AppError(401, "expired", `this key expired at ${cred.expiresAt}`);
    }
    const fits = kind === "any" || cred.kind === kind || (kind === "api" && cred.kind === "admin");
    if (!fits) {
      throw new AppError(
        403,
        "forbidden",
        kind === "admin"
          ? "this route is for operators: use an operator (admin) key"
          : kind === "api"
            ? "this is a worker token; use an API key"
            : "this is an API key; use a worker token",
      );
    }
    if (cred.quarantined) {
      throw new AppError(
        403,
        "quarantined",
        `this worker token is quarantined (${cred.quarantined}); ask the operator`,
      );
    }
    c.set("credential", cred);
    // Work that must finish but need not hold the response.
    const deferred: Promise<unknown>[] = [];
    const defer = (p: Promise<unknown>) => {
      try {
        c.executionCtx.waitUntil(p);
      } catch {
        deferred.push(p);
      }
    };
    if (!cred.id.startsWith("secret:")) {
      const last = touched.get(cred.id) ?? 0;
      if (Date.now() - last > TOUCH_MS) {
        touched.set(cred.id, Date.now());
        if (touched.size > 10_000) touched.clear();
        defer(c.var.store.touchCredential(cred.id).catch(() => undefined));
      }
    }
    if (cred.kind !== "worker") {
      const headers = await limitRequests(c.env, cred, defer);
      if (headers) for (const [k, v] of Object.entries(headers)) c.header(k, v);
    }
    await next();
    await Promise.all(deferred);
  });
}

/** Requires a scope of the authenticated key (after `requireAuth`). */
export function requireScope(scope: Scope) {
  return createMiddleware<AppEnv>(async (c, next) => {
    const cred = c.get("credential");
    if (!hasScope(cred, scope)) {
      throw new AppError(
        403,
        "forbidden",
        `this key lacks the ${scope} scope (it has: ${cred.scopes.join(", ") || "none"})`,
        { required: scope, granted: cred.scopes },
      );
    }
    await next();
  });
}

/**
 * What a route needs, for `createRoute`: the scope check runs as its middleware and the
 * OpenAPI document lists the scope under the route's security requirement.
 */
export function scoped(scope: Scope) {
  return { middleware: requireScope(scope), security: [{ bearer: [scope] }] };
}
