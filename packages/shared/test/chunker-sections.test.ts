import { describe, expect, it } from "vitest";
import { chunkSections, chunkText } from "../src/chunker.js";

function paragraph(topic: string, sentences: number): string {
  return Array.from({ length: sentences }, (_, i) => `The ${topic} note ${i} says something.`).join(
    " ",
  );
}

/** A document of sections as an extractor gives them: contiguous, separators at the end. */
function doc(parts: { headings: string[]; page?: number; body: string }[]) {
  let text = "";
  const sections: { headings: string[]; page?: number; start: number; end: number }[] = [];
  parts.forEach((p, i) => {
    const start = text.length;
    text += p.body + (i < parts.length - 1 ? "\n\n" : "");
    sections.push({
      headings: p.headings,
      ...(p.page ? { page: p.page } : {}),
      start,
      end: text.length,
    });
  });
  return { text, sections };
}

describe("chunkSections", () => {
  const { text, sections } = doc([
    { headings: [], body: "Preface" },
    { headings: ["Guide"], body: `Guide\n\n${paragraph("intro", 3)}` },
    { headings: ["Guide", "Install"], body: `Install\n\n${paragraph("install", 30)}` },
    { headings: ["Guide", "Use"], page: 2, body: `Use\n\n${paragraph("use", 12)}` },
  ]);
  const opts = { maxChars: 300, overlap: 40 };

  it("never lets a chunk span two sections, and labels each with its section", () => {
    const chunks = chunkSections(text, sections, opts);
    expect(chunks.length).toBeGreaterThan(6);
    for (const c of chunks) {
      const owners = sections.filter((s) => c.start >= s.start && c.end <= s.end);
      expect(owners).toHaveLength(1);
      const owner = owners[0] as (typeof sections)[number];
      expect(c.headings).toEqual(owner.headings.length ? owner.headings : undefined);
      expect(c.page).toBe(owner.page);
      expect(text.slice(c.start, c.end)).toBe(c.text);
      expect(c.text.length).toBeLessThanOrEqual(opts.maxChars);
    }
  });

  it("numbers chunks across the whole text, in text order", () => {
    const chunks = chunkSections(text, sections, opts);
    expect(chunks.map((c) => c.index)).toEqual(chunks.map((_, i) => i));
    for (let i = 1; i < chunks.length; i++)
      expect((chunks[i] as (typeof chunks)[number]).start).toBeGreaterThan(
        (chunks[i - 1] as (typeof chunks)[number]).start,
      );
  });

  it("loses no character and matches chunkText inside a section", () => {
    const chunks = chunkSections(text, sections, opts);
    const covered = new Uint8Array(text.length);
    for (const c of chunks) covered.fill(1, c.start, c.end);
    for (let i = 0; i < text.length; i++)
      if (!/\s/.test(text[i] as string)) expect(covered[i]).toBe(1);
    const install = sections[2] as (typeof sections)[number];
    const alone = chunkText(text.slice(install.start, install.end), opts);
    const inDoc = chunks.filter((c) => c.headings?.[1] === "Install");
    expect(inDoc.map((c) => c.text)).toEqual(alone.map((c) => c.text));
    expect(inDoc.map((c) => c.start - install.start)).toEqual(alone.map((c) => c.start));
  });

  it("keeps a short section as its own chunk (no merging) and omits empty labels", () => {
    const chunks = chunkSections(text, sections, opts);
    expect(chunks[0]).toEqual({ index: 0, text: "Preface", start: 0, end: 7 });
    expect(chunks[1]?.headings).toEqual(["Guide"]);
  });

  it("skips empty and whitespace-only sections", () => {
    const t = "alpha\n\n   \n\nbeta";
    const chunks = chunkSections(
      t,
      [
        { headings: ["A"], start: 0, end: 7 },
        { headings: ["Empty"], start: 7, end: 7 },
        { headings: ["Blank"], start: 7, end: 12 },
        { headings: ["B"], start: 12, end: t.length },
      ],
      opts,
    );
    expect(chunks).toEqual([
      { index: 0, text: "alpha", start: 0, end: 5, headings: ["A"] },
      { index: 1, text: "beta", start: 12, end: 16, headings: ["B"] },
    ]);
  });

  it("rejects sections out of order, overlapping or past the text, and bad options", () => {
    expect(() =>
      chunkSections(
        "abcdef",
        [
          { headings: [], start: 0, end: 4 },
          { headings: [], start: 3, end: 6 },
        ],
        opts,
      ),
    ).toThrow(RangeError);
    expect(() => chunkSections("abc", [{ headings: [], start: 0, end: 9 }], opts)).toThrow(
      RangeError,
    );
    expect(() => chunkSections("abc", [], { maxChars: 10, overlap: 10 })).toThrow(RangeError);
  });
});
