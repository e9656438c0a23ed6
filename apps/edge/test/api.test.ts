import { env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import committed from "../../../packages/shared/src/client/openapi.json";
import { tokenCounter } from "../src/lib/tokens.js";
import { call, errorOf, KEYS } from "./helpers.js";

const docs = (n: number, size = 600) =>
  Array.from({ length: n }, (_, i) => ({
    id: `d${i}`,
    text: `Document ${i}. ${"Sentences about subject number ".repeat(Math.ceil(size / 30)).slice(0, size)}`,
    metadata: { source: "test", n: i },
  }));

describe("authentication", () => {
  it("asks for credentials, rejects bad ones and keeps keys and worker tokens apart", async () => {
    expect(await errorOf(await call("/v1/jobs/x", { key: null }))).toMatchObject({
      status: 401,
      code: "unauthorized",
    });
    expect(await errorOf(await call("/v1/jobs/x", { key: "nope" }))).toMatchObject({
      status: 401,
      code: "unauthorized",
    });
    expect(await errorOf(await call("/v1/jobs/x", { key: KEYS.worker }))).toMatchObject({
      status: 403,
      code: "forbidden",
    });
    const r = await call("/v1/workers/connect", { key: KEYS.api });
    expect(r.status).toBe(403);
  });

  it("reads bootstrap credentials from the deployment secret, as hashes", async () => {
    const { secretCredentials } = await import("../src/lib/auth.js");
    const hash = "a".repeat(64);
    const creds = secretCredentials(
      `api:acme:${hash}\nworker:acme:${"b".repeat(64)}\nnonsense\nroot:x:${"c".repeat(64)}`,
    );
    expect(creds.get(hash)).toMatchObject({ kind: "api", tenant: "acme" });
    expect(creds.size).toBe(2);
  });

  it("closes a worker socket with a bad token at once, with close code 4401 and the reason", async () => {
    for (const [key, reason] of [
      ["nope", /invalid or revoked/],
      [KEYS.api, /API key/],
    ] as const) {
      const res = await call("/v1/workers/connect", { key, headers: { Upgrade: "websocket" } });
      expect(res.status).toBe(101);
      const ws = res.webSocket as WebSocket;
      const closed = new Promise<CloseEvent>((r) => ws.addEventListener("close", r));
      ws.accept();
      const ev = await closed;
      expect(ev.code).toBe(4401);
      expect(ev.reason).toMatch(reason);
    }
  });
});

describe("POST /v1/jobs", () => {
  it("accepts documents, chunks them and reports a queued job", async () => {
    const res = await call("/v1/jobs", { method: "POST", json: { documents: docs(3, 2500) } });
    expect(res.status).toBe(202);
    const job = (await res.json()) as {
      id: string;
      status: string;
      chunks: { total: number; done: number };
      documents: number;
    };
    expect(job.id).toMatch(/^job_/);
    expect(job.status).toBe("queued");
    expect(job.documents).toBe(3);
    expect(job.chunks.total).toBeGreaterThanOrEqual(9);
    expect(res.headers.get("Location")).toBe(`/v1/jobs/${job.id}`);

    const again = (await (await call(`/v1/jobs/${job.id}`)).json()) as typeof job;
    expect(again).toMatchObject({ id: job.id, chunks: { total: job.chunks.total, done: 0 } });
  });

  it("pages through chunks in a stable order without gaps or repeats", async () => {
    const job = (await (
      await call("/v1/jobs", { method: "POST", json: { documents: docs(5, 3000) } })
    ).json()) as {
      id: string;
      chunks: { total: number };
    };
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const page = (await (
        await call(`/v1/jobs/${job.id}/chunks?limit=4${cursor ? `&cursor=${cursor}` : ""}`)
      ).json()) as {
        data: {
          id: string;
          documentId: string;
          text: string;
          metadata: Record<string, unknown>;
          status: string;
        }[];
        nextCursor: string | null;
      };
      expect(page.data.length).toBeLessThanOrEqual(4);
      for (const c of page.data) {
        expect(c.status).toBe("pending");
        expect(c.metadata.source).toBe("test");
        expect(c.text.length).toBeGreaterThan(0);
      }
      seen.push(...page.data.map((c) => c.id));
      cursor = page.nextCursor;
    } while (cursor);
    expect(seen.length).toBe(job.chunks.total);
    expect(new Set(seen).size).toBe(seen.length);
  });

  it("honours Idempotency-Key: same body same job and answer, different body 409", async () => {
    // Two of its documents were sent before (unchanged), and it asks for a webhook of its own:
    // the retry is told both again.
    const before = await call("/v1/jobs", { method: "POST", json: { documents: docs(2) } });
    expect(before.status).toBe(202);
    const body = {
      documents: [...docs(2), { id: "new", text: "A document sent for the first time." }],
      webhook: { url: "https://hooks.example.com/p2pa" },
    };
    const headers = { "Idempotency-Key": "key-123" };
    type Created = {
      id: string;
      documents: number;
      webhook: { id: string; secret?: string };
      ingest?: { accepted: number; unchanged: number; rejected: number };
    };
    const first = await call("/v1/jobs", { method: "POST", json: body, headers });
    expect(first.status).toBe(202);
    const a = (await first.json()) as Created;
    expect(a.webhook.secret).toMatch(/^whsec_/);
    expect(a.ingest).toEqual({ accepted: 3, unchanged: 2, rejected: 0, rejections: [] });
    const rb = await call("/v1/jobs", { method: "POST", json: body, headers });
    expect(rb.status).toBe(202);
    expect(rb.headers.get("Idempotent-Replayed")).toBe("true");
    const b = (await rb.json()) as Created;
    expect(b.id).toBe(a.id);
    expect(b.webhook).toEqual(a.webhook);
    expect(b.ingest).toEqual(a.ingest);
    // Only the job's own request gets the secret again: reading the job never shows it.
    const read = (await (await call(`/v1/jobs/${a.id}`)).json()) as Created;
    expect(read.webhook.secret).toBeUndefined();
    const conflict = await call("/v1/jobs", {
      method: "POST",
      json: { documents: docs(3) },
      headers,
    });
    expect(await errorOf(conflict)).toMatchObject({ status: 409, code: "conflict" });
    // The first job is untouched by the rejected request.
    const job = (await (await call(`/v1/jobs/${a.id}`)).json()) as { documents: number };
    expect(job.documents).toBe(a.documents);
  });

  it("honours Idempotency-Key on file uploads by what they hold, and refuses it on an NDJSON stream", async () => {
    const key = `files-${crypto.randomUUID()}`;
    // Each try is a new form, so a new multipart boundary: the same files are the same request.
    // A file of a kind it cannot read is refused; the retry is told so again.
    const upload = (text: string) => {
      const form = new FormData();
      form.append("file", new File([text], "notes.txt", { type: "text/plain" }));
      form.append("file", new File([new Uint8Array([0, 1, 2])], "scan.bin"));
      return call("/v1/jobs", { method: "POST", body: form, headers: { "Idempotency-Key": key } });
    };
    type Created = { id: string; ingest: { rejected: number; rejections: { file?: string }[] } };
    const first = await upload("Notes on tide tables.");
    expect(first.status).toBe(202);
    const { id, ingest } = (await first.json()) as Created;
    expect(ingest).toMatchObject({ rejected: 1, rejections: [{ file: "scan.bin" }] });
    const again = await upload("Notes on tide tables.");
    expect(again.status).toBe(202);
    expect(again.headers.get("Idempotent-Replayed")).toBe("true");
    expect(await again.json()).toMatchObject({ id, ingest });
    expect(await errorOf(await upload("Other notes."))).toMatchObject({ status: 409 });

    const stream = await call("/v1/jobs", {
      method: "POST",
      body: '{"text":"A line."}\n',
      headers: { "Content-Type": "application/x-ndjson", "Idempotency-Key": `nd-${key}` },
    });
    const e = await errorOf(stream);
    expect(e).toMatchObject({ status: 422, code: "validation_failed" });
    expect(e.message).toMatch(/not taken with an NDJSON stream/);
  });

  it("keeps tenants apart", async () => {
    const a = (await (
      await call("/v1/jobs", { method: "POST", json: { documents: docs(1) } })
    ).json()) as { id: string };
    expect((await call(`/v1/jobs/${a.id}`, { key: KEYS.other })).status).toBe(404);
    expect((await call(`/v1/jobs/${a.id}/chunks`, { key: KEYS.other })).status).toBe(404);
  });

  it("answers bad input with the right status and error body", async () => {
    const post = (init: Parameters<typeof call>[1]) =>
      call("/v1/jobs", { method: "POST", ...init });
    expect(
      await errorOf(
        await post({ body: "{not json", headers: { "Content-Type": "application/json" } }),
      ),
    ).toMatchObject({
      status: 400,
      code: "invalid_json",
    });
    expect(
      await errorOf(await post({ body: "documents=1", headers: { "Content-Type": "text/plain" } })),
    ).toMatchObject({
      status: 415,
      code: "unsupported_media_type",
    });
    // Other names for NDJSON, and files sent to an open job, get the same answer and guidance.
    for (const type of ["application/ndjson", "application/jsonl"])
      expect(
        await errorOf(await post({ body: '{"text":"x"}\n', headers: { "Content-Type": type } })),
      ).toMatchObject({ status: 415, code: "unsupported_media_type" });
    // JSON is UTF-8: a body that says it is Latin-1 would be read as something else.
    const latin1 = new Uint8Array([
      ...new TextEncoder().encode('{"documents":[{"text":"Caf'),
      0xe9,
      ...new TextEncoder().encode('"}]}'),
    ]);
    for (const type of [
      "application/json; charset=latin1",
      "application/x-ndjson; charset=ISO-8859-1",
    ]) {
      const e = await errorOf(await post({ body: latin1, headers: { "Content-Type": type } }));
      expect(e).toMatchObject({ status: 415, code: "unsupported_media_type" });
      expect(e.message).toMatch(/UTF-8/);
    }
    for (const type of ["application/json; charset=UTF-8", 'application/json;charset="utf-8"']) {
      const r = await post({
        body: '{"documents":[{"text":"Café au lait."}]}',
        headers: { "Content-Type": type },
      });
      expect(r.status).toBe(202);
    }
    const open = (await (
      await post({ json: { open: true, documents: [{ text: "Open." }] } })
    ).json()) as { id: string };
    const form = new FormData();
    form.append("file", new File(["More."], "more.txt", { type: "text/plain" }));
    const files = await errorOf(
      await call(`/v1/jobs/${open.id}/documents`, { method: "POST", body: form }),
    );
    expect(files).toMatchObject({ status: 415, code: "unsupported_media_type" });
    expect(files.message).toMatch(/files start a job of their own/);
    const wrongType = await errorOf(await post({ json: { documents: "nope" } }));
    expect(wrongType).toMatchObject({ status: 422, code: "validation_failed" });
    expect(JSON.stringify(wrongType.details)).toContain("documents");
    expect((await errorOf(await post({ json: { documents: [] } }))).status).toBe(422);
    expect((await errorOf(await post({ json: { documents: [{ text: "   " }] } }))).status).toBe(
      422,
    );
    expect(
      (await errorOf(await post({ json: { documents: [{ text: "x".repeat(1_000_001) }] } })))
        .status,
    ).toBe(422);
    expect(
      (
        await errorOf(
          await post({
            json: {
              documents: [
                { id: "a", text: "x" },
                { id: "a", text: "y" },
              ],
            },
          }),
        )
      ).status,
    ).toBe(422);
    expect(
      await errorOf(await post({ json: { documents: docs(1), model: "gpt-17" } })),
    ).toMatchObject({
      status: 404,
      code: "model_not_found",
      details: { available: ["use-lite"] },
    });
    expect(
      (await errorOf(await post({ json: { documents: docs(1), chunking: { maxChars: 5000 } } })))
        .status,
    ).toBe(422);
    expect(
      (
        await errorOf(
          await post({ json: { documents: docs(1), chunking: { maxChars: 200, overlap: 150 } } }),
        )
      ).status,
    ).toBe(422);
    expect(
      (
        await errorOf(
          await post({ json: { documents: [{ text: "x", metadata: { deep: { a: 1 } } }] } }),
        )
      ).status,
    ).toBe(422);
    const huge = await post({
      body: `{"documents":[{"text":"${"y".repeat(33 * 1024 * 1024)}"}]}`,
      headers: { "Content-Type": "application/json" },
    });
    expect(await errorOf(huge)).toMatchObject({ status: 413, code: "payload_too_large" });
  });

  it("takes a bodiless POST for an action, and asks for a body where one is needed", async () => {
    const text = `Nobody has sent this sentence before: ${crypto.randomUUID()}.`;
    const a = (await (
      await call("/v1/jobs", { method: "POST", json: { documents: [{ text }] } })
    ).json()) as { id: string };
    // As a browser's fetch or `curl -X POST` sends it: no body, no Content-Type.
    const cancel = await call(`/v1/jobs/${a.id}/cancel`, { method: "POST" });
    expect(cancel.status).toBe(200);
    expect(((await cancel.json()) as { status: string }).status).toBe("cancelled");
    const zero = await call(`/v1/jobs/${a.id}/cancel`, {
      method: "POST",
      headers: { "Content-Length": "0" },
    });
    // Read by the route itself: the job has ended now.
    expect(await errorOf(zero)).toMatchObject({ status: 409, code: "conflict" });
    // A create with no body is refused for what it lacks, never with a 500.
    const empty = await errorOf(await call("/v1/jobs", { method: "POST" }));
    expect([400, 415, 422]).toContain(empty.status);
    const hook = await errorOf(await call("/v1/webhooks", { method: "POST" }));
    expect([400, 415, 422]).toContain(hook.status);
  });

  it("answers unknown ids and routes with 404 and bad cursors with 422", async () => {
    expect(await errorOf(await call("/v1/jobs/job_nope"))).toMatchObject({
      status: 404,
      code: "not_found",
    });
    expect(await errorOf(await call("/v1/nothing-here"))).toMatchObject({
      status: 404,
      code: "not_found",
    });
    const a = (await (
      await call("/v1/jobs", { method: "POST", json: { documents: docs(1) } })
    ).json()) as { id: string };
    expect((await call(`/v1/jobs/${a.id}/chunks?cursor=%%%`)).status).toBe(422);
    expect((await call(`/v1/jobs/${a.id}/chunks?limit=0`)).status).toBe(422);
  });
});

describe("chunking for the model's window", () => {
  it("cuts every chunk to at most the model's 128 tokens, whatever maxChars allows", async () => {
    const dense = Array.from({ length: 400 }, (_, i) => `Zyx${i}qw ${i * 7919}`).join(" ");
    const res = await call("/v1/jobs", {
      method: "POST",
      json: { documents: [{ text: dense }], chunking: { maxChars: 4000 } },
    });
    expect(res.status).toBe(202);
    const job = (await res.json()) as { id: string };
    const page = (await (await call(`/v1/jobs/${job.id}/chunks?limit=1000`)).json()) as {
      data: { text: string }[];
    };
    const count = await tokenCounter(env, "use-lite");
    expect(page.data.length).toBeGreaterThan(3);
    for (const c of page.data) expect(count(c.text)).toBeLessThanOrEqual(128);
  });

  it("refuses real-time input longer than the model reads, with 422", async () => {
    const long = "word ".repeat(400);
    const e = await call("/v1/embeddings", {
      method: "POST",
      json: { model: "use-lite", input: ["short", long] },
    });
    expect(await errorOf(e)).toMatchObject({
      status: 422,
      code: "unprocessable",
      details: { index: 1, maxTokens: 128 },
    });
    const s = await call("/v1/search", { method: "POST", json: { query: long } });
    expect((await errorOf(s)).status).toBe(422);
  });
});

describe("backpressure", () => {
  it("answers 503 with Retry-After when the queue cannot hold a job, and keeps what it has", async () => {
    const before = (await (
      await call("/v1/jobs", { method: "POST", json: { documents: docs(2) } })
    ).json()) as { id: string };
    const res = await call("/v1/jobs", { method: "POST", json: { documents: docs(9000, 100) } });
    expect(res.status).toBe(503);
    expect(Number(res.headers.get("Retry-After"))).toBeGreaterThan(0);
    expect((await errorOf(res)).code).toBe("no_capacity");
    expect((await call(`/v1/jobs/${before.id}`)).status).toBe(200);
  });
});

describe("real-time endpoints without workers", () => {
  it("search and embeddings answer 503 with Retry-After when no worker serves the model", async () => {
    const s = await call("/v1/search", { method: "POST", json: { query: "anything" } });
    expect(s.status).toBe(503);
    expect(Number(s.headers.get("Retry-After"))).toBeGreaterThan(0);
    expect((await errorOf(s)).code).toBe("no_capacity");
    // Keyword search needs no model: it answers without a worker.
    const k = await call("/v1/search", {
      method: "POST",
      json: { query: "anything", mode: "keyword" },
    });
    expect(k.status).toBe(200);
    expect(await k.json()).toEqual({ mode: "keyword", results: [] });
    const e = await call("/v1/embeddings", {
      method: "POST",
      json: { input: "hello", model: "use-lite" },
    });
    expect(e.status).toBe(503);
    expect(
      (await errorOf(await call("/v1/search", { method: "POST", json: { query: "" } }))).status,
    ).toBe(422);
    expect(
      (
        await errorOf(
          await call("/v1/embeddings", { method: "POST", json: { input: [], model: "use-lite" } }),
        )
      ).status,
    ).toBe(422);
  });
});

describe("service endpoints", () => {
  it("reports health and publishes an OpenAPI document built from the schemas", async () => {
    const h = await call("/healthz", { key: null });
    expect(h.status).toBe(200);
    expect(await h.json()).toMatchObject({ status: "ok" });
    const doc = (await (await call("/openapi.json", { key: null })).json()) as {
      paths: Record<string, unknown>;
      components: { schemas: Record<string, unknown> };
    };
    expect(Object.keys(doc.paths)).toEqual(
      expect.arrayContaining([
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/chunks",
        "/v1/search",
        "/v1/embeddings",
      ]),
    );
    expect(Object.keys(doc.components.schemas)).toEqual(
      expect.arrayContaining(["CreateJobRequest", "Job", "Error"]),
    );
  });

  it("describes every operation for a generated client: a unique operationId, a summary, its errors and path parameters", async () => {
    type Operation = {
      operationId?: string;
      summary?: string;
      responses: Record<string, unknown>;
      parameters?: { in: string; name: string }[];
    };
    const doc = (await (await call("/openapi.json", { key: null })).json()) as {
      info: { license?: unknown };
      servers?: unknown[];
      paths: Record<string, Record<string, Operation>>;
    };
    expect(doc.info.license).toBeDefined();
    expect(doc.servers?.length).toBeGreaterThan(0);
    const ids: string[] = [];
    const problems: string[] = [];
    for (const [path, methods] of Object.entries(doc.paths))
      for (const [method, op] of Object.entries(methods)) {
        const where = `${method.toUpperCase()} ${path}`;
        if (!op.operationId) problems.push(`${where}: no operationId`);
        else ids.push(op.operationId);
        if (!op.summary) problems.push(`${where}: no summary`);
        const codes = Object.keys(op.responses);
        if (!codes.some((c) => c.startsWith("2"))) problems.push(`${where}: no 2xx response`);
        if (!codes.some((c) => c.startsWith("4"))) problems.push(`${where}: no 4xx response`);
        for (const [, name] of path.matchAll(/\{(\w+)\}/g))
          if (!op.parameters?.some((p) => p.in === "path" && p.name === name))
            problems.push(`${where}: path parameter ${name} not declared`);
      }
    expect(problems).toEqual([]);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it("is the document the typed client was generated from (run `npm run client` after an API change)", async () => {
    const served = await (await call("/openapi.json", { key: null })).json();
    expect(served).toEqual(committed);
  });
});
