/** How the keyword index splits text into words (no Workers APIs: scripts use it too). */

/** Query words beyond this are ignored: a pasted paragraph should not become a 500-term OR. */
export const MAX_QUERY_WORDS = 32;

/**
 * English function words, left out of queries (not of the index): an OR over "how do I make"
 * would otherwise rank any chunk with those words above the one that means the question.
 */
export const STOPWORDS: ReadonlySet<string> = new Set(
  (
    "a an and are as at be but by can could did do does for from had has have how i if in into " +
    "is it its me my no not of on or our so than that the their them then there these they this " +
    "to too us was we were what when where which who whom why will with would you your"
  ).split(" "),
);

/**
 * A text's words as the keyword index sees them: compatibility-normalised, accents dropped,
 * lowercased, runs of letters or digits. "XK-4410" is the two words "xk" and "4410", found
 * together as a phrase; "Müller" is "muller".
 */
export function words(text: string): string[] {
  // ASCII has nothing to normalise or drop, and its letters and digits are [a-z0-9] once
  // lowercased: the same words without the Unicode passes (every chunk of a submit is split).
  if (ASCII.test(text)) return text.toLowerCase().match(/[a-z0-9]+/g) ?? [];
  return (
    text
      .normalize("NFKD")
      .replace(/\p{M}+/gu, "")
      .toLowerCase()
      .match(/[\p{L}\p{N}]+/gu) ?? []
  );
}

const ASCII = /^\p{ASCII}*$/u;
