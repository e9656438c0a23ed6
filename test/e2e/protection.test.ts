import { spawnSync } from "node:child_process";
import { readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import type { ApiKey, Job, SearchResponse } from "@p2pa/shared";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT } from "../../scripts/lib/local-edge.js";
import {
  type AuditLogPage,
  type AuditVerification,
  allChunks,
  type System,
  startSystem,
  waitForJob,
} from "./harness.js";

let sys: System;

beforeAll(async () => {
  sys = await startSystem();
  await sys.addWorker(["--threads", "2"]);
}, 180_000);

afterAll(async () => {
  await sys?.stop();
});

const as = (secret: string) => ({ headers: { Authorization: `Bearer ${secret}` } });

/** Every file under the system's state directory (D1, R2, Durable Objects), as bytes. */
function filesUnder(dir: string): { file: string; bytes: Buffer }[] {
  const out: { file: string; bytes: Buffer }[] = [];
  for (const name of readdirSync(dir)) {
    const p = path.join(dir, name);
    if (statSync(p).isDirectory()) out.push(...filesUnder(p));
    else out.push({ file: path.relative(dir, p), bytes: readFileSync(p) });
  }
  return out;
}

async function until<T>(what: string, f: () => Promise<T | null | undefined | false>, ms = 60_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

describe("a protected system through a working day", () => {
  it("scopes keys, seals text on disk, purges by retention, keeps its audit chain across a restart", async () => {
    // Keys as a tenant's admin would hand them out.
    const mk = async (label: string, scopes: string[], quotas?: object) => {
      const r = await sys.api<ApiKey & { secret: string }>("/v1/keys", {
        json: { label, scopes, ...(quotas ? { quotas } : {}) },
      });
      expect(r.status).toBe(201);
      return r.body;
    };
    const writer = await mk("ingest", ["jobs:write", "jobs:read"]);
    const reader = await mk("search box", ["jobs:read", "search"]);
    const limited = await mk("batch script", ["jobs:read"], { requestsPerMinute: 5 });

    const words = (tag: string) =>
      Array.from({ length: 40 }, (_, i) => `${tag}${i} quartzite meridian ledger`).join(" ");
    const texts = { keep: words("keepsake"), drop: words("ephemera"), other: words("orchard") };
    // Three documents of their own (one id is one document: the same id would make versions).
    const submit = async (text: string, retention?: object) => {
      const r = await sys.api<Job>("/v1/jobs", {
        ...as(writer.secret),
        json: {
          documents: [{ id: `doc-${text.slice(0, 8)}`, text }],
          ...(retention ? { retention } : {}),
        },
      });
      expect(r.status).toBe(202);
      return r.body.id;
    };
    // A search key cannot submit.
    expect(
      (await sys.api("/v1/jobs", { ...as(reader.secret), json: { documents: [{ text: "x" }] } }))
        .status,
    ).toBe(403);
    const keep = await submit(texts.keep);
    const drop = await submit(texts.drop, { textDays: 0 });
    const other = await submit(texts.other);
    for (const id of [keep, drop, other])
      expect((await waitForJob(sys, id)).status).toBe("completed");

    // Retention 0: the tenant's alarm drops the text once the job ends; the vectors stay.
    await until("the retention purge", async () => {
      const chunks = await allChunks(sys, drop);
      return chunks.length > 0 && chunks.every((c) => c.text === null);
    });
    const job = (await sys.api<Job>(`/v1/jobs/${drop}`)).body;
    expect(job.retention.textPurgedAt).toBeTruthy();
    const search = await sys.api<SearchResponse>("/v1/search", {
      ...as(reader.secret),
      json: { query: texts.drop.slice(0, 200), topK: 3 },
    });
    expect(search.status).toBe(200);
    expect(search.body.results[0]?.chunk.jobId).toBe(drop);
    expect(search.body.results[0]?.chunk.text).toBeNull();

    // Nothing on disk holds the text in clear: D1, R2 and every Durable Object's files.
    const onDisk = filesUnder(sys.dir);
    expect(onDisk.length).toBeGreaterThan(3);
    for (const [name, text] of Object.entries(texts)) {
      const needle = Buffer.from(text.slice(0, 60));
      const hits = onDisk.filter((f) => f.bytes.includes(needle)).map((f) => f.file);
      expect(hits, `${name} text in clear in ${hits.join(", ")}`).toEqual([]);
    }

    // The limited key is refused past its rate, with the standard headers.
    const statuses: number[] = [];
    for (let i = 0; i < 7; i++)
      statuses.push((await sys.api(`/v1/jobs/${keep}`, as(limited.secret))).status);
    expect(statuses.slice(0, 5)).toEqual([200, 200, 200, 200, 200]);
    expect(statuses.slice(5)).toEqual([429, 429]);

    // A restart of the edge: the data keys unwrap again and the audit chain holds.
    await sys.restartEdge();
    const kept = await allChunks(sys, keep);
    expect(kept.map((c) => c.text).join(" ")).toContain("keepsake0 quartzite");
    const verify = await sys.api<AuditVerification>("/v1/audit/verify");
    expect(verify.body.ok).toBe(true);
    const log = await sys.api<AuditLogPage>("/v1/audit?limit=500");
    const actions = log.body.data.map((e) => e.action);
    expect(actions.filter((a) => a === "key.created")).toHaveLength(3);
    expect(actions.filter((a) => a === "job.created")).toHaveLength(3);
    expect(log.body.data.filter((e) => e.action === "job.created").map((e) => e.actor)).toEqual([
      writer.id,
      writer.id,
      writer.id,
    ]);
    expect(log.body.data.find((e) => e.action === "text.purged")).toMatchObject({
      actor: "system",
      target: drop,
    });

    // The verify command recomputes the chain on this side.
    const cli = spawnSync(
      process.execPath,
      [
        path.join(ROOT, "node_modules/tsx/dist/cli.mjs"),
        "scripts/audit-verify.ts",
        "--server",
        sys.edge.url,
      ],
      { cwd: ROOT, env: { ...process.env, P2PA_KEY: "p2pa_dev_key" }, encoding: "utf8" },
    );
    expect(cli.stdout + cli.stderr).toMatch(/audit log intact: \d+ entries/);
    expect(cli.status).toBe(0);

    // Revoking the ingest key stops it at once.
    expect((await sys.api(`/v1/keys/${writer.id}`, { method: "DELETE" })).status).toBe(204);
    expect((await sys.api(`/v1/jobs/${keep}`, as(writer.secret))).status).toBe(401);
    expect((await sys.api(`/v1/jobs/${keep}`, as(reader.secret))).status).toBe(200);
  }, 300_000);
});
