import { Readability } from "@mozilla/readability";
import { parseHTML } from "linkedom";
import { HeadingStack, TextAssembler } from "./assemble.js";
import { decodeUtf8 } from "./text.js";
import type { Extracted, SourceFormat } from "./types.js";

// linkedom gives Readability the DOM it needs without a browser (and parses with htmlparser2,
// which decodes entities); Readability (Firefox Reader View) decides what is the article and
// what is navigation, banners, footers and asides, so no list of class names lives here.

/** The few DOM members the walk reads (linkedom's nodes have them; its types need lib.dom). */
interface DomNode {
  nodeType: number;
  nodeName: string;
  nodeValue: string | null;
  textContent: string | null;
  childNodes: ArrayLike<DomNode>;
}
interface DomDocument {
  title: string;
  documentElement: DomNode | null;
  querySelector(selector: string): DomNode | null;
}

/**
 * linkedom builds the tree as written, without the <html>/<body> a browser implies, so a
 * fragment (no <html> root) is wrapped in a document first.
 */
function parseDocument(html: string): DomDocument {
  const parse = (s: string) => (parseHTML(s) as unknown as { document: DomDocument }).document;
  const document = parse(html);
  if (document.documentElement?.nodeName.toUpperCase() === "HTML") return document;
  return parse(`<!doctype html><html><head></head><body>${html}</body></html>`);
}

const TEXT_NODE = 3;
const ELEMENT_NODE = 1;

// HTML's block-level (flow) elements: each ends a paragraph.
const BLOCKS = new Set(
  `ADDRESS ARTICLE ASIDE BLOCKQUOTE CAPTION DETAILS DIALOG DIV DL FIELDSET FIGCAPTION
  FIGURE FOOTER FORM HEADER HGROUP HR MAIN MENU NAV OL P PRE SECTION SUMMARY TABLE TBODY
  TFOOT THEAD UL`.split(/\s+/),
);
// Elements that end a line but not the paragraph: list items and table rows stay together.
const LINES = new Set(["LI", "TR", "DT", "DD", "BR"]);
const CELLS = new Set(["TD", "TH"]);
// Never text a reader sees (Readability drops most of these already; DOCX and the fallback
// path do not go through it).
const SKIP = new Set(
  `SCRIPT STYLE NOSCRIPT TEMPLATE SVG MATH CANVAS IFRAME OBJECT EMBED HEAD TITLE SELECT
  BUTTON`.split(/\s+/),
);
const HEADING = /^H([1-6])$/;

/** A web page: the article Readability finds, with h1–h6 as sections. */
export function extractHtml(bytes: Uint8Array): Extracted {
  const html = decodeUtf8(bytes, "HTML");
  const document = parseDocument(html);
  const pageTitle = clean(document.title);
  const firstH1 = clean(document.querySelector("h1")?.textContent);
  let article: { title?: string | null; content?: DomNode | null } | null = null;
  try {
    // The serializer hands back the article's DOM node, so it is walked as is, not re-parsed.
    article = new Readability(document as never, {
      serializer: (node) => node as unknown as DomNode,
    }).parse();
  } catch {
    // Readability gives up on some odd trees; the whole-document path below still reads them.
  }
  const title = clean(article?.title) || pageTitle || firstH1;
  const fromArticle = walkHtml("html", article?.content ?? null, title, { titleAsHeading: true });
  if (fromArticle) return fromArticle;
  // Readability found no article text (a bare fragment, a page that is all list): keep the
  // whole document (Readability has changed the first parse), minus what is never text.
  const whole = parseDocument(html).documentElement;
  return walkHtml("html", whole, title, { titleAsHeading: false }) ?? empty("html");
}

/** HTML made from another format (DOCX through mammoth): no boilerplate, so no Readability. */
export function extractHtmlFragment(format: SourceFormat, html: string): Extracted {
  const document = parseDocument(`<!doctype html><html><head></head><body>${html}</body></html>`);
  const firstH1 = clean(document.querySelector("h1")?.textContent);
  return (
    walkHtml(format, document.documentElement, firstH1, { titleAsHeading: false }) ?? empty(format)
  );
}

function empty(format: SourceFormat): never {
  return new TextAssembler(format).finish() as never; // throws ExtractError("empty")
}

function clean(s: string | null | undefined): string {
  return (s ?? "").replace(/\s+/g, " ").trim();
}

function walkHtml(
  format: SourceFormat,
  root: DomNode | null,
  title: string,
  { titleAsHeading }: { titleAsHeading: boolean },
): Extracted | null {
  const out = new TextAssembler(format);
  const headings = new HeadingStack();
  let path: readonly string[] = [];
  let buf = "";
  let pre = 0;

  const flush = (): void => {
    // Source indentation is not text: trim each line (a <pre> block keeps its lines as they are).
    const text =
      pre > 0
        ? buf
        : buf
            .split("\n")
            .map((l) => l.trim())
            .join("\n");
    out.add(text, path);
    buf = "";
  };
  const hasH1 = root !== null && containsH1(root);
  // Readability lifts the page's h1 out of the article into its title; put it back as the
  // outermost heading, so sections read "Title > Section" as they do for Markdown.
  const withTitle = titleAsHeading && title !== "" && !hasH1;
  if (withTitle) {
    path = headings.enter(1, title);
    out.add(title, path);
  }

  const walk = (node: DomNode): void => {
    if (node.nodeType === TEXT_NODE) {
      const v = node.nodeValue ?? "";
      buf += pre > 0 ? v : v.replace(/\s+/g, " ");
      return;
    }
    if (node.nodeType !== ELEMENT_NODE) return;
    const name = node.nodeName.toUpperCase();
    if (SKIP.has(name)) return;
    const level = HEADING.exec(name)?.[1];
    if (level) {
      flush();
      const text = clean(node.textContent);
      if (text) {
        path = headings.enter(Number(level), text);
        out.add(text, path);
      }
      return;
    }
    if (name === "BR") {
      buf += "\n";
      return;
    }
    const isBlock = BLOCKS.has(name);
    const isLine = LINES.has(name);
    if (isBlock) flush();
    else if (isLine && buf.trim() !== "") buf += "\n";
    if (name === "PRE") pre++;
    if (CELLS.has(name)) buf += " ";
    for (const child of Array.from(node.childNodes)) walk(child);
    if (CELLS.has(name)) buf += " ";
    if (isBlock) flush();
    else if (isLine) buf += "\n";
    if (name === "PRE") pre--;
  };
  if (root) walk(root);
  flush();
  // A title with nothing under it is no document.
  if (out.blocks <= (withTitle ? 1 : 0)) return null;
  return out.finish({ title });
}

function containsH1(node: DomNode): boolean {
  if (node.nodeName.toUpperCase() === "H1") return true;
  return Array.from(node.childNodes).some((c) => c.nodeType === ELEMENT_NODE && containsH1(c));
}
