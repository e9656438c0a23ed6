import { detectAll } from "tinyld";

// tinyld (n-gram profiles for 62 languages, ISO 639-1 codes, pure JS): right on a single
// sentence of English, French, German or Spanish in our tests, where franc-min guessed
// Bosnian for a short French line, and a fraction of eld's size.

// Below this many letters no detector is reliable (tinyld calls a one-line English note Dutch
// with confidence); it answers "" for "ok".
const MIN_LETTERS = 60;
// tinyld's confidence in its best guess (0..1): short or mixed texts score a few hundredths
// ("Heron alpha counts seven lanterns" comes out Spanish at 0.04), clear ones near 1.
const MIN_ACCURACY = 0.5;
// Enough text to decide (some 60 words); the rest only costs CPU. Detection is most of what a
// submit of long documents costs: 1.7 ms a document on 1,000 characters, 0.9 ms on 400.
const SAMPLE_CHARS = 400;

/** ISO 639-1 code of the text's language, or null when the text is too short or unclear. */
export function detectLanguage(text: string): string | null {
  const sample = text.slice(0, SAMPLE_CHARS);
  if ((sample.match(/\p{L}/gu)?.length ?? 0) < MIN_LETTERS) return null;
  const best = detectAll(sample)[0];
  if (!best || best.accuracy < MIN_ACCURACY) return null;
  const code = best.lang;
  // tinyld answers "" when unsure, and a few languages without a 639-1 code (Berber) by
  // their 639-3 code: both are "unclear" here.
  return /^[a-z]{2}$/.test(code) ? code : null;
}
