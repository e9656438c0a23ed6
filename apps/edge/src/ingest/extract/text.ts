import { TextAssembler } from "./assemble.js";
import { ExtractError, type Extracted } from "./types.js";

/**
 * UTF-8 only: a fatal decoder, so a file in another encoding (Latin-1, UTF-16) is refused
 * rather than turned into replacement characters that would be embedded and searched as
 * text. The decoder drops a leading BOM itself.
 */
export function decodeUtf8(bytes: Uint8Array, what = "text"): string {
  try {
    return new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(bytes);
  } catch {
    throw new ExtractError(
      "malformed",
      `The ${what} file is not valid UTF-8; convert it to UTF-8 and upload it again.`,
    );
  }
}

/** Plain text: one section with no headings. */
export function extractText(bytes: Uint8Array): Extracted {
  const out = new TextAssembler("text");
  // One block: the text's own paragraphs are kept as they are.
  out.add(decodeUtf8(bytes), []);
  return out.finish();
}
