import { env, runInDurableObject } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import {
  type AuditEntry,
  canonicalJson,
  decodeCursor,
  encodeCursor,
  entryHash,
  GENESIS_HASH,
  verifyChain,
} from "../src/tenant/audit.js";
import type { TenantLedger } from "../src/tenant/ledger.js";

/** Every test gets its own tenant, so objects never share state. */
let n = 0;
const ledger = (label: string) => {
  const tenant = `t_${label}_${++n}_${crypto.randomUUID().slice(0, 8)}`;
  return { tenant, stub: env.TENANTS.get(env.TENANTS.idFromName(tenant)) };
};

const ACTIONS = ["job.created", "job.cancelled", "key.created", "job.deleted", "webhook.created"];

/** Appends n entries one after another, actors alternating between two keys. */
async function fill(stub: DurableObjectStub<TenantLedger>, count: number) {
  const out: AuditEntry[] = [];
  for (let i = 0; i < count; i++)
    out.push(
      await stub.append({
        actor: i % 2 ? "cred_b" : "cred_a",
        action: ACTIONS[i % ACTIONS.length] as string,
        target: `obj_${i}`,
        ip: "203.0.113.7",
        userAgent: "test/1",
        details: { i, nested: { z: 1, a: [1, "two", null] } },
      }),
    );
  return out;
}

async function listAll(
  stub: DurableObjectStub<TenantLedger>,
  q: Parameters<TenantLedger["list"]>[0] = {},
): Promise<AuditEntry[]> {
  const all: AuditEntry[] = [];
  let after: string | undefined;
  for (let pages = 0; pages < 100; pages++) {
    const page = await stub.list({ ...q, after });
    all.push(...(page.data as AuditEntry[]));
    if (!page.nextCursor) return all;
    after = page.nextCursor;
  }
  throw new Error("too many pages");
}

describe("canonical JSON", () => {
  it("sorts keys recursively, has no whitespace and keeps array order", () => {
    expect(canonicalJson({ b: 1, a: { d: [3, { y: 1, x: 2 }], c: "s" } })).toBe(
      '{"a":{"c":"s","d":[3,{"x":2,"y":1}]},"b":1}',
    );
    expect(canonicalJson({ u: undefined, n: null, f: Number.NaN, arr: [undefined] })).toBe(
      '{"arr":[null],"f":null,"n":null}',
    );
    expect(canonicalJson(new Date(0))).toBe('"1970-01-01T00:00:00.000Z"');
  });

  it("round-trips list cursors and rejects foreign ones", () => {
    expect(decodeCursor(encodeCursor(42))).toBe(42);
    expect(decodeCursor("42")).toBeNull();
    expect(decodeCursor("!!")).toBeNull();
  });
});

describe("audit log", () => {
  it("appends seq 1..n with linked hashes that verify", async () => {
    const { tenant, stub } = ledger("append");
    expect(await stub.head()).toEqual({ seq: 0, hash: GENESIS_HASH });
    const entries = await fill(stub, 7);
    expect(entries.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(entries[0]?.prevHash).toBe(GENESIS_HASH);
    for (let i = 1; i < entries.length; i++)
      expect(entries[i]?.prevHash).toBe(entries[i - 1]?.hash);
    for (const e of entries) {
      expect(e.tenant).toBe(tenant);
      expect(e.hash).toMatch(/^[0-9a-f]{64}$/);
      const { hash, ...rest } = e;
      expect(await entryHash(rest)).toBe(hash);
      expect(Date.parse(e.at)).not.toBeNaN();
    }
    // The hash is exactly SHA-256 of the canonical JSON of the entry without `hash`.
    const { hash, ...first } = entries[0] as AuditEntry;
    const digest = await crypto.subtle.digest(
      "SHA-256",
      new TextEncoder().encode(canonicalJson(first)),
    );
    expect(
      Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join(""),
    ).toBe(hash);
    const last = entries[6] as AuditEntry;
    expect(await stub.head()).toEqual({ seq: 7, hash: last.hash });
    expect(await stub.verify()).toEqual({
      ok: true,
      entries: 7,
      head: { seq: 7, hash: last.hash },
    });
    // What list returns is what append returned.
    expect(await listAll(stub)).toEqual(entries);
  });

  it("stores optional fields as null and details as they survive JSON", async () => {
    const { stub } = ledger("defaults");
    const e = await stub.append({ actor: "system", action: "tenant.created" });
    expect(e).toMatchObject({ target: null, ip: null, userAgent: null, details: {} });
    const d = await stub.append({
      actor: "system",
      action: "x.y",
      details: { keep: 1, drop: undefined, when: new Date(0) } as Record<string, unknown>,
    });
    expect(d.details).toEqual({ keep: 1, when: "1970-01-01T00:00:00.000Z" });
    // Error paths are called on the instance: a rejecting stub call leaks an unhandled
    // rejection in vitest-pool-workers (cloudflare/workers-sdk#14736).
    await runInDurableObject(stub, async (o: TenantLedger) => {
      await expect(o.append({ actor: "", action: "x.y" })).rejects.toThrow(/actor/);
      await expect(o.append({ actor: "a", action: "x.y", details: [] as never })).rejects.toThrow(
        /details/,
      );
    });
    expect((await stub.verify()).ok).toBe(true);
    expect((await stub.head()).seq).toBe(2);
  });

  it("pages with a cursor and filters by action prefix, actor, time and order", async () => {
    const { stub } = ledger("list");
    const entries = await fill(stub, 23);

    const first = await stub.list({ limit: 10 });
    expect(first.data.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(first.nextCursor).toEqual(expect.any(String));
    const paged = await listAll(stub, { limit: 10 });
    expect(paged.map((e) => e.seq)).toEqual(entries.map((e) => e.seq));
    const end = await stub.list({ after: first.nextCursor as string, limit: 100 });
    expect(end.data[0]?.seq).toBe(11);
    expect(end.nextCursor).toBeNull();

    const jobs = await listAll(stub, { action: "job.", limit: 3 });
    expect(jobs.length).toBeGreaterThan(0);
    expect(jobs.every((e) => e.action.startsWith("job."))).toBe(true);
    expect(jobs.map((e) => e.seq)).toEqual(
      entries.filter((e) => e.action.startsWith("job.")).map((e) => e.seq),
    );
    // Exact action; "job" without the dot is not a prefix.
    expect((await listAll(stub, { action: "key.created" })).map((e) => e.seq)).toEqual(
      entries.filter((e) => e.action === "key.created").map((e) => e.seq),
    );
    expect(await listAll(stub, { action: "job" })).toEqual([]);

    const byB = await listAll(stub, { actor: "cred_b" });
    expect(byB.map((e) => e.seq)).toEqual(
      entries.filter((e) => e.actor === "cred_b").map((e) => e.seq),
    );

    const desc = await listAll(stub, { order: "desc", limit: 4 });
    expect(desc.map((e) => e.seq)).toEqual(entries.map((e) => e.seq).reverse());
    const descJobs = await listAll(stub, { order: "desc", action: "job.", actor: "cred_a" });
    expect(descJobs.map((e) => e.seq)).toEqual(
      entries
        .filter((e) => e.action.startsWith("job.") && e.actor === "cred_a")
        .map((e) => e.seq)
        .reverse(),
    );

    // since is inclusive, until exclusive; entries written later fall outside a window.
    const at = (entries[22] as AuditEntry).at;
    expect((await listAll(stub, { since: at })).length).toBeGreaterThan(0);
    expect(await listAll(stub, { until: entries[0]?.at })).toEqual([]);
    expect(
      (await listAll(stub, { since: "2000-01-01T00:00:00Z", until: "2999-01-01" })).length,
    ).toBe(23);
    const future = new Date(Date.parse(at) + 3_600_000).toISOString();
    expect(await listAll(stub, { since: future })).toEqual([]);
    const later = await stub.append({ actor: "system", action: "job.later" });
    // A window ending at an entry's own time leaves that entry out.
    expect((await listAll(stub, { until: later.at })).every((e) => e.at < later.at)).toBe(true);
    expect((await listAll(stub, { since: later.at })).map((e) => e.seq)).toContain(24);

    // Limits are clamped to 1..500.
    expect((await stub.list({ limit: 0 })).data).toHaveLength(1);
    expect((await stub.list({ limit: 10_000 })).data).toHaveLength(24);
    expect((await stub.list({})).data).toHaveLength(24);
    await runInDurableObject(stub, async (o: TenantLedger) => {
      await expect(o.list({ after: "not-a-cursor" })).rejects.toThrow(/cursor/);
      await expect(o.list({ since: "yesterday" })).rejects.toThrow(/since/);
    });
  });

  it("keeps concurrent appends gapless and chained", async () => {
    const { stub } = ledger("concurrent");
    const results = await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        stub.append({ actor: "system", action: "load.test", details: { i } }),
      ),
    );
    expect(results.map((e) => e.seq).sort((a, b) => a - b)).toEqual(
      Array.from({ length: 50 }, (_, i) => i + 1),
    );
    const all = await listAll(stub, { limit: 500 });
    expect(all.map((e) => e.seq)).toEqual(Array.from({ length: 50 }, (_, i) => i + 1));
    expect(new Set(all.map((e) => (e.details as { i: number }).i)).size).toBe(50);
    expect(await verifyChain(all, await stub.head())).toMatchObject({ ok: true, entries: 50 });
    expect(await stub.verify()).toMatchObject({ ok: true, entries: 50, head: { seq: 50 } });

    // Verifying while appends land sees a consistent log every time.
    const mixed = await Promise.all(
      Array.from({ length: 30 }, (_, i) =>
        i % 3 ? stub.append({ actor: "system", action: "load.more" }) : stub.verify(),
      ),
    );
    for (const r of mixed) if ("ok" in r) expect(r.ok).toBe(true);
    expect(await stub.verify()).toMatchObject({ ok: true, entries: 70, head: { seq: 70 } });
  });
});

describe("audit tampering", () => {
  it("detects a row whose details were changed in SQLite", async () => {
    const { stub } = ledger("tamper_update");
    await fill(stub, 6);
    await runInDurableObject(stub, async (_o: TenantLedger, state) => {
      const w = state.storage.sql.exec(
        "UPDATE audit SET details = ? WHERE seq = 4",
        JSON.stringify({ i: 999 }),
      ).rowsWritten;
      expect(w).toBe(1);
    });
    const r = await stub.verify();
    expect(r).toMatchObject({ ok: false, firstBadSeq: 4, entries: 6 });
    expect(r.problem).toMatch(/hash/);
  });

  it("detects a row deleted from the middle", async () => {
    const { stub } = ledger("tamper_middle");
    await fill(stub, 6);
    await runInDurableObject(stub, async (_o: TenantLedger, state) => {
      state.storage.sql.exec("DELETE FROM audit WHERE seq = 3");
    });
    const r = await stub.verify();
    expect(r).toMatchObject({ ok: false, firstBadSeq: 3 });
    expect(r.problem).toMatch(/seq/);
  });

  it("detects the last row deleted, through the stored head", async () => {
    const { stub } = ledger("tamper_tail");
    const entries = await fill(stub, 6);
    await runInDurableObject(stub, async (_o: TenantLedger, state) => {
      state.storage.sql.exec("DELETE FROM audit WHERE seq = 6");
    });
    // The remaining rows chain perfectly; only the head knows there was a sixth.
    expect((await verifyChain(entries.slice(0, 5))).ok).toBe(true);
    const r = await stub.verify();
    expect(r).toMatchObject({
      ok: false,
      entries: 5,
      firstBadSeq: 6,
      head: { seq: 6, hash: entries[5]?.hash },
    });
    expect(r.problem).toMatch(/head/);
  });

  it("verifyChain passes a downloaded log and fails modified copies", async () => {
    const { stub } = ledger("tamper_client");
    await fill(stub, 8);
    const downloaded = await listAll(stub, { limit: 3 });
    const head = await stub.head();
    // Through JSON, as a CLI would have it.
    const copy = () => JSON.parse(JSON.stringify(downloaded)) as AuditEntry[];
    expect(await verifyChain(copy(), head)).toEqual({ ok: true, entries: 8, head });
    expect(await verifyChain(copy())).toMatchObject({ ok: true, head });

    const edited = copy();
    (edited[4] as AuditEntry).details = { i: 4, extra: true };
    expect(await verifyChain(edited, head)).toMatchObject({ ok: false, firstBadSeq: 5 });

    const reactor = copy();
    (reactor[1] as AuditEntry).actor = "cred_evil";
    expect(await verifyChain(reactor, head)).toMatchObject({ ok: false, firstBadSeq: 2 });

    // Rehashing an edited entry breaks the next link instead.
    const rehashed = copy();
    const e = rehashed[2] as AuditEntry;
    e.target = "obj_other";
    const { hash: _old, ...rest } = e;
    e.hash = await entryHash(rest);
    expect(await verifyChain(rehashed, head)).toMatchObject({ ok: false, firstBadSeq: 4 });

    const gap = copy();
    gap.splice(5, 1);
    expect(await verifyChain(gap, head)).toMatchObject({ ok: false, firstBadSeq: 6 });

    expect(await verifyChain(copy().slice(0, 7), head)).toMatchObject({
      ok: false,
      firstBadSeq: 8,
    });
    expect(await verifyChain([], { seq: 0, hash: GENESIS_HASH })).toMatchObject({
      ok: true,
      entries: 0,
    });
  });
});

describe("rate limits", () => {
  const T0 = Date.UTC(2026, 0, 1, 12, 0, 0);

  it("allows the limit, refuses the next with Retry-After, and allows again a minute later", async () => {
    const { stub } = ledger("rate");
    const keys = [{ key: "key:cred_1", limit: 5 }];
    for (let i = 0; i < 5; i++) {
      const r = await stub.hit(keys, T0);
      expect(r).toMatchObject({ allowed: true, limit: 5, remaining: 4 - i, retryAfterSeconds: 0 });
      expect(r.resetSeconds).toBeGreaterThan(0);
      expect(r.resetSeconds).toBeLessThanOrEqual(60);
    }
    const refused = await stub.hit(keys, T0);
    expect(refused).toMatchObject({
      allowed: false,
      limit: 5,
      remaining: 0,
      blockedBy: "key:cred_1",
    });
    expect(refused.retryAfterSeconds).toBeGreaterThanOrEqual(1);
    expect(refused.retryAfterSeconds).toBeLessThanOrEqual(60);
    // Only what was allowed is counted as usage.
    expect((await stub.usage(T0)).requestsLastMinute).toEqual({ "key:cred_1": 5 });
    // Waiting the advertised time is enough, not less.
    expect((await stub.hit(keys, T0 + refused.retryAfterSeconds * 1000)).allowed).toBe(true);
    expect((await stub.hit(keys, T0 + refused.retryAfterSeconds * 1000)).allowed).toBe(false);

    const later = await stub.hit(keys, T0 + 60_000 + refused.retryAfterSeconds * 1000);
    expect(later).toMatchObject({ allowed: true, limit: 5 });
    expect(later.remaining).toBe(4);
  });

  it("a refused request consumes nothing from the other keys", async () => {
    const { stub } = ledger("rate_other");
    const both = [
      { key: "key:cred_1", limit: 5 },
      { key: "tenant", limit: 100 },
    ];
    for (let i = 0; i < 5; i++) expect((await stub.hit(both, T0)).allowed).toBe(true);
    for (let i = 0; i < 3; i++) {
      const r = await stub.hit(both, T0);
      expect(r).toMatchObject({ allowed: false, blockedBy: "key:cred_1", remaining: 0 });
    }
    // Only the five allowed requests count against the tenant.
    const t = await stub.hit([{ key: "tenant", limit: 100 }], T0);
    expect(t).toMatchObject({ allowed: true, limit: 100, remaining: 100 - 6 });
    expect((await stub.usage(T0)).requestsLastMinute).toEqual({ "key:cred_1": 5, tenant: 6 });
    // Out of the window, nothing is counted any more.
    expect((await stub.usage(T0 + 61_000)).requestsLastMinute).toEqual({});
  });

  it("reports the tighter of two limits, and ignores unlimited keys", async () => {
    const { stub } = ledger("rate_tight");
    const keys = [
      { key: "tenant", limit: 10 },
      { key: "key:cred_2", limit: 3 },
      { key: "free", limit: 0 },
    ];
    const a = await stub.hit(keys, T0);
    expect(a).toMatchObject({ allowed: true, limit: 3, remaining: 2 });
    // Another key of the tenant uses the tenant budget until it becomes the tighter one.
    for (let i = 0; i < 8; i++) await stub.hit([{ key: "tenant", limit: 10 }], T0);
    const b = await stub.hit(keys, T0);
    expect(b).toMatchObject({ allowed: true, limit: 10, remaining: 0 });
    const c = await stub.hit(keys, T0);
    expect(c).toMatchObject({ allowed: false, limit: 10, blockedBy: "tenant" });
    expect(c.retryAfterSeconds).toBeGreaterThanOrEqual(1);
    expect(c.retryAfterSeconds).toBeLessThanOrEqual(60);

    const none = await stub.hit([{ key: "free", limit: 0 }], T0);
    expect(none).toMatchObject({ allowed: true, limit: 0, retryAfterSeconds: 0 });
    expect((await stub.usage(T0)).requestsLastMinute.free).toBe(3);
  });
});

describe("wipe", () => {
  it("leaves nothing behind", async () => {
    const { stub } = ledger("wipe");
    await fill(stub, 5);
    await stub.hit([{ key: "tenant", limit: 1 }], Date.now());
    expect((await stub.hit([{ key: "tenant", limit: 1 }], Date.now())).allowed).toBe(false);
    await stub.wipe();
    await runInDurableObject(stub, async (_o: TenantLedger, state) => {
      const tables = state.storage.sql
        .exec<{ name: string }>(
          "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_cf_%'",
        )
        .toArray()
        .map((t) => t.name);
      for (const t of tables)
        expect(
          state.storage.sql.exec<{ n: number }>(`SELECT count(*) AS n FROM "${t}"`).one().n,
        ).toBe(0);
      expect([...state.storage.kv.list()]).toEqual([]);
    });
    expect(await stub.list({})).toEqual({ data: [], nextCursor: null });
    expect(await stub.head()).toEqual({ seq: 0, hash: GENESIS_HASH });
    expect(await stub.verify()).toMatchObject({ ok: true, entries: 0 });
    expect(await stub.usage()).toEqual({ requestsLastMinute: {} });
    expect((await stub.hit([{ key: "tenant", limit: 1 }], Date.now())).allowed).toBe(true);
    await runInDurableObject(stub, async (_o: TenantLedger, state) => {
      expect(state.storage.sql.exec<{ n: number }>("SELECT count(*) AS n FROM audit").one().n).toBe(
        0,
      );
    });
    // The log starts over after a wipe.
    const e = await stub.append({ actor: "system", action: "tenant.erased" });
    expect(e).toMatchObject({ seq: 1, prevHash: GENESIS_HASH });
    expect((await stub.verify()).ok).toBe(true);
  });
});
