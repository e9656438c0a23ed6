// eld (Efficient Language Detector, n-gram scores for 60 languages, ISO 639-1 codes, pure JS),
// its extra-small tables: right on a single sentence of English, French, German or Spanish in
// our tests, and on the benchmark's generated prose about 66 µs a document against tinyld's
// 1.3 ms (which also called one passage in 400 Slovak). franc-min guessed Bosnian for a short
// French line.

// Below this many letters no detector is reliable (tinyld called a one-line English note Dutch
// with confidence; eld calls "x7 y8 z9 lorem ipsum…" Polish).
const MIN_LETTERS = 60;
/** At least MIN_LETTERS letters (counted without listing them: every submitted text is tested). */
const ENOUGH_LETTERS = new RegExp(`^(?:\\P{L}*\\p{L}){${MIN_LETTERS}}`, "u");
// Enough text to decide (some 60 words); the rest only costs CPU.
const SAMPLE_CHARS = 400;

type Detect = (sample: string) => string | null;
let loading: Promise<Detect> | undefined;

/**
 * The detector, loaded on first use: its tables take some 30 MB of heap and 50 ms to build, and
 * only documents long enough to tell need them, so an isolate that never takes one never pays.
 */
function detector(): Promise<Detect> {
  loading ??= import("eld/extrasmall").then(({ eld }) => (sample: string) => {
    const result = eld.detect(sample);
    // "" when nothing matched; isReliable() is false when the best score is weak for that
    // language or too close to the next one's.
    return result.language && result.isReliable() ? result.language : null;
  });
  return loading;
}

/**
 * Each text's language as an ISO 639-1 code, or null where the text is too short or unclear.
 */
export async function detectLanguages(texts: readonly string[]): Promise<(string | null)[]> {
  const samples = texts.map((t) => {
    const sample = t.slice(0, SAMPLE_CHARS);
    return ENOUGH_LETTERS.test(sample) ? sample : null;
  });
  if (samples.every((s) => s === null)) return samples;
  const detect = await detector();
  return samples.map((s) => (s === null ? null : detect(s)));
}
