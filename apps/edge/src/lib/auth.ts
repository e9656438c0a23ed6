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

/** Resolves a presented secret to its credential, or null. */
export async function lookupCredential(env: Env, secret: string): Promise<Credential | null> {
  const hash = await sha256Hex(secret);
  const hit = cache.get(hash);
  if (hit && Date.now() - hit.at < CACHE_MS) return hit.cred;
  const cred = await new D1Store(env.DB).findCredential(hash);
  if (cache.size > 10_000) cache.clear();
  cache.set(hash, { at: Date.now(), cred });
  return cred;
}

/** Requires `Authorization: Bearer <secret>` of the given credential kind. */
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
    if (cred.kind !== kind) {
      throw new AppError(
        403,
        "forbidden",
        kind === "api"
          ? "this is a worker token; use an API key"
          : "this is an API key; use a worker token",
      );
    }
    c.set("credential", cred);
    await next();
  });
}
