import { describe, expect, it } from "vitest";
import { words } from "../src/search/words.js";

describe("keyword words", () => {
  it("splits, lowercases and folds accents", () => {
    expect(words("XK-4410 fits the Müller pump, ﬁne.")).toEqual([
      "xk",
      "4410",
      "fits",
      "the",
      "muller",
      "pump",
      "fine",
    ]);
    expect(words("Ünïcödé ＡＢＣ 東京 ２０２６")).toEqual(["unicode", "abc", "東京", "2026"]);
  });

  it("gives ASCII text the same words as the Unicode path does", () => {
    // A word with an accent after it sends the text down the Unicode path.
    let seed = 7;
    const rand = () => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed / 2147483648;
    };
    for (let k = 0; k < 20_000; k++) {
      const text = Array.from({ length: Math.floor(rand() * 30) }, () =>
        String.fromCharCode(Math.floor(rand() * 128)),
      ).join("");
      expect(words(text), JSON.stringify(text)).toEqual(words(`${text} é`).slice(0, -1));
    }
  });
});
