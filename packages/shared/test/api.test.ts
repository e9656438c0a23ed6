import { describe, expect, it } from "vitest";
import {
  CreateJobRequest,
  DocumentInput,
  EmbeddingsRequest,
  SearchRequest,
  unpairedSurrogateAt,
  WellFormedText,
} from "../src/api.js";

const LONE_HIGH = "\uD83D";
const LONE_LOW = "\uDC4D";
const PAIR = "\uD83D\uDC4D";

const firstIssue = (r: { success: boolean; error?: { issues: { message: string }[] } }) => {
  expect(r.success).toBe(false);
  return r.error?.issues[0];
};

describe("unpairedSurrogateAt", () => {
  it("finds the first lone surrogate and passes paired ones", () => {
    expect(unpairedSurrogateAt("")).toBe(-1);
    expect(unpairedSurrogateAt(`ok ${PAIR} fine`)).toBe(-1);
    expect(unpairedSurrogateAt(`ab${LONE_HIGH}`)).toBe(2);
    expect(unpairedSurrogateAt(`ab${LONE_HIGH}c`)).toBe(2);
    expect(unpairedSurrogateAt(`${LONE_LOW}x`)).toBe(0);
    expect(unpairedSurrogateAt(`${PAIR}${LONE_LOW}`)).toBe(2);
    expect(unpairedSurrogateAt(`${LONE_HIGH}${LONE_HIGH}${LONE_LOW}`)).toBe(0);
    expect(unpairedSurrogateAt(`${PAIR}${PAIR}x${LONE_HIGH}`)).toBe(5);
  });

  it("agrees with String.prototype.isWellFormed", () => {
    const probe = (s: string) => (s as unknown as { isWellFormed(): boolean }).isWellFormed();
    for (const s of ["", PAIR, LONE_HIGH, LONE_LOW, `a${LONE_LOW}${LONE_HIGH}b`, `${PAIR}x`]) {
      expect(unpairedSurrogateAt(s) === -1).toBe(probe(s));
    }
  });
});

describe("well-formed text in requests", () => {
  it("refuses a job document whose text has a lone surrogate, naming it and the offset", () => {
    const r = CreateJobRequest.safeParse({
      documents: [{ text: "fine" }, { text: `Hello ${PAIR} and ${LONE_HIGH} there` }],
    });
    const issue = firstIssue(r);
    expect(issue).toMatchObject({ path: ["documents", 1, "text"] });
    expect(issue?.message).toBe(
      "documents[1].text holds an unpaired UTF-16 surrogate (\\uD83D) at offset 13; send well-formed Unicode text",
    );
  });

  it("keeps well-formed text, astral characters included, unchanged", () => {
    const text = `emoji ${PAIR} and CJK 漢字`;
    const r = CreateJobRequest.safeParse({ documents: [{ id: "d1", text }] });
    expect(r.success && r.data.documents[0]?.text).toBe(text);
  });

  it("refuses lone surrogates in document ids and metadata values", () => {
    const id = firstIssue(DocumentInput.safeParse({ id: `a${LONE_LOW}`, text: "x" }));
    expect(id?.message).toMatch(/^id holds an unpaired UTF-16 surrogate \(\\uDC4D\) at offset 1/);
    const meta = CreateJobRequest.safeParse({
      documents: [{ text: "x", metadata: { title: `t${LONE_HIGH}` } }],
    });
    expect(firstIssue(meta)?.message).toMatch(
      /^documents\[0\]\.metadata\.title holds an unpaired UTF-16 surrogate .* at offset 1/,
    );
    const key = CreateJobRequest.safeParse({
      documents: [{ text: "x", metadata: { [`k${LONE_LOW}`]: "v" } }],
    });
    expect(firstIssue(key)?.message).toMatch(/^metadata key "k\\udc4d" holds an unpaired .* 1/);
  });

  it("refuses lone surrogates in search queries and embedding inputs", () => {
    expect(firstIssue(SearchRequest.safeParse({ query: `${LONE_LOW}q` }))?.message).toMatch(
      /^query holds an unpaired UTF-16 surrogate \(\\uDC4D\) at offset 0/,
    );
    expect(
      firstIssue(EmbeddingsRequest.safeParse({ input: `ab${LONE_HIGH}`, model: "m" }))?.message,
    ).toMatch(/^input holds an unpaired UTF-16 surrogate .* at offset 2/);
    expect(
      firstIssue(EmbeddingsRequest.safeParse({ input: ["ok", `x${LONE_HIGH}`], model: "m" }))
        ?.message,
    ).toMatch(/^input\[1\] holds an unpaired UTF-16 surrogate .* at offset 1/);
  });

  it("names the field `text` when the schema is used on its own", () => {
    expect(firstIssue(WellFormedText().safeParse(LONE_HIGH))?.message).toMatch(/^text holds/);
  });
});

describe("document metadata keys", () => {
  const parseBody = (body: string) => CreateJobRequest.safeParse(JSON.parse(body));

  it("refuses __proto__, constructor and prototype, naming the key", () => {
    // Written by hand: an object literal's __proto__ would set the prototype, not a key.
    for (const key of ["__proto__", "constructor", "prototype"]) {
      const r = parseBody(`{"documents":[{"text":"x","metadata":{"a":1,"${key}":"v"}}]}`);
      const issue = firstIssue(r);
      expect(issue).toMatchObject({ path: ["documents", 0, "metadata", key] });
      expect(issue?.message).toBe(`metadata key "${key}" is reserved; use another name`);
    }
    expect(
      firstIssue(parseBody('{"documents":[{"text":"x","metadata":{"__proto__":{"polluted":1}}}]}')),
    ).toMatchObject({ path: ["documents", 0, "metadata", "__proto__"] });
  });

  it("keeps every other key and value unchanged", () => {
    const metadata = {
      toString: "s",
      hasOwnProperty: 1,
      valueOf: true,
      "with space": null,
      __proto: "near miss",
      proto__: "x",
      Constructor: "case differs",
      emoji: `${PAIR}`,
    };
    const r = CreateJobRequest.safeParse(
      JSON.parse(JSON.stringify({ documents: [{ text: "x", metadata }] })),
    );
    expect(r.success).toBe(true);
    const out = r.success ? r.data.documents[0]?.metadata : undefined;
    expect(out).toEqual(metadata);
    expect(Object.keys(out ?? {})).toEqual(Object.keys(metadata));
  });
});
