import { describe, expect, it } from "vitest";
import { TermHasher } from "../src/search/terms.js";
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

describe("keyword hashes", () => {
  const key = (seed: number) =>
    crypto.subtle.importKey(
      "raw",
      new Uint8Array(32).fill(seed),
      { name: "HMAC", hash: "SHA-256" },
      false,
      ["sign"],
    );
  /** The FTS5 document of a text, each word's HMAC computed here. */
  const expected = async (k: CryptoKey, text: string) => {
    const out: string[] = [];
    for (const w of words(text)) {
      const mac = await crypto.subtle.sign("HMAC", k, new TextEncoder().encode(w));
      out.push(
        Array.from(new Uint8Array(mac, 0, 8), (b) => b.toString(16).padStart(2, "0")).join(""),
      );
    }
    return out.join(" ");
  };

  it("spells every word's keyed hash, from a new hasher or one whose words are known", async () => {
    const [k1, k2] = [await key(1), await key(2)];
    const texts = ["The tide table for May.", "the TIDE rises; the table stays", ""];
    const want = await Promise.all(texts.map((t) => expected(k1, t)));
    // Later hashers under the same key find the words hashed before; another key does not.
    expect(await new TermHasher(k1).documents(texts)).toEqual(want);
    expect(await new TermHasher(k1).documents(texts)).toEqual(want);
    expect(await new TermHasher(k2).documents(texts)).toEqual(
      await Promise.all(texts.map((t) => expected(k2, t))),
    );
    expect(await new TermHasher(k2).document(texts[0] as string)).not.toBe(want[0]);
  });

  it("spells every word of a batch with more distinct words than the isolate keeps", async () => {
    const k = await key(3);
    const many = Array.from({ length: 60_000 }, (_, i) => `w${i}`);
    const texts = [many.slice(0, 30_000).join(" "), many.slice(30_000).join(" "), "w0 w59999"];
    const docs = await new TermHasher(k).documents(texts);
    expect(docs.map((d) => d.split(" ").length)).toEqual([30_000, 30_000, 2]);
    for (const d of docs) expect(d).toMatch(/^[0-9a-f]{16}( [0-9a-f]{16})*$/);
    expect(docs[2]).toBe(await expected(k, "w0 w59999"));
  });
});
