import { Keyring } from "../lib/keyring.js";
import { D1Store } from "./store.js";

/** The keyring of this deployment: tenant data keys in D1, wrapped by `P2PA_DATA_KEYS`. */
export function keyringFor(env: Env): Keyring {
  return new Keyring(env.DB, env.P2PA_DATA_KEYS);
}

/** The metadata store, sealing document text under each tenant's key. */
export function openStore(env: Env): D1Store {
  return new D1Store(env.DB, keyringFor(env));
}
