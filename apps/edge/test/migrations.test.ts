import { applyD1Migrations, env } from "cloudflare:test";
import { describe, expect, it } from "vitest";

type Migrations = Parameters<typeof applyD1Migrations>[1];
const all = (env as unknown as { TEST_MIGRATIONS: Migrations }).TEST_MIGRATIONS;
const db = (env as unknown as { UPGRADE_DB: D1Database }).UPGRADE_DB;
const upTo = (name: string) =>
  all.slice(
    0,
    all.findIndex((m) => m.name.startsWith(name)),
  );

describe("upgrading a database that holds data", () => {
  it("0015 keeps every chunk's keyword entry joined to its chunk, without keyword_rows", async () => {
    await applyD1Migrations(db, upTo("0015"));
    // As the release before wrote them: chunks, a keyword row for each indexed one (numbered
    // apart from the chunks' implicit rowids), and the FTS5 entry under the keyword row's id.
    // The chunk without one comes first, where a new number would take an entry's.
    const chunk = (id: string, text: string) =>
      db
        .prepare(
          "INSERT INTO chunks (id, job_id, document_id, idx, text, start, end) VALUES (?, 'j1', ?, 0, ?, 0, 5)",
        )
        .bind(id, id, text);
    await db.batch([
      chunk("j1.2.0", "not indexed"),
      chunk("j1.0.0", "alpha"),
      chunk("j1.1.0", "beta"),
      chunk("j1.3.0", "gamma"),
      db.prepare(
        "INSERT INTO keyword_rows (id, chunk_id, job_id) VALUES (1, 'j1.3.0', 'j1'), (2, 'j1.0.0', 'j1'), (3, 'j1.1.0', 'j1')",
      ),
      db.prepare(
        "INSERT INTO chunk_terms (rowid, terms) VALUES (1, 'gamma shared'), (2, 'alpha shared'), (3, 'beta')",
      ),
    ]);
    await applyD1Migrations(db, all);

    const found = async (match: string) =>
      (
        await db
          .prepare(
            "SELECT c.id FROM chunk_terms JOIN chunks c ON c.rid = chunk_terms.rowid WHERE chunk_terms MATCH ? ORDER BY c.id",
          )
          .bind(match)
          .all<{ id: string }>()
      ).results.map((r) => r.id);
    expect(await found("shared")).toEqual(["j1.0.0", "j1.3.0"]);
    expect(await found("beta")).toEqual(["j1.1.0"]);
    // The chunk without an entry keeps its row and text, under a number no entry has.
    const rest = await db
      .prepare("SELECT rid, text FROM chunks WHERE id = 'j1.2.0'")
      .first<{ rid: number; text: string }>();
    expect(rest?.text).toBe("not indexed");
    expect(rest?.rid).toBe(4);
    // keyword_rows is gone; chunk ids stay unique.
    const tables = await db
      .prepare("SELECT name FROM sqlite_master WHERE name IN ('keyword_rows', 'chunks_id')")
      .all<{ name: string }>();
    expect(tables.results.map((r) => r.name)).toEqual(["chunks_id"]);
    await expect(chunk("j1.0.0", "again").run()).rejects.toThrow(/UNIQUE/);
  });
});
