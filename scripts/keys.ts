/**
 * `npm run keys -- --kind api|admin|worker --tenant NAME [--d1 local|remote]`: makes a new API
 * key, operator key (an API key that also sees the whole fleet) or worker join token. Prints the key once (it is stored nowhere in clear) and its hashed
 * line; with --d1 it inserts the hash into the D1 `credentials` table, otherwise add the line
 * to the P2PA_CREDENTIALS secret (`wrangler secret put P2PA_CREDENTIALS`).
 * `npm run keys -- --data-key` prints a new deployment key for the P2PA_DATA_KEYS secret.
 */
import { spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import path from "node:path";
import { parseArgs } from "node:util";
import { ROOT, WRANGLER_ENV } from "./lib/local-edge.js";

const { values } = parseArgs({
  options: {
    kind: { type: "string" },
    tenant: { type: "string" },
    d1: { type: "string" },
    name: { type: "string" },
    "data-key": { type: "boolean" },
  },
});
if (values["data-key"]) {
  // A deployment key for P2PA_DATA_KEYS: list it first to make it current, keep the old one
  // after it until `POST /v1/admin/encryption/rewrap` reports nothing remaining.
  const id = `k${new Date().toISOString().slice(0, 10).replaceAll("-", "")}`;
  console.log(`P2PA_DATA_KEYS entry: ${id}:${randomBytes(32).toString("base64")}`);
  process.exit(0);
}
const kind = values.kind;
const tenant = values.tenant ?? "";
if ((kind !== "api" && kind !== "admin" && kind !== "worker") || !/^[\w.-]{1,64}$/.test(tenant)) {
  console.error(
    "usage: npm run keys -- --kind api|admin|worker --tenant NAME [--d1 local|remote] [--name LABEL]",
  );
  process.exit(2);
}
const prefix = { api: "p2pa_sk", admin: "p2pa_ak", worker: "p2pa_wt" }[kind];
const key = `${prefix}_${randomBytes(24).toString("base64url")}`;
const hash = createHash("sha256").update(key).digest("hex");
console.log(`key (shown once):  ${key}`);
console.log(`secret line:       ${kind}:${tenant}:${hash}`);
if (values.d1 === "local" || values.d1 === "remote") {
  const id = `cred_${randomBytes(8).toString("hex")}`;
  const label = (values.name ?? "").replaceAll("'", "''");
  const sql = `INSERT INTO credentials (id, kind, tenant, hash, name, prefix) VALUES ('${id}', '${kind}', '${tenant}', '${hash}', '${label}', '${key.slice(0, 12)}')`;
  const r = spawnSync(
    process.execPath,
    [
      path.join(ROOT, "node_modules/wrangler/bin/wrangler.js"),
      "d1",
      "execute",
      "DB",
      `--${values.d1}`,
      "--command",
      sql,
    ],
    {
      cwd: ROOT,
      env: { ...process.env, ...(values.d1 === "local" ? WRANGLER_ENV : {}) },
      stdio: "inherit",
    },
  );
  process.exit(r.status ?? 1);
}
