import { describe, expect, it } from "vitest";
import { call, errorOf } from "./helpers.js";

const LONE_HIGH = "\uD83D";
const LONE_LOW = "\uDC4D";
const PAIR = "\uD83D\uDC4D";

type ChunkRow = {
  documentId: string;
  text: string;
  start: number;
  end: number;
  metadata: Record<string, unknown>;
};

const postRaw = (path: string, body: string) =>
  call(path, { method: "POST", body, headers: { "Content-Type": "application/json" } });

async function chunksOf(jobId: string): Promise<ChunkRow[]> {
  const res = await call(`/v1/jobs/${jobId}/chunks?limit=1000`);
  expect(res.status).toBe(200);
  return ((await res.json()) as { data: ChunkRow[] }).data;
}

describe("text with unpaired UTF-16 surrogates", () => {
  it("refuses a job whose document text has one, naming the document and the offset", async () => {
    const res = await call("/v1/jobs", {
      method: "POST",
      json: { documents: [{ text: "fine" }, { text: `abc ${LONE_HIGH} def` }] },
    });
    const e = await errorOf(res);
    expect(e).toMatchObject({ status: 422, code: "validation_failed" });
    expect(e.message).toMatch(/documents\[1\]\.text holds an unpaired UTF-16 surrogate/);
    expect(e.message).toMatch(/\\uD83D\) at offset 4/);
    expect(e.details).toEqual(
      expect.arrayContaining([expect.objectContaining({ path: "documents.1.text" })]),
    );
  });

  it("refuses one in a document id or a metadata value", async () => {
    const id = await errorOf(
      await call("/v1/jobs", {
        method: "POST",
        json: { documents: [{ id: `d${LONE_LOW}`, text: "x" }] },
      }),
    );
    expect(id).toMatchObject({ status: 422, code: "validation_failed" });
    expect(id.message).toMatch(/documents\[0\]\.id holds an unpaired .* at offset 1/);
    const meta = await errorOf(
      await call("/v1/jobs", {
        method: "POST",
        json: { documents: [{ text: "x", metadata: { title: `${LONE_LOW}` } }] },
      }),
    );
    expect(meta).toMatchObject({ status: 422, code: "validation_failed" });
    expect(meta.message).toMatch(
      /documents\[0\]\.metadata\.title holds an unpaired .* at offset 0/,
    );
  });

  it("refuses one in a search query or an embeddings input", async () => {
    const s = await errorOf(
      await call("/v1/search", { method: "POST", json: { query: `q${LONE_HIGH}` } }),
    );
    expect(s).toMatchObject({ status: 422, code: "validation_failed" });
    expect(s.message).toMatch(/query holds an unpaired UTF-16 surrogate .* at offset 1/);
    const one = await errorOf(
      await call("/v1/embeddings", {
        method: "POST",
        json: { input: LONE_LOW, model: "use-lite" },
      }),
    );
    expect(one).toMatchObject({ status: 422, code: "validation_failed" });
    expect(one.message).toMatch(/input holds an unpaired .* at offset 0/);
    const many = await errorOf(
      await call("/v1/embeddings", {
        method: "POST",
        json: { input: ["ok", `ok ${LONE_HIGH}`], model: "use-lite" },
      }),
    );
    expect(many).toMatchObject({ status: 422, code: "validation_failed" });
    expect(many.message).toMatch(/input\[1\] holds an unpaired .* at offset 3/);
  });

  it("stores well-formed text with astral characters so chunk offsets still match it", async () => {
    const text = `${`emoji ${PAIR} 漢字 and more words. `.repeat(40)}end`;
    const res = await call("/v1/jobs", {
      method: "POST",
      json: { documents: [{ id: "astral", text }], chunking: { maxChars: 200, overlap: 0 } },
    });
    expect(res.status).toBe(202);
    const chunks = await chunksOf(((await res.json()) as { id: string }).id);
    expect(chunks.length).toBeGreaterThan(1);
    for (const c of chunks) expect(c.text).toBe(text.slice(c.start, c.end));
  });
});

describe("NUL in metadata", () => {
  it("refuses it in a value or a key with a 422 naming where, and takes nothing", async () => {
    const before = (await (await call("/v1/jobs?limit=100")).json()) as { data: unknown[] };
    const value = await errorOf(
      await call("/v1/jobs", {
        method: "POST",
        json: { documents: [{ text: "fine" }, { text: "x", metadata: { title: "a\u0000b" } }] },
      }),
    );
    expect(value).toMatchObject({ status: 422, code: "validation_failed" });
    expect(value.message).toMatch(
      /documents\[1\]\.metadata\.title holds U\+0000 \(NUL\) at offset 1/,
    );
    const key = await errorOf(
      await call("/v1/jobs", {
        method: "POST",
        json: { documents: [{ text: "x", metadata: { "ti\u0000tle": "b" } }] },
      }),
    );
    expect(key).toMatchObject({ status: 422, code: "validation_failed" });
    expect(key.message).toMatch(/metadata key "ti\\u0000tle" holds U\+0000 \(NUL\) at offset 2/);
    const after = (await (await call("/v1/jobs?limit=100")).json()) as { data: unknown[] };
    expect(after.data.length).toBe(before.data.length);
  });
});

describe("reserved document metadata keys", () => {
  it("refuses __proto__, constructor and prototype with a 422 naming the key", async () => {
    for (const key of ["__proto__", "constructor", "prototype"]) {
      // Built as text: JSON.stringify of an object literal would not carry __proto__.
      const body = `{"documents":[{"text":"hello","metadata":{"source":"a","${key}":"x"}}]}`;
      const e = await errorOf(await postRaw("/v1/jobs", body));
      expect(e).toMatchObject({ status: 422, code: "validation_failed" });
      expect(e.message).toContain(`metadata key "${key}" is reserved`);
      expect(e.details).toEqual(
        expect.arrayContaining([expect.objectContaining({ path: `documents.0.metadata.${key}` })]),
      );
    }
  });

  it("stores every other key and value unchanged", async () => {
    const metadata = {
      source: "a",
      toString: "s",
      hasOwnProperty: 2,
      valueOf: false,
      "with space": null,
      __proto: "near miss",
      emoji: PAIR,
    };
    const res = await call("/v1/jobs", {
      method: "POST",
      json: { documents: [{ id: "m1", text: "hello world", metadata }] },
    });
    expect(res.status).toBe(202);
    const chunks = await chunksOf(((await res.json()) as { id: string }).id);
    expect(chunks.length).toBeGreaterThan(0);
    for (const c of chunks) expect(c.metadata).toEqual(metadata);
  });
});

describe("documents that would be empty or unnamable", () => {
  it("refuses text of control characters alone, and the ids . and .., taking nothing", async () => {
    const collection = `empty-${crypto.randomUUID().slice(0, 8)}`;
    const kept = await call("/v1/jobs", {
      method: "POST",
      json: { collection, documents: [{ id: "kept", text: "A document worth keeping." }] },
    });
    expect(kept.status).toBe(202);
    for (const documents of [
      [{ id: "kept", text: "\u0001\u0002" }],
      [{ text: " \u0000\t\u007f\u0085 " }],
      [{ id: ".", text: "A dot." }],
      [{ id: "..", text: "Two dots." }],
    ]) {
      const e = await errorOf(
        await call("/v1/jobs", { method: "POST", json: { collection, documents } }),
      );
      expect(e).toMatchObject({ status: 422, code: "validation_failed" });
      expect(e.message).toMatch(/text must not be empty|id may not be \. or \.\./);
      expect(JSON.stringify(e.details)).toMatch(/"path":"documents\.0\.(text|id)"/);
    }
    // A line of the same in an NDJSON stream is reported by number; the good lines are taken.
    const nd = await call("/v1/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/x-ndjson" },
      body: `${JSON.stringify({ job: { collection } })}\n{"text":"\\u0001"}\n{"id":"..","text":"x"}\n{"text":"Fine."}\n`,
    });
    expect(nd.status).toBe(202);
    const ingest = (
      (await nd.json()) as { ingest: { accepted: number; rejections: { line: number }[] } }
    ).ingest;
    expect(ingest.accepted).toBe(1);
    expect(ingest.rejections.map((r) => r.line)).toEqual([2, 3]);
    // The document sent first is as it was.
    const doc = await call(`/v1/documents/kept?collection=${collection}`);
    expect(
      ((await doc.json()) as { current: { version: number; chars: number } }).current,
    ).toMatchObject({
      version: 1,
      chars: 25,
    });
  });
});
