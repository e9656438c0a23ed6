import { normaliseText } from "./normalise.js";
import { ExtractError, type Extracted, type Section, type SourceFormat } from "./types.js";

const PARAGRAPH = "\n\n";

/**
 * Builds `Extracted` from blocks (paragraphs, headings, list runs, code) tagged with their
 * heading path and page. Each block is normalised on its own and blocks are joined with one
 * blank line, so the joined text is already normalised (a normalised block starts and ends
 * with a non-space, and a line break composes with nothing under NFC): section offsets are
 * computed once, on the final text, with no re-mapping.
 */
export class TextAssembler {
  private readonly parts: string[] = [];
  private length = 0;
  private readonly sections: Section[] = [];

  constructor(private readonly format: SourceFormat) {}

  /** Adds one block; blank blocks are dropped. A new heading path or page opens a section. */
  add(block: string, headings: readonly string[], page?: number): void {
    const text = normaliseText(block);
    if (text.length === 0) return;
    if (this.parts.length > 0) {
      this.parts.push(PARAGRAPH);
      this.length += PARAGRAPH.length;
    }
    const last = this.sections.at(-1);
    if (!last || last.page !== page || !samePath(last.headings, headings)) {
      // The separator before a block belongs to the section before it, so sections stay
      // contiguous.
      if (last) last.end = this.length;
      this.sections.push({
        headings: [...headings],
        ...(page === undefined ? {} : { page }),
        start: this.length,
        end: this.length,
      });
    }
    this.parts.push(text);
    this.length += text.length;
    (this.sections.at(-1) as Section).end = this.length;
  }

  get isEmpty(): boolean {
    return this.parts.length === 0;
  }

  /** How many (non-blank) blocks were added. */
  get blocks(): number {
    return (this.parts.length + 1) >> 1;
  }

  finish(meta: { title?: string | undefined; pages?: number } = {}): Extracted {
    if (this.isEmpty) throw new ExtractError("empty", `The ${this.format} document holds no text.`);
    const title = meta.title === undefined ? "" : normaliseText(meta.title).replace(/\n+/g, " ");
    return {
      format: this.format,
      text: this.parts.join(""),
      ...(title ? { title } : {}),
      ...(meta.pages === undefined ? {} : { pages: meta.pages }),
      sections: this.sections,
    };
  }
}

function samePath(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((h, i) => h === b[i]);
}

/**
 * The heading path in force while walking a document: a heading of level n closes every open
 * heading of level n or deeper. Skipped levels (h1 then h3) just nest.
 */
export class HeadingStack {
  private readonly open: { level: number; text: string }[] = [];

  enter(level: number, text: string): readonly string[] {
    while ((this.open.at(-1)?.level ?? 0) >= level) this.open.pop();
    this.open.push({ level, text: normaliseText(text).replace(/\n+/g, " ") });
    return this.path;
  }

  get path(): string[] {
    return this.open.map((h) => h.text);
  }
}
