import { extractTextItems, getDocumentProxy, type StructuredTextItem } from "unpdf";
import { TextAssembler } from "./assemble.js";
import { ExtractError, type Extracted } from "./types.js";

// unpdf ships pdf.js's serverless build: no worker thread (pdf.js runs its "fake worker" in
// this isolate) and no DOM. Everything pdf.js could fetch at run time is turned off, so a
// document can never make it wait on the network: no standard-font or CMap URLs (text
// extraction falls back to built-in metrics), no wasm image decoders, no eval'd font code.
const PDFJS_OPTIONS = {
  isEvalSupported: false,
  useWorkerFetch: false,
  useWasm: false,
  useSystemFonts: false,
  disableFontFace: true,
  isOffscreenCanvasSupported: false,
  isImageDecoderSupported: false,
  standardFontDataUrl: undefined,
  cMapUrl: undefined,
  wasmUrl: undefined,
  iccUrl: undefined,
  disableAutoFetch: true,
  disableStream: true,
  disableRange: true,
  verbosity: 0, // errors only: a malformed file is reported through the thrown error
} as const;

type PdfDocument = Awaited<ReturnType<typeof getDocumentProxy>>;

/**
 * Text per page (pages joined by a paragraph break, one section per page), `pages` set, the
 * document-info Title as title, and headings from the outline (bookmarks) when it has them.
 */
export async function extractPdf(bytes: Uint8Array): Promise<Extracted> {
  let pdf: PdfDocument;
  try {
    // A copy: pdf.js may transfer (detach) the buffer it is given; the caller keeps its bytes.
    pdf = await getDocumentProxy(bytes.slice(), PDFJS_OPTIONS);
  } catch (err) {
    throw pdfError(err);
  }
  try {
    const { totalPages, items } = await extractTextItems(pdf);
    const pageHeadings = await outlineByPage(pdf, totalPages);
    const out = new TextAssembler("pdf");
    items.forEach((pageItems, i) => {
      for (const paragraph of paragraphs(pageItems))
        out.add(paragraph, pageHeadings[i] ?? [], i + 1);
    });
    if (out.isEmpty) {
      throw new ExtractError(
        "no_text_layer",
        `The PDF's ${totalPages} page(s) have no text layer (scanned?); run OCR first (for example ocrmypdf) and upload the result.`,
      );
    }
    const info = (await pdf.getMetadata().catch(() => null))?.info as
      | { Title?: unknown }
      | undefined;
    const title = typeof info?.Title === "string" ? info.Title : undefined;
    return out.finish({ title, pages: totalPages });
  } catch (err) {
    throw err instanceof ExtractError ? err : pdfError(err);
  } finally {
    await pdf.loadingTask.destroy().catch(() => {});
  }
}

function pdfError(err: unknown): ExtractError {
  const name = (err as { name?: string } | null)?.name;
  const detail = err instanceof Error ? err.message : String(err);
  if (name === "PasswordException") {
    return new ExtractError(
      "malformed",
      "The PDF is encrypted with a password; upload an unprotected copy.",
    );
  }
  return new ExtractError(
    "malformed",
    `The PDF could not be read (corrupt or truncated?): ${detail}`,
  );
}

/**
 * A page's text items as paragraphs. pdf.js marks line ends (`hasEOL`) but not paragraphs, so
 * a paragraph ends where the gap to the next line is clearly more than the line spacing
 * (1.6 × the larger font size; body text is set at 1.2–1.5). Lines inside a paragraph are
 * joined with a space, so sentences wrapped across lines read (and chunk) as sentences.
 */
function paragraphs(items: StructuredTextItem[]): string[] {
  const lines: { text: string; y: number; size: number }[] = [];
  let text = "";
  let y = Number.NaN;
  let size = 0;
  const endLine = (): void => {
    if (text.trim() !== "") lines.push({ text, y, size });
    text = "";
    y = Number.NaN;
    size = 0;
  };
  for (const item of items) {
    if (item.str !== "") {
      if (Number.isNaN(y)) y = item.y;
      size = Math.max(size, item.fontSize);
      text += item.str;
    }
    if (item.hasEOL) endLine();
  }
  endLine();
  const out: string[] = [];
  let current = "";
  lines.forEach((line, i) => {
    const prev = lines[i - 1];
    const gap = prev ? Math.abs(prev.y - line.y) : 0;
    if (prev && gap > 1.6 * Math.max(prev.size, line.size)) {
      out.push(current);
      current = "";
    }
    current = current ? `${current} ${line.text.trim()}` : line.text.trim();
  });
  if (current) out.push(current);
  return out;
}

interface OutlineNode {
  title: string;
  dest: string | unknown[] | null;
  items: OutlineNode[];
}

/**
 * For each page, the heading path of the outline entry in force there: the first entry that
 * points at the page, else the last one before it. Approximate by design (an entry that
 * points mid-page labels the whole page), and empty when the PDF has no outline.
 */
async function outlineByPage(pdf: PdfDocument, pages: number): Promise<string[][]> {
  const byPage: string[][] = Array.from({ length: pages }, () => []);
  let outline: OutlineNode[] | null;
  try {
    outline = (await pdf.getOutline()) as OutlineNode[] | null;
  } catch {
    return byPage; // a broken outline costs the headings, not the text
  }
  if (!outline?.length) return byPage;
  const entries: { page: number; path: string[] }[] = [];
  const visit = async (nodes: OutlineNode[], parents: string[]): Promise<void> => {
    for (const node of nodes) {
      const path = [...parents, node.title.replace(/\s+/g, " ").trim()];
      const page = await destinationPage(pdf, node.dest);
      if (page !== null) entries.push({ page, path });
      await visit(node.items ?? [], path);
    }
  };
  await visit(outline, []);
  let inForce: string[] = [];
  for (let p = 0; p < pages; p++) {
    const here = entries.find((e) => e.page === p);
    if (here) inForce = here.path;
    else for (const e of entries) if (e.page < p) inForce = e.path;
    byPage[p] = inForce;
  }
  return byPage;
}

async function destinationPage(
  pdf: PdfDocument,
  dest: OutlineNode["dest"],
): Promise<number | null> {
  try {
    const explicit = typeof dest === "string" ? await pdf.getDestination(dest) : dest;
    const ref = explicit?.[0];
    if (typeof ref === "number") return ref;
    if (ref && typeof ref === "object") return await pdf.getPageIndex(ref as never);
  } catch {
    // An entry pointing nowhere (or at a URL) has no page.
  }
  return null;
}
