import { env, runInDurableObject } from "cloudflare:test";
import { it } from "vitest";

it("probe", async () => {
  const stub = env.LOCAL_VECTORS.get(env.LOCAL_VECTORS.idFromName("index:probe"));
  const name = await runInDurableObject(stub, (_i, state) => state.id.name);
  console.log("NAME", JSON.stringify(name));
  const t0 = performance.now();
  const r = await runInDurableObject(stub, (_i, state) => {
    const sql = state.storage.sql;
    sql.exec("CREATE TABLE IF NOT EXISTS t (id TEXT PRIMARY KEY, v BLOB)");
    return sql
      .exec(
        "SELECT json_extract(?, ?) a, (SELECT count(*) FROM json_each(?)) b, json_type(?, ?) c",
        '{"a":{"b c":true}}',
        '$.a."b c"',
        "[1,2]",
        '{"x":true}',
        "$.x",
      )
      .one();
  });
  console.log("ver", r, performance.now() - t0);
});
