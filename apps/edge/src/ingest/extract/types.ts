/** The upload formats the edge can turn into text. */
export type SourceFormat = "text" | "markdown" | "html" | "pdf" | "docx";

/**
 * A stretch of the extracted text under one heading path (outermost first) and, for PDF, one
 * page. `start`/`end` are UTF-16 offsets into `Extracted.text`; the sections of one document
 * are contiguous and cover the whole text in order (the first starts at 0, each ends where the
 * next starts, the last ends at `text.length`), so every character belongs to exactly one.
 */
export interface Section {
  headings: string[];
  page?: number;
  start: number;
  end: number;
}

export interface Extracted {
  format: SourceFormat;
  /** Normalised with `normaliseText`; paragraphs are separated by one blank line. */
  text: string;
  title?: string;
  /** PDF only: the document's page count (pages without text included). */
  pages?: number;
  sections: Section[];
}

export type ExtractErrorCode = "unsupported_format" | "no_text_layer" | "malformed" | "empty";

/** Why an upload gave no text. The code is stable (API clients branch on it); the message is for people. */
export class ExtractError extends Error {
  constructor(
    readonly code: ExtractErrorCode,
    message: string,
  ) {
    super(message);
    this.name = "ExtractError";
  }
}
