import { env, runInDurableObject } from "cloudflare:test";
import { afterAll, describe, expect, it } from "vitest";
import { rng as seeded } from "../../../../scripts/lib/corpus.js";
import { postgresPool } from "../../src/db/postgres.js";
import { METADATA_INDEXES } from "../../src/vector/config.js";
import { getVectorIndex } from "../../src/vector/index.js";
import { pgvectorIndex, pgvectorTable } from "../../src/vector/pgvector.js";
import { type SearchRow, searchStatement, vectorText } from "../../src/vector/pgvector-search.js";
import { compilePostgresFilter } from "../../src/vector/postgres-filter.js";
import { standInTests, vectorIndexContract } from "./contract.js";

// The real Postgres with pgvector that vitest.config.ts starts. Every index here gets a table of
// its own, named for this run, and the tables are dropped at the end.
const run = crypto.randomUUID().slice(0, 8);
const names: string[] = [];

/** An empty pgvector index under a fresh name. */
function fresh(dimensions: number, metadataIndexes = [...METADATA_INDEXES]) {
  const name = `test_${run}_${names.length}`;
  names.push(name);
  return { name, index: pgvectorIndex(env, name, { dimensions, metadataIndexes }) };
}

/** Runs `work` on a pool of its own, ended afterwards (a pool belongs to the request). */
async function withPostgres<T>(
  work: (pool: ReturnType<typeof postgresPool>) => Promise<T>,
): Promise<T> {
  const pool = postgresPool(env);
  try {
    return await work(pool);
  } finally {
    await pool.end();
  }
}

afterAll(async () => {
  await withPostgres(async (pool) => {
    for (const name of names) {
      await pool.query(`DROP TABLE IF EXISTS "${pgvectorTable(name)}"`);
      await pool.query("DELETE FROM p2pa_vector_indexes WHERE name = $1", [name]);
    }
  });
});

const pgEnv = { ...env, VECTOR_BACKEND: "pgvector" } as Env;
const contractIndex = fresh(8, [...METADATA_INDEXES, "year", "draft"]).index;

vectorIndexContract("pgvector, 8 dimensions", () => contractIndex, {
  numberKey: "year",
  booleanKey: "draft",
  strictFilters: true,
});
vectorIndexContract(
  "getVectorIndex(env, 'use-lite'), pgvector backend",
  () => getVectorIndex(pgEnv, "use-lite"),
  { strictFilters: true },
);

describe("pgvector index beyond the contract", () => {
  const cosine = (a: number[], b: number[]) => {
    let dot = 0;
    let na = 0;
    let nb = 0;
    a.forEach((x, i) => {
      const y = b[i] ?? 0;
      dot += x * y;
      na += x * x;
      nb += y * y;
    });
    return dot / Math.sqrt(na * nb);
  };

  it("breaks score ties by id and scores a zero vector 0, like the local index", async () => {
    const { index } = fresh(4);
    await index.upsert(["c", "a", "b"].map((id, i) => ({ id, values: [1 + i, 0, 0, 0] })));
    await index.upsert([{ id: "0", values: [0, 0, 0, 0] }]);
    const r = await index.query([1, 0, 0, 0]);
    expect(r.matches.map((m) => [m.id, m.score])).toEqual([
      ["a", 1],
      ["b", 1],
      ["c", 1],
      ["0", 0],
    ]);
    // A zero query points nowhere: every vector scores 0, smallest ids first.
    const zero = await index.query([0, 0, 0, 0], { topK: 2 });
    expect(zero.matches.map((m) => [m.id, m.score])).toEqual([
      ["0", 0],
      ["a", 0],
    ]);
  });

  it("sizes a model's index from the model and keeps an index's dimensions fixed", async () => {
    expect((await getVectorIndex(pgEnv, "use-lite").describe()).dimensions).toBe(512);
    const { name, index } = fresh(4);
    await index.upsert([{ id: "a", values: [1, 0, 0, 0] }]);
    const wider = pgvectorIndex(env, name, { dimensions: 8 });
    await expect(wider.describe()).rejects.toThrow(/has 4 dimensions; it cannot change to 8/);
    await expect(index.insert([{ id: "b", values: [1, 0] }])).rejects.toThrow(
      /has 2 dimensions; the index has 4/,
    );
    await expect(getVectorIndex(pgEnv, "no-such-model").describe()).rejects.toThrow(
      /not a known model/,
    );
  });

  it("counts mutations and keeps metadata indexes once added", async () => {
    const { name, index } = fresh(4, ["tenant"]);
    const before = await index.describe();
    await index.upsert([{ id: "a", values: [1, 0, 0, 0], metadata: { tenant: "t", k: 1 } }]);
    await index.deleteByIds(["nothing"]);
    const after = await index.describe();
    expect(after.processedUpToMutation).toBe(Number(before.processedUpToMutation) + 2);
    expect(after.processedUpToDatetime).toBeGreaterThan(0);
    // A later configuration adds "k"; one without "k" can still filter on it, as an index
    // created once stays.
    await pgvectorIndex(env, name, { dimensions: 4, metadataIndexes: ["k"] }).describe();
    const again = pgvectorIndex(env, name, { dimensions: 4, metadataIndexes: ["tenant"] });
    const r = await again.query([1, 0, 0, 0], { filter: { k: 1 }, returnMetadata: "indexed" });
    expect(r.matches.map((m) => m.metadata)).toEqual([{ tenant: "t", k: 1 }]);
  });

  standInTests((dimensions, metadataIndexes) => fresh(dimensions, metadataIndexes).index);

  it("returns every match when fewer than topK pass the filter, and exactly topK otherwise", async () => {
    const { index } = fresh(16);
    const rand = seeded(11);
    const vectors = Array.from({ length: 400 }, (_, i) => ({
      id: `v${String(i).padStart(3, "0")}`,
      values: Array.from({ length: 16 }, () => rand() * 2 - 1),
      // 1 in 20 are "rare", scattered over the whole space; half are "even".
      metadata: { tenant: i % 20 === 7 ? "rare" : "common", jobId: i % 2 === 0 ? "even" : "odd" },
    }));
    await index.upsert(vectors);
    const q = Array.from({ length: 16 }, () => rand() * 2 - 1);
    const exact = (pass: (v: (typeof vectors)[number]) => boolean, k: number) =>
      vectors
        .filter(pass)
        .map((v) => ({ id: v.id, score: cosine(q, v.values) }))
        .sort((a, b) => b.score - a.score || (a.id < b.id ? -1 : 1))
        .slice(0, k);

    // 20 rare vectors and topK 50: the index alone finds only some, the exact pass all of them.
    const rare = await index.query(q, { topK: 50, filter: { tenant: "rare" } });
    const want = exact((v) => v.metadata.tenant === "rare", 50);
    expect(rare.matches.map((m) => m.id)).toEqual(want.map((w) => w.id));
    rare.matches.forEach((m, i) => {
      expect(m.score).toBeCloseTo(want[i]?.score ?? Number.NaN, 5);
    });
    // Half the vectors match and topK is 100: far more than one batch of HNSW candidates holds.
    const even = await index.query(q, { topK: 100, filter: { jobId: "even" } });
    expect(even.count).toBe(100);
    expect(even.matches.every((m) => Number(m.id.slice(1)) % 2 === 0)).toBe(true);
    const scores = even.matches.map((m) => m.score);
    expect(scores).toEqual([...scores].sort((a, b) => b - a));
    // Rare and even: no vector is both (7 is odd), so nothing, not an error.
    expect((await index.query(q, { filter: { tenant: "rare", jobId: "even" } })).count).toBe(0);
  });

  it("completes a short HNSW answer with an exact pass over the matches", async () => {
    const { name, index } = fresh(16);
    const rand = seeded(5);
    const vectors = Array.from({ length: 300 }, (_, i) => ({
      id: `v${String(i).padStart(3, "0")}`,
      values: Array.from({ length: 16 }, () => rand() * 2 - 1),
      metadata: { jobId: i % 10 === 3 ? "rare" : "common" },
    }));
    await index.upsert(vectors);
    const query = new Float32Array(Array.from({ length: 16 }, () => rand() * 2 - 1));
    const want = vectors
      .filter((v) => v.metadata.jobId === "rare")
      .map((v) => ({ id: v.id, score: cosine(Array.from(query), v.values) }))
      .sort((a, b) => b.score - a.score);
    const table = `"${pgvectorTable(name)}"`;
    const search = searchStatement({
      table,
      query,
      topK: 50,
      filter: { jobId: "rare" },
      indexed: METADATA_INDEXES,
      withMetadata: false,
      withValues: false,
    });
    const { plan, alone, rows } = await withPostgres(async (pool) => {
      const db = await pool.connect();
      try {
        // The planner pushed onto the HNSW index, whose walk stops after a few tuples.
        await db.query(`BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off;
          SET LOCAL enable_sort = off; SET LOCAL hnsw.iterative_scan = strict_order;
          SET LOCAL hnsw.ef_search = 5; SET LOCAL hnsw.max_scan_tuples = 10`);
        const plan = await db.query(`EXPLAIN ${search.sql}`, search.params);
        const alone = await db.query(
          `SELECT id FROM ${table} WHERE metadata -> 'jobId' = '"rare"'
          ORDER BY embedding <=> $1::vector LIMIT 50`,
          [vectorText(query)],
        );
        const { rows } = await db.query<SearchRow>(search.sql, search.params);
        await db.query("COMMIT");
        return {
          plan: plan.rows.map((r) => r["QUERY PLAN"] as string).join("\n"),
          alone: alone.rowCount,
          rows,
        };
      } finally {
        db.release();
      }
    });
    expect(plan).toContain(`${pgvectorTable(name)}_hnsw`);
    // The index alone misses most of the 30 matches; the statement returns them all, in order.
    expect(alone).toBeLessThan(30);
    expect(rows.map((r) => r.id)).toEqual(want.map((w) => w.id));
    rows.forEach((r, i) => {
      expect(r.score).toBeCloseTo(want[i]?.score ?? Number.NaN, 5);
    });
  });

  it("answers a filtered query through the metadata index, not a table scan", async () => {
    const { name, index } = fresh(4);
    await index.describe();
    const c = compilePostgresFilter({ tenant: "t1", jobId: { $in: ["a", "b"] } }, METADATA_INDEXES);
    const plan = await withPostgres(async (pool) => {
      const db = await pool.connect();
      try {
        // An empty table is cheapest to scan: forbid that, so only an index can answer.
        await db.query("BEGIN; SET LOCAL enable_seqscan = off");
        const r = await db.query(
          `EXPLAIN SELECT id FROM "${pgvectorTable(name)}" WHERE ${c.sql}`,
          c.params,
        );
        await db.query("COMMIT");
        return r.rows.map((row) => row["QUERY PLAN"] as string).join("\n");
      } finally {
        db.release();
      }
    });
    expect(plan).toMatch(new RegExp(`${pgvectorTable(name)}_m[0-9a-f]{8}`));
    expect(plan).not.toMatch(/Seq Scan/);
  });

  it("keeps the first of a batch on insert and the last on upsert", async () => {
    const { index } = fresh(4);
    await index.insert([
      { id: "x", values: [1, 0, 0, 0] },
      { id: "x", values: [0, 1, 0, 0] },
    ]);
    expect((await index.getByIds(["x"]))[0]?.values).toEqual([1, 0, 0, 0]);
    await index.upsert([
      { id: "x", values: [0, 0, 1, 0] },
      { id: "x", values: [0, 0, 0, 1] },
    ]);
    expect((await index.getByIds(["x"]))[0]?.values).toEqual([0, 0, 0, 1]);
  });

  it("refuses what Postgres cannot store, with a reason, and loses nothing", async () => {
    const { index } = fresh(4);
    await index.upsert([{ id: "kept", values: [1, 0, 0, 0], metadata: { note: "a\\u0000b" } }]);
    await expect(
      index.upsert([
        { id: "fine", values: [1, 0, 0, 0] },
        { id: "nul", values: [1, 0, 0, 0], metadata: { note: "a\u0000b" } },
      ]),
    ).rejects.toThrow(/metadata of "nul" holds U\+0000/);
    await expect(index.upsert([{ id: "a\u0000", values: [1, 0, 0, 0] }])).rejects.toThrow(
      /U\+0000/,
    );
    const got = await index.getByIds(["kept", "fine", "nul", "a\u0000"]);
    expect(got.map((v) => [v.id, v.metadata])).toEqual([["kept", { note: "a\\u0000b" }]]);
  });

  it("returns stored float32 values exactly", async () => {
    const { index } = fresh(4);
    const values = [0.1, -1 / 3, 1e-7, 123456.789];
    await index.upsert([{ id: "f", values }]);
    const [got] = await index.getByIds(["f"]);
    expect(got?.values).toEqual(Array.from(new Float32Array(values)));
    const [m] = (await index.query(values, { topK: 1, returnValues: true })).matches;
    expect(m?.values).toEqual(Array.from(new Float32Array(values)));
  });

  it("serves one handle from Durable Objects and requests alike, holding no connection", async () => {
    // A pool used outside the object or request that opened it hangs; a handle that kept one
    // between calls would hang here.
    const { index } = fresh(4);
    const call = async (id: string) => {
      await index.upsert([{ id, values: [1, 0, 0, 0] }]);
      return (await index.getByIds([id])).map((v) => v.id);
    };
    const object = (name: string) => env.LOCAL_VECTORS.get(env.LOCAL_VECTORS.idFromName(name));
    expect(await call("here")).toEqual(["here"]);
    expect(await runInDurableObject(object(`${run}-a`), () => call("in-a"))).toEqual(["in-a"]);
    expect(await runInDurableObject(object(`${run}-a`), () => call("in-a-again"))).toEqual([
      "in-a-again",
    ]);
    expect(await runInDurableObject(object(`${run}-b`), () => call("in-b"))).toEqual(["in-b"]);
    expect(await call("here-again")).toEqual(["here-again"]);
    expect((await index.describe()).vectorCount).toBe(5);
  }, 20_000);
});
