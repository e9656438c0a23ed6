/**
 * Text extraction for uploads: bytes of a supported format in, normalised text with its
 * heading/page sections out, ready for `chunkSections`. Every library used here runs in
 * workerd (apps/edge/test/ingest runs these in the edge test pool).
 */
import { extractDocx } from "./docx.js";
import { extractHtml } from "./html.js";
import { extractMarkdown } from "./markdown.js";
import { extractPdf } from "./pdf.js";
import { extractText } from "./text.js";
import { ExtractError, type Extracted, type SourceFormat } from "./types.js";

export { formatOf } from "./format.js";
export { detectLanguages } from "./language.js";
export { normaliseText } from "./normalise.js";
export {
  ExtractError,
  type Extracted,
  type Section,
  type SourceFormat,
} from "./types.js";

/**
 * Extracts the text of a document whose format `formatOf` settled. Throws ExtractError:
 * "malformed" (invalid UTF-8, corrupt or encrypted PDF, unreadable DOCX), "no_text_layer"
 * (a PDF of images), "empty" (nothing but whitespace), "unsupported_format".
 */
export async function extract(bytes: Uint8Array, format: SourceFormat): Promise<Extracted> {
  switch (format) {
    case "text":
      return extractText(bytes);
    case "markdown":
      return extractMarkdown(bytes);
    case "html":
      return extractHtml(bytes);
    case "pdf":
      return extractPdf(bytes);
    case "docx":
      return extractDocx(bytes);
    default:
      throw new ExtractError(
        "unsupported_format",
        `Unsupported document format: ${String(format)}.`,
      );
  }
}
