/**
 * Deterministic English corpora for tests and benchmarks. Hand-written passages on distinct
 * subjects give search something to find; generated passages add volume.
 */

/** Passages with one clear subject each, and a paraphrased question for each. */
export const TOPICS: { id: string; text: string; paraphrase: string }[] = [
  {
    id: "volcano",
    text: "The volcano erupted overnight, sending rivers of molten lava down the mountain and forcing nearby villages to evacuate.",
    paraphrase: "magma flowing from an erupting mountain made residents flee their homes",
  },
  {
    id: "bread",
    text: "To bake a crusty loaf of bread, knead the dough for ten minutes, let it rise until doubled, then bake it in a very hot oven.",
    paraphrase: "how do I make homemade bread with a good crust",
  },
  {
    id: "football",
    text: "The striker scored twice in the final minutes, and the home team won the championship match in front of a roaring crowd.",
    paraphrase: "a late goal decided the soccer cup final",
  },
  {
    id: "interest-rates",
    text: "The central bank raised interest rates by half a percentage point to slow inflation, and mortgage costs are expected to climb.",
    paraphrase: "monetary policy tightening makes home loans more expensive",
  },
  {
    id: "cat",
    text: "Our cat spends the whole afternoon asleep on the windowsill, curled up in the warm sunshine.",
    paraphrase: "a kitten napping in a sunny spot by the window",
  },
  {
    id: "mars",
    text: "The rover landed safely on Mars and sent back its first photographs of the red, dusty surface of the planet.",
    paraphrase: "a space probe touched down on the red planet and returned pictures",
  },
  {
    id: "flu",
    text: "Doctors recommend getting a flu vaccine every autumn, especially for the elderly and people with weak immune systems.",
    paraphrase: "older people should get their yearly influenza shot",
  },
  {
    id: "guitar",
    text: "She practises the guitar every evening, learning new chords and slowly mastering the songs of her favourite band.",
    paraphrase: "playing a stringed instrument daily to improve at music",
  },
  {
    id: "forest-fire",
    text: "Firefighters battled the wildfire for three days as strong winds pushed the flames through the dry pine forest.",
    paraphrase: "crews fought a blaze spreading through the woods",
  },
  {
    id: "python",
    text: "The program crashed because a variable was used before it was assigned; adding a default value fixed the bug.",
    paraphrase: "fixing a software error caused by an uninitialised variable",
  },
];

const SUBJECTS = [
  "the committee",
  "a small startup",
  "the research team",
  "our neighbours",
  "the city council",
  "a local farmer",
  "the orchestra",
  "the hospital",
  "a group of students",
  "the museum",
];
const VERBS = [
  "announced",
  "discussed",
  "postponed",
  "celebrated",
  "reviewed",
  "funded",
  "criticised",
  "planned",
  "documented",
  "completed",
];
const OBJECTS = [
  "a new library",
  "the annual festival",
  "the water supply project",
  "a study on sleep",
  "the bridge repairs",
  "a community garden",
  "the winter concert",
  "a vaccination drive",
  "the science fair",
  "an exhibition of maps",
];
const TAILS = [
  "after months of debate.",
  "despite the heavy rain.",
  "with support from volunteers.",
  "ahead of schedule.",
  "to the surprise of many.",
  "under a tight budget.",
  "following public feedback.",
  "in the old town square.",
  "for the third year running.",
  "with mixed results.",
];

/** A small seeded PRNG (an LCG), so every run sees the same corpus and the same faults. */
export function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** Generated passages of roughly `minChars`..`maxChars` characters. */
export function generatedPassages(
  count: number,
  minChars = 200,
  maxChars = 800,
  seed = 7,
): string[] {
  const r = rng(seed);
  const pick = <T>(a: T[]) => a[Math.floor(r() * a.length)] as T;
  const out: string[] = [];
  for (let i = 0; i < count; i++) {
    const target = minChars + Math.floor(r() * (maxChars - minChars));
    let text = "";
    while (text.length < target) {
      const s = `${pick(SUBJECTS)} ${pick(VERBS)} ${pick(OBJECTS)} ${pick(TAILS)} `;
      text += s.charAt(0).toUpperCase() + s.slice(1);
    }
    out.push(text.slice(0, maxChars).trim());
  }
  return out;
}
