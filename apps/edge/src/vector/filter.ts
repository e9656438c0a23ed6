/**
 * Vectorize metadata filters, validated once and compiled two ways with the same meaning:
 * - `compileFilter`: to a SQLite condition, so the filter runs inside a database through the
 *   expression indexes that stand in for Vectorize metadata indexes (the local index's Durable
 *   Object SQLite, or D1 with another JSON column);
 * - `compileTests` / `compileMatcher`: to JS predicates over values already in memory (the
 *   local index's in-memory form, see memory.ts);
 * - and, in postgres-filter.ts, from the same validated clauses (`parseFilter`) to a Postgres
 *   condition over a jsonb column (the pgvector index, and the keyword index on Postgres).
 *
 * Semantics, strictly typed in all (tests/vector/filter-semantics.test.ts checks they agree):
 * - a key is read like SQLite's `json_extract(metadata, '$."a"."b"')`: dots descend into
 *   objects only (never into arrays or strings); a key the vector lacks and an explicit JSON
 *   null are the same "missing" value;
 * - only scalars are indexed: a string never equals or compares with a number or a boolean,
 *   and a value that is an array or an object never matches `$eq`, `$in` or a range (and so
 *   always matches `$ne` and `$nin`, like any value that is not the one asked for);
 * - `$eq`/`$ne`/`$in`/`$nin` compare strings, numbers and booleans by type and value;
 *   `$eq: null` matches a missing key, `$ne: null` a present non-null value; `$ne` and `$nin`
 *   match a missing key;
 * - `$lt`/`$lte`/`$gt`/`$gte` compare numbers with numbers and strings with strings, the
 *   latter in Unicode code point order (what SQLite's BINARY collation does to UTF-8); they
 *   never match a missing key or a value of another type; booleans and null cannot be ranged.
 *
 * Long strings: Vectorize indexes only the first 64 bytes of a string value, so to its filters
 * two values that share their first 64 bytes are equal. Here strings compare whole, in every
 * compiler, because a truncated comparison cannot use a SQLite expression index on the
 * json_extract expression and, cut on character boundaries, is not even order-preserving (so
 * ranges could not be served by an index either). The two can only disagree on strings longer
 * than about 60 bytes; the product's indexed keys (tenant, job and document ids) are shorter.
 */

import type { KeyTest } from "./memory.js";

export type { KeyTest };

/** A value SQLite can bind. */
export type SqlValue = string | number | null;

/** A WHERE fragment with its bound values, in order. */
export interface SqlCondition {
  sql: string;
  params: SqlValue[];
}

/** The metadata column the local index stores; one JSON object per vector. */
const COLUMN = "metadata";
/** Vectorize's limits on a filter: compact JSON size and key length. */
const MAX_FILTER_BYTES = 2048;
const MAX_KEY_CHARS = 512;

export type Scalar = string | number | boolean;
export type RangeOp = "$lt" | "$lte" | "$gt" | "$gte";

/** A filter reduced to its conditions, all validated. */
export type Clause =
  | { key: string; op: "$eq" | "$ne"; value: Scalar | null }
  | { key: string; op: RangeOp; value: string | number }
  | { key: string; op: "$in" | "$nin"; values: Scalar[] };

const RANGE_SQL: Record<RangeOp, string> = { $lt: "<", $lte: "<=", $gt: ">", $gte: ">=" };
const NUMBER_TYPES = "('integer', 'real')";

/**
 * The SQL expression that reads metadata key `key` (dots nest) from the JSON column `column`.
 * It is spliced in as a literal, never bound, because SQLite only uses an expression index
 * when the query repeats the indexed expression verbatim.
 */
function metadataExpression(key: string, column = COLUMN): string {
  return `json_extract(${column}, ${pathLiteral(key)})`;
}

/** The JSON type of the value at `key` ('text', 'integer', 'real', 'true', …; NULL if absent). */
function typeExpression(key: string, column: string): string {
  return `json_type(${column}, ${pathLiteral(key)})`;
}

/** The JSON path of `key` as a quoted SQL literal: `a.b` reads `{"a":{"b":…}}`. */
function pathLiteral(key: string): string {
  checkKey(key);
  const path = `$${key
    .split(".")
    .map((seg) => `."${seg}"`)
    .join("")}`;
  return `'${path.replaceAll("'", "''")}'`;
}

/**
 * Checks a filter key against Vectorize's rules (non-empty segments, no `"`, no leading `$`,
 * at most 512 characters) so that a key accepted here is accepted in production too.
 */
export function checkKey(key: string): void {
  if (key.length === 0 || key.length > MAX_KEY_CHARS)
    throw new Error(`metadata key must be 1 to ${MAX_KEY_CHARS} characters: "${key}"`);
  if (key.startsWith("$") || key.includes('"') || key.split(".").some((s) => s === ""))
    throw new Error(`invalid metadata key "${key}": no '"', no leading '$', no empty segment`);
}

/**
 * Validates a filter and lists its conditions. `indexed` holds the keys that have a metadata
 * index: Vectorize cannot filter on any other key (such vectors silently never match there),
 * so the local index refuses the filter instead of answering differently. Every compiler starts
 * here, so all of them accept and refuse the same filters with the same messages.
 */
export function parseFilter(
  filter: VectorizeVectorMetadataFilter,
  indexed: readonly string[],
): Clause[] {
  const entries = Object.entries(filter);
  if (entries.length === 0) throw new Error("filter must not be empty");
  if (new TextEncoder().encode(JSON.stringify(filter)).byteLength >= MAX_FILTER_BYTES)
    throw new Error(`filter must be under ${MAX_FILTER_BYTES} bytes as compact JSON`);
  const clauses: Clause[] = [];
  for (const [key, cond] of entries) {
    checkKey(key);
    if (!indexed.includes(key))
      throw new Error(`cannot filter on "${key}": it has no metadata index`);
    if (cond === null || typeof cond !== "object") {
      clauses.push(compareClause(key, "$eq", cond));
      continue;
    }
    const ops = Object.entries(cond);
    if (ops.length === 0) throw new Error(`filter on "${key}" has no operator`);
    for (const [op, value] of ops) {
      if (op === "$in" || op === "$nin") clauses.push(membershipClause(key, op, value));
      else if (op === "$eq" || op === "$ne" || op in RANGE_SQL)
        clauses.push(compareClause(key, op as "$eq" | "$ne" | RangeOp, value));
      else throw new Error(`unsupported filter operator ${op} on "${key}"`);
    }
  }
  return clauses;
}

function compareClause(key: string, op: "$eq" | "$ne" | RangeOp, value: unknown): Clause {
  if (value === null) {
    if (op === "$eq" || op === "$ne") return { key, op, value };
    throw new Error(`${op} needs a string, number or boolean`);
  }
  if (typeof value === "boolean") {
    if (op !== "$eq" && op !== "$ne") throw new Error(`${op} cannot compare booleans`);
    return { key, op, value };
  }
  if (typeof value !== "string" && typeof value !== "number")
    throw new Error(`${op} needs a string, number, boolean or null`);
  checkNumber(op, value);
  if (op === "$eq" || op === "$ne") return { key, op, value };
  return { key, op, value };
}

function membershipClause(key: string, op: "$in" | "$nin", values: unknown): Clause {
  if (!Array.isArray(values)) throw new Error(`${op} needs an array`);
  for (const v of values) {
    if (typeof v !== "string" && typeof v !== "number" && typeof v !== "boolean")
      throw new Error(`${op} values must be strings, numbers or booleans`);
    checkNumber(op, v);
  }
  return { key, op, values: values as Scalar[] };
}

/** NaN and ±Infinity have no JSON form and bind to SQLite as NULL, so they mean nothing. */
function checkNumber(op: string, value: Scalar): void {
  if (typeof value === "number" && !Number.isFinite(value))
    throw new Error(`${op} needs a finite number, got ${value}`);
}

/**
 * Compiles a Vectorize filter to one AND-ed SQL condition over the JSON column `column`
 * ("metadata", the local index's, by default). Every comparison keeps the `json_extract`
 * expression verbatim (see metadataExpression) and adds a `json_type` check, because
 * `json_extract` alone loses the JSON type: true reads as 1, and an array or object reads as
 * its JSON text, which would equal a string.
 */
export function compileFilter(
  filter: VectorizeVectorMetadataFilter,
  indexed: readonly string[],
  column = COLUMN,
): SqlCondition {
  const parts: string[] = [];
  const params: SqlValue[] = [];
  for (const clause of parseFilter(filter, indexed)) {
    const e = metadataExpression(clause.key, column);
    const t = typeExpression(clause.key, column);
    switch (clause.op) {
      case "$eq":
      case "$ne": {
        const { value } = clause;
        // A missing key and a JSON null both read as SQL NULL.
        if (value === null) {
          parts.push(clause.op === "$eq" ? `${e} IS NULL` : `${e} IS NOT NULL`);
          break;
        }
        // `e = …` first, so the expression index narrows the rows before the type check. A
        // boolean is compared as the 1 or 0 json_extract reads it as, then told apart from
        // the number by its JSON type.
        let literal = "?";
        let typeIs: string;
        let typeIsNot: string;
        if (typeof value === "boolean") {
          literal = value ? "1" : "0";
          typeIs = `${t} = '${value}'`;
          typeIsNot = `${t} != '${value}'`;
        } else if (typeof value === "string") {
          params.push(value);
          typeIs = `${t} = 'text'`;
          typeIsNot = `${t} != 'text'`;
        } else {
          params.push(value);
          typeIs = `${t} IN ${NUMBER_TYPES}`;
          typeIsNot = `${t} NOT IN ${NUMBER_TYPES}`;
        }
        // $ne: a missing key (`e IS NOT …` holds for NULL), another value or another type.
        parts.push(
          clause.op === "$eq"
            ? `(${e} = ${literal} AND ${typeIs})`
            : `(${e} IS NOT ${literal} OR ${typeIsNot})`,
        );
        break;
      }
      case "$lt":
      case "$lte":
      case "$gt":
      case "$gte": {
        // SQLite orders every number before every string, so the type check is what keeps a
        // number out of a string range (and the reverse).
        const type = typeof clause.value === "string" ? `${t} = 'text'` : `${t} IN ${NUMBER_TYPES}`;
        parts.push(`(${e} ${RANGE_SQL[clause.op]} ? AND ${type})`);
        params.push(clause.value);
        break;
      }
      case "$in":
      case "$nin": {
        const member = membershipSql(e, t, clause.values, params);
        parts.push(clause.op === "$in" ? member : `(${e} IS NULL OR NOT ${member})`);
        break;
      }
    }
  }
  return { sql: parts.join(" AND "), params };
}

/**
 * Whether the value at `e` is one of `values`, by type: strings and numbers go in separate
 * bound JSON arrays (one parameter each, not one per value: Durable Object SQLite allows only
 * 100 bound parameters per statement) so each is matched only against values of its own type;
 * booleans are matched by JSON type alone.
 */
function membershipSql(e: string, t: string, values: Scalar[], params: SqlValue[]): string {
  const strings = values.filter((v) => typeof v === "string");
  const numbers = values.filter((v) => typeof v === "number");
  const booleans = [...new Set(values.filter((v) => typeof v === "boolean"))];
  const any: string[] = [];
  if (strings.length > 0) {
    any.push(`(${e} IN (SELECT value FROM json_each(?)) AND ${t} = 'text')`);
    params.push(JSON.stringify(strings));
  }
  if (numbers.length > 0) {
    any.push(`(${e} IN (SELECT value FROM json_each(?)) AND ${t} IN ${NUMBER_TYPES})`);
    params.push(JSON.stringify(numbers));
  }
  if (booleans.length > 0) any.push(`${t} IN (${booleans.map((b) => `'${b}'`).join(", ")})`);
  // An empty list matches nothing (so its $nin matches everything).
  return any.length === 0 ? "(0)" : `(${any.join(" OR ")})`;
}

/** What a non-scalar value (array or object) reads as: it matches only $ne and $nin. */
const NOT_INDEXED: unique symbol = Symbol("not indexed");

/**
 * The value of metadata key `key` as a filter sees it, read the way `json_extract` does:
 * undefined when missing, null, a string, number or boolean, or NOT_INDEXED for an array or an
 * object. `metadata` is the parsed JSON as stored (JSON.parse of the column), so that what was
 * lost in JSON.stringify (undefined, NaN) is lost here too.
 */
export function indexedValue(metadata: unknown, key: string): unknown {
  let value = metadata;
  for (const seg of key.split(".")) {
    // Own keys of plain objects only: "a.0" must not index an array, nor "a.length" a string,
    // nor "a.constructor" reach Object.prototype, as none of them does in SQLite.
    if (typeof value !== "object" || value === null || Array.isArray(value)) return undefined;
    if (!Object.hasOwn(value, seg)) return undefined;
    value = (value as Record<string, unknown>)[seg];
  }
  if (value === undefined || value === null) return value;
  const type = typeof value;
  return type === "string" || type === "number" || type === "boolean" ? value : NOT_INDEXED;
}

/**
 * Compiles a Vectorize filter to JS tests, one per condition, all of which must hold for a
 * value read with `indexedValue`. Validation and errors are compileFilter's.
 */
export function compileTests(
  filter: VectorizeVectorMetadataFilter,
  indexed: readonly string[],
): KeyTest[] {
  return parseFilter(filter, indexed).map((clause): KeyTest => {
    const { key } = clause;
    switch (clause.op) {
      case "$eq":
      case "$ne": {
        const { value } = clause;
        const eq =
          value === null
            ? (v: unknown) => v === null || v === undefined
            : // Strict equality is already typed: "5" !== 5, true !== 1.
              (v: unknown) => v === value;
        return { key, test: clause.op === "$eq" ? eq : (v) => !eq(v) };
      }
      case "$in":
      case "$nin": {
        // SameValueZero, like ===, for every scalar JSON can hold.
        const set = new Set<unknown>(clause.values);
        return clause.op === "$in"
          ? { key, test: (v) => set.has(v) }
          : { key, test: (v) => !set.has(v) };
      }
      default: {
        const { op, value } = clause;
        const inRange = (c: number) =>
          op === "$lt" ? c < 0 : op === "$lte" ? c <= 0 : op === "$gt" ? c > 0 : c >= 0;
        if (typeof value === "number")
          return { key, test: (v) => typeof v === "number" && inRange(v - value) };
        return {
          key,
          test: (v) => typeof v === "string" && inRange(compareCodePoints(v, value)),
        };
      }
    }
  });
}

/**
 * Compiles a Vectorize filter to a predicate over one vector's metadata: `get(key)` returns the
 * value of an indexed key as `indexedValue` reads it.
 */
export function compileMatcher(
  filter: VectorizeVectorMetadataFilter,
  indexed: readonly string[],
): (get: (key: string) => unknown) => boolean {
  const tests = compileTests(filter, indexed);
  return (get) => tests.every(({ key, test }) => test(get(key)));
}

/**
 * Compares two strings in code point order, as SQLite compares UTF-8 with BINARY collation.
 * JS's `<` compares UTF-16 code units, which puts a character above U+FFFF (a surrogate pair,
 * units D800–DFFF) before one in U+E000–U+FFFF; shifting units at the first difference fixes
 * that.
 */
export function compareCodePoints(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x === y) continue;
    if (x >= 0xd800 && y >= 0xd800) {
      x += x >= 0xe000 ? -0x800 : 0x2000;
      y += y >= 0xe000 ? -0x800 : 0x2000;
    }
    return x - y;
  }
  return a.length - b.length;
}
