// The SentencePiece (unigram) tokenizer of Universal Sentence Encoder lite, written to give the
// same ids as the reference implementation USE-lite was published with (tfjs-models'
// universal-sentence-encoder, repackaged in @energetic-ai/embeddings). The model was run and
// validated with those ids, so parity beats "textbook" SentencePiece; the quirks kept on
// purpose are marked below. It must not import the reference (a dev dependency), and it runs in Node and workerd alike.
/** vocab.json: [piece, log-probability] pairs; a few scores are null and count as 0. */
export type UseVocabulary = [string, number | null][];

/** The SentencePiece word-boundary marker ("▁"). */
const SEPARATOR = "\u2581";
/** Ids 0-5 are �, <s>, </s> and three extra tokens; they never match text. */
const RESERVED_SYMBOLS = 6;
/** Id given to a symbol no piece covers (the vocabulary's "�" entry). */
export const UNKNOWN_ID = 0;

/** NFKC, then "▁" before the text and instead of every ASCII space (only U+0020, as the reference). */
export function normalizeUseInput(text: string): string {
  const normalized = text.normalize("NFKC");
  return normalized.length > 0 ? SEPARATOR + normalized.replaceAll(" ", SEPARATOR) : normalized;
}

/**
 * The vocabulary's pieces as a trie over code points, its edges in one open-addressing hash
 * table of typed arrays (a child is found by (node, code point) without a Map per node): the
 * trie is walked from every symbol of every chunk the edge sizes, so its lookups are most of
 * what tokenizing costs.
 */
class PieceTrie {
  /** Per slot: the edge's parent node (-1: empty), code point, and child node. */
  private readonly parent: Int32Array;
  private readonly code: Int32Array;
  private readonly child: Int32Array;
  private readonly mask: number;
  /** Per node: the piece ending there (or -1), and its score. */
  readonly ids: Int32Array;
  readonly scores: Float64Array;

  constructor(vocabulary: UseVocabulary, firstId: number) {
    let edges = 0;
    for (let id = firstId; id < vocabulary.length; id++)
      edges += Array.from((vocabulary[id] as [string, unknown])[0]).length;
    // At most half full, so a probe ends soon.
    const size = 2 ** Math.ceil(Math.log2(Math.max(16, edges * 2)));
    this.mask = size - 1;
    this.parent = new Int32Array(size).fill(-1);
    this.code = new Int32Array(size);
    this.child = new Int32Array(size);
    const ids: number[] = [-1];
    const scores: number[] = [0];
    for (let id = firstId; id < vocabulary.length; id++) {
      const [piece, score] = vocabulary[id] as [string, number | null];
      let node = 0;
      for (const symbol of piece) {
        const c = symbol.codePointAt(0) as number;
        let next = this.next(node, c);
        if (next < 0) {
          next = ids.length;
          ids.push(-1);
          scores.push(0);
          let slot = this.slot(node, c);
          while ((this.parent[slot] as number) >= 0) slot = (slot + 1) & this.mask;
          this.parent[slot] = node;
          this.code[slot] = c;
          this.child[slot] = next;
        }
        node = next;
      }
      ids[node] = id;
      scores[node] = score ?? 0;
    }
    this.ids = Int32Array.from(ids);
    this.scores = Float64Array.from(scores);
  }

  private slot(node: number, c: number): number {
    return (Math.imul(node, 0x9e3779b1) ^ Math.imul(c, 0x85ebca6b)) & this.mask;
  }

  /** The child of `node` by code point `c`, or -1. */
  next(node: number, c: number): number {
    for (let slot = this.slot(node, c); ; slot = (slot + 1) & this.mask) {
      const p = this.parent[slot] as number;
      if (p < 0) return -1;
      if (p === node && this.code[slot] === c) return this.child[slot] as number;
    }
  }
}

/** Tokenizer for USE-lite: text -> token ids (no BOS/EOS; the model takes none). */
export class UseTokenizer {
  private readonly trie: PieceTrie;
  private readonly pieceLength: Int32Array;

  constructor(vocabulary: UseVocabulary) {
    // UTF-16 length of each piece: the reference walks back by `piece.length`, not by code
    // points. (No piece holds an astral character, so the two agree, but parity is the goal.)
    this.pieceLength = Int32Array.from(vocabulary, ([piece]) => piece.length);
    this.trie = new PieceTrie(vocabulary, RESERVED_SYMBOLS);
  }

  /**
   * Whether `text` is at most `limit` tokens. Every token covers at least one symbol of the
   * normalised text, so one no longer in UTF-16 units than `limit` fits without being encoded
   * (chunks are sized by this on every submit).
   */
  fits(text: string, limit: number): boolean {
    // The normalised length without building it: "▁" replaces each space one for one.
    const nfkc = text.normalize("NFKC").length;
    return (nfkc === 0 ? 0 : nfkc + 1) <= limit || this.encode(text).length <= limit;
  }

  /** Token ids of `text`, as the reference tokenizer produces them. */
  encode(text: string): number[] {
    // Symbols are code points, so an emoji is one symbol, not two UTF-16 units.
    const normalized = normalizeUseInput(text);
    const symbols = new Int32Array(normalized.length);
    let n = 0;
    for (let i = 0; i < normalized.length; i++) {
      const c = normalized.codePointAt(i) as number;
      symbols[n++] = c;
      if (c > 0xffff) i++;
    }
    if (n === 0) return [];

    // Viterbi, relaxing forward from each start in ascending order. That visits the pieces
    // ending at any position in order of their start, the order the reference uses (ties are
    // broken by it), and best[start] is final before it is used.
    // Quirk kept from the reference: 0 means "unset", so a path whose total score is exactly 0
    // is replaced by any later candidate, and ties go to the later candidate (>=).
    const best = new Float64Array(n + 1);
    const words = new Int32Array(n + 1); // 0 (unknown) where nothing ends
    const trie = this.trie;
    const { ids, scores } = trie;
    for (let i = 0; i < n; i++) {
      const from = best[i] as number;
      let found = false;
      let node = trie.next(0, symbols[i] as number);
      for (let j = i; node >= 0; ) {
        const id = ids[node] as number;
        if (id >= 0) {
          const total = (scores[node] as number) + from;
          const end = j + 1;
          if (best[end] === 0 || total >= (best[end] as number)) {
            best[end] = total;
            words[end] = id;
          }
          found = true;
        }
        j++;
        node = j < n ? trie.next(node, symbols[j] as number) : -1;
      }
      // No piece starts with this symbol: a one-symbol unknown with score 0.
      if (!found && (best[i + 1] === 0 || from >= (best[i + 1] as number))) {
        best[i + 1] = from;
        words[i + 1] = UNKNOWN_ID;
      }
    }

    // Backtrack, then merge runs of unknowns into one (as the reference does).
    const reversed: number[] = [];
    for (let pos = n; pos > 0; ) {
      const id = words[pos] as number;
      reversed.push(id);
      pos -= this.pieceLength[id] as number;
    }
    const out: number[] = [];
    let previousUnknown = false;
    for (const id of reversed) {
      if (!(previousUnknown && id === UNKNOWN_ID)) out.push(id);
      previousUnknown = id === UNKNOWN_ID;
    }
    return out.reverse();
  }
}
