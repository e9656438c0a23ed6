import { createMiddleware } from "hono/factory";
import type { Credential } from "../db/store.js";
import { D1Store } from "../db/store.js";
import { sha256Hex } from "./crypto.js";
import { AppError } from "./errors.js";

export type AppEnv = { Bindings: Env; Variables: { credential: Credential } };

// Credentials are looked up by hash; a short per-isolate cache keeps D1 off the hot path.
// Revocation takes effect within CACHE_MS.
const CACHE_MS = 30_000;
const cache = new Map<string, { at: number; cred: Credential | null }>();

function bearer(header: string | undefined): string | null {
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
      });
  }
  return out;
}

/** Resolves a presented secret to its credential (D1 first, then the deployment secret), or null. */
export async function lookupCredential(env: Env, secret: string): Promise<Credential | null> {
  const hash = await sha256Hex(secret);
  const hit = cache.get(hash);
  if (hit && Date.now() - hit.at < CACHE_MS) return hit.cred;
  const cred =
    (await new D1Store(env.DB).findCredential(hash)) ??
    secretCredentials((env as { P2PA_CREDENTIALS?: string }).P2PA_CREDENTIALS).get(hash) ??
    null;
  if (cache.size > 10_000) cache.clear();
  cache.set(hash, { at: Date.now(), cred });
  return cred;
}

/**
 * Requires `Authorization: Bearer <secret>` of the given credential kind. An operator's
 * (`admin`) key is also an API key of its tenant; operator-only routes ask for `admin`.
 */
export function requireAuth(kind: Credential["kind"]) {
  return createMiddleware<AppEnv>(async (c, next) => {
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
    const fits = cred.kind === kind || (kind === "api" && cred.kind === "admin");
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
    await next();
  });
}
