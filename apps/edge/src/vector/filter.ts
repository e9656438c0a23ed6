/**
 * Vectorize metadata filters compiled to SQLite, so the filter runs inside the database
 * (through the expression indexes that stand in for Vectorize metadata indexes) and a filtered
 * query never hands other jobs' vectors to the scoring loop.
 */

/** A value SQLite can bind. */
export type SqlValue = string | number | null;

/** A WHERE fragment with its bound values, in order. */
export interface SqlCondition {
  sql: string;
  params: SqlValue[];
}

/** The metadata column the expressions read; one JSON object per vector. */
const COLUMN = "metadata";
/** Vectorize's limits on a filter: compact JSON size and key length. */
const MAX_FILTER_BYTES = 2048;
const MAX_KEY_CHARS = 512;

const COMPARE: Record<string, string> = {
  $eq: "=",
  $ne: "!=",
  $lt: "<",
  $lte: "<=",
  $gt: ">",
  $gte: ">=",
};

/**
 * The SQL expression that reads metadata key `key` (dots nest). It is spliced in as a literal,
 * never bound, because SQLite only uses an expression index when the query repeats the
 * indexed expression verbatim.
 */
export function metadataExpression(key: string): string {
  return `json_extract(${COLUMN}, ${pathLiteral(key)})`;
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
 * Compiles a Vectorize filter to one AND-ed SQL condition. `indexed` holds the keys that have a
 * metadata index: Vectorize cannot filter on any other key (such vectors silently never match
 * there), so the local index refuses the filter instead of answering differently.
 */
export function compileFilter(
  filter: VectorizeVectorMetadataFilter,
  indexed: readonly string[],
): SqlCondition {
  const entries = Object.entries(filter);
  if (entries.length === 0) throw new Error("filter must not be empty");
  if (new TextEncoder().encode(JSON.stringify(filter)).byteLength >= MAX_FILTER_BYTES)
    throw new Error(`filter must be under ${MAX_FILTER_BYTES} bytes as compact JSON`);
  const parts: string[] = [];
  const params: SqlValue[] = [];
  for (const [key, cond] of entries) {
    checkKey(key);
    if (!indexed.includes(key))
      throw new Error(`cannot filter on "${key}": it has no metadata index`);
    if (cond === null || typeof cond !== "object") {
      addCompare(parts, params, key, "$eq", cond);
      continue;
    }
    const ops = Object.entries(cond);
    if (ops.length === 0) throw new Error(`filter on "${key}" has no operator`);
    for (const [op, value] of ops) {
      if (op === "$in" || op === "$nin") addMembership(parts, params, key, op, value);
      else if (op in COMPARE) addCompare(parts, params, key, op, value);
      else throw new Error(`unsupported filter operator ${op} on "${key}"`);
    }
  }
  return { sql: parts.join(" AND "), params };
}

function addCompare(
  parts: string[],
  params: SqlValue[],
  key: string,
  op: string,
  value: unknown,
): void {
  const expr = metadataExpression(key);
  if (value === null) {
    // A missing key and an explicit JSON null both read as SQL NULL.
    if (op === "$eq") parts.push(`${expr} IS NULL`);
    else if (op === "$ne") parts.push(`${expr} IS NOT NULL`);
    else throw new Error(`${op} needs a string, number or boolean`);
    return;
  }
  if (typeof value === "boolean") {
    if (op !== "$eq" && op !== "$ne") throw new Error(`${op} cannot compare booleans`);
    // json_extract turns true into 1: check the JSON type so a boolean never equals a number.
    const type = `json_type(${COLUMN}, ${pathLiteral(key)})`;
    const test = `${type} = '${value ? "true" : "false"}'`;
    parts.push(op === "$eq" ? test : `(${type} IS NULL OR NOT ${test})`);
    return;
  }
  if (typeof value !== "string" && typeof value !== "number")
    throw new Error(`${op} needs a string, number, boolean or null`);
  // A key the vector lacks counts as "not equal", like a NULL-safe comparison.
  if (op === "$ne") parts.push(`${expr} IS NOT ?`);
  else parts.push(`${expr} ${COMPARE[op]} ?`);
  params.push(value);
}

function addMembership(
  parts: string[],
  params: SqlValue[],
  key: string,
  op: "$in" | "$nin",
  values: unknown,
): void {
  const expr = metadataExpression(key);
  if (!Array.isArray(values)) throw new Error(`${op} needs an array`);
  for (const v of values) {
    if (typeof v !== "string" && typeof v !== "number" && typeof v !== "boolean")
      throw new Error(`${op} values must be strings, numbers or booleans`);
  }
  // One bound JSON array, not one parameter per value: Durable Object SQLite allows only 100
  // bound parameters per statement.
  const set = `(SELECT value FROM json_each(?))`;
  parts.push(op === "$in" ? `${expr} IN ${set}` : `(${expr} IS NULL OR ${expr} NOT IN ${set})`);
  params.push(JSON.stringify(values));
}
