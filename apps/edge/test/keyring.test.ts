import { env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { PgClient } from "../src/db/pg-client.js";
import { PgKeyStore } from "../src/db/pg-key-store.js";
import type { TenantKeyStore } from "../src/lib/key-store.js";
import {
  DecryptError,
  isCiphertext,
  Keyring,
  KeyringNotConfigured,
  newDeploymentKey,
  parseDeploymentKeys,
} from "../src/lib/keyring.js";
import { BACKENDS, type Backend } from "./backends.js";

/** 32 random bytes in standard base64: a deployment key. */
function randomKey(): string {
  return btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));
}

/** A tenant no other test touches (D1 is shared within this file, Postgres maybe by others). */
function tenant(): string {
  return `kr-${crypto.randomUUID()}`;
}

function fromBase64(s: string): Uint8Array<ArrayBuffer> {
  const std = s.replaceAll("-", "+").replaceAll("_", "/");
  const bin = atob(std + "=".repeat((4 - (std.length % 4)) % 4));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

/** Where a backend keeps tenant keys, as the deployment opens it (db/open.ts). */
function storage(b: Backend): D1Database | TenantKeyStore {
  return b.kind === "d1" ? env.DB : new PgKeyStore(new PgClient(b.env), b.env.DATABASE_URL ?? "");
}

/** A backend's `tenant_keys` rows of a tenant. */
function rowsOf(b: Backend) {
  return (t: string) =>
    b.query<{ version: number; wrapped: string; wrapped_by: string }>(
      "SELECT version, wrapped, wrapped_by FROM tenant_keys WHERE tenant = ? ORDER BY version",
      [t],
    );
}

/** A backend's key storage, counting the queries made on it (each is one statement). */
function countingStore(b: Backend): { db: TenantKeyStore; prepared: () => number } {
  const inner = storage(b);
  let n = 0;
  if (b.kind === "d1") {
    // D1: every statement prepared on the database.
    const db = {
      prepare: (q: string) => {
        n++;
        return env.DB.prepare(q);
      },
      batch: (s: D1PreparedStatement[]) => env.DB.batch(s),
    } as unknown as D1Database;
    return { db: db as unknown as TenantKeyStore, prepared: () => n };
  }
  const store = inner as TenantKeyStore;
  const db = new Proxy(store, {
    get(target, key, receiver) {
      const v = Reflect.get(target, key, receiver);
      if (typeof v !== "function") return v;
      return (...args: unknown[]) => {
        n++;
        return v.apply(target, args);
      };
    },
  });
  return { db, prepared: () => n };
}

/** Flips one bit of byte `at` of a text ciphertext's data (IV, ciphertext and tag). */
function flipByte(ct: string, at: number): string {
  const head = ct.slice(0, ct.lastIndexOf(".") + 1);
  const data = fromBase64(ct.slice(head.length));
  data[at] = (data[at] ?? 0) ^ 0x01;
  const b64 = btoa(String.fromCharCode(...data));
  return head + b64.replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

describe.each(BACKENDS)("Keyring on $name: encrypt and decrypt", (be: Backend) => {
  const keys = `k1:${randomKey()}`;

  it("round-trips text, including empty, emoji and 1 MB strings, without showing it", async () => {
    const kr = new Keyring(storage(be), keys);
    const t = tenant();
    const big = "Grüße 🌍 lorem ipsum, ".repeat(50_000); // > 1 MB of UTF-8
    expect(new TextEncoder().encode(big).length).toBeGreaterThan(1_000_000);
    for (const plain of ["", "hello world", "🔐 émoji ✓ 日本語", big]) {
      const ct = await kr.encrypt(t, plain, "chunks.text");
      expect(ct).toMatch(/^p2pa1\.1\.[A-Za-z0-9_-]+$/);
      expect(isCiphertext(ct)).toBe(true);
      expect(Keyring.isCiphertext(ct)).toBe(true);
      if (plain !== "") expect(ct).not.toContain(plain.slice(0, 11));
      expect(await kr.decrypt(t, ct, "chunks.text")).toBe(plain);
    }
    const a = await kr.encrypt(t, "same text", "c");
    const b = await kr.encrypt(t, "same text", "c");
    expect(a).not.toBe(b);
    expect(await kr.decrypt(t, a, "c")).toBe("same text");
    expect(await kr.decrypt(t, b, "c")).toBe("same text");
  });

  it("round-trips bytes in the binary format", async () => {
    const kr = new Keyring(storage(be), keys);
    const t = tenant();
    const plain = crypto.getRandomValues(new Uint8Array(1 << 16));
    const ct = await kr.encryptBytes(t, plain, "r2.object");
    expect(Array.from(ct.subarray(0, 4))).toEqual([0x50, 0x32, 0x50, 0x41]); // "P2PA"
    expect(ct[4]).toBe(1);
    expect(new DataView(ct.buffer, ct.byteOffset).getUint32(5, false)).toBe(1);
    expect(ct.length).toBe(4 + 1 + 4 + 12 + plain.length + 16);
    expect(Array.from(ct.subarray(21, 21 + 64))).not.toEqual(Array.from(plain.subarray(0, 64)));
    expect(await kr.decryptBytes(t, ct, "r2.object")).toEqual(plain);

    const empty = await kr.encryptBytes(t, new Uint8Array(0), "r2.object");
    expect((await kr.decryptBytes(t, empty, "r2.object")).length).toBe(0);

    const tampered = ct.slice();
    tampered[100] = (tampered[100] ?? 0) ^ 1;
    await expect(kr.decryptBytes(t, tampered, "r2.object")).rejects.toBeInstanceOf(DecryptError);
    await expect(kr.decryptBytes(t, ct, "r2.other")).rejects.toBeInstanceOf(DecryptError);
    await expect(kr.decryptBytes(t, ct.subarray(0, 30), "r2.object")).rejects.toBeInstanceOf(
      DecryptError,
    );
    await expect(kr.decryptBytes(t, plain, "r2.object")).rejects.toBeInstanceOf(DecryptError);
  });

  it("refuses another context, another tenant, tampering and unknown versions", async () => {
    const kr = new Keyring(storage(be), keys);
    const t = tenant();
    const other = tenant();
    await kr.encrypt(other, "the other tenant has a key too", "c");
    const ct = await kr.encrypt(t, "secret", "jobs.row1");

    await expect(kr.decrypt(t, ct, "jobs.row2")).rejects.toBeInstanceOf(DecryptError);
    await expect(kr.decrypt(other, ct, "jobs.row1")).rejects.toBeInstanceOf(DecryptError);
    // Every part is authenticated: IV, ciphertext, tag (6 bytes of text: 12 + 6 + 16).
    for (const at of [0, 11, 12, 17, 18, 33]) {
      const bad = flipByte(ct, at);
      expect(bad).not.toBe(ct);
      await expect(kr.decrypt(t, bad, "jobs.row1")).rejects.toBeInstanceOf(DecryptError);
    }
    // One spelling per ciphertext: a set unused bit in the last character is refused
    // (34 bytes make 46 characters, the last carrying 2 data bits and 4 unused ones).
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const lastIndex = alphabet.indexOf(ct.at(-1) ?? "");
    expect(lastIndex & 0b1111).toBe(0);
    const respelled = ct.slice(0, -1) + alphabet[lastIndex | 1];
    expect(isCiphertext(respelled)).toBe(false);
    await expect(kr.decrypt(t, respelled, "jobs.row1")).rejects.toBeInstanceOf(DecryptError);
    await expect(kr.decrypt(t, ct.replace("p2pa1.1.", "p2pa1.7."), "jobs.row1")).rejects.toThrow(
      /no key version 7/,
    );
    await expect(kr.decrypt(t, ct.slice(0, 20), "jobs.row1")).rejects.toBeInstanceOf(DecryptError);
    await expect(kr.decrypt(t, "secret", "jobs.row1")).rejects.toBeInstanceOf(DecryptError);
    // The right inputs still work.
    expect(await kr.decrypt(t, ct, "jobs.row1")).toBe("secret");
  });

  it("recognises the text format only", () => {
    expect(isCiphertext("hello")).toBe(false);
    expect(isCiphertext("")).toBe(false);
    expect(isCiphertext("p2pa1.1.")).toBe(false);
    expect(isCiphertext("p2pa1.1.abc")).toBe(false); // shorter than IV + tag
    expect(isCiphertext(`p2pa1.0.${"A".repeat(40)}`)).toBe(false);
    expect(isCiphertext(`p2pa1.1.${"A".repeat(40)}=`)).toBe(false);
    expect(isCiphertext(`p2pa2.1.${"A".repeat(40)}`)).toBe(false);
    expect(isCiphertext(`p2pa1.99999999999.${"A".repeat(40)}`)).toBe(false);
    expect(isCiphertext(`p2pa1.12.${"A".repeat(40)}`)).toBe(true);
  });

  it("encrypts thousands of strings without a database read per call once the key is cached", async () => {
    const { db, prepared } = countingStore(be);
    const kr = new Keyring(db, keys);
    const t = tenant();
    await kr.encrypt(t, "warm up", "c");
    const before = prepared();
    expect(before).toBeGreaterThan(0);
    const texts = Array.from({ length: 3000 }, (_, i) => `chunk number ${i}`);
    const cts = await Promise.all(texts.map((s) => kr.encrypt(t, s, `chunk.${s}`)));
    const back = await Promise.all(cts.map((c, i) => kr.decrypt(t, c, `chunk.${texts[i]}`)));
    expect(back).toEqual(texts);
    expect(prepared()).toBe(before);
    // Another instance (a later request on this isolate) shares the cache.
    await new Keyring(db, keys).encrypt(t, "x", "c");
    expect(prepared()).toBe(before);
  });

  it("seals many texts at once, in order, each under an IV of its own and bound to its context", async () => {
    const kr = new Keyring(storage(be), keys);
    const t = tenant();
    expect(await kr.encryptAll(t, [])).toEqual([]);
    // More IVs than one getRandomValues call gives (65,536 bytes: 5,461 IVs).
    const items = Array.from({ length: 6000 }, (_, i) => ({
      plaintext: i % 2 ? `text ${i}` : "same text",
      context: `chunk.${i}`,
    }));
    const sealed = await kr.encryptAll(t, items);
    expect(sealed).toHaveLength(items.length);
    const ivs = new Set(sealed.map((c) => c.split(".")[2]?.slice(0, 16)));
    expect(ivs.size).toBe(items.length);
    const back = await Promise.all(sealed.map((c, i) => kr.decrypt(t, c, `chunk.${i}`)));
    expect(back).toEqual(items.map((x) => x.plaintext));
    await expect(kr.decrypt(t, sealed[0] as string, "chunk.2")).rejects.toBeInstanceOf(
      DecryptError,
    );
  });

  it("opens many texts at once across key versions, and refuses the lot if one is not theirs", async () => {
    const kr = new Keyring(storage(be), keys);
    const t = tenant();
    expect(await kr.decryptAll(t, [])).toEqual([]);
    const before = await kr.encryptAll(t, [
      { plaintext: "sealed under version 1", context: "a" },
      { plaintext: "ünïcödé ✓", context: "b" },
    ]);
    await kr.rotateTenantKey(t);
    const after = await kr.encryptAll(t, [{ plaintext: "sealed under version 2", context: "c" }]);
    const all = [...before, ...after];
    expect(all.map((c) => c.split(".")[1])).toEqual(["1", "1", "2"]);
    const items = all.map((ciphertext, i) => ({ ciphertext, context: "abc"[i] as string }));
    expect(await kr.decryptAll(t, items)).toEqual([
      "sealed under version 1",
      "ünïcödé ✓",
      "sealed under version 2",
    ]);
    // Swapped contexts, another tenant, or something that is no ciphertext: nothing opens.
    const swapped = items.map((x, i) => ({ ...x, context: i === 2 ? "a" : x.context }));
    await expect(kr.decryptAll(t, swapped)).rejects.toBeInstanceOf(DecryptError);
    await expect(kr.decryptAll(tenant(), items)).rejects.toBeInstanceOf(DecryptError);
    await expect(
      kr.decryptAll(t, [...items, { ciphertext: "plain text", context: "d" }]),
    ).rejects.toBeInstanceOf(DecryptError);
  });
});

describe.each(BACKENDS)("Keyring on $name: keys at rest", (be: Backend) => {
  const rows = rowsOf(be);

  it("stores the tenant key wrapped, openable only with the deployment key", async () => {
    const raw = randomKey();
    const kr = new Keyring(storage(be), `k1:${raw}`);
    const t = tenant();
    const ct = await kr.encrypt(t, "hello", "ctx");
    const [row, ...more] = await rows(t);
    expect(more).toEqual([]);
    expect(row?.wrapped_by).toBe("k1");
    const wrapped = fromBase64(row?.wrapped ?? "");
    expect(wrapped.length).toBe(40); // AES-KW of a 32-byte key, not the key itself

    // With the deployment key, the documented format opens by hand: iv || ct+tag, AAD.
    const kek = await crypto.subtle.importKey("raw", fromBase64(raw), "AES-KW", false, [
      "unwrapKey",
    ]);
    const dataKey = await crypto.subtle.unwrapKey("raw", wrapped, kek, "AES-KW", "AES-GCM", false, [
      "decrypt",
    ]);
    const sealed = fromBase64(ct.slice("p2pa1.1.".length));
    const aad = new TextEncoder().encode(`${t}\u0000ctx`);
    const plain = await crypto.subtle.decrypt(
      { name: "AES-GCM", iv: sealed.subarray(0, 12), additionalData: aad },
      dataKey,
      sealed.subarray(12),
    );
    expect(new TextDecoder().decode(plain)).toBe("hello");

    // The stored bytes used directly as a key open nothing.
    const asKey = await crypto.subtle.importKey("raw", wrapped.subarray(0, 32), "AES-GCM", false, [
      "decrypt",
    ]);
    await expect(
      crypto.subtle.decrypt(
        { name: "AES-GCM", iv: sealed.subarray(0, 12), additionalData: aad },
        asKey,
        sealed.subarray(12),
      ),
    ).rejects.toThrow();
  });

  it("cannot decrypt with another deployment key", async () => {
    const t = tenant();
    const ct = await new Keyring(storage(be), `k1:${randomKey()}`).encrypt(t, "hello", "ctx");
    // Same id, other key material: the unwrap fails its integrity check.
    const sameId = new Keyring(storage(be), `k1:${randomKey()}`);
    await expect(sameId.decrypt(t, ct, "ctx")).rejects.toThrow(DecryptError);
    await expect(sameId.decrypt(t, ct, "ctx")).rejects.toThrow(/does not unwrap/);
    // Another id: the keyring says which key it lacks.
    const otherId = new Keyring(storage(be), `k9:${randomKey()}`);
    await expect(otherId.decrypt(t, ct, "ctx")).rejects.toThrow(DecryptError);
    await expect(otherId.decrypt(t, ct, "ctx")).rejects.toThrow(/"k1"/);
    // And it refuses to encrypt with a key it cannot unwrap, rather than making a new one.
    await expect(otherId.encrypt(t, "more", "ctx")).rejects.toThrow(/cannot encrypt/);
    expect((await rows(t)).length).toBe(1);
  });

  it("throws KeyringNotConfigured without a usable P2PA_DATA_KEYS", async () => {
    const t = tenant();
    for (const secret of [undefined, "", " \n "]) {
      const kr = new Keyring(storage(be), secret);
      await expect(kr.encrypt(t, "x", "c")).rejects.toBeInstanceOf(KeyringNotConfigured);
      await expect(kr.encrypt(t, "x", "c")).rejects.toThrow(/P2PA_DATA_KEYS/);
      await expect(kr.decrypt(t, `p2pa1.1.${"A".repeat(40)}`, "c")).rejects.toBeInstanceOf(
        KeyringNotConfigured,
      );
      await expect(kr.encryptBytes(t, new Uint8Array(1), "c")).rejects.toBeInstanceOf(
        KeyringNotConfigured,
      );
      await expect(kr.rotateTenantKey(t)).rejects.toBeInstanceOf(KeyringNotConfigured);
      await expect(kr.rewrap()).rejects.toBeInstanceOf(KeyringNotConfigured);
      expect(await kr.keyInfo(t)).toEqual({ versions: [] });
    }
    const shortKey = btoa("too short");
    const malformed = new Keyring(storage(be), `k1:${shortKey}`);
    const err = await malformed.encrypt(t, "x", "c").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KeyringNotConfigured);
    expect(String((err as Error).message)).toMatch(/P2PA_DATA_KEYS.*32 bytes/s);
    expect(String((err as Error).message)).not.toContain(shortKey);
    expect((await rows(t)).length).toBe(0);
  });
});

describe.each(BACKENDS)("Keyring on $name: rotation and shredding", (be: Backend) => {
  const rows = rowsOf(be);

  it("rotates a tenant key: new data uses the new version, old data still opens", async () => {
    const keys = `k1:${randomKey()}`;
    const kr = new Keyring(storage(be), keys);
    const t = tenant();
    const old = await kr.encrypt(t, "written under v1", "c");
    const oldBytes = await kr.encryptBytes(t, new Uint8Array([1, 2, 3]), "c");
    expect(old.startsWith("p2pa1.1.")).toBe(true);

    expect(await kr.rotateTenantKey(t)).toBe(2);
    const fresh = await kr.encrypt(t, "written under v2", "c");
    expect(fresh.startsWith("p2pa1.2.")).toBe(true);
    const freshBytes = await kr.encryptBytes(t, new Uint8Array([4]), "c");
    expect(new DataView(freshBytes.buffer).getUint32(5, false)).toBe(2);
    // Another instance on this isolate sees the rotation at once.
    expect((await new Keyring(storage(be), keys).encrypt(t, "x", "c")).startsWith("p2pa1.2.")).toBe(
      true,
    );

    const reader = new Keyring(storage(be), keys);
    expect(await reader.decrypt(t, old, "c")).toBe("written under v1");
    expect(await reader.decrypt(t, fresh, "c")).toBe("written under v2");
    expect(Array.from(await reader.decryptBytes(t, oldBytes, "c"))).toEqual([1, 2, 3]);

    expect(await kr.rotateTenantKey(t)).toBe(3);
    const info = await kr.keyInfo(t);
    expect(info.versions.map((v) => [v.version, v.wrappedBy])).toEqual([
      [1, "k1"],
      [2, "k1"],
      [3, "k1"],
    ]);
    expect(info.versions.every((v) => !Number.isNaN(Date.parse(v.createdAt)))).toBe(true);
    // Listings carry no key material.
    const stored = await rows(t);
    const listed = JSON.stringify(info);
    for (const r of stored) expect(listed).not.toContain(r.wrapped);
  });

  it("rotates the deployment key without downtime: add, rewrap, remove", async () => {
    // rewrap is deployment-wide. D1 is this file's: start from an empty table so the counts are
    // this test's own. Postgres holds other files' keys, wrapped by keys this test lacks: never
    // rewrapped, they are in `remaining`, by a number other files may change meanwhile.
    if (be.kind === "d1") await env.DB.exec("DELETE FROM tenant_keys");
    const shared = be.kind !== "d1";
    const k1 = randomKey();
    const k2 = randomKey();
    const a = new Keyring(storage(be), `k1:${k1}`);
    const t1 = tenant();
    const t2 = tenant();
    const text = await a.encrypt(t1, "old data", "c");
    await a.rotateTenantKey(t1);
    const text2 = await a.encrypt(t1, "old data v2", "c");
    const bytes = await a.encryptBytes(t2, new Uint8Array([9, 8, 7]), "obj");
    // A key wrapped by something no longer in the list is reported, not lost silently.
    const stray = tenant();
    await new Keyring(storage(be), `gone:${randomKey()}`).encrypt(stray, "x", "c");

    const rewrapper = new Keyring(storage(be), `k2:${k2},\nk1:${k1}`);
    const first = await rewrapper.rewrap();
    expect(first.rewrapped).toBe(3);
    if (shared) expect(first.remaining).toBeGreaterThanOrEqual(1);
    else expect(first.remaining).toBe(1);
    expect(await rewrapper.destroyTenant(stray)).toBe(1);
    const second = await rewrapper.rewrap();
    expect(second.rewrapped).toBe(0);
    if (!shared) expect(second.remaining).toBe(0);
    for (const t of [t1, t2]) {
      for (const r of await rows(t)) expect(r.wrapped_by).toBe("k2");
    }
    // New tenant keys are wrapped by the first (current) key.
    const t3 = tenant();
    await rewrapper.encrypt(t3, "new", "c");
    expect((await rows(t3)).map((r) => r.wrapped_by)).toEqual(["k2"]);

    const c = new Keyring(storage(be), `k2:${k2}`);
    expect(await c.decrypt(t1, text, "c")).toBe("old data");
    expect(await c.decrypt(t1, text2, "c")).toBe("old data v2");
    expect(Array.from(await c.decryptBytes(t2, bytes, "obj"))).toEqual([9, 8, 7]);
    expect(await c.decrypt(t3, await c.encrypt(t3, "more", "c"), "c")).toBe("more");
    // The old key alone no longer opens the rewrapped keys (a keyring that has not cached them).
    await expect(
      new Keyring(storage(be), `k1:${k1},x:${randomKey()}`).decrypt(t1, text, "c"),
    ).rejects.toBeInstanceOf(DecryptError);
  });

  it("destroys a tenant: its data is unreadable, also on this isolate's cache", async () => {
    const keys = `k1:${randomKey()}`;
    const kr = new Keyring(storage(be), keys);
    const t = tenant();
    const keep = tenant();
    const v1 = await kr.encrypt(t, "doomed", "c");
    await kr.rotateTenantKey(t);
    const v2 = await kr.encrypt(t, "doomed too", "c");
    const blob = await kr.encryptBytes(t, new Uint8Array([1]), "c");
    const kept = await kr.encrypt(keep, "survives", "c");
    // Warm the cache for both versions on this instance.
    expect(await kr.decrypt(t, v1, "c")).toBe("doomed");
    expect(await kr.decrypt(t, v2, "c")).toBe("doomed too");

    // Destroyed through another instance: the module-level cache must still forget.
    expect(await new Keyring(storage(be), keys).destroyTenant(t)).toBe(2);
    expect(await rows(t)).toEqual([]);
    for (const reader of [kr, new Keyring(storage(be), keys)]) {
      await expect(reader.decrypt(t, v1, "c")).rejects.toBeInstanceOf(DecryptError);
      await expect(reader.decrypt(t, v2, "c")).rejects.toBeInstanceOf(DecryptError);
      await expect(reader.decryptBytes(t, blob, "c")).rejects.toBeInstanceOf(DecryptError);
    }
    expect(await kr.keyInfo(t)).toEqual({ versions: [] });
    expect(await kr.decrypt(keep, kept, "c")).toBe("survives");

    // A later write starts a new key: the old version 1 data stays unreadable.
    const again = await kr.encrypt(t, "new life", "c");
    expect(again.startsWith("p2pa1.1.")).toBe(true);
    expect(await kr.decrypt(t, again, "c")).toBe("new life");
    await expect(kr.decrypt(t, v1, "c")).rejects.toBeInstanceOf(DecryptError);
    expect(await kr.destroyTenant(tenant())).toBe(0);
  });

  it("creates exactly one version 1 when first uses race", async () => {
    const k = randomKey();
    const t = tenant();
    const kr = new Keyring(storage(be), `k1:${k}`);
    const cts = await Promise.all(
      Array.from({ length: 20 }, (_, i) => kr.encrypt(t, `text ${i}`, "c")),
    );
    expect(await rows(t)).toHaveLength(1);
    for (const [i, ct] of cts.entries()) expect(await kr.decrypt(t, ct, "c")).toBe(`text ${i}`);

    // Two keyrings that share no cache (as two isolates would) race on the database itself.
    const u = tenant();
    const x = new Keyring(storage(be), `k1:${k}`);
    const y = new Keyring(storage(be), `k1:${k},spare:${randomKey()}`);
    const mixed = await Promise.all(
      Array.from({ length: 20 }, (_, i) => (i % 2 ? x : y).encrypt(u, `text ${i}`, "c")),
    );
    const stored = await rows(u);
    expect(stored.map((r) => r.version)).toEqual([1]);
    for (const [i, ct] of mixed.entries()) {
      expect(ct.startsWith("p2pa1.1.")).toBe(true);
      expect(await x.decrypt(u, ct, "c")).toBe(`text ${i}`);
      expect(await y.decrypt(u, ct, "c")).toBe(`text ${i}`);
    }
  });
});

describe("parseDeploymentKeys", () => {
  it("parses entries separated by commas or newlines, first one first", () => {
    const a = randomKey();
    const b = randomKey().replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
    const parsed = parseDeploymentKeys(`k2:${a},\n k1:${b}\n\n`);
    expect(parsed.map((k) => k.id)).toEqual(["k2", "k1"]);
    expect(parsed.map((k) => k.raw.length)).toEqual([32, 32]);
    expect(Array.from(parsed[0]?.raw ?? [])).toEqual(Array.from(fromBase64(a)));
    expect(Array.from(parsed[1]?.raw ?? [])).toEqual(Array.from(fromBase64(b)));
    expect(parseDeploymentKeys(undefined)).toEqual([]);
    expect(parseDeploymentKeys("")).toEqual([]);
    expect(parseDeploymentKeys(" , \n")).toEqual([]);
  });

  it("names the bad entry and never echoes key material", () => {
    const good = randomKey();
    const short = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(31))));
    const long = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(33))));
    const cases: [string, RegExp, string][] = [
      [`k1:${good},k2:${short}`, /entry 2 \(id "k2"\).*32 bytes, got 31/, short],
      [`k1:${long}`, /entry 1 \(id "k1"\).*32 bytes, got 33/, long],
      [`bad id!:${good}`, /entry 1: the key id must match/, good],
      [`${"x".repeat(33)}:${good}`, /entry 1: the key id/, good],
      [`k1:${good},${good}`, /entry 2: expected `id:base64key`/, good],
      [`k1:${good},k1:${good}`, /entry 2: key id "k1" appears twice/, good],
      [`k1:${good.slice(0, 20)}*${good.slice(21)}`, /entry 1 \(id "k1"\).*not valid base64/, good],
    ];
    for (const [input, message, secret] of cases) {
      let err: unknown;
      try {
        parseDeploymentKeys(input);
      } catch (e) {
        err = e;
      }
      expect(err, input).toBeInstanceOf(Error);
      expect((err as Error).message).toMatch(message);
      expect((err as Error).message).not.toContain(secret);
      expect((err as Error).message).not.toContain(secret.slice(0, 12));
    }
  });

  it("newDeploymentKey makes fresh, valid keys", () => {
    const a = newDeploymentKey();
    const b = newDeploymentKey();
    expect(a).not.toBe(b);
    expect(a).toMatch(/^[A-Za-z0-9+/]{43}=$/);
    expect(parseDeploymentKeys(`k1:${a}`)[0]?.raw.length).toBe(32);
  });
});
