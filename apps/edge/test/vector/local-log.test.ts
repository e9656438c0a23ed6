import { env, runInDurableObject } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { localVectorIndex } from "../../src/vector/index.js";
import { LocalVectorIndex } from "../../src/vector/local-index.js";

// The local index keeps its vectors as a log of writes (local-index.ts): what a restarted
// object reads back must be each id's last write, whatever records, deletions and rewrites of
// the log came before.

function fresh() {
  const name = `test:${crypto.randomUUID()}`;
  const stub = env.LOCAL_VECTORS.get(env.LOCAL_VECTORS.idFromName(name));
  return { stub, index: localVectorIndex(env.LOCAL_VECTORS, name) };
}

type Stub = ReturnType<typeof fresh>["stub"];

/** A vector of four values that names its id and version. */
const vec = (n: number, version = 0) => [n + 1, version, (n % 7) + 1, 1];

/** What a second instance over the same storage (the object after an eviction) holds. */
async function afterRestart(stub: Stub, ids: string[]) {
  return runInDurableObject(stub, async (_, state) => {
    const restarted = new LocalVectorIndex(state, env);
    await state.blockConcurrencyWhile(async () => {});
    const stored = await restarted.getByIds(ids);
    const top = await restarted.query([1, 0, 0, 0], { topK: 3, returnMetadata: "all" });
    return { stored, count: (await restarted.describe()).vectorCount, top };
  });
}

/** Rows of the log's tables. */
function logRows(stub: Stub) {
  return runInDurableObject(stub, async (_, state) => ({
    records: state.storage.sql.exec("SELECT count(*) AS n FROM log").one().n as number,
    values: state.storage.sql.exec("SELECT count(*) AS n FROM log_values").one().n as number,
  }));
}

describe("LocalVectorIndex's log", () => {
  it("reads back each id's last write after a restart: overwrites, deletions and inserts", async () => {
    const { stub, index } = fresh();
    // 300 vectors: three records of up to 128, then overwrites that span two of them.
    const ids = Array.from({ length: 300 }, (_, i) => `v${i}`);
    await index.upsert(ids.map((id, i) => ({ id, values: vec(i), metadata: { i } })));
    await index.upsert(
      ids.slice(100, 200).map((id, i) => ({ id, values: vec(i + 100, 2), metadata: { i: -1 } })),
    );
    await index.deleteByIds(["v0", "v150", "v299", "never-stored"]);
    // insert keeps what is stored, and adds only the new id (the first of a batch wins).
    await index.insert([
      { id: "v1", values: vec(1, 9) },
      { id: "v300", values: vec(300, 1) },
      { id: "v300", values: vec(300, 5) },
    ]);
    // Deleted, then written again: the new write wins.
    await index.upsert([{ id: "v0", values: vec(0, 7), metadata: { again: true } }]);

    const asked = ["v0", "v1", "v99", "v100", "v150", "v199", "v200", "v299", "v300"];
    const expected = [
      { id: "v0", values: vec(0, 7), metadata: { again: true } },
      { id: "v1", values: vec(1), metadata: { i: 1 } },
      { id: "v99", values: vec(99), metadata: { i: 99 } },
      { id: "v100", values: vec(100, 2), metadata: { i: -1 } },
      { id: "v199", values: vec(199, 2), metadata: { i: -1 } },
      { id: "v200", values: vec(200), metadata: { i: 200 } },
      { id: "v300", values: vec(300, 1) },
    ];
    expect(await index.getByIds(asked)).toEqual(expected);
    const restarted = await afterRestart(stub, asked);
    expect(restarted.stored).toEqual(expected);
    expect(restarted.count).toBe(300 - 3 + 1 + 1);
    expect(restarted.count).toBe((await index.describe()).vectorCount);
    const live = await index.query([1, 0, 0, 0], { topK: 3, returnMetadata: "all" });
    expect(restarted.top).toEqual(live);
  });

  it("drops records left with nothing live, and rewrites a log that is mostly dead", async () => {
    const { stub, index } = fresh();
    const ids = Array.from({ length: 256 }, (_, i) => `w${i}`);
    await index.upsert(ids.map((id, i) => ({ id, values: vec(i) })));
    expect(await logRows(stub)).toEqual({ records: 2, values: 2 });
    // Every vector written again: both first records hold nothing live and go.
    await index.upsert(ids.map((id, i) => ({ id, values: vec(i, 1) })));
    expect(await logRows(stub)).toEqual({ records: 2, values: 2 });

    // Rounds of 128: the same 127 ids written again and one new id each time, so every record
    // keeps one live vector and 127 dead slots, until the dead outnumber the live (and 4,096):
    // then the log is rewritten from its live vectors.
    const same = Array.from({ length: 127 }, (_, i) => `s${i}`);
    const write = (round: number) =>
      index.upsert([
        ...same.map((id, i) => ({ id, values: vec(i, round) })),
        { id: `u${round}`, values: vec(1000 + round, round) },
      ]);
    for (let round = 0; round < 32; round++) await write(round);
    const before = await logRows(stub);
    expect(before.records).toBeGreaterThan(30);
    for (let round = 32; round < 40; round++) await write(round);
    const after = await logRows(stub);
    expect(after.values).toBe(after.records);
    expect(after.records).toBeLessThan(before.records / 2);

    const expected = [
      { id: "w0", values: vec(0, 1) },
      { id: "w255", values: vec(255, 1) },
      { id: "s0", values: vec(0, 39) },
      { id: "s126", values: vec(126, 39) },
      { id: "u0", values: vec(1000, 0) },
      { id: "u39", values: vec(1039, 39) },
    ];
    const asked = expected.map((e) => e.id);
    expect(await index.getByIds(asked)).toEqual(expected);
    const restarted = await afterRestart(stub, asked);
    expect(restarted.stored).toEqual(expected);
    expect(restarted.count).toBe(256 + 127 + 40);
  });

  it("reads and rewrites every live record, whichever records were read last", async () => {
    const { stub, index } = fresh();
    // Twelve records of 128: r<k>-<i> is vector i of record k.
    const id = (k: number, i: number) => `r${k}-${i}`;
    for (let k = 0; k < 12; k++)
      await index.upsert(
        Array.from({ length: 128 }, (_, i) => ({ id: id(k, i), values: vec(k * 128 + i) })),
      );
    // The index keeps the values of the last few records read. Three are read first; then one
    // read names nine others before one of those three, whose turn comes after the nine have
    // taken its place among the recent.
    await index.getByIds([id(0, 0), id(1, 0), id(2, 0)]);
    const asked = [...Array.from({ length: 9 }, (_, k) => id(k + 3, 5)), id(0, 7)];
    expect((await index.getByIds(asked)).map((v) => v.id)).toEqual(asked);

    // A rewrite of the log reads every record in order: the ones read last come at its end.
    // Rounds of 127 overwrites and one new id leave one live vector a record, until the dead
    // slots outnumber the live and 4,096, and the log is rewritten.
    await index.getByIds(Array.from({ length: 8 }, (_, k) => id(k + 4, 1)));
    const same = Array.from({ length: 127 }, (_, i) => `s${i}`);
    for (let round = 0; round < 40; round++)
      await index.upsert([
        ...same.map((s, i) => ({ id: s, values: vec(i, round) })),
        { id: `u${round}`, values: vec(2000 + round, round) },
      ]);
    const { records } = await logRows(stub);
    expect(records).toBeLessThan(12 + 40);
    const all = [
      ...Array.from({ length: 12 * 128 }, (_, n) => id(Math.floor(n / 128), n % 128)),
      ...same,
      ...Array.from({ length: 40 }, (_, round) => `u${round}`),
    ];
    expect((await index.describe()).vectorCount).toBe(all.length);
    for (const ids of [all.slice(0, 1000), all.slice(1000)]) {
      expect((await index.getByIds(ids)).map((v) => v.id)).toEqual(ids);
      expect((await afterRestart(stub, ids)).stored.map((v) => v.id)).toEqual(ids);
    }
  });

  it("keeps nothing of a deleted vector, not even the writes it replaced", async () => {
    const { stub, index } = fresh();
    const others = (tag: string) =>
      Array.from({ length: 5 }, (_, i) => ({
        id: `${tag}${i}`,
        values: vec(i),
        metadata: { tag },
      }));
    // The secret is written twice, beside other vectors each time: the first record keeps a
    // stale copy of it, the second its live one.
    const secret = [0.125, -0.375, 0.625, 0.875];
    await index.upsert([
      ...others("a"),
      { id: "secret", values: secret, metadata: { note: "first" } },
    ]);
    await index.upsert([
      { id: "secret", values: secret.map((x) => -x), metadata: { note: "second" } },
      ...others("b"),
    ]);
    await index.deleteByIds(["secret"]);

    const dump = await runInDurableObject(stub, async (_, state) => {
      const sql = state.storage.sql;
      return {
        text: sql
          .exec("SELECT ids, entries FROM log")
          .toArray()
          .map((r) => JSON.stringify(r)),
        values: sql
          .exec("SELECT vec FROM log_values")
          .toArray()
          .map((r) => Array.from(new Float32Array(r.vec as ArrayBuffer))),
      };
    });
    expect(dump.text.join("\n")).not.toMatch(/secret|first|second/);
    const stored = dump.values.flat();
    for (const x of [...secret, ...secret.map((v) => -v)]) expect(stored).not.toContain(x);
    // The others are all there, and stay there after a restart.
    const ids = [...others("a"), ...others("b")].map((v) => v.id);
    expect((await index.getByIds(ids)).length).toBe(10);
    const restarted = await afterRestart(stub, [...ids, "secret"]);
    expect(restarted.stored.map((v) => v.id)).toEqual(ids);
    expect(restarted.count).toBe(10);
  });

  it("takes over the vectors of an index written as a row per vector (schema 2)", async () => {
    const { stub } = fresh();
    const [a, b] = [new Float32Array([1, 0, 0, 0]), new Float32Array([0, 1, 0, 0])];
    const migrated = await runInDurableObject(stub, async (_, state) => {
      // The store as the release before left it.
      const sql = state.storage.sql;
      sql.exec("DROP TABLE log");
      sql.exec("DROP TABLE log_values");
      sql.exec(
        "CREATE TABLE vectors (id TEXT NOT NULL UNIQUE, namespace TEXT, norm REAL NOT NULL, metadata TEXT, vec BLOB NOT NULL)",
      );
      sql.exec(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', '2'), ('dimensions', '4')",
      );
      sql.exec(
        "INSERT INTO vectors VALUES ('a', 'ns', 1, '{\"k\":1}', ?), ('b', NULL, 1, NULL, ?)",
        a.buffer,
        b.buffer,
      );
      const restarted = new LocalVectorIndex(state, env);
      await state.blockConcurrencyWhile(async () => {});
      const tables = sql
        .exec("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'vectors'")
        .toArray();
      return {
        stored: await restarted.getByIds(["a", "b"]),
        top: (await restarted.query([0, 1, 0, 0], { topK: 1 })).matches.map((m) => m.id),
        oldTable: tables.length,
      };
    });
    expect(migrated).toEqual({
      stored: [
        { id: "a", namespace: "ns", values: [1, 0, 0, 0], metadata: { k: 1 } },
        { id: "b", values: [0, 1, 0, 0] },
      ],
      top: ["b"],
      oldTable: 0,
    });
  });
});
