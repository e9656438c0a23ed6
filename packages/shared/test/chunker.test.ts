import { describe, expect, it } from "vitest";
import { chunkText } from "../src/chunker.js";

const words = (s: string) => s.split(/\s+/).filter(Boolean);

function essay(paragraphs: number): string {
  const out: string[] = [];
  for (let p = 0; p < paragraphs; p++) {
    const sentences: string[] = [];
    for (let s = 0; s < 6; s++)
      sentences.push(`Paragraph ${p} sentence ${s} talks about topic ${p * 7 + s}.`);
    out.push(sentences.join(" "));
  }
  return out.join("\n\n");
}

describe("chunkText", () => {
  it("keeps every chunk within maxChars and maps back to the source by offsets", () => {
    const text = essay(40);
    const chunks = chunkText(text, { maxChars: 300, overlap: 50 });
    expect(chunks.length).toBeGreaterThan(10);
    for (const c of chunks) {
      expect(c.text.length).toBeLessThanOrEqual(300);
      expect(text.slice(c.start, c.end)).toBe(c.text);
    }
    expect(chunks.map((c) => c.index)).toEqual(chunks.map((_, i) => i));
  });

  it("loses no word of the document", () => {
    const text = essay(25);
    const chunks = chunkText(text, { maxChars: 200, overlap: 40 });
    const seen = new Set(chunks.flatMap((c) => words(c.text).map((w) => `${w}`)));
    for (const w of words(text)) expect(seen.has(w)).toBe(true);
    // Coverage by offsets: every non-space character sits inside some chunk.
    const covered = new Uint8Array(text.length);
    for (const c of chunks) covered.fill(1, c.start, c.end);
    for (let i = 0; i < text.length; i++)
      if (!/\s/.test(text[i] as string)) expect(covered[i]).toBe(1);
  });

  it("prefers sentence and paragraph boundaries and never starts mid-word", () => {
    const text = essay(10);
    const chunks = chunkText(text, { maxChars: 250, overlap: 30 });
    for (const c of chunks) {
      expect(c.start === 0 || /\s/.test(text[c.start - 1] as string)).toBe(true);
    }
    // Without overlap each chunk ends on a full stop: the sentence splitter did its job.
    for (const c of chunkText(text, { maxChars: 250, overlap: 0 }))
      expect(c.text.endsWith(".")).toBe(true);
  });

  it("overlaps consecutive chunks by roughly the requested amount", () => {
    const chunks = chunkText(essay(10), { maxChars: 300, overlap: 80 });
    for (let i = 1; i < chunks.length; i++) {
      const prev = chunks[i - 1] as (typeof chunks)[number];
      const cur = chunks[i] as (typeof chunks)[number];
      expect(cur.start).toBeLessThan(prev.end);
      expect(prev.end - cur.start).toBeLessThanOrEqual(80);
    }
  });

  it("hard-cuts text without spaces and never splits a surrogate pair", () => {
    const text = "😀".repeat(500) + "x".repeat(777);
    const chunks = chunkText(text, { maxChars: 101, overlap: 0 });
    expect(chunks.map((c) => c.text).join("")).toBe(text);
    for (const c of chunks) {
      expect(c.text.length).toBeLessThanOrEqual(101);
      expect(c.text).toBe(c.text.normalize()); // well-formed: a lone surrogate would not survive
      expect(/^[\uDC00-\uDFFF]/.test(c.text)).toBe(false);
    }
  });

  it("yields nothing for whitespace and one chunk for short text", () => {
    expect(chunkText("  \n\t ", { maxChars: 100, overlap: 10 })).toEqual([]);
    expect(chunkText("  hello world ", { maxChars: 100, overlap: 10 })).toEqual([
      { index: 0, text: "hello world", start: 2, end: 13 },
    ]);
  });

  it("rejects nonsense options", () => {
    expect(() => chunkText("abc", { maxChars: 0, overlap: 0 })).toThrow(RangeError);
    expect(() => chunkText("abc", { maxChars: 10, overlap: 10 })).toThrow(RangeError);
  });

  it("shrinks chunks that do not fit the model's window, and still covers the text", () => {
    const text = essay(30);
    const fits = (t: string) => t.split(/\s+/).length <= 25;
    const chunks = chunkText(text, { maxChars: 1000, overlap: 100, fits });
    for (const c of chunks) expect(fits(c.text), c.text).toBe(true);
    const covered = new Uint8Array(text.length);
    for (const c of chunks) covered.fill(1, c.start, c.end);
    for (let i = 0; i < text.length; i++)
      if (!/\s/.test(text[i] as string)) expect(covered[i]).toBe(1);
    expect(chunks.length).toBeLessThan(text.length / 50);
  });
});
