/** One piece of a document, with its place in the original text. */
export interface TextChunk {
  index: number;
  text: string;
  /** Offset of the first character in the source text (UTF-16 code units). */
  start: number;
  /** Offset one past the last character in the source text. */
  end: number;
}

export interface ChunkOptions {
  /** Largest chunk in characters. */
  maxChars: number;
  /** Characters shared by consecutive chunks, so a sentence cut at a boundary is whole in one. */
  overlap: number;
  /**
   * Whether a chunk fits the model's window (its token count). A chunk that does not fit is
   * made smaller until it does, so the model never has to truncate.
   */
  fits?: (text: string) => boolean;
}

// Break points, best first. A chunk ends at the last one of the best kind found in the
// second half of the window, so chunks stay near maxChars without cutting words.
const BREAKS: RegExp[] = [/\n\s*\n/g, /\n/g, /[.!?。！？]["')\]]?\s/g, /[;:,]\s/g, /\s/g];

function findBreak(text: string, from: number, to: number): number {
  const window = text.slice(from, to);
  for (const re of BREAKS) {
    re.lastIndex = 0;
    let last = -1;
    for (let m = re.exec(window); m !== null; m = re.exec(window)) last = m.index + m[0].length;
    if (last > 0) return from + last;
  }
  return to;
}

function isLowSurrogate(code: number): boolean {
  return code >= 0xdc00 && code <= 0xdfff;
}

/**
 * Splits text into overlapping chunks no longer than `maxChars`, preferring paragraph, line,
 * sentence and word boundaries. Whitespace-only input yields no chunks. Never splits a
 * surrogate pair, so every chunk is valid Unicode.
 */
export function chunkText(text: string, options: ChunkOptions): TextChunk[] {
  const { maxChars, overlap } = options;
  if (!Number.isInteger(maxChars) || maxChars < 1) throw new RangeError("maxChars must be >= 1");
  if (!Number.isInteger(overlap) || overlap < 0 || overlap >= maxChars) {
    throw new RangeError("overlap must be >= 0 and < maxChars");
  }
  const chunks: TextChunk[] = [];
  let pos = 0;
  while (pos < text.length) {
    let limit = maxChars;
    let end: number;
    let lead: number;
    let body: string;
    for (;;) {
      end = Math.min(pos + limit, text.length);
      if (end < text.length) {
        end = findBreak(text, pos + Math.floor(limit / 2), end);
        if (isLowSurrogate(text.charCodeAt(end))) end -= 1;
      }
      const raw = text.slice(pos, end);
      lead = raw.length - raw.trimStart().length;
      body = raw.trim();
      if (!options.fits || body.length === 0 || limit <= 1 || options.fits(body)) break;
      // Too many tokens for the model: try a smaller window at a good break.
      limit = Math.max(1, Math.floor(limit * 0.8));
    }
    if (body.length > 0) {
      chunks.push({
        index: chunks.length,
        text: body,
        start: pos + lead,
        end: pos + lead + body.length,
      });
    }
    if (end >= text.length) break;
    // A chunk shrunk to fit keeps its overlap in proportion, so the walk still moves forward.
    const shared = Math.min(overlap, Math.floor(limit / 4));
    let next = end - shared;
    if (shared > 0) {
      // Start the overlap at a word boundary so no chunk begins mid-word.
      const ws = text.slice(next, end).search(/\s/);
      if (ws >= 0) next += ws + 1;
      else next = end;
    }
    if (isLowSurrogate(text.charCodeAt(next))) next += 1;
    pos = Math.max(next, pos + 1);
  }
  return chunks;
}

/** A chunk of a sectioned document, with the heading path and page of the section it is from. */
export interface SectionChunk extends TextChunk {
  headings?: string[];
  page?: number;
}

/**
 * Chunks each section on its own (a chunk never spans two sections or two pages), numbering
 * chunks across the whole text; offsets are into the whole text; empty sections are skipped.
 *
 * No merging: a short section (a heading directly followed by a subheading, a one-line
 * page) stays its own small chunk. Merging it into its neighbour would leave the chunk with
 * two heading paths (or two pages) and no true single label, and a lone heading costs one
 * small embedding; predictable labels are worth more.
 *
 * Sections must lie within the text and must not overlap (the order they come in is kept).
 */
export function chunkSections(
  text: string,
  sections: { headings: string[]; page?: number; start: number; end: number }[],
  options: ChunkOptions,
): SectionChunk[] {
  chunkText("", options); // validates the options even when no section has text
  const chunks: SectionChunk[] = [];
  let last = 0;
  for (const section of sections) {
    const { start, end } = section;
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < last || end < start) {
      throw new RangeError("sections must be in order, within the text and must not overlap");
    }
    if (end > text.length) throw new RangeError("a section ends past the end of the text");
    last = end;
    for (const c of chunkText(text.slice(start, end), options)) {
      chunks.push({
        index: chunks.length,
        text: c.text,
        start: start + c.start,
        end: start + c.end,
        ...(section.headings.length > 0 ? { headings: [...section.headings] } : {}),
        ...(section.page === undefined ? {} : { page: section.page }),
      });
    }
  }
  return chunks;
}
