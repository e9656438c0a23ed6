import { Keyring } from "../lib/keyring.js";
import { SettingsInvalid } from "../lib/settings.js";
import { type PgClient, pgClientFor, withRequestClient } from "./pg-client.js";
import { PgKeyStore } from "./pg-key-store.js";
import { PgStore } from "./pg-store.js";
import { D1Store, type MetadataStore } from "./store.js";

/** Where metadata lives: D1 (the default), or Postgres through Neon's driver. */
export type MetadataBackend = "d1" | "postgres";

/** The deployment's `METADATA_BACKEND`: "d1" when unset; anything else is a settings error. */
function metadataBackend(env: Env): MetadataBackend {
  const raw = (env as { METADATA_BACKEND?: string }).METADATA_BACKEND?.trim() || "d1";
  if (raw === "d1" || raw === "postgres") return raw;
  throw new SettingsInvalid([`METADATA_BACKEND must be "d1" or "postgres", not "${raw}"`]);
}

/** The keyring of this deployment: tenant data keys in its metadata database, wrapped by `P2PA_DATA_KEYS`. */
export function keyringFor(env: Env): Keyring {
  return metadataBackend(env) === "postgres"
    ? postgresKeyring(env, pgClientFor(env))
    : new Keyring(env.DB, env.P2PA_DATA_KEYS);
}

/**
 * The metadata store, sealing document text under each tenant's key. On Postgres the store and
 * its keyring share one set of connections (the request's, within `metadataConnections`),
 * opened on first use and ended once idle (pg-client.ts): open a store where it is used (a
 * request, or a Durable Object that keeps it), never at module level.
 */
export function openStore(env: Env): MetadataStore {
  if (metadataBackend(env) === "postgres") {
    const pg = pgClientFor(env);
    return new PgStore(pg, postgresKeyring(env, pg));
  }
  return new D1Store(env.DB, keyringFor(env));
}

function postgresKeyring(env: Env, pg: PgClient): Keyring {
  return new Keyring(new PgKeyStore(pg, env.DATABASE_URL ?? ""), env.P2PA_DATA_KEYS);
}

/**
 * Runs a request's handling with the metadata connections it opens shared by its stores and
 * keyrings, and ended when it is done (`waitUntil` keeps the Worker up for the ending). Nothing
 * to share on D1.
 */
export function metadataConnections<T>(
  env: Env,
  fn: () => Promise<T>,
  waitUntil?: (p: Promise<unknown>) => void,
): Promise<T> {
  return metadataBackend(env) === "postgres" ? withRequestClient(env, fn, waitUntil) : fn();
}
