import type { SourceFormat } from "./types.js";

// The file name's extension is the most reliable hint for text formats (browsers send
// text/plain or application/octet-stream for .md); the declared Content-Type decides when the
// name says nothing; for binary formats the bytes must agree.
const BY_EXTENSION = new Map<string, SourceFormat>([
  ["txt", "text"],
  ["text", "text"],
  ["md", "markdown"],
  ["markdown", "markdown"],
  ["mdown", "markdown"],
  ["mkd", "markdown"],
  ["html", "html"],
  ["htm", "html"],
  ["xhtml", "html"],
  ["pdf", "pdf"],
  ["docx", "docx"],
]);

const BY_CONTENT_TYPE = new Map<string, SourceFormat>([
  ["text/plain", "text"],
  ["text/markdown", "markdown"],
  ["text/x-markdown", "markdown"],
  ["text/html", "html"],
  ["application/xhtml+xml", "html"],
  ["application/pdf", "pdf"],
  ["application/vnd.openxmlformats-officedocument.wordprocessingml.document", "docx"],
]);

const PDF_MAGIC = [0x25, 0x50, 0x44, 0x46, 0x2d]; // "%PDF-"
const ZIP_MAGIC = [0x50, 0x4b, 0x03, 0x04]; // "PK\3\4": a DOCX is a zip (OOXML)

function startsWith(bytes: Uint8Array, magic: number[]): boolean {
  return magic.every((b, i) => bytes[i] === b);
}

/**
 * From the upload's file name and declared Content-Type, confirmed by the bytes' signature (a
 * PDF starts with %PDF-, DOCX is a zip); null when unsupported.
 *
 * A PDF signature wins over any name or type (a .txt that is really a PDF is read as PDF);
 * a PDF or DOCX claim without its signature is refused; a text claim whose bytes are a PDF or
 * zip is refused unless the PDF rule applies. A bare zip is not assumed to be DOCX.
 */
export function formatOf(
  filename: string,
  contentType: string | undefined,
  bytes: Uint8Array,
): SourceFormat | null {
  if (startsWith(bytes, PDF_MAGIC)) return "pdf";
  const dot = filename.lastIndexOf(".");
  const ext = dot >= 0 ? filename.slice(dot + 1).toLowerCase() : "";
  const type = (contentType ?? "").split(";")[0]?.trim().toLowerCase() ?? "";
  const claimed = BY_EXTENSION.get(ext) ?? BY_CONTENT_TYPE.get(type);
  if (claimed === undefined) return null;
  const zip = startsWith(bytes, ZIP_MAGIC);
  if (claimed === "pdf") return null; // no %PDF- signature
  if (claimed === "docx") return zip ? "docx" : null;
  return zip ? null : claimed;
}
