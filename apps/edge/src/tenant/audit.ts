/**
 * A tenant's audit log as a hash chain: the pure parts (canonical JSON, entry hashes, the
 * verifier, list cursors). Nothing here needs workerd or Node: it uses only Web Crypto, so a client-side CLI can verify an export it downloaded through
 * the API with exactly the code the ledger uses.
 *
 * Hash definition: `hash = hex(SHA-256(UTF-8(canonicalJson(entry without "hash"))))`, where the
 * entry has every field of `AuditEntry` (absent values as `null`, `details` as `{}`), and
 * `prevHash` is the previous entry's `hash`, or `GENESIS_HASH` for seq 1.
 */

import { sha256Hex } from "../lib/crypto.js";

/**
 * What `details` hold once stored: a JSON object, typed one level deep. (Not
 * `Record<string, unknown>`, which it is assignable to, because RPC typings turn `unknown`
 * into `never`; nor a recursive JSON type, which they cannot instantiate.)
 */
export type JsonObject = Record<string, string | number | boolean | null | object>;

/** One audit log entry, as stored and as the API returns it. */
export interface AuditEntry {
  /** 1, 2, 3, ... with no gaps, per tenant. */
  seq: number;
  /** ISO 8601 time the entry was appended. */
  at: string;
  tenant: string;
  /** The key id that acted, or "system". */
  actor: string;
  /** What happened, dotted: "job.created", "key.revoked". */
  action: string;
  target: string | null;
  ip: string | null;
  userAgent: string | null;
  details: JsonObject;
  /** The previous entry's `hash`; `GENESIS_HASH` for seq 1. */
  prevHash: string;
  /** Hex SHA-256 of `canonicalJson` of this entry without `hash`. */
  hash: string;
}

/** The end of a chain: the last entry's seq and hash; `{ seq: 0, hash: GENESIS_HASH }` when empty. */
export interface AuditHead {
  seq: number;
  hash: string;
}

/** What `verifyChain` found. */
export interface VerifyResult {
  ok: boolean;
  /** How many entries there were (checked up to the first bad one). */
  entries: number;
  /** The head checked against: the one given, else the last entry that verified. */
  head: AuditHead;
  /** The first seq that is wrong (or missing); absent when ok. */
  firstBadSeq?: number;
  /** What is wrong there, for a person; absent when ok. */
  problem?: string;
}

/** `prevHash` of the first entry: 64 zeros. */
export const GENESIS_HASH = "0".repeat(64);

/** The head of an empty log. */
export const EMPTY_HEAD: AuditHead = Object.freeze({ seq: 0, hash: GENESIS_HASH });

/**
 * JSON with object keys sorted recursively (by UTF-16 code units, as RFC 8785 does) and no
 * whitespace. Otherwise it follows `JSON.stringify`: `toJSON` is honoured, `undefined` and
 * functions are left out of objects and become `null` in arrays, non-finite numbers become
 * `null`. Throws on BigInt and on cycles, as `JSON.stringify` does.
 */
export function canonicalJson(value: unknown): string {
  return encode(value, new Set()) ?? "null";
}

function encode(value: unknown, seen: Set<object>): string | undefined {
  if (
    value !== null &&
    typeof value === "object" &&
    typeof (value as { toJSON?: unknown }).toJSON === "function"
  )
    value = (value as { toJSON: () => unknown }).toJSON();
  if (value === null || typeof value !== "object") return JSON.stringify(value);
  if (seen.has(value)) throw new TypeError("canonicalJson: cyclic structure");
  seen.add(value);
  let out: string;
  if (Array.isArray(value)) {
    out = `[${value.map((v) => encode(v, seen) ?? "null").join(",")}]`;
  } else {
    const rec = value as Record<string, unknown>;
    const parts: string[] = [];
    // Default sort compares UTF-16 code units, the order RFC 8785 prescribes.
    for (const key of Object.keys(rec).sort()) {
      const v = encode(rec[key], seen);
      if (v !== undefined) parts.push(`${JSON.stringify(key)}:${v}`);
    }
    out = `{${parts.join(",")}}`;
  }
  seen.delete(value);
  return out;
}

/**
 * The hash an entry must carry: of every field but `hash`, listed explicitly so that an extra
 * field a client or a proxy adds to a downloaded entry does not change the result.
 */
export function entryHash(e: Omit<AuditEntry, "hash">): Promise<string> {
  return sha256Hex(
    canonicalJson({
      seq: e.seq,
      at: e.at,
      tenant: e.tenant,
      actor: e.actor,
      action: e.action,
      target: e.target,
      ip: e.ip,
      userAgent: e.userAgent,
      details: e.details,
      prevHash: e.prevHash,
    }),
  );
}

/**
 * Checks a chain one entry at a time, so the ledger can verify a long log page by page
 * without holding all of it. Feed entries in ascending seq order with `add`; once an entry is
 * wrong, later ones are ignored. `finish` compares the end with a head, when given.
 */
export class ChainVerifier {
  private count = 0;
  private last: AuditHead = EMPTY_HEAD;
  private tenant: string | null = null;
  private bad: { seq: number; problem: string } | null = null;

  /** Checks the next entry (every one handed over is counted); false once the chain is broken. */
  async add(e: AuditEntry): Promise<boolean> {
    this.count++;
    if (this.bad) return false;
    const expected = this.last.seq + 1;
    // A gap means entries were removed: the first missing seq is the bad one.
    if (e.seq !== expected) return this.fail(expected, `expected seq ${expected}, found ${e.seq}`);
    this.tenant ??= e.tenant;
    if (e.tenant !== this.tenant)
      return this.fail(e.seq, `tenant ${JSON.stringify(e.tenant)} differs from the chain's`);
    if (e.prevHash !== this.last.hash)
      return this.fail(e.seq, "prevHash does not match the previous entry's hash");
    let hash: string;
    try {
      hash = await entryHash(e);
    } catch {
      return this.fail(e.seq, "entry cannot be hashed");
    }
    if (hash !== e.hash) return this.fail(e.seq, "hash does not match the entry's content");
    this.last = { seq: e.seq, hash: e.hash };
    return true;
  }

  /** The result; with `head`, the chain must end exactly there (catches a truncated tail). */
  finish(head?: AuditHead): VerifyResult {
    const at = head ? { seq: head.seq, hash: head.hash } : { ...this.last };
    if (this.bad)
      return {
        ok: false,
        entries: this.count,
        head: at,
        firstBadSeq: this.bad.seq,
        problem: this.bad.problem,
      };
    if (head && (head.seq !== this.last.seq || head.hash !== this.last.hash)) {
      const firstBadSeq = head.seq > this.last.seq ? this.last.seq + 1 : head.seq;
      const problem =
        head.seq > this.last.seq
          ? `head is at seq ${head.seq} but the entries end at ${this.last.seq}`
          : head.seq < this.last.seq
            ? `entries go past the head (seq ${head.seq}) to ${this.last.seq}`
            : "head hash does not match the last entry";
      return { ok: false, entries: this.count, head: at, firstBadSeq, problem };
    }
    return { ok: true, entries: this.count, head: at };
  }

  private fail(seq: number, problem: string): false {
    this.bad = { seq, problem };
    return false;
  }
}

/**
 * Verifies a whole chain: entries in ascending seq order from 1, each hash recomputed, each
 * `prevHash` linked to the entry before, and, when `head` is given, the last entry equal to
 * it. A CLI passes what it downloaded and the head the API reported (or one it kept earlier).
 */
export async function verifyChain(entries: AuditEntry[], head?: AuditHead): Promise<VerifyResult> {
  const v = new ChainVerifier();
  for (const e of entries) await v.add(e);
  return v.finish(head);
}

const CURSOR_PREFIX = "seq:";

/** The opaque list cursor for a seq. */
export function encodeCursor(seq: number): string {
  return btoa(`${CURSOR_PREFIX}${seq}`).replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
}

/** The seq in a cursor from `encodeCursor`, or null when it is not one. */
export function decodeCursor(cursor: string): number | null {
  let text: string;
  try {
    text = atob(cursor.replace(/-/g, "+").replace(/_/g, "/"));
  } catch {
    return null;
  }
  if (!text.startsWith(CURSOR_PREFIX)) return null;
  const digits = text.slice(CURSOR_PREFIX.length);
  if (!/^\d{1,15}$/.test(digits)) return null;
  return Number(digits);
}
