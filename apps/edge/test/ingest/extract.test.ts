import { chunkSections } from "@p2pa/shared";
import { afterEach, describe, expect, it, vi } from "vitest";
import articleHtml from "../../../../test/fixtures/documents/article.html?raw";
import guideMd from "../../../../test/fixtures/documents/guide.md?raw";
import lettreTxt from "../../../../test/fixtures/documents/lettre.txt?raw";
import memoDocxUrl from "../../../../test/fixtures/documents/memo.docx?url&inline";
import notesTxt from "../../../../test/fixtures/documents/notes.txt?raw";
import reportPdfUrl from "../../../../test/fixtures/documents/report.pdf?url&inline";
import scannedPdfUrl from "../../../../test/fixtures/documents/scanned.pdf?url&inline";
import {
  detectLanguages,
  ExtractError,
  type Extracted,
  extract,
  formatOf,
  normaliseText,
} from "../../src/ingest/extract/index.js";

// These run inside workerd (the edge pool, nodejs_compat), which is the proof that the
// extraction libraries work on the edge.

const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);
function fromDataUrl(url: string): Uint8Array {
  const bin = atob(url.slice(url.indexOf(",") + 1));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}
const reportPdf = fromDataUrl(reportPdfUrl);
const scannedPdf = fromDataUrl(scannedPdfUrl);
const memoDocx = fromDataUrl(memoDocxUrl);

/** The section holding `needle`, which must occur once and within one section. */
function sectionOf(doc: Extracted, needle: string) {
  const at = doc.text.indexOf(needle);
  expect(at, `"${needle}" in the text`).toBeGreaterThanOrEqual(0);
  expect(doc.text.indexOf(needle, at + 1), `"${needle}" only once`).toBe(-1);
  const section = doc.sections.find((s) => at >= s.start && at + needle.length <= s.end);
  expect(section, `"${needle}" inside one section`).toBeDefined();
  return section as Extracted["sections"][number];
}

/** What every extractor promises: normalised text, contiguous sections covering it. */
function expectWellFormed(doc: Extracted): void {
  expect(normaliseText(doc.text)).toBe(doc.text);
  expect(doc.text.length).toBeGreaterThan(0);
  expect(doc.sections[0]?.start).toBe(0);
  expect(doc.sections.at(-1)?.end).toBe(doc.text.length);
  doc.sections.forEach((s, i) => {
    expect(s.end).toBeGreaterThan(s.start);
    if (i > 0) expect(s.start).toBe(doc.sections[i - 1]?.end);
  });
}

async function extractError(bytes: Uint8Array, format: Parameters<typeof extract>[1]) {
  const err = await extract(bytes, format).then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ExtractError);
  return err as ExtractError;
}

afterEach(() => vi.restoreAllMocks());

describe("markdown", () => {
  it("keeps readable prose under the heading tree, with the front matter's title", async () => {
    const doc = await extract(utf8(guideMd), "markdown");
    expectWellFormed(doc);
    expect(doc.format).toBe("markdown");
    expect(doc.title).toBe("Field Notes on Patient Crafts");
    expect(sectionOf(doc, "A honeybee colony needs a dry hive").headings).toEqual([
      "Patient Crafts",
      "Beekeeping",
    ]);
    expect(sectionOf(doc, "spun in an extractor, and the colony keeps enough").headings).toEqual([
      "Patient Crafts",
      "Beekeeping",
      "Harvesting honey",
    ]);
    expect(sectionOf(doc, "polishing the Fresnel lens").headings).toEqual([
      "Patient Crafts",
      "Lighthouse Maintenance",
    ]);
    expect(sectionOf(doc, "feed: 50 g starter + 50 g flour").headings).toEqual([
      "Patient Crafts",
      "Sourdough Baking",
    ]);
    expect(sectionOf(doc, "none of them can be hurried").headings).toEqual(["Patient Crafts"]);
    // Headings are their own paragraphs; list items one per line; syntax gone.
    expect(doc.text).toContain("\n\nLighthouse Maintenance\n\nA lighthouse keeper's day");
    expect(doc.text).toContain(
      "Clean the lens with a soft linen cloth.\nTrim the wick and check the paraffin supply.\nRecord the weather in the station log.",
    );
    expect(doc.text).toContain("See the baker's table for hydration ratios.");
    for (const syntax of ["**", "](", "#", "title:", "author:", "---", "```", "*none*"])
      expect(doc.text).not.toContain(syntax);
  });

  it("falls back to the first h1 for a title and drops front matter that is all there is", async () => {
    const doc = await extract(utf8("Intro line.\n\n# Real Title\n\nBody *text*."), "markdown");
    expect(doc.title).toBe("Real Title");
    expect(doc.sections.map((s) => s.headings)).toEqual([[], ["Real Title"]]);
    expect((await extractError(utf8("---\ntitle: Only\n---\n"), "markdown")).code).toBe("empty");
  });
});

describe("html", () => {
  it("keeps the article and drops nav, banners, footer, scripts and styles", async () => {
    const doc = await extract(utf8(articleHtml), "html");
    expectWellFormed(doc);
    expect(doc.title).toBe("Ice and Spruce: Two Slow Processes");
    const glacier = sectionOf(
      doc,
      "recrystallises into grainy firn before it is compressed into dense blue ice",
    );
    expect(glacier.headings).toEqual(["Ice and Spruce: Two Slow Processes", "How Glaciers Form"]);
    expect(sectionOf(doc, "left behind as moraines").headings).toEqual(glacier.headings);
    expect(
      sectionOf(doc, "carves the arched top of a violin from quartersawn spruce").headings,
    ).toEqual(["Ice and Spruce: Two Slow Processes", "The Craft of Violin Making"]);
    expect(sectionOf(doc, "one made by nature and one by human hands").headings).toEqual([
      "Ice and Spruce: Two Slow Processes",
    ]);
    // Entities decoded; block elements give paragraph breaks.
    expect(doc.text).toContain(
      "oil varnish & resin. Makers in Cremona — Stradivari among them — let",
    );
    expect(doc.text).toContain("deeply blue.\n\nOnce the ice is thick enough");
    for (const boilerplate of [
      "cookie",
      "Accept all",
      "World headlines",
      "Science desk",
      "Subscribe today",
      "The Long Read",
      "Related stories",
      "Ten sunny beaches",
      "All rights reserved",
      "Careers at the paper",
      "Contact the newsroom",
      "analyticsQueue",
      "trackPageView",
      "font-family",
      "localStorage",
    ])
      expect(doc.text).not.toContain(boilerplate);
  });

  it("keeps a bare fragment Readability has no article for", async () => {
    const doc = await extract(
      utf8("<h2>Short</h2><p>Just one line &amp; done.</p><script>x()</script>"),
      "html",
    );
    expect(doc.text).toContain("Just one line & done.");
    expect(doc.text).not.toContain("x()");
    expect((await extract(utf8("<html><p>No body tag</p></html>"), "html")).text).toBe(
      "No body tag",
    );
    expect((await extract(utf8("just words"), "html")).text).toBe("just words");
    expect((await extractError(utf8("<html><script>only()</script></html>"), "html")).code).toBe(
      "empty",
    );
  });
});

describe("pdf", () => {
  it("gives one section per page with the page's passage, in reading order", async () => {
    const fetchSpy = vi.spyOn(globalThis, "fetch");
    const doc = await extract(reportPdf, "pdf");
    expectWellFormed(doc);
    expect(doc.pages).toBe(3);
    expect(doc.title).toBe("Three Short Reports");
    expect(doc.sections.map((s) => s.page)).toEqual([1, 2, 3]);
    // Headings come from the PDF's outline (bookmarks).
    expect(doc.sections.map((s) => s.headings)).toEqual([
      ["Tidal Energy"],
      ["Coral Reefs"],
      ["Chess Openings"],
    ]);
    // Sentences wrapped across lines come back whole.
    expect(
      sectionOf(doc, "Underwater turbines, much like wind turbines laid on the seabed, spin").page,
    ).toBe(1);
    expect(sectionOf(doc, "lay down skeletons of calcium carbonate over thousands").page).toBe(2);
    expect(sectionOf(doc, "the Sicilian Defence answers the king's pawn").page).toBe(3);
    expect(doc.text.startsWith("Tidal Energy\n\nTidal power stations")).toBe(true);
    expect(doc.text).toContain(
      "easier for grid operators to plan around than sunshine or wind.\n\nCoral Reefs",
    );
    // pdf.js ran in this isolate and asked the network for nothing (fonts, cmaps, wasm).
    expect(fetchSpy).not.toHaveBeenCalled();
  }, 20_000); // the first PDF loads pdf.js (~2 s here); later ones take milliseconds

  it("refuses a PDF without a text layer, pointing at OCR", async () => {
    const err = await extractError(scannedPdf, "pdf");
    expect(err.code).toBe("no_text_layer");
    expect(err.message).toMatch(/no text layer.*OCR/);
  });

  it("reports a truncated or corrupt PDF as malformed", async () => {
    const truncated = reportPdf.slice(0, Math.floor(reportPdf.length / 3));
    expect((await extractError(truncated, "pdf")).code).toBe("malformed");
    expect((await extractError(utf8("%PDF-1.7\nthis is not a PDF at all"), "pdf")).code).toBe(
      "malformed",
    );
  });
});

describe("docx", () => {
  it("goes through mammoth and the HTML path, Word headings as sections", async () => {
    const doc = await extract(memoDocx, "docx");
    expectWellFormed(doc);
    expect(doc.title).toBe("Workshop Memo");
    expect(sectionOf(doc, "the dome turns from black to white").headings).toEqual([
      "Workshop Memo",
      "Wood-Fired Ovens",
    ]);
    expect(sectionOf(doc, "An eye splice joins a rope back into itself").headings).toEqual([
      "Workshop Memo",
      "Rope Splicing",
    ]);
    expect((await extractError(reportPdf, "docx")).code).toBe("malformed");
  });
});

describe("text", () => {
  it("is one section with no headings, normalised, BOM stripped", async () => {
    const doc = await extract(utf8(`\uFEFF${notesTxt.replaceAll("\n", "\r\n")}`), "text");
    expectWellFormed(doc);
    expect(doc.text).toBe(normaliseText(notesTxt));
    expect(doc.text.startsWith("Notes on keeping a bicycle running\n\nOnce a month")).toBe(true);
    expect(doc.sections).toEqual([{ headings: [], start: 0, end: doc.text.length }]);
  });

  it("refuses invalid UTF-8 and whitespace", async () => {
    const latin1 = new Uint8Array([0x63, 0x61, 0x66, 0xe9, 0x20, 0x6f, 0x6b]); // "café ok" in Latin-1
    const err = await extractError(latin1, "text");
    expect(err.code).toBe("malformed");
    expect(err.message).toMatch(/UTF-8/);
    expect((await extractError(utf8(" \n\t\r\n "), "text")).code).toBe("empty");
    expect((await extractError(utf8("x"), "rtf" as never)).code).toBe("unsupported_format");
  });
});

describe("sections feed chunkSections", () => {
  it("gives chunks that stay inside one heading path", async () => {
    const doc = await extract(utf8(guideMd), "markdown");
    const chunks = chunkSections(doc.text, doc.sections, { maxChars: 200, overlap: 30 });
    expect(chunks.length).toBeGreaterThan(doc.sections.length);
    for (const c of chunks) expect(doc.text.slice(c.start, c.end)).toBe(c.text);
    const honey = chunks.find((c) => c.text.includes("queen excluder"));
    expect(honey?.headings).toEqual(["Patient Crafts", "Beekeeping", "Harvesting honey"]);
  });
});

describe("formatOf", () => {
  const pdfBytes = utf8("%PDF-1.7\n...");
  const zipBytes = new Uint8Array([0x50, 0x4b, 0x03, 0x04, 0, 0]);
  const text = utf8("hello");
  it("takes the name, then the declared type, and checks binary formats' signatures", () => {
    expect(formatOf("guide.md", "text/plain", text)).toBe("markdown");
    expect(formatOf("notes.TXT", undefined, text)).toBe("text");
    expect(formatOf("page.htm", "application/octet-stream", text)).toBe("html");
    expect(formatOf("upload", "text/markdown; charset=utf-8", text)).toBe("markdown");
    expect(formatOf("report.pdf", "application/pdf", pdfBytes)).toBe("pdf");
    expect(formatOf("memo.docx", undefined, zipBytes)).toBe("docx");
  });
  it("refuses a claim the bytes contradict, and accepts a PDF by its signature", () => {
    expect(formatOf("report.pdf", "application/pdf", text)).toBeNull();
    expect(formatOf("memo.docx", undefined, text)).toBeNull();
    expect(formatOf("notes.txt", "text/plain", zipBytes)).toBeNull();
    expect(formatOf("scan", "application/octet-stream", pdfBytes)).toBe("pdf");
    expect(formatOf("misnamed.txt", "text/plain", pdfBytes)).toBe("pdf");
    expect(formatOf("archive.zip", "application/zip", zipBytes)).toBeNull();
    expect(formatOf("photo.jpeg", "image/jpeg", text)).toBeNull();
    expect(formatOf("constructor", undefined, text)).toBeNull();
  });
});

describe("detectLanguages", () => {
  it("names English, French, German, Spanish, Dutch, Italian and Russian text and gives up on scraps", async () => {
    const guide = await extract(utf8(guideMd), "markdown");
    const cases: [string, string | null][] = [
      [guide.text, "en"],
      [normaliseText(lettreTxt), "fr"],
      [
        "Die Bienen sammeln im Frühling den Nektar der Blüten, und der Imker kontrolliert die Waben.",
        "de",
      ],
      ["El panadero mezcla la harina con el agua y deja que la masa fermente lentamente.", "es"],
      ["Het regent al drie dagen en de rivier is over de weg naar de molen gestroomd.", "nl"],
      ["Piove da tre giorni e il fiume è straripato sulla strada del vecchio mulino.", "it"],
      ["Дождь идёт уже три дня, и река вышла из берегов прямо на старую дорогу к мельнице.", "ru"],
      ["ok", null],
      // One short line is not enough to tell.
      ["Note 1: 3f9a the tide tables for the harbour this week.", null],
      ["12345 67 — !!", null],
      ["", null],
    ];
    // One call for them all, answered in order.
    expect(await detectLanguages(cases.map(([text]) => text))).toEqual(cases.map(([, l]) => l));
    // Texts too short to tell need no detector at all.
    expect(await detectLanguages(["ok", "", "a short note"])).toEqual([null, null, null]);
  });
});

describe("normaliseText", () => {
  const samples = [
    "e\u0301t\u00e9",
    "  a\r\nb\rc  \n\n\n\n d\t\te  ",
    "x\u0000y\u0007z\u000Bw\u001F\u007F\u0085",
    "line one   \nline\u00A0\u00A0two \t\n \n \n\nend",
    "e\u0001\u0301",
    "para\u2029next\u2028line",
    "\n\n \t \n",
  ];
  it("NFC-normalises, fixes line ends, drops controls, collapses spaces and blank lines", () => {
    expect(normaliseText("e\u0301")).toBe("é");
    expect(normaliseText("e\u0001\u0301")).toBe("é");
    expect(normaliseText("  a\r\nb\rc  \n\n\n\n d\t\te  ")).toBe("a\nb\nc\n\n d e");
    expect(normaliseText("x\u0000y\u0007z\u000Bw\u001F\u007F\u0085")).toBe("xyzw");
    expect(normaliseText("tab\there\nkept\n")).toBe("tab here\nkept");
    expect(normaliseText("line one   \nline\u00A0\u00A0two \t\n \n \n\nend")).toBe(
      "line one\nline two\n\nend",
    );
    expect(normaliseText("\n\n \t \n")).toBe("");
  });
  it("gives printable ASCII the same text as the Unicode steps do", () => {
    // A control character (dropped) sends the text down the path that converts and composes.
    const alphabet = ["a", "Z", "0", ".", " ", " ", "  ", "\t", "\n", "\n\n\n", "~"];
    let seed = 11;
    const rand = () => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed / 2147483648;
    };
    for (let k = 0; k < 5_000; k++) {
      const text = Array.from(
        { length: Math.floor(rand() * 40) },
        () => alphabet[Math.floor(rand() * alphabet.length)],
      ).join("");
      expect(normaliseText(text), JSON.stringify(text)).toBe(normaliseText(`\u0001${text}`));
    }
    expect(normaliseText(notesTxt)).toBe(normaliseText(`\u0001${notesTxt}`));
  });
  it("is idempotent", () => {
    for (const s of [...samples, guideMd, articleHtml, lettreTxt]) {
      const once = normaliseText(s);
      expect(normaliseText(once)).toBe(once);
    }
  });
});
