/**
 * `npx tsx scripts/make-document-fixtures.ts`: writes the documents the extraction tests read
 * (test/fixtures/documents/). Output is byte-for-byte deterministic (fixed PDF dates, no ids,
 * no randomness), so re-running it leaves the tree unchanged unless this script changed.
 *
 * Each document holds passages on distinct topics, so a test (or a search run) can check that
 * one passage, and only that one, is found under its heading or page.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { deflateSync } from "node:zlib";
import JSZip from "jszip";
import {
  type PDFDocument as Doc,
  PDFDocument,
  PDFHexString,
  PDFName,
  type PDFPage,
  rgb,
  StandardFonts,
} from "pdf-lib";

const OUT = path.resolve(import.meta.dirname, "../test/fixtures/documents");
// A fixed instant, so the PDFs' /CreationDate and /ModDate never change.
const FIXED_DATE = new Date("2026-01-01T00:00:00Z");

const GUIDE_MD = `---
title: Field Notes on Patient Crafts
author: p2pa test fixtures
tags: [bees, lighthouses, bread]
---

# Patient Crafts

These notes collect three crafts that reward slow, careful work. Each section stands on its own, and *none* of them can be hurried.

## Beekeeping

A honeybee colony needs a dry hive, a queen that lays steadily, and enough stored honey to survive the winter. Beekeepers inspect the brood frames every week in spring, looking for swarm cells along the bottom edge of the comb. Smoke calms the workers because it masks the alarm pheromone that the guard bees release.

### Harvesting honey

Honey is taken only from the supers above the queen excluder, once most cells are capped with wax. The frames are uncapped with a warm knife and spun in an extractor, and the **colony keeps** enough for the cold months.

## Lighthouse Maintenance

A lighthouse keeper's day began by polishing the Fresnel lens, whose glass prisms bend the lamp's light into a single horizontal beam. The brass clockwork that turns the lens had to be wound every few hours through the night. Salt spray corrodes the lantern room, so the iron gallery rails were scraped and repainted each summer.

- Clean the lens with a soft linen cloth.
- Trim the wick and check the paraffin supply.
- Record the weather in the [station log](https://example.org/log).

## Sourdough Baking

A sourdough starter is a culture of wild yeast and lactic acid bacteria kept alive with regular feedings of flour and water. The dough is mixed, left to ferment slowly for many hours, folded to build gluten strength, and shaped into a tight loaf. Baking inside a preheated covered pot traps steam, which lets the crust expand before it sets.

\`\`\`
feed: 50 g starter + 50 g flour + 50 g water
\`\`\`

See [the baker's table](https://example.org/bakers) for hydration ratios.
`;

const ARTICLE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Ice and Spruce: Two Slow Processes | The Long Read</title>
<style>
  body { font-family: Georgia, serif; }
  .cookie-banner { position: fixed; bottom: 0; } /* stylesheet text must never be extracted */
</style>
<script>window.analyticsQueue = []; window.analyticsQueue.push("trackPageView");</script>
</head>
<body>
<div class="cookie-banner" id="cookie-consent" role="dialog" aria-label="Cookie consent">
  <p>We use cookies to personalise content and adverts. <button type="button">Accept all cookies</button> <a href="/privacy">Manage cookie preferences</a></p>
</div>
<header class="site-header">
  <a href="/" class="logo">The Long Read</a>
  <nav class="main-nav" aria-label="Sections">
    <ul>
      <li><a href="/world">World headlines</a></li>
      <li><a href="/science">Science desk</a></li>
      <li><a href="/culture">Culture pages</a></li>
      <li><a href="/subscribe">Subscribe today</a></li>
    </ul>
  </nav>
</header>
<main>
  <article class="story">
    <h1>Ice and Spruce: Two Slow Processes</h1>
    <p class="byline">By Ada Winterbourne, 3 March 2026</p>
    <p>Some things take centuries and some take a single patient winter at the workbench. This piece follows two of them, one made by nature and one by human hands.</p>
    <h2>How Glaciers Form</h2>
    <p>A glacier begins as snow that survives the summer melt. Year after year new layers bury the old ones, and the buried snow recrystallises into grainy firn before it is compressed into dense blue ice. Air bubbles are squeezed out as the weight above it grows, which is why old glacier ice looks so deeply blue.</p>
    <p>Once the ice is thick enough, it starts to flow downhill under its own weight, sliding over meltwater at its base and deforming slowly inside. Where it bends over a rock step the brittle surface cracks into crevasses, and the rubble it pushes ahead and drops at its edges is left behind as moraines.</p>
    <h2>The Craft of Violin Making</h2>
    <p>A luthier carves the arched top of a violin from quartersawn spruce and the back from flamed maple, tapping the plates and listening to their ring while thinning them with small planes. The f-holes are cut by hand, and a thin bass bar is glued under the top to carry the low notes.</p>
    <p>After the body is closed, the maker sets a slender sound post of spruce between top and back, fits the bridge, and applies many thin coats of oil varnish &amp; resin. Makers in Cremona &mdash; Stradivari among them &mdash; let each coat cure in sunlight for days.</p>
  </article>
  <aside class="related">
    <h3>Related stories</h3>
    <ul><li><a href="/travel/beaches">Ten sunny beaches ranked by our readers</a></li></ul>
  </aside>
</main>
<footer class="site-footer">
  <p>&copy; 2026 Long Read Media Group. All rights reserved.</p>
  <ul>
    <li><a href="/about">About the publisher</a></li>
    <li><a href="/careers">Careers at the paper</a></li>
    <li><a href="/contact">Contact the newsroom</a></li>
  </ul>
</footer>
<script src="/static/app.js"></script>
<script>document.getElementById("cookie-consent").hidden = Boolean(localStorage.consentGiven);</script>
</body>
</html>
`;

const NOTES_TXT = `Notes on keeping a bicycle running

Once a month, wipe the chain with a dry rag and add one drop of light oil to each roller. A chain that squeaks or looks dusty wears the cassette and chainrings much faster than a clean one.

Check the tyre pressure before every long ride, because a soft tyre is slower and far more likely to puncture on a sharp stone. The recommended range is printed on the sidewall.
`;

const LETTRE_TXT = `Chère Élise,

Je t'écris depuis la petite maison au bord de la mer où nous avons passé l'été. Le matin, je marche le long de la plage et je regarde les pêcheurs qui rentrent au port avec leurs bateaux chargés de poissons. L'après-midi, je lis dans le jardin sous le vieux figuier, et le soir nous mangeons des crêpes avec les voisins.

J'espère que tu pourras venir nous rendre visite avant la fin du mois. Nous avons beaucoup de choses à nous raconter, et la chambre d'amis est toujours prête pour toi.

Je t'embrasse très fort,
Camille
`;

const REPORT_PAGES: { heading: string; paragraph: string }[] = [
  {
    heading: "Tidal Energy",
    paragraph:
      "Tidal power stations turn the rise and fall of the sea into electricity. Underwater turbines, much like wind turbines laid on the seabed, spin as the tide floods into an estuary and again as it ebbs out. Because the tides follow the pull of the moon, their output can be predicted years in advance, which makes them easier for grid operators to plan around than sunshine or wind.",
  },
  {
    heading: "Coral Reefs",
    paragraph:
      "A coral reef is built by colonies of tiny animals called polyps, which lay down skeletons of calcium carbonate over thousands of years. The polyps live in partnership with algae that give them food and colour. When the water grows too warm the algae are expelled and the coral turns white, a stress known as bleaching that can kill a reef if it lasts for weeks.",
  },
  {
    heading: "Chess Openings",
    paragraph:
      "The first moves of a chess game decide who controls the centre of the board. In the Queen's Gambit, White offers a pawn to pull Black's central pawn aside, while the Sicilian Defence answers the king's pawn with a flank pawn to fight for the centre from the side. Players study these openings so that they reach a good middlegame without spending time at the clock.",
  },
];

function fixDates(doc: Doc, title: string): void {
  doc.setTitle(title);
  doc.setProducer("p2pa make-document-fixtures");
  doc.setCreator("p2pa make-document-fixtures");
  doc.setCreationDate(FIXED_DATE);
  doc.setModificationDate(FIXED_DATE);
}

/** Splits a paragraph into lines that fit `width` points, so pdf.js reads it back in order. */
function wrap(text: string, width: (s: string) => number, max: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(" ")) {
    const next = line ? `${line} ${word}` : word;
    if (line && width(next) > max) {
      lines.push(line);
      line = word;
    } else line = next;
  }
  if (line) lines.push(line);
  return lines;
}

/** One top-level bookmark per page, so the extractor can give each page its heading. */
function addOutline(doc: Doc, pages: PDFPage[], titles: string[]): void {
  const ctx = doc.context;
  const outlineRef = ctx.nextRef();
  const itemRefs = titles.map(() => ctx.nextRef());
  titles.forEach((title, i) => {
    const item: Record<string, unknown> = {
      Title: PDFHexString.fromText(title),
      Parent: outlineRef,
      Dest: [(pages[i] as PDFPage).ref, "XYZ", null, null, null],
    };
    if (i > 0) item.Prev = itemRefs[i - 1];
    if (i < titles.length - 1) item.Next = itemRefs[i + 1];
    // biome-ignore lint/suspicious/noExplicitAny: pdf-lib's obj() literal type is too narrow for refs
    ctx.assign(itemRefs[i] as never, ctx.obj(item as any));
  });
  ctx.assign(
    outlineRef,
    ctx.obj({
      Type: "Outlines",
      First: itemRefs[0] as never,
      Last: itemRefs[itemRefs.length - 1] as never,
      Count: titles.length,
    }),
  );
  doc.catalog.set(PDFName.of("Outlines"), outlineRef);
}

async function reportPdf(): Promise<Uint8Array> {
  const doc = await PDFDocument.create();
  fixDates(doc, "Three Short Reports");
  const regular = await doc.embedFont(StandardFonts.Helvetica);
  const bold = await doc.embedFont(StandardFonts.HelveticaBold);
  const pages: PDFPage[] = [];
  for (const { heading, paragraph } of REPORT_PAGES) {
    const page = doc.addPage([595, 842]); // A4
    pages.push(page);
    page.drawText(heading, { x: 60, y: 760, size: 20, font: bold });
    let y = 720;
    for (const line of wrap(paragraph, (s) => regular.widthOfTextAtSize(s, 12), 470)) {
      page.drawText(line, { x: 60, y, size: 12, font: regular });
      y -= 18;
    }
  }
  addOutline(
    doc,
    pages,
    REPORT_PAGES.map((p) => p.heading),
  );
  return doc.save({ useObjectStreams: false });
}

function crc32(bytes: Uint8Array): number {
  let c = ~0;
  for (const b of bytes) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return ~c >>> 0;
}

/** A small grey-gradient PNG, built by hand so no image library is needed. */
function gradientPng(width: number, height: number): Uint8Array {
  const chunk = (type: string, data: Uint8Array): Buffer => {
    const body = Buffer.concat([Buffer.from(type, "latin1"), data]);
    const out = Buffer.alloc(8 + data.length + 4);
    out.writeUInt32BE(data.length, 0);
    body.copy(out, 4);
    out.writeUInt32BE(crc32(body), 8 + data.length);
    return out;
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 0; // greyscale
  const raw = Buffer.alloc((width + 1) * height);
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++) raw[y * (width + 1) + 1 + x] = (x * 255) / width;
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(raw, { level: 9 })),
    chunk("IEND", new Uint8Array()),
  ]);
}

/** What a scanner without OCR produces: pages of pictures and shapes, no text objects. */
async function scannedPdf(): Promise<Uint8Array> {
  const doc = await PDFDocument.create();
  fixDates(doc, "Scanned letter");
  const image = await doc.embedPng(gradientPng(64, 64));
  for (let i = 0; i < 2; i++) {
    const page = doc.addPage([595, 842]);
    page.drawImage(image, { x: 60, y: 300, width: 475, height: 475 });
    page.drawRectangle({ x: 60, y: 120, width: 300, height: 80, borderColor: rgb(0, 0, 0) });
    page.drawCircle({ x: 450, y: 160, size: 40, color: rgb(0.5, 0.5, 0.5) });
  }
  return doc.save({ useObjectStreams: false });
}

const W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main";
const MEMO_DOCX: { style?: "Heading1" | "Heading2"; text: string }[] = [
  { style: "Heading1", text: "Workshop Memo" },
  { text: "A short memo on two workshop skills, written for the new apprentices." },
  { style: "Heading2", text: "Wood-Fired Ovens" },
  {
    text: "A brick oven is fired for two hours until the dome turns from black to white, which shows the soot has burned away. The embers are then raked out and the floor is mopped, and the loaves bake in the heat stored in the masonry.",
  },
  { style: "Heading2", text: "Rope Splicing" },
  {
    text: "An eye splice joins a rope back into itself without a knot: the strands are unlaid, tucked over and under the standing part three or four times, and rolled smooth. A good splice keeps most of the rope's strength, while a knot can halve it.",
  },
];

const xml = (s: string): string =>
  s
    .replaceAll("&", "&amp;")
    .replaceAll("<", "&lt;")
    .replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;");

/** A minimal WordprocessingML package (what Word saves, less settings and themes). */
async function memoDocx(): Promise<Uint8Array> {
  const head = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n';
  const rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships";
  const paragraphs = MEMO_DOCX.map(
    ({ style, text }) =>
      `<w:p>${style ? `<w:pPr><w:pStyle w:val="${style}"/></w:pPr>` : ""}<w:r><w:t xml:space="preserve">${xml(text)}</w:t></w:r></w:p>`,
  ).join("");
  const style = (id: string, name: string) =>
    `<w:style w:type="paragraph" w:styleId="${id}"><w:name w:val="${name}"/><w:basedOn w:val="Normal"/></w:style>`;
  const parts: Record<string, string> = {
    "[Content_Types].xml": `${head}<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/><Override PartName="/word/styles.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.styles+xml"/></Types>`,
    "_rels/.rels": `${head}<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="${rel}/officeDocument" Target="word/document.xml"/></Relationships>`,
    "word/_rels/document.xml.rels": `${head}<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="${rel}/styles" Target="styles.xml"/></Relationships>`,
    "word/styles.xml": `${head}<w:styles xmlns:w="${W}"><w:style w:type="paragraph" w:default="1" w:styleId="Normal"><w:name w:val="Normal"/></w:style>${style("Heading1", "heading 1")}${style("Heading2", "heading 2")}</w:styles>`,
    "word/document.xml": `${head}<w:document xmlns:w="${W}"><w:body>${paragraphs}<w:sectPr/></w:body></w:document>`,
  };
  const zip = new JSZip();
  // Fixed entry dates (JSZip writes them as UTC DOS times) keep the zip byte-identical.
  for (const [name, content] of Object.entries(parts))
    zip.file(name, content, { date: FIXED_DATE, createFolders: false });
  return zip.generateAsync({
    type: "uint8array",
    compression: "DEFLATE",
    compressionOptions: { level: 9 },
  });
}

const README = `# Document fixtures

Generated by \`npx tsx scripts/make-document-fixtures.ts\` (deterministic: re-running it
rewrites identical bytes); edit the script, not these files. \`guide.md\` is Markdown with YAML
front matter (title) and nested headings over passages on beekeeping, honey harvesting,
lighthouse maintenance and sourdough baking; \`article.html\` is a news-style page whose
article (glacier formation, violin making) sits among boilerplate that extraction must drop: a
cookie banner, header and nav menu, related-stories aside, footer links, script and style
tags; \`report.pdf\` has three pages made with pdf-lib in standard Helvetica, each a heading and
a wrapped paragraph (tidal energy, coral reefs, chess openings), with one bookmark per page;
\`scanned.pdf\` has two pages holding only an image and drawn shapes (no text layer);
\`memo.docx\` is a minimal Word document (Heading 1/2 styles; wood-fired ovens, rope
splicing) built with JSZip; \`notes.txt\` is plain English text (bicycle care);
\`lettre.txt\` is a French letter for language detection. They are read by
apps/edge/test/ingest/extract.test.ts. The \`biome.json\` here (not generated) turns Biome off
for this folder: its Markdown formatter would rewrite \`guide.md\`'s front matter.
`;

async function main(): Promise<void> {
  mkdirSync(OUT, { recursive: true });
  const files: Record<string, string | Uint8Array> = {
    "guide.md": GUIDE_MD,
    "article.html": ARTICLE_HTML,
    "notes.txt": NOTES_TXT,
    "lettre.txt": LETTRE_TXT,
    "report.pdf": await reportPdf(),
    "scanned.pdf": await scannedPdf(),
    "memo.docx": await memoDocx(),
    "README.md": README,
  };
  for (const [name, content] of Object.entries(files)) {
    writeFileSync(path.join(OUT, name), content);
    console.log(`wrote ${path.relative(process.cwd(), path.join(OUT, name))}`);
  }
}

await main();
