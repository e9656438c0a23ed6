import { env, runInDurableObject } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { keyringFor, metadataConnections, openStore } from "../../src/db/open.js";
import { pgClientFor } from "../../src/db/pg-client.js";
import { postgresPool } from "../../src/db/postgres.js";
import type { MetadataStore } from "../../src/db/store.js";
import { PGLITE, SYSTEM_POSTGRES, unique } from "../backends.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("a Postgres store kept by a Durable Object", () => {
  it("serves the object's later events, and opens again after its connections ended idle", async () => {
    const stub = env.DISPATCHER.get(env.DISPATCHER.idFromName(unique("kept")));
    const kept: { store?: MetadataStore } = {};
    await runInDurableObject(stub, async () => {
      kept.store = openStore(PGLITE.env);
      expect(await kept.store.ping()).toBe(true);
    });
    // Another event of the same object: the connections of the first one still serve.
    expect(await runInDurableObject(stub, () => kept.store?.ping())).toBe(true);
    await sleep(2_500);
    expect(await runInDurableObject(stub, () => kept.store?.ping())).toBe(true);
  });
});

// How long the metadata store's Postgres connections live, as the server itself sees them
// (pg_stat_activity): that needs a server with a session per connection, the system's
// PostgreSQL (PGlite runs them all on one).
const system = SYSTEM_POSTGRES;

describe.skipIf(!system)("Postgres connections of the metadata store", () => {
  /** An env whose connections carry their own application_name, and a way to count them. */
  function tagged() {
    const name = unique("conn");
    const base = system?.env as Env;
    const tagEnv = {
      ...base,
      DATABASE_URL: `${base.DATABASE_URL}?application_name=${name}`,
    } as Env;
    const count = async () => {
      const pool = postgresPool(base);
      try {
        const r = await pool.query(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1",
          [name],
        );
        return (r.rows[0] as { n: number }).n;
      } finally {
        await pool.end();
      }
    };
    return { env: tagEnv, count };
  }

  const until = async (check: () => Promise<boolean>, ms: number) => {
    const end = Date.now() + ms;
    while (!(await check())) {
      if (Date.now() > end) return false;
      await sleep(50);
    }
    return true;
  };

  it("ends a store's connections once it has been idle a while", async () => {
    const t = tagged();
    const store = openStore(t.env);
    expect(await store.ping()).toBe(true);
    await Promise.all([store.ping(), store.listJobs(unique("t"), { limit: 1 }), store.ping()]);
    expect(await t.count()).toBeGreaterThanOrEqual(1);
    // Gone within the idle time (2 s) and a margin: ended, not dropped by the server.
    expect(await until(async () => (await t.count()) === 0, 4_000)).toBe(true);
    // And opened again on the next call.
    expect(await store.ping()).toBe(true);
    expect(await t.count()).toBeGreaterThanOrEqual(1);
  });

  it("shares one set of connections among a request's stores and keyrings, ended with it", async () => {
    const t = tagged();
    const tenant = unique("t");
    const seen = await metadataConnections(t.env, async () => {
      expect(pgClientFor(t.env)).toBe(pgClientFor(t.env));
      // Stores and a keyring, one after another, as a request's middleware and route do.
      await openStore(t.env).ping();
      await openStore(t.env).tenantSettings(tenant);
      await keyringFor(t.env).encrypt(tenant, "x", "c");
      await openStore(t.env).listJobs(tenant, { limit: 1 });
      return t.count();
    });
    expect(seen).toBe(1);
    expect(await until(async () => (await t.count()) === 0, 1_000)).toBe(true);
    // Outside a request each store has its own.
    expect(pgClientFor(t.env)).not.toBe(pgClientFor(t.env));
  });
});
