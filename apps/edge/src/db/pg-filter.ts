import { type SQL, sql } from "drizzle-orm";
import { compileFilter } from "../vector/filter.js";
import { FILTER_METADATA, type KeywordFilter } from "./store.js";

/**
 * The keyword index's metadata filter on Postgres, with the meaning vector/filter.ts gives it on
 * SQLite (its module comment is the specification): `metadata` is a jsonb expression, and a
 * key's value is read with `->` one segment at a time, which, like SQLite's `json_extract`,
 * descends into objects only (a text key on an array or a scalar reads NULL). jsonb equality
 * is typed as the filter semantics are: a string never equals a number or a boolean, numbers
 * compare by value (1 = 1.0), and an array or object equals no scalar.
 *
 * The filter is first compiled for SQLite, which validates it: an invalid filter fails here
 * with the same message as on D1.
 */
export function pgKeywordFilter(f: KeywordFilter, metadata: SQL): SQL {
  compileFilter(f.metadata, f.keys, FILTER_METADATA);
  const parts: SQL[] = [];
  for (const [key, cond] of Object.entries(f.metadata)) {
    const v = valueAt(metadata, key);
    if (cond === null || typeof cond !== "object") {
      parts.push(equals(v, cond));
      continue;
    }
    for (const [op, value] of Object.entries(cond as Record<string, unknown>)) {
      switch (op) {
        case "$eq":
          parts.push(equals(v, value));
          break;
        case "$ne":
          parts.push(sql`NOT coalesce(${equals(v, value)}, false)`);
          break;
        case "$in":
          parts.push(sql`coalesce(${member(v, value as unknown[])}, false)`);
          break;
        case "$nin":
          parts.push(sql`NOT coalesce(${member(v, value as unknown[])}, false)`);
          break;
        case "$lt":
        case "$lte":
        case "$gt":
        case "$gte":
          parts.push(range(v, op, value as string | number));
          break;
        default:
          throw new Error(`unsupported filter operator ${op} on "${key}"`);
      }
    }
  }
  return sql.join(
    parts.map((p) => sql`(${p})`),
    sql` AND `,
  );
}

/** The value at `key` (dots descend into objects), or NULL when there is none. */
function valueAt(metadata: SQL, key: string): SQL {
  return sql.join(
    [sql`(${metadata})`, ...key.split(".").map((seg) => sql`${seg}::text`)],
    sql` -> `,
  );
}

/** `v` equals `value` by type and value; `null` matches a missing key and a JSON null. */
function equals(v: SQL, value: unknown): SQL {
  if (value === null) return sql`(${v} IS NULL OR ${v} = 'null'::jsonb)`;
  return sql`(${v} IS NOT NULL AND ${v} = ${JSON.stringify(value)}::jsonb)`;
}

/** `v` is one of `values` (each by type and value). */
function member(v: SQL, values: unknown[]): SQL {
  return sql`(${v} IS NOT NULL AND ${v} IN (SELECT jsonb_array_elements(${JSON.stringify(values)}::jsonb)))`;
}

const RANGE = { $lt: "<", $lte: "<=", $gt: ">", $gte: ">=" } as const;

/**
 * Numbers with numbers, strings with strings in code point order (collation "C" compares UTF-8
 * bytes, which is code point order); another type or a missing key never matches. The CASE
 * keeps the cast from being tried on a value of another type.
 */
function range(v: SQL, op: keyof typeof RANGE, value: string | number): SQL {
  const cmp = sql.raw(RANGE[op]);
  if (typeof value === "number")
    return sql`CASE WHEN jsonb_typeof(${v}) = 'number' THEN (${v})::numeric ${cmp} ${String(value)}::numeric ELSE false END`;
  return sql`CASE WHEN jsonb_typeof(${v}) = 'string' THEN ((${v}) #>> '{}') COLLATE "C" ${cmp} ${value}::text COLLATE "C" ELSE false END`;
}
