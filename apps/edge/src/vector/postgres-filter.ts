/**
 * Vectorize metadata filters compiled to a Postgres condition over a jsonb column, with the
 * meaning filter.ts documents for its SQLite and JS forms (validation is filter.ts's
 * `parseFilter`, so all three accept and refuse the same filters with the same messages).
 *
 * A key is read as `(metadata -> 'a' -> 'b')`: `->` with a text operand descends into objects
 * only (on an array, a string or a number it gives SQL NULL), as `json_extract` with
 * `$."a"."b"` does. That expression is spliced in verbatim, never bound, because Postgres uses
 * an expression index only when the query repeats the indexed expression (pgvector.ts creates
 * one per metadata index).
 *
 * Typing comes from jsonb itself: `=` between jsonb values is equal only for the same JSON type
 * and value ('"5"' is not '5', 'true' is not '1', an array is not its text), and numbers compare
 * as exact decimals. A missing key is SQL NULL and a JSON null is the jsonb 'null'; both are
 * "missing" to a filter. Ranges on numbers compare jsonb with jsonb (the expression index serves
 * them) and check the JSON type, because jsonb orders every string before every number. Ranges
 * on strings compare the text under the "C" collation, which is byte order on UTF-8 and so code
 * point order, whatever the database's own collation (jsonb would compare strings under the
 * database collation); they are not served by the jsonb index.
 *
 * Postgres cannot hold U+0000 in text or jsonb, nor a lone surrogate in jsonb, and pgvector.ts
 * refuses to store such metadata. A filter may still name such strings: equality and
 * membership with one never match a stored value, and a range bound with U+0000 is replaced by
 * the storable bound that selects the same stored strings, so such a filter answers instead of
 * failing in Postgres.
 */
import { checkKey, parseFilter, type RangeOp, type Scalar } from "./filter.js";

/** A WHERE fragment with its bound values, `$n` numbered from `firstParam`. */
export interface PostgresCondition {
  sql: string;
  params: (string | string[])[];
}

/**
 * A compiled condition as the text around its bound values: `text[i]` stands before
 * `params[i]`, and `text` has one piece more than `params`. A caller binds the values its own
 * way (compilePostgresFilter numbers them `$n`; the keyword search gives them to drizzle).
 */
export interface PostgresConditionParts {
  text: string[];
  params: (string | string[])[];
}

/** Where the compiled condition reads and numbers its parameters. */
export interface PostgresFilterOptions {
  /** The jsonb column or expression to read ("metadata", the pgvector table's, by default). */
  column?: string;
  /** Number of the first `$n` placeholder, for conditions added after other parameters. */
  firstParam?: number;
}

const RANGE_SQL: Record<RangeOp, string> = { $lt: "<", $lte: "<=", $gt: ">", $gte: ">=" };

/** A lone surrogate: in unicode mode a paired one is a single code point outside the class. */
const LONE_SURROGATE = /[\uD800-\uDFFF]/u;

/** A SQL string literal of `s`, in a form read the same whatever `standard_conforming_strings` is. */
function sqlLiteral(s: string): string {
  if (s.includes("\u0000")) throw new Error("Postgres text cannot contain U+0000");
  const quoted = s.replaceAll("'", "''");
  return s.includes("\\") ? `E'${quoted.replaceAll("\\", "\\\\")}'` : `'${quoted}'`;
}

/**
 * The jsonb expression that reads metadata key `key` (dots nest) from `column`, spliced in
 * verbatim so that an expression index on it applies.
 */
export function jsonbKeyExpression(key: string, column = "metadata"): string {
  checkKey(key);
  return `(${column}${key
    .split(".")
    .map((seg) => ` -> ${sqlLiteral(seg)}`)
    .join("")})`;
}

/**
 * Where a bound value stands in the condition until its text is cut there: nothing else in it
 * can hold U+0000 (Postgres text cannot, `sqlLiteral` refuses it, and so does the column).
 */
const BOUND = "\u0000";

/** Compiles a Vectorize filter to one AND-ed Postgres condition over a jsonb column. */
export function compilePostgresFilter(
  filter: VectorizeVectorMetadataFilter,
  indexed: readonly string[],
  options: PostgresFilterOptions = {},
): PostgresCondition {
  const { text, params } = compilePostgresFilterParts(filter, indexed, options.column);
  const first = options.firstParam ?? 1;
  return { sql: text.reduce((out, t, i) => `${out}$${first + i - 1}${t}`), params };
}

/**
 * `compilePostgresFilter`'s condition as its text around its bound values, for a caller that
 * binds them its own way. `column` is the jsonb column or expression it reads, spliced in
 * verbatim.
 */
export function compilePostgresFilterParts(
  filter: VectorizeVectorMetadataFilter,
  indexed: readonly string[],
  column = "metadata",
): PostgresConditionParts {
  if (column.includes(BOUND)) throw new Error("Postgres text cannot contain U+0000");
  const params: (string | string[])[] = [];
  const bind = (value: string | string[]): string => {
    params.push(value);
    return BOUND;
  };
  const parts = parseFilter(filter, indexed).map((clause): string => {
    const e = jsonbKeyExpression(clause.key, column);
    switch (clause.op) {
      case "$eq":
      case "$ne": {
        const { value } = clause;
        if (value === null)
          return clause.op === "$eq"
            ? `(${e} IS NULL OR ${e} = 'null'::jsonb)`
            : `${e} <> 'null'::jsonb`;
        if (!storable(value)) return clause.op === "$eq" ? "FALSE" : "TRUE";
        const literal = `${bind(JSON.stringify(value))}::jsonb`;
        // IS DISTINCT FROM: a missing key matches $ne, and so does a JSON null (not equal).
        return clause.op === "$eq" ? `${e} = ${literal}` : `${e} IS DISTINCT FROM ${literal}`;
      }
      case "$in":
      case "$nin": {
        const values = clause.values.filter(storable).map((v) => JSON.stringify(v));
        const member = `${e} = ANY(${bind(values)}::jsonb[])`;
        // An empty list matches nothing, so its $nin matches everything (missing keys too).
        return clause.op === "$in" ? member : `(${e} IS NULL OR NOT ${member})`;
      }
      default: {
        const { op, value } = clause;
        if (typeof value === "number")
          return `(${e} ${RANGE_SQL[op]} ${bind(JSON.stringify(value))}::jsonb AND jsonb_typeof(${e}) = 'number')`;
        const [bound, sqlOp] = storableRange(op, value);
        return `(jsonb_typeof(${e}) = 'string' AND (${e} #>> '{}') COLLATE "C" ${sqlOp} ${bind(bound)})`;
      }
    }
  });
  return { text: parts.join(" AND ").split(BOUND), params };
}

/** Whether jsonb can hold the value: no U+0000 and no lone surrogate in a string. */
function storable(value: Scalar): boolean {
  return typeof value !== "string" || !(value.includes("\u0000") || LONE_SURROGATE.test(value));
}

/**
 * A string range as a bound Postgres can bind. With U+0000 at position i (x = p + "\0" + …),
 * every stored string s (which never holds U+0000) has s < x exactly when s <= p, and s > x
 * exactly when s > p. Lone surrogates are left to the driver, which sends them as U+FFFD, as
 * SQLite's binding does.
 */
function storableRange(op: RangeOp, value: string): [string, string] {
  const nul = value.indexOf("\u0000");
  if (nul < 0) return [value, RANGE_SQL[op]];
  const prefix = value.slice(0, nul);
  return [prefix, op === "$lt" || op === "$lte" ? "<=" : ">"];
}
