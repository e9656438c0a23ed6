/**
 * Application-level encryption at rest for tenant data (envelope encryption, WebCrypto only).
 *
 * - Deployment keys (the `P2PA_DATA_KEYS` secret) are AES-256 key-encryption keys. The first
 *   one wraps new tenant keys; the others only unwrap, so the secret can be rotated without
 *   downtime (add the new key first, call `rewrap`, then remove the old key).
 * - Each tenant has AES-256-GCM data keys, versions 1, 2, …, stored in `tenant_keys` (D1 or
 *   Postgres, through a TenantKeyStore: lib/key-store.ts)
 *   wrapped with AES-KW (RFC 3394, `crypto.subtle.wrapKey(..., "AES-KW")`): 40 bytes, base64.
 *   AES-KW carries its own integrity check, so a wrong deployment key fails to unwrap rather
 *   than yielding a wrong key. A copy of D1 alone cannot decrypt anything.
 * - Data is sealed with AES-256-GCM, a random 12-byte IV, and additional authenticated data
 *   `${tenant}\u0000${context}`: a ciphertext moved to another row, column or tenant fails.
 *
 * Formats:
 * - text:   `p2pa1.<version>.<base64url(iv || ciphertext+tag)>` (no padding, ASCII only).
 * - binary: `P2PA` | format version (1 byte, = 1) | key version (4 bytes, big-endian) |
 *           iv (12 bytes) | ciphertext+tag.
 *
 * Caching (per isolate, module level): unwrapped tenant keys (non-extractable CryptoKeys) and
 * each tenant's newest version, so encrypting thousands of strings costs no D1 read once warm.
 * Another isolate sees a rotation within NEWEST_TTL_MS and a destroyed tenant within
 * KEY_TTL_MS; this isolate sees both at once. Caches are kept apart per key storage.
 */

import { base64ToBytes, bytesToBase64 } from "@p2pa/shared";
import { utf8 } from "./crypto.js";
import { D1KeyStore, type KeyRow, type Rewrap, type TenantKeyStore } from "./key-store.js";

/** Prefix of the text format; the digit is the format version. */
const TEXT_PREFIX = "p2pa1.";
/** `P2PA` in ASCII: the first bytes of the binary format. */
const MAGIC = [0x50, 0x32, 0x50, 0x41] as const;
const BINARY_FORMAT = 1;
const BINARY_HEADER = MAGIC.length + 1 + 4;
const IV_BYTES = 12;
const TAG_BYTES = 16;
const KEY_BYTES = 32;
const MAX_VERSION = 0xffff_ffff;
const ID_RE = /^[A-Za-z0-9_-]{1,32}$/;
/** Header digits are bounded so a hostile string cannot make us parse a huge number. */
const TEXT_RE = /^p2pa1\.([1-9][0-9]{0,9})\.([A-Za-z0-9_-]+)$/;

/** How long an unwrapped key is trusted before D1 is asked again (bounds shredding lag elsewhere). */
const KEY_TTL_MS = 10 * 60_000;
/** How long the newest version is trusted (bounds how late other isolates see a rotation). */
const NEWEST_TTL_MS = 30_000;
/** Bounds on the caches: every entry is small, but tenants are unbounded. */
const MAX_KEYS = 2_000;
const MAX_NEWEST = 2_000;
const MAX_SCOPES = 16;
/** Rows per page when rewrapping. */
const REWRAP_PAGE = 100;

/** One entry of `P2PA_DATA_KEYS`: its id and its 32 raw key bytes. */
export interface DeploymentKey {
  id: string;
  raw: Uint8Array;
}

/** A ciphertext that cannot be opened: tampered, another tenant or context, or an unknown key. */
export class DecryptError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "DecryptError";
  }
}

/** No usable deployment key: the operator must set the P2PA_DATA_KEYS secret (maps to HTTP 503). */
export class KeyringNotConfigured extends Error {
  constructor(detail?: string, options?: { cause?: unknown }) {
    super(
      `${detail ? `${detail}. ` : ""}Encryption at rest needs the P2PA_DATA_KEYS secret: set it ` +
        "(`wrangler secret put P2PA_DATA_KEYS`) to `id:base64key` entries, e.g. `k1:<32 random " +
        "bytes in base64>`; `npm run keys` can generate a key.",
      options,
    );
    this.name = "KeyringNotConfigured";
  }
}

/**
 * Parses `P2PA_DATA_KEYS`: `id:base64key` entries separated by commas or newlines, the first
 * being the current key. Returns [] for undefined or blank input; throws an Error naming the
 * bad entry by position (and id when it is valid) but never echoing key material.
 */
export function parseDeploymentKeys(raw: string | undefined): DeploymentKey[] {
  if (raw === undefined) return [];
  const entries = raw
    .split(/[,\r\n]+/)
    .map((e) => e.trim())
    .filter((e) => e !== "");
  const out: DeploymentKey[] = [];
  const seen = new Set<string>();
  entries.forEach((entry, i) => {
    const where = `P2PA_DATA_KEYS entry ${i + 1}`;
    const colon = entry.indexOf(":");
    if (colon < 0) throw new Error(`${where}: expected \`id:base64key\` (no ':' found)`);
    const id = entry.slice(0, colon).trim();
    // An invalid id might be pasted key material, so it is not echoed.
    if (!ID_RE.test(id)) throw new Error(`${where}: the key id must match ${ID_RE}`);
    if (seen.has(id)) throw new Error(`${where}: key id "${id}" appears twice`);
    seen.add(id);
    let bytes: Uint8Array;
    try {
      bytes = base64Decode(entry.slice(colon + 1).trim());
    } catch {
      throw new Error(`${where} (id "${id}"): the key is not valid base64`);
    }
    if (bytes.length !== KEY_BYTES) {
      throw new Error(
        `${where} (id "${id}"): the key must be ${KEY_BYTES} bytes, got ${bytes.length}`,
      );
    }
    out.push({ id, raw: bytes });
  });
  return out;
}

/** A fresh deployment key: 32 random bytes in standard base64 (for `P2PA_DATA_KEYS`). */
export function newDeploymentKey(): string {
  return base64Encode(crypto.getRandomValues(new Uint8Array(KEY_BYTES)));
}

/** Whether a string has the shape of a keyring ciphertext (`p2pa1.<version>.<data>`). */
export function isCiphertext(s: string): boolean {
  if (!s.startsWith(TEXT_PREFIX)) return false;
  const m = TEXT_RE.exec(s);
  if (!m) return false;
  const data = m[2] ?? "";
  return (
    Number(m[1]) <= MAX_VERSION &&
    data.length % 4 !== 1 &&
    Math.floor((data.length * 3) / 4) >= IV_BYTES + TAG_BYTES &&
    canonicalTail(data)
  );
}

const B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/** Unused low bits of the last character must be zero, so each ciphertext has one spelling. */
function canonicalTail(data: string): boolean {
  const unused = { 0: 0, 2: 4, 3: 2 }[(data.length % 4) as 0 | 2 | 3];
  const last = B64URL.indexOf(data[data.length - 1] ?? "A");
  return (last & ((1 << unused) - 1)) === 0;
}

/** One stored version of a tenant key, as listed by `keyInfo` (never key material). */
export interface KeyVersionInfo {
  version: number;
  wrappedBy: string;
  createdAt: string;
}

/** Deployment keys of one distinct secret value, with their imported AES-KW keys. */
interface Scope {
  /** Part of every cache key: keyrings with other deployment keys never share unwrapped keys. */
  id: number;
  keys: DeploymentKey[];
  keks: Map<string, Promise<CryptoKey>>;
}

interface CachedKey {
  tenant: string;
  key: Promise<CryptoKey>;
  expires: number;
}

// Module level, so that the per-request Keyring instances of one isolate share them.
const scopes = new Map<string, Scope>();
/** The same scopes by the secret as written (`P2PA_DATA_KEYS`), so it is parsed once. */
const scopesBySecret = new Map<string, Scope>();
let nextScope = 1;
const keyCache = new Map<string, CachedKey>();
const newestCache = new Map<string, { tenant: string; version: number; expires: number }>();
const newestInFlight = new Map<string, { tenant: string; promise: Promise<number> }>();
/** Bumped by rotate/destroy, so a lookup that started before one does not cache stale state. */
let epoch = 0;

/**
 * Encrypts and decrypts tenant data with per-tenant keys kept wrapped in D1. Cheap to build
 * (one per request is fine): parsing and key imports are cached per isolate.
 */
export class Keyring {
  /** Whether a string has the shape of a keyring ciphertext (same as `isCiphertext`). */
  static readonly isCiphertext = isCiphertext;

  private scopeCache: Scope | undefined;
  private readonly keys: TenantKeyStore;

  /**
   * @param storage where `tenant_keys` is: a TenantKeyStore, or the D1 database holding it
   * @param deploymentKeys the `P2PA_DATA_KEYS` secret; parsed on first use, so a missing or
   *   malformed secret fails the calls that need it (KeyringNotConfigured), not construction.
   */
  constructor(
    storage: D1Database | TenantKeyStore,
    private readonly deploymentKeys: string | undefined,
  ) {
    this.keys =
      typeof (storage as D1Database).prepare === "function"
        ? new D1KeyStore(storage as D1Database)
        : (storage as TenantKeyStore);
  }

  /** Encrypts text with the tenant's newest key (creating version 1 on first use). */
  async encrypt(tenant: string, plaintext: string, context: string): Promise<string> {
    return (await this.encryptAll(tenant, [{ plaintext, context }]))[0] as string;
  }

  /**
   * `encrypt` for many texts of one tenant, in order: the key is looked up once, the IVs are
   * drawn together and every AES-GCM operation starts at once (a submit seals each chunk's row,
   * the small originals that are not a chunk's text, and its tasks' blocks).
   */
  async encryptAll(
    tenant: string,
    items: readonly { plaintext: string; context: string }[],
  ): Promise<string[]> {
    if (items.length === 0) return [];
    const { version, key } = await this.sealingKey(tenant);
    const ivs = randomIvs(items.length);
    return Promise.all(
      items.map(async (item, i) => {
        const iv = ivs.subarray(i * IV_BYTES, (i + 1) * IV_BYTES);
        const sealed = await gcmSeal(key, iv, tenant, item.context, utf8.encode(item.plaintext));
        return `${TEXT_PREFIX}${version}.${base64UrlEncode(sealed)}`;
      }),
    );
  }

  /** Decrypts `encrypt`'s output; throws DecryptError unless tenant, context and data all match. */
  async decrypt(tenant: string, ciphertext: string, context: string): Promise<string> {
    return (await this.decryptAll(tenant, [{ ciphertext, context }]))[0] as string;
  }

  /**
   * Decrypts many of `encrypt`'s outputs of one tenant, each under its own context, looking
   * each key version up once (a task's hundreds of chunks open together). Throws DecryptError
   * as `decrypt` does when any of them fails.
   */
  async decryptAll(
    tenant: string,
    items: readonly { ciphertext: string; context: string }[],
  ): Promise<string[]> {
    this.scope(); // Not configured wins over "bad ciphertext": it is the operator's to fix.
    const parsed = items.map(({ ciphertext }) => parseText(ciphertext));
    const keys = new Map<number, Promise<CryptoKey>>();
    for (const { version } of parsed)
      if (!keys.has(version)) keys.set(version, this.openingKey(tenant, version));
    return Promise.all(
      parsed.map(async ({ version, sealed }, i) => {
        const key = await (keys.get(version) as Promise<CryptoKey>);
        // Authenticated, so it is the UTF-8 that encrypt wrote.
        return UTF8.decode(await gcmOpen(key, sealed, tenant, items[i]?.context ?? ""));
      }),
    );
  }

  /** Encrypts bytes (e.g. an R2 object) into the binary format; see the module comment. */
  async encryptBytes(tenant: string, bytes: Uint8Array, context: string): Promise<Uint8Array> {
    const { version, sealed } = await this.seal(tenant, bytes, context);
    const out = new Uint8Array(BINARY_HEADER + sealed.length);
    out.set(MAGIC, 0);
    out[MAGIC.length] = BINARY_FORMAT;
    new DataView(out.buffer).setUint32(MAGIC.length + 1, version, false);
    out.set(sealed, BINARY_HEADER);
    return out;
  }

  /** Decrypts `encryptBytes`'s output; throws DecryptError on any mismatch. */
  async decryptBytes(tenant: string, data: Uint8Array, context: string): Promise<Uint8Array> {
    this.scope();
    if (
      data.length < BINARY_HEADER + IV_BYTES + TAG_BYTES ||
      MAGIC.some((b, i) => data[i] !== b) ||
      data[MAGIC.length] !== BINARY_FORMAT
    ) {
      throw new DecryptError("not a keyring ciphertext");
    }
    const version = new DataView(data.buffer, data.byteOffset, data.byteLength).getUint32(
      MAGIC.length + 1,
      false,
    );
    return this.open(tenant, version, data.subarray(BINARY_HEADER), context);
  }

  /**
   * Adds a new key version for the tenant and returns it: new writes use it at once on this
   * isolate (within NEWEST_TTL_MS elsewhere); older versions stay to read older data.
   */
  async rotateTenantKey(tenant: string): Promise<number> {
    checkTenant(tenant);
    const current = this.current();
    const { wrapped, key } = await this.newTenantKey(current);
    // Concurrent rotations each get their own version (see TenantKeyStore.addVersion).
    const version = await this.keys.addVersion(
      tenant,
      wrapped,
      current.id,
      new Date().toISOString(),
    );
    if (version === null) throw new Error(`could not add a key version for tenant "${tenant}"`);
    forgetTenant(tenant);
    putKey(this.keyCacheId(tenant, version), tenant, Promise.resolve(key));
    putNewest(this.newestId(tenant), tenant, version);
    return version;
  }

  /**
   * Rewraps every tenant key wrapped by a non-current deployment key with the current one.
   * `remaining` counts the keys still not wrapped by the current key afterwards (wrapped by a
   * key missing from P2PA_DATA_KEYS, or failing to unwrap): 0 means the old keys can go.
   */
  async rewrap(): Promise<{ rewrapped: number; remaining: number }> {
    const scope = this.scope();
    const current = this.current();
    const wrapWith = await this.kek(current.id);
    let rewrapped = 0;
    let after: [string, number] = ["", 0];
    for (;;) {
      const results = await this.keys.notWrappedBy(current.id, after, REWRAP_PAGE);
      const updates: Rewrap[] = [];
      for (const row of results) {
        after = [row.tenant, row.version];
        if (!scope.keys.some((k) => k.id === row.wrapped_by)) continue;
        let key: CryptoKey;
        try {
          // Extractable only for the moment it takes to wrap it again.
          key = await this.unwrap(row, true);
        } catch {
          continue; // Left for `remaining` to report.
        }
        const wrapped = base64Encode(
          new Uint8Array(await crypto.subtle.wrapKey("raw", key, wrapWith, "AES-KW")),
        );
        // Compare-and-set: a concurrent rewrap or a destroy in between wins.
        updates.push({
          tenant: row.tenant,
          version: row.version,
          from: { wrapped: row.wrapped, wrappedBy: row.wrapped_by },
          to: { wrapped, wrappedBy: current.id },
        });
      }
      if (updates.length > 0) rewrapped += await this.keys.rewrap(updates);
      if (results.length < REWRAP_PAGE) break;
    }
    return { rewrapped, remaining: await this.keys.countNotWrappedBy(current.id) };
  }

  /**
   * Crypto-shredding: deletes all of the tenant's key rows, so everything encrypted for it is
   * unreadable from now on (at once on this isolate, within KEY_TTL_MS on others). Returns the
   * number of rows deleted. Needs no deployment key.
   */
  async destroyTenant(tenant: string): Promise<number> {
    const deleted = await this.keys.destroy(tenant);
    forgetTenant(tenant);
    return deleted;
  }

  /** The tenant's key versions with who wrapped them and when, for listings (no key material). */
  async keyInfo(tenant: string): Promise<{ versions: KeyVersionInfo[] }> {
    const results = await this.keys.list(tenant);
    return {
      versions: results.map((r) => ({
        version: r.version,
        wrappedBy: r.wrapped_by,
        createdAt: r.created_at,
      })),
    };
  }

  /** AES-GCM under the newest key: returns the key version and iv || ciphertext+tag. */
  private async seal(
    tenant: string,
    plain: Uint8Array,
    context: string,
  ): Promise<{ version: number; sealed: Uint8Array }> {
    const { version, key } = await this.sealingKey(tenant);
    return { version, sealed: await gcmSeal(key, randomIvs(1), tenant, context, plain) };
  }

  /** The tenant's newest key, which new data is sealed under, with its version. */
  private async sealingKey(tenant: string): Promise<{ version: number; key: CryptoKey }> {
    checkTenant(tenant);
    this.scope();
    const version = await this.newest(tenant);
    try {
      return { version, key: await this.key(tenant, version) };
    } catch (e) {
      // A DecryptError would mislead here: nothing is being decrypted.
      if (!(e instanceof DecryptError)) throw e;
      throw new Error(`cannot encrypt: ${e.message}`, { cause: e });
    }
  }

  private async open(
    tenant: string,
    version: number,
    sealed: Uint8Array,
    context: string,
  ): Promise<Uint8Array> {
    return gcmOpen(await this.openingKey(tenant, version), sealed, tenant, context);
  }

  /** The key that opens data sealed under `version`; any failure to get it is a DecryptError. */
  private async openingKey(tenant: string, version: number): Promise<CryptoKey> {
    try {
      return await this.key(tenant, version);
    } catch (e) {
      if (e instanceof DecryptError || e instanceof KeyringNotConfigured) throw e;
      throw new DecryptError(e instanceof Error ? e.message : String(e), { cause: e });
    }
  }

  /** The tenant's newest version, from the cache or D1; creates version 1 on first use. */
  private async newest(tenant: string): Promise<number> {
    const hit = newestCache.get(this.newestId(tenant));
    if (hit && hit.expires > Date.now()) return hit.version;
    // Coalesced, so a burst of encrypts on a cold tenant makes one lookup.
    const flightKey = `${this.scope().id}\u0000${this.newestId(tenant)}`;
    const flying = newestInFlight.get(flightKey);
    if (flying) return flying.promise;
    const promise = this.loadNewest(tenant).finally(() => {
      if (newestInFlight.get(flightKey)?.promise === promise) newestInFlight.delete(flightKey);
    });
    newestInFlight.set(flightKey, { tenant, promise });
    return promise;
  }

  private async loadNewest(tenant: string): Promise<number> {
    const started = epoch;
    let row = await this.keys.newest(tenant);
    if (!row) {
      const current = this.current();
      const { wrapped } = await this.newTenantKey(current);
      // Another isolate may create version 1 at the same time: one insert wins, both re-read.
      await this.keys.addFirst(tenant, wrapped, current.id, new Date().toISOString());
      row = await this.keys.newest(tenant);
      if (!row) throw new Error(`tenant "${tenant}" has no data key after creating one`);
    }
    if (epoch === started) {
      // The row is in hand: prime the key cache so encrypt needs no second read.
      const ck = this.keyCacheId(tenant, row.version);
      if (!getKey(ck)) putKey(ck, tenant, this.unwrap(row, false));
      putNewest(this.newestId(tenant), tenant, row.version);
    }
    return row.version;
  }

  /**
   * The keyword index's MAC keys for a tenant, one per version of its data key, newest first
   * (versions run 1..newest: rotation adds the next one, nothing removes one but erasure).
   * Each is HMAC-SHA-256 derived from its data key by HKDF, bound to the tenant: terms are
   * hashed under a key that never encrypts, and one tenant's hashes mean nothing for another.
   * Creates version 1 on first use, like `encrypt`.
   */
  async termKeys(tenant: string): Promise<{ version: number; key: CryptoKey }[]> {
    checkTenant(tenant);
    this.scope();
    const newest = await this.newest(tenant);
    const versions = Array.from({ length: newest }, (_, i) => newest - i);
    return Promise.all(
      versions.map(async (version) => ({
        version,
        key: await this.macKey(tenant, version, "terms"),
      })),
    );
  }

  /**
   * The embedding cache's MAC key for a tenant (its newest data key's, derived as the term keys
   * are, for another purpose): cache entries are named by a keyed hash of their text, which means
   * nothing without the key, and nothing at all once the tenant is erased. A rotation starts a
   * new set of names (the old entries are misses, never wrong).
   */
  async embeddingCacheKey(tenant: string): Promise<CryptoKey> {
    checkTenant(tenant);
    this.scope();
    return this.macKey(tenant, await this.newest(tenant), "cache");
  }

  private macKey(tenant: string, version: number, purpose: "terms" | "cache"): Promise<CryptoKey> {
    const ck = `${this.keyCacheId(tenant, version)}\u0000${purpose}`;
    const hit = getKey(ck);
    if (hit) return hit;
    const promise = (async () => {
      const base = await this.unwrap(await this.keyRow(tenant, version), false, "HKDF");
      return crypto.subtle.deriveKey(
        { name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info: aad(tenant, purpose) },
        base,
        { name: "HMAC", hash: "SHA-256", length: 256 },
        false,
        ["sign"],
      );
    })();
    putKey(ck, tenant, promise);
    return promise;
  }

  /** The unwrapped key of one version, cached per isolate. */
  private key(tenant: string, version: number): Promise<CryptoKey> {
    const ck = this.keyCacheId(tenant, version);
    const hit = getKey(ck);
    if (hit) return hit;
    const promise = (async () => this.unwrap(await this.keyRow(tenant, version), false))();
    putKey(ck, tenant, promise);
    return promise;
  }

  private async keyRow(tenant: string, version: number): Promise<KeyRow> {
    const row = await this.keys.get(tenant, version);
    if (!row) throw new DecryptError(`tenant "${tenant}" has no key version ${version}`);
    return row;
  }

  /** Unwraps a tenant key as an AES-GCM key, or as HKDF input for the keys derived from it. */
  private async unwrap(
    row: KeyRow,
    extractable: boolean,
    as: "AES-GCM" | "HKDF" = "AES-GCM",
  ): Promise<CryptoKey> {
    if (!this.scope().keys.some((k) => k.id === row.wrapped_by)) {
      throw new DecryptError(
        `key version ${row.version} of tenant "${row.tenant}" is wrapped by deployment key ` +
          `"${row.wrapped_by}", which P2PA_DATA_KEYS does not hold`,
      );
    }
    const kek = await this.kek(row.wrapped_by);
    try {
      return await crypto.subtle.unwrapKey(
        "raw",
        base64Decode(row.wrapped),
        kek,
        "AES-KW",
        as,
        extractable,
        as === "HKDF" ? ["deriveKey"] : ["encrypt", "decrypt"],
      );
    } catch (e) {
      throw new DecryptError(
        `key version ${row.version} of tenant "${row.tenant}" does not unwrap with deployment ` +
          `key "${row.wrapped_by}" (is it the right key?)`,
        { cause: e },
      );
    }
  }

  /** A random AES-256-GCM key, wrapped by `by`, and a non-extractable copy for the cache. */
  private async newTenantKey(by: DeploymentKey): Promise<{ wrapped: string; key: CryptoKey }> {
    const raw = crypto.getRandomValues(new Uint8Array(KEY_BYTES));
    const usages = ["encrypt", "decrypt"];
    const exportable = await crypto.subtle.importKey("raw", raw, "AES-GCM", true, usages);
    const key = await crypto.subtle.importKey("raw", raw, "AES-GCM", false, usages);
    raw.fill(0);
    const wrapped = await crypto.subtle.wrapKey("raw", exportable, await this.kek(by.id), "AES-KW");
    return { wrapped: base64Encode(new Uint8Array(wrapped)), key };
  }

  private kek(id: string): Promise<CryptoKey> {
    const scope = this.scope();
    let kek = scope.keks.get(id);
    if (!kek) {
      const dk = scope.keys.find((k) => k.id === id);
      if (!dk) throw new Error(`no deployment key "${id}"`);
      kek = crypto.subtle.importKey("raw", dk.raw, "AES-KW", false, ["wrapKey", "unwrapKey"]);
      scope.keks.set(id, kek);
    }
    return kek;
  }

  private current(): DeploymentKey {
    const first = this.scope().keys[0];
    if (!first) throw new KeyringNotConfigured("No deployment key is configured");
    return first;
  }

  private scope(): Scope {
    if (this.scopeCache) return this.scopeCache;
    // A keyring is made per request or task: the secret is parsed once per isolate, not each time.
    const parsed =
      this.deploymentKeys === undefined ? undefined : scopesBySecret.get(this.deploymentKeys);
    if (parsed) {
      this.scopeCache = parsed;
      return parsed;
    }
    let keys: DeploymentKey[];
    try {
      keys = parseDeploymentKeys(this.deploymentKeys);
    } catch (e) {
      throw new KeyringNotConfigured(`P2PA_DATA_KEYS is malformed (${(e as Error).message})`, {
        cause: e,
      });
    }
    if (keys.length === 0) throw new KeyringNotConfigured("No deployment key is configured");
    const canonical = keys.map((k) => `${k.id}:${base64Encode(k.raw)}`).join(",");
    let scope = scopes.get(canonical);
    if (!scope) {
      scope = { id: nextScope++, keys, keks: new Map() };
      scopes.set(canonical, scope);
      evictOldest(scopes, MAX_SCOPES);
    }
    scopesBySecret.set(this.deploymentKeys as string, scope);
    evictOldest(scopesBySecret, MAX_SCOPES);
    this.scopeCache = scope;
    return scope;
  }

  private keyCacheId(tenant: string, version: number): string {
    return `${this.scope().id}\u0000${this.keys.name}\u0000${tenant}\u0000${version}`;
  }

  /** The tenant's entry in the newest-version cache, which is per storage. */
  private newestId(tenant: string): string {
    return `${this.keys.name}\u0000${tenant}`;
  }
}

/** NUL separates tenant from context in the AAD, so it may not appear in a tenant. */
function checkTenant(tenant: string): void {
  if (tenant === "" || tenant.includes("\u0000")) throw new Error("invalid tenant id");
}

function aad(tenant: string, context: string): Uint8Array {
  return utf8.encode(`${tenant}\u0000${context}`);
}

const UTF8 = new TextDecoder();

/** A text ciphertext's key version and sealed bytes (iv || ciphertext+tag); DecryptError if it is none. */
function parseText(ciphertext: string): { version: number; sealed: Uint8Array } {
  const m = isCiphertext(ciphertext) ? TEXT_RE.exec(ciphertext) : null;
  if (!m) throw new DecryptError("not a keyring ciphertext");
  try {
    return { version: Number(m[1]), sealed: base64Decode(m[2] ?? "") };
  } catch (e) {
    throw new DecryptError("not a keyring ciphertext", { cause: e });
  }
}

/** Opens `gcmSeal`'s output under `key`, bound to tenant and context; DecryptError if it does not authenticate. */
async function gcmOpen(
  key: CryptoKey,
  sealed: Uint8Array,
  tenant: string,
  context: string,
): Promise<Uint8Array> {
  if (sealed.length < IV_BYTES + TAG_BYTES) throw new DecryptError("ciphertext is truncated");
  try {
    const plain = await crypto.subtle.decrypt(
      { name: "AES-GCM", iv: sealed.subarray(0, IV_BYTES), additionalData: aad(tenant, context) },
      key,
      sealed.subarray(IV_BYTES),
    );
    return new Uint8Array(plain);
  } catch (e) {
    throw new DecryptError(
      "ciphertext does not authenticate: tampered, or for another tenant or context",
      { cause: e },
    );
  }
}

/** `n` random IVs, end to end (getRandomValues gives at most 65,536 bytes a call). */
function randomIvs(n: number): Uint8Array {
  const out = new Uint8Array(n * IV_BYTES);
  for (let at = 0; at < out.length; at += 65_536)
    crypto.getRandomValues(out.subarray(at, Math.min(out.length, at + 65_536)));
  return out;
}

/** AES-GCM of `plain` under `key`, bound to tenant and context: iv || ciphertext+tag. */
async function gcmSeal(
  key: CryptoKey,
  iv: Uint8Array,
  tenant: string,
  context: string,
  plain: Uint8Array,
): Promise<Uint8Array> {
  const ct = await crypto.subtle.encrypt(
    { name: "AES-GCM", iv, additionalData: aad(tenant, context) },
    key,
    plain,
  );
  const sealed = new Uint8Array(IV_BYTES + ct.byteLength);
  sealed.set(iv, 0);
  sealed.set(new Uint8Array(ct), IV_BYTES);
  return sealed;
}

function getKey(ck: string): Promise<CryptoKey> | undefined {
  const hit = keyCache.get(ck);
  if (!hit) return undefined;
  if (hit.expires <= Date.now()) {
    keyCache.delete(ck);
    return undefined;
  }
  // Re-insert: Map order then approximates least-recently-used for eviction.
  keyCache.delete(ck);
  keyCache.set(ck, hit);
  return hit.key;
}

function putKey(ck: string, tenant: string, key: Promise<CryptoKey>): void {
  const entry: CachedKey = { tenant, key, expires: Date.now() + KEY_TTL_MS };
  keyCache.delete(ck);
  keyCache.set(ck, entry);
  evictOldest(keyCache, MAX_KEYS);
  // A failed unwrap is not cached: the next call asks again.
  key.catch(() => {
    if (keyCache.get(ck) === entry) keyCache.delete(ck);
  });
}

function putNewest(id: string, tenant: string, version: number): void {
  newestCache.delete(id);
  newestCache.set(id, { tenant, version, expires: Date.now() + NEWEST_TTL_MS });
  evictOldest(newestCache, MAX_NEWEST);
}

/** Drops everything cached for a tenant (all scopes), and stops in-flight lookups caching. */
function forgetTenant(tenant: string): void {
  epoch++;
  for (const [k, v] of newestCache) if (v.tenant === tenant) newestCache.delete(k);
  for (const [k, v] of keyCache) if (v.tenant === tenant) keyCache.delete(k);
  for (const [k, v] of newestInFlight) if (v.tenant === tenant) newestInFlight.delete(k);
}

function evictOldest<K, V>(map: Map<K, V>, max: number): void {
  while (map.size > max) {
    const oldest = map.keys().next();
    if (oldest.done) return;
    map.delete(oldest.value);
  }
}

function base64Encode(bytes: Uint8Array): string {
  return bytesToBase64(bytes);
}

function base64UrlEncode(bytes: Uint8Array): string {
  return bytesToBase64(bytes, { url: true });
}

/** Decodes standard or URL-safe base64, padded or not; throws on anything else. */
function base64Decode(s: string): Uint8Array {
  const out = base64ToBytes(s);
  if (!out) throw new Error("invalid base64");
  return out;
}
