import { describe, expect, it } from "vitest";
import { bytesOfHex, hex, sha256Hex } from "../src/lib/crypto.js";

describe("hex and sha256Hex", () => {
  it("spell bytes as the standard's lower-case digits", async () => {
    // FIPS 180-2, appendix B.1 and B.2.
    expect(await sha256Hex("abc")).toBe(
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    );
    expect(await sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")).toBe(
      "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
    );
    // Every byte value, in a buffer longer than any digest, then a short one after it: what
    // the longer call spelled must not show through.
    const all = Uint8Array.from({ length: 512 }, (_, i) => i % 256);
    expect(hex(all)).toBe(Array.from(all, (b) => b.toString(16).padStart(2, "0")).join(""));
    expect(hex(new Uint8Array([0, 255, 16]))).toBe("00ff10");
    expect(hex(new Uint8Array(0))).toBe("");
  });

  it("reads hex back as the bytes it spelled, in either case, and refuses anything else", () => {
    const all = Uint8Array.from({ length: 512 }, (_, i) => i % 256);
    expect(bytesOfHex(hex(all))).toEqual(all);
    // SQLite's hex() spells upper case.
    expect(bytesOfHex("00FF10aB")).toEqual(new Uint8Array([0, 255, 16, 171]));
    expect(bytesOfHex("")).toEqual(new Uint8Array(0));
    expect(() => bytesOfHex("abc")).toThrow(/odd length/);
    expect(() => bytesOfHex("0g")).toThrow(/not a hex digit at 0/);
    expect(() => bytesOfHex("00é0")).toThrow(/not a hex digit at 2/);
  });
});
