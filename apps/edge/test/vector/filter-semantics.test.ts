import { env, runInDurableObject } from "cloudflare:test";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { postgresPool } from "../../src/db/postgres.js";
import {
  compareCodePoints,
  compileFilter,
  compileMatcher,
  indexedValue,
  type SqlValue,
} from "../../src/vector/filter.js";
import { compilePostgresFilter } from "../../src/vector/postgres-filter.js";

// One table of (filter, expected matches) over one set of documents, run four ways: the JS
// matcher, the SQL condition in a Durable Object's SQLite (the local index's column), the SQL
// condition in D1 under another column expression (as the product's D1 queries use it), and the
// Postgres condition over jsonb (the pgvector index's column). All must give exactly the
// expected ids.

/** Every stored value that is present (not missing, not JSON null). */
const PRESENT = [
  "str",
  "strNum",
  "num",
  "float",
  "neg",
  "zero",
  "one",
  "tru",
  "fals",
  "arr",
  "obj",
  "arrText",
  "empty",
  "emoji",
  "fullwidth",
  "both",
];

const KEYS = ["v", "w", "a.b", "a.length", "constructor"];

const DOCS: Record<string, unknown> = {
  str: { v: "abc" },
  strNum: { v: "5" },
  num: { v: 5 },
  float: { v: 2.5 },
  neg: { v: -1 },
  zero: { v: 0 },
  one: { v: 1 },
  tru: { v: true },
  fals: { v: false },
  nul: { v: null },
  missing: {},
  arr: { v: ["abc"] },
  obj: { v: { abc: 1 } },
  arrText: { v: '["abc"]' },
  empty: { v: "" },
  // U+1F600 (a surrogate pair in UTF-16) sorts after U+FF5E by code point, before it by unit.
  emoji: { v: "😀" },
  fullwidth: { v: "～" },
  both: { v: 5, w: "k" },
  nested: { a: { b: "x" } },
  nestedNum: { a: { b: 1 } },
  nestedInArray: { a: [{ b: "x" }] },
  nestedStr: { a: "str" },
};
const ALL = Object.keys(DOCS);
const except = (...names: string[]) => ALL.filter((n) => !names.includes(n));

const CASES: [VectorizeVectorMetadataFilter, string[]][] = [
  // Equality is typed: "5" is not 5, true is not 1, false is not 0, an array is not its text.
  [{ v: "abc" }, ["str"]],
  [{ v: { $eq: "5" } }, ["strNum"]],
  [{ v: 5 }, ["both", "num"]],
  [{ v: { $eq: 1 } }, ["one"]],
  [{ v: { $eq: -0 } }, ["zero"]],
  [{ v: { $eq: 2.5 } }, ["float"]],
  [{ v: true }, ["tru"]],
  [{ v: { $eq: false } }, ["fals"]],
  [{ v: '["abc"]' }, ["arrText"]],
  [{ v: "" }, ["empty"]],
  // $ne is the complement of $eq, missing keys included.
  [{ v: { $ne: true } }, except("tru")],
  [{ v: { $ne: false } }, except("fals")],
  [{ v: { $ne: 5 } }, except("num", "both")],
  [{ v: { $ne: "abc" } }, except("str")],
  [{ v: { $ne: 1 } }, except("one")],
  // null: missing or JSON null; arrays and objects are present.
  [{ v: null }, except(...PRESENT)],
  [{ v: { $ne: null } }, [...PRESENT]],
  // Membership, typed per value.
  [{ v: { $in: ["abc", 5] } }, ["both", "num", "str"]],
  [{ v: { $in: ["5"] } }, ["strNum"]],
  [{ v: { $in: [true, 0] } }, ["tru", "zero"]],
  [{ v: { $in: [false, 1] } }, ["fals", "one"]],
  [{ v: { $in: ['["abc"]'] } }, ["arrText"]],
  [{ v: { $in: [] } }, []],
  [{ v: { $nin: ["abc", 5, true] } }, except("str", "num", "both", "tru")],
  [{ v: { $nin: [] } }, ALL],
  // Ranges: numbers with numbers only.
  [{ v: { $lt: 2.5 } }, ["neg", "one", "zero"]],
  [{ v: { $lte: 2.5 } }, ["float", "neg", "one", "zero"]],
  [{ v: { $gt: 2.5 } }, ["both", "num"]],
  [{ v: { $gte: 0 } }, ["both", "float", "num", "one", "zero"]],
  [{ v: { $gt: -1, $lt: 5 } }, ["float", "one", "zero"]],
  // Ranges: strings with strings only, in code point order.
  [{ v: { $lt: "abc" } }, ["arrText", "empty", "strNum"]],
  [{ v: { $gt: "abc" } }, ["emoji", "fullwidth"]],
  [{ v: { $gt: "～" } }, ["emoji"]],
  [{ v: { $lt: "😀" } }, ["arrText", "empty", "fullwidth", "str", "strNum"]],
  [{ v: { $gte: "abc", $lt: "b" } }, ["str"]],
  [{ v: { $lte: "" } }, ["empty"]],
  // Several keys are AND-ed.
  [{ v: 5, w: "k" }, ["both"]],
  [{ v: 5, w: { $ne: "k" } }, ["num"]],
  // Dots descend into objects only, never into arrays or strings, nor into the prototype.
  [{ "a.b": "x" }, ["nested"]],
  [{ "a.b": { $gte: 1 } }, ["nestedNum"]],
  [{ "a.b": { $ne: "x" } }, except("nested")],
  [{ "a.length": { $gte: 0 } }, []],
  [{ constructor: { $ne: null } }, []],
  [{ constructor: null }, ALL],
];

/** Runs every case's SQL against `table`, returning the names each one matched. */
type SqlRunner = (sql: string, params: SqlValue[]) => Promise<string[]>;

async function checkSql(run: SqlRunner, column: string): Promise<void> {
  for (const [filter, expected] of CASES) {
    const c = compileFilter(filter, KEYS, column);
    const got = await run(c.sql, c.params);
    expect({ filter, got: got.sort() }).toEqual({ filter, got: [...expected].sort() });
  }
}

describe("metadata filter semantics, JS and SQL alike", () => {
  it("compileMatcher gives the expected matches", () => {
    for (const [filter, expected] of CASES) {
      const match = compileMatcher(filter, KEYS);
      const got = ALL.filter((name) => match((key) => indexedValue(DOCS[name], key)));
      expect({ filter, got }).toEqual({ filter, got: ALL.filter((n) => expected.includes(n)) });
    }
  });

  it("compileFilter gives the same in Durable Object SQLite", async () => {
    const stub = env.LOCAL_VECTORS.get(env.LOCAL_VECTORS.idFromName(`test:${crypto.randomUUID()}`));
    const run: SqlRunner = (sql, params) =>
      runInDurableObject(stub, (_, state) => {
        const db = state.storage.sql;
        db.exec("CREATE TABLE IF NOT EXISTS cases (name TEXT PRIMARY KEY, metadata TEXT)");
        for (const [name, doc] of Object.entries(DOCS))
          db.exec("INSERT OR REPLACE INTO cases VALUES (?, ?)", name, JSON.stringify(doc));
        return db
          .exec<{ name: string }>(`SELECT name FROM cases WHERE ${sql}`, ...params)
          .toArray()
          .map((r) => r.name);
      });
    await checkSql(run, "metadata");
  });

  describe("in D1, through another column expression", () => {
    beforeAll(async () => {
      await env.DB.exec(
        "CREATE TABLE IF NOT EXISTS filter_cases (name TEXT PRIMARY KEY, doc TEXT)",
      );
      await env.DB.batch(
        Object.entries(DOCS).map(([name, doc]) =>
          env.DB.prepare("INSERT OR REPLACE INTO filter_cases VALUES (?, ?)").bind(
            name,
            JSON.stringify(doc),
          ),
        ),
      );
    });

    it("compileFilter gives the same", async () => {
      const run: SqlRunner = async (sql, params) =>
        (
          await env.DB.prepare(`SELECT c.name AS name FROM filter_cases AS c WHERE ${sql}`)
            .bind(...params)
            .all<{ name: string }>()
        ).results.map((r) => r.name);
      await checkSql(run, "c.doc");
    });
  });

  describe("in Postgres, over a jsonb column", () => {
    const table = `filter_cases_${crypto.randomUUID().slice(0, 8)}`;
    /** Runs `work` on a pool of its own, ended afterwards (a pool belongs to the request). */
    const withPostgres = async <T>(work: (pool: ReturnType<typeof postgresPool>) => Promise<T>) => {
      const pool = postgresPool(env);
      try {
        return await work(pool);
      } finally {
        await pool.end();
      }
    };
    const run = (filter: VectorizeVectorMetadataFilter) =>
      withPostgres(async (pool) => {
        const c = compilePostgresFilter(filter, KEYS, { column: "c.doc" });
        const { rows } = await pool.query<{ name: string }>(
          `SELECT c.name FROM ${table} AS c WHERE ${c.sql}`,
          c.params,
        );
        return rows.map((r) => r.name).sort();
      });

    beforeAll(async () => {
      await withPostgres(async (pool) => {
        await pool.query(`CREATE TABLE ${table} (name text PRIMARY KEY, doc jsonb NOT NULL)`);
        await pool.query(`INSERT INTO ${table} SELECT * FROM unnest($1::text[], $2::jsonb[])`, [
          Object.keys(DOCS),
          Object.values(DOCS).map((d) => JSON.stringify(d)),
        ]);
      });
    });
    afterAll(() => withPostgres((pool) => pool.query(`DROP TABLE IF EXISTS ${table}`)));

    it("compilePostgresFilter gives the same", async () => {
      for (const [filter, expected] of CASES)
        expect({ filter, got: await run(filter) }).toEqual({ filter, got: [...expected].sort() });
    });

    it("agrees with the JS matcher on strings Postgres cannot hold, instead of failing", async () => {
      // U+0000 and lone surrogates never reach jsonb, so equality with them never matches and a
      // range bound holding U+0000 selects what the code point order says.
      const filters: VectorizeVectorMetadataFilter[] = [
        { v: "abc\u0000" },
        { v: { $ne: "abc\u0000" } },
        { v: { $in: ["abc", "\u0000", "\uD800"] } },
        { v: { $nin: ["\u0000", 5] } },
        { v: "\uDFFF" },
        { v: { $ne: "\uD83D" } },
        { v: { $lt: "abc\u0000" } },
        { v: { $lte: "abc\u0000x" } },
        { v: { $gt: "abc\u0000" } },
        { v: { $gte: "ab\u0000" } },
        { v: { $gt: "\u0000" } },
        { v: { $lt: "\u0000" } },
      ];
      for (const filter of filters) {
        const match = compileMatcher(filter, KEYS);
        const expected = ALL.filter((name) => match((key) => indexedValue(DOCS[name], key)));
        expect({ filter, got: await run(filter) }).toEqual({ filter, got: expected.sort() });
      }
    });
  });

  it("rejects the same filters with the same errors", () => {
    const bad: [unknown, RegExp][] = [
      [{}, /must not be empty/],
      [{ nope: 1 }, /no metadata index/],
      [{ $v: 1 }, /invalid metadata key/],
      [{ v: {} }, /has no operator/],
      [{ v: { $like: "a" } }, /unsupported filter operator \$like/],
      [{ v: { $lt: true } }, /\$lt cannot compare booleans/],
      [{ v: { $gt: null } }, /\$gt needs a string, number or boolean/],
      [{ v: { $eq: [1] } }, /\$eq needs a string, number, boolean or null/],
      [{ v: { $in: "a" } }, /\$in needs an array/],
      [{ v: { $nin: [null] } }, /\$nin values must be strings, numbers or booleans/],
      [{ v: { $eq: Number.NaN } }, /finite number/],
      [{ v: "x".repeat(2100) }, /under 2048 bytes/],
    ];
    for (const [filter, error] of bad) {
      const f = filter as VectorizeVectorMetadataFilter;
      expect(() => compileFilter(f, KEYS)).toThrow(error);
      expect(() => compileMatcher(f, KEYS)).toThrow(error);
      expect(() => compilePostgresFilter(f, KEYS)).toThrow(error);
    }
  });

  it("orders strings by code point, as SQLite orders UTF-8", () => {
    const words = ["b", "a", "～", "😀", "", "ab", "\u{10000}", "\uE000", "\uD7FF"];
    const sorted = [...words].sort(compareCodePoints);
    expect(sorted).toEqual(["", "a", "ab", "b", "\uD7FF", "\uE000", "～", "\u{10000}", "😀"]);
    const bytes = (s: string) => Array.from(new TextEncoder().encode(s));
    const byUtf8 = [...words].sort((x, y) => {
      const a = bytes(x);
      const b = bytes(y);
      for (let i = 0; i < Math.min(a.length, b.length); i++)
        if (a[i] !== b[i]) return (a[i] as number) - (b[i] as number);
      return a.length - b.length;
    });
    expect(sorted).toEqual(byUtf8);
  });

  it("keeps the json_extract expression verbatim, so expression indexes still apply", () => {
    const c = compileFilter({ tenant: "t1" }, ["tenant"]);
    expect(c.sql).toContain(`json_extract(metadata, '$."tenant"') = ?`);
    expect(compileFilter({ tenant: "t1" }, ["tenant"], "c.metadata").sql).toContain(
      `json_extract(c.metadata, '$."tenant"') = ?`,
    );
  });
});
