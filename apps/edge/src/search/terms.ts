import { hex, utf8 } from "../lib/crypto.js";
import type { Keyring } from "../lib/keyring.js";
import { MAX_QUERY_WORDS, STOPWORDS, words } from "./words.js";

/**
 * The keyword index never sees a word. Each word of a chunk is replaced by a keyed hash (the
 * first 64 bits of HMAC-SHA-256 under the tenant's term key, as 16 hex digits) and the hashes
 * are written in the chunk's word order to an FTS5 table. FTS5 then ranks by BM25 exactly as it
 * would on the words (term and document frequencies and lengths are unchanged by a one-to-one
 * renaming), and a query matches after being hashed the same way. What the table gives away
 * is the shape of the text: how often each unknown term occurs, and where.
 *
 * A tenant's term key changes when its data key is rotated, so a query is hashed under every
 * version the tenant has; chunks indexed before a rotation keep matching.
 */

/** Hex digits kept of each hash: 64 bits, so a tenant's vocabulary never collides in practice. */
const HASH_HEX = 16;
/** Words whose hashes an isolate keeps per term key; past it, the oldest go first. */
const KNOWN_WORDS = 50_000;

/**
 * The hashes already computed under each term key, kept by the isolate: a tenant's vocabulary
 * repeats from one submit (and query) to the next, and an HMAC is most of what a new word
 * costs. The keyring caches each key object per isolate, so a key dropped from its cache (the
 * tenant erased) takes its words with it.
 */
const knownByKey = new WeakMap<CryptoKey, Map<string, string>>();

function knownWords(key: CryptoKey): Map<string, string> {
  let known = knownByKey.get(key);
  if (!known) {
    known = new Map();
    knownByKey.set(key, known);
  }
  return known;
}

/** Hashes words under one term key, each distinct word once. */
export class TermHasher {
  /** Each word's hash, once known. */
  private readonly known: Map<string, string>;
  /** Digests still being computed. */
  private readonly pending = new Map<string, Promise<string>>();
  constructor(private readonly key: CryptoKey) {
    this.known = knownWords(key);
  }

  /** The FTS5 document for `text`: its words' hashes in order, space-separated. */
  async document(text: string): Promise<string> {
    return (await this.documents([text]))[0] as string;
  }

  /**
   * The FTS5 documents of many texts. Their distinct words are hashed first, each once, and
   * the documents then spelled from those: a submit's chunks repeat most of their words, and
   * a promise per word of every chunk was most of what indexing them cost.
   */
  async documents(texts: readonly string[]): Promise<string[]> {
    const split = texts.map(words);
    // This call's words with their hashes: the isolate's cache may let some go meanwhile.
    const digests = new Map<string, string>();
    const hashing: Promise<unknown>[] = [];
    for (const ws of split)
      for (const w of ws) {
        if (digests.has(w)) continue;
        const known = this.known.get(w);
        digests.set(w, known ?? "");
        if (known === undefined) hashing.push(this.hash(w).then((h) => digests.set(w, h)));
      }
    await Promise.all(hashing);
    return split.map((ws) => ws.map((w) => digests.get(w)).join(" "));
  }

  hash(word: string): Promise<string> {
    const known = this.known.get(word);
    if (known !== undefined) return Promise.resolve(known);
    let h = this.pending.get(word);
    if (!h) {
      h = crypto.subtle.sign("HMAC", this.key, utf8.encode(word)).then((mac) => {
        const digest = hex(new Uint8Array(mac, 0, HASH_HEX / 2));
        if (this.known.size >= KNOWN_WORDS)
          this.known.delete(this.known.keys().next().value as string);
        this.known.set(word, digest);
        this.pending.delete(word);
        return digest;
      });
      this.pending.set(word, h);
    }
    return h;
  }
}

/** The hasher that indexes new chunks of a tenant: its newest term key. */
export async function indexHasher(keyring: Keyring, tenant: string): Promise<TermHasher> {
  const [newest] = await keyring.termKeys(tenant);
  if (!newest) throw new Error(`tenant "${tenant}" has no term key`);
  return new TermHasher(newest.key);
}

/** A query as the keyword index reads it. */
export interface KeywordQueryTerms {
  /** FTS5 MATCH expression: any of the words, under any of the tenant's term keys. */
  match: string;
  /** Per chosen word, its hashes (one per key version): a chunk holds the word if it has any. */
  words: string[][];
}

/**
 * A query's words for the keyword index: stopwords left out unless nothing else is left, each
 * hashed under every term key of the tenant; BM25 then ranks chunks holding more of the rarer
 * words first. Null when the query has no word to look for.
 */
export async function queryTerms(
  keyring: Keyring,
  tenant: string,
  query: string,
): Promise<KeywordQueryTerms | null> {
  const all = [...new Set(words(query))];
  const content = all.filter((w) => !STOPWORDS.has(w));
  const chosen = (content.length > 0 ? content : all).slice(0, MAX_QUERY_WORDS);
  if (chosen.length === 0) return null;
  const hashers = (await keyring.termKeys(tenant)).map(({ key }) => new TermHasher(key));
  const perWord = await Promise.all(chosen.map((w) => Promise.all(hashers.map((h) => h.hash(w)))));
  const match = [...new Set(perWord.flat())].map((h) => `"${h}"`).join(" OR ");
  return { match, words: perWord };
}

/** How many of the query's words a chunk's keyword document (its `terms`) holds. */
export function wordsHeld(terms: string, query: KeywordQueryTerms): number {
  const held = new Set(terms.split(" "));
  return query.words.filter((hashes) => hashes.some((h) => held.has(h))).length;
}
