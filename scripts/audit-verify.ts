/**
 * `npm run audit:verify -- [--server URL]` (key from P2PA_KEY, needs the admin scope):
 * downloads the tenant's whole audit log through the API and recomputes its hash chain here,
 * independently of the server, then compares the last entry with the head the server keeps.
 * Exits 1 when an entry was changed, removed or inserted.
 */
import { parseArgs } from "node:util";
import { type AuditEntry, verifyChain } from "../apps/edge/src/tenant/audit.js";

const { values } = parseArgs({
  options: {
    server: { type: "string", default: process.env.P2PA_SERVER ?? "http://127.0.0.1:8787" },
    json: { type: "boolean", default: false },
  },
});
const key = process.env.P2PA_KEY;
if (!key) {
  console.error("set P2PA_KEY to a key of the tenant with the admin scope");
  process.exit(2);
}
const headers = { Authorization: `Bearer ${key}` };
const base = values.server.replace(/\/$/, "");

async function get<T>(path: string): Promise<T> {
  const res = await fetch(`${base}${path}`, { headers });
  if (!res.ok) throw new Error(`GET ${path}: ${res.status} ${await res.text()}`);
  return (await res.json()) as T;
}

const entries: AuditEntry[] = [];
for (let cursor: string | null = null; ; ) {
  const page: { data: AuditEntry[]; nextCursor: string | null } = await get(
    `/v1/audit?limit=500${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`,
  );
  entries.push(...page.data);
  if (!page.nextCursor) break;
  cursor = page.nextCursor;
}
const server = await get<{ ok: boolean; head: { seq: number; hash: string } }>("/v1/audit/verify");
const local = await verifyChain(entries, server.head);
const report = { entries: entries.length, head: server.head, local, server };
if (values.json) console.log(JSON.stringify(report, null, 2));
else if (local.ok && server.ok)
  console.log(
    `audit log intact: ${entries.length} entries, head #${server.head.seq} ${server.head.hash.slice(0, 16)}…`,
  );
else
  console.error(
    `audit log BROKEN: ${local.problem ?? "the server's own check failed"}${local.firstBadSeq ? ` (first bad entry #${local.firstBadSeq})` : ""}`,
  );
process.exit(local.ok && server.ok ? 0 : 1);
