import mammoth from "mammoth";
import { extractHtmlFragment } from "./html.js";
import { ExtractError, type Extracted } from "./types.js";

// mammoth maps Word's semantic styles (Heading 1..6, lists, tables) to plain HTML; from there
// a DOCX takes the HTML path, so headings become sections the same way.
// Images are never read: their bytes would only become base64 data URLs we throw away.
const NO_IMAGES = mammoth.images.imgElement(async () => ({ src: "" }));

export async function extractDocx(bytes: Uint8Array): Promise<Extracted> {
  let html: string;
  try {
    const copy = bytes.slice(); // an ArrayBuffer of exactly the file
    // mammoth's Node build reads `buffer`, its browser build `arrayBuffer`, and both hand it
    // to JSZip, which takes an ArrayBuffer. wrangler bundles the browser build, the vitest
    // pool loads the Node one: both get the same bytes.
    const input = { arrayBuffer: copy.buffer, buffer: copy.buffer };
    const result = await mammoth.convertToHtml(input, {
      convertImage: NO_IMAGES,
      externalFileAccess: false,
    });
    html = result.value;
  } catch (err) {
    const detail = err instanceof Error ? err.message : String(err);
    throw new ExtractError(
      "malformed",
      `The DOCX file could not be read (corrupt, or not a Word document?): ${detail}`,
    );
  }
  return extractHtmlFragment("docx", html);
}
