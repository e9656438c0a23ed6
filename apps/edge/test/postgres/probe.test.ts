import { env } from "cloudflare:test";
import { expect, it } from "vitest";
import { postgresPool } from "../../src/db/postgres.js";

it("reaches postgres", async () => {
  const pool = postgresPool(env);
  const r = await Promise.all([1, 2, 3].map((i) => pool.query("select $1::int + 1 as x", [i])));
  expect(r.map((x) => x.rows[0].x)).toEqual([2, 3, 4]);
  await pool.end();
});
