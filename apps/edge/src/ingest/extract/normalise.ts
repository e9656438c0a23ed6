// Every extractor's output goes through here, so chunk offsets, hashes and dedup compare the
// same text whatever the source format was.

// C0/C1 controls except \t and \n (CR is turned into \n before this runs).
// biome-ignore lint/suspicious/noControlCharactersInRegex: removing control characters is the point
const CONTROL = /[\u0000-\u0008\u000B-\u001F\u007F-\u009F]/g;
/** Text of printable ASCII, tabs and newlines only. */
const PLAIN = /^[\t\n\x20-\x7e]*$/;

/**
 * Unicode NFC, CRLF/CR (and U+2028/U+2029) to LF, control characters (other than \n and \t)
 * removed, runs of spaces/tabs (any Unicode space separator, so NBSP too) to one space,
 * trailing spaces on lines removed, 3+ newlines to 2, trimmed. Idempotent.
 */
export function normaliseText(text: string): string {
  // Printable ASCII with tabs and newlines has nothing to convert, remove or compose: only the
  // spacing steps apply (every JSON document of a submit comes through here).
  if (PLAIN.test(text))
    return text
      .replace(/[\t ]+/g, " ")
      .replace(/ \n/g, "\n")
      .replace(/\n{3,}/g, "\n\n")
      .trim();
  return (
    text
      .replace(/\r\n?|\u2028/g, "\n")
      .replace(/\u2029/g, "\n\n")
      // Controls go before NFC: removing one between a letter and a combining mark must
      // still let the two compose.
      .replace(CONTROL, "")
      .normalize("NFC")
      .replace(/[\t\p{Zs}]+/gu, " ")
      .replace(/ \n/g, "\n")
      .replace(/\n{3,}/g, "\n\n")
      .trim()
  );
}
