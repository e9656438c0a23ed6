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

interface TrieNode {
  children: Map<string, TrieNode>;
  /** Vocabulary id when a piece ends here, else -1. */
  id: number;
  score: number;
}

const newNode = (): TrieNode => ({ children: new Map(), id: -1, score: 0 });

/** NFKC, then "▁" before the text and instead of every ASCII space (only U+0020, as the reference). */
export function normalizeUseInput(text: string): string {
  const normalized = text.normalize("NFKC");
  return normalized.length > 0 ? SEPARATOR + normalized.replaceAll(" ", SEPARATOR) : normalized;
}

/** Tokenizer for USE-lite: text -> token ids (no BOS/EOS; the model takes none). */
export class UseTokenizer {
  private readonly root = newNode();
  private readonly pieceLength: Int32Array;

  constructor(vocabulary: UseVocabulary) {
    // UTF-16 length of each piece: the reference walks back by `piece.length`, not by code
    // points. (No piece holds an astral character, so the two agree, but parity is the goal.)
    this.pieceLength = Int32Array.from(vocabulary, ([piece]) => piece.length);
    for (let id = RESERVED_SYMBOLS; id < vocabulary.length; id++) {
      const [piece, score] = vocabulary[id] as [string, number | null];
      let node = this.root;
      for (const symbol of piece) {
        let next = node.children.get(symbol);
        if (!next) {
          next = newNode();
          node.children.set(symbol, next);
        }
        node = next;
      }
      node.id = id;
      node.score = score ?? 0;
    }
  }

  /**
   * Whether `text` is at most `limit` tokens. Every token covers at least one symbol of the
   * normalised text, so one no longer in UTF-16 units than `limit` fits without being encoded
   * (chunks are sized by this on every submit).
   */
  fits(text: string, limit: number): boolean {
    return normalizeUseInput(text).length <= limit || this.encode(text).length <= limit;
  }

  /** Token ids of `text`, as the reference tokenizer produces them. */
  encode(text: string): number[] {
    // Symbols are code points (for..of), so an emoji is one symbol, not two UTF-16 units.
    const symbols = Array.from(normalizeUseInput(text));
    const n = symbols.length;
    if (n === 0) return [];

    // Viterbi, relaxing forward from each start in ascending order. That visits the pieces
    // ending at any position in order of their start, the order the reference uses (ties are
    // broken by it), and best[start] is final before it is used.
    // Quirk kept from the reference: 0 means "unset", so a path whose total score is exactly 0
    // is replaced by any later candidate, and ties go to the later candidate (>=).
    const best = new Float64Array(n + 1);
    const words = new Int32Array(n + 1); // 0 (unknown) where nothing ends
    const relax = (start: number, end: number, id: number, score: number) => {
      const total = score + (best[start] as number);
      if (best[end] === 0 || total >= (best[end] as number)) {
        best[end] = total;
        words[end] = id;
      }
    };
    for (let i = 0; i < n; i++) {
      let node = this.root.children.get(symbols[i] as string);
      let found = false;
      for (let j = i; node; ) {
        if (node.id >= 0) {
          relax(i, j + 1, node.id, node.score);
          found = true;
        }
        j++;
        node = j < n ? node.children.get(symbols[j] as string) : undefined;
      }
      // No piece starts with this symbol: a one-symbol unknown with score 0.
      if (!found) relax(i, i + 1, UNKNOWN_ID, 0);
    }

    // Backtrack, then merge runs of unknowns into one (as the reference does).
    const reversed: number[] = [];
    for (let pos = n; pos > 0; ) {
      const id = words[pos] as number;
      reversed.push(id);
      pos -= this.pieceLength[id] as number;
    }
    const ids: number[] = [];
    let previousUnknown = false;
    for (const id of reversed) {
      if (!(previousUnknown && id === UNKNOWN_ID)) ids.push(id);
      previousUnknown = id === UNKNOWN_ID;
    }
    return ids.reverse();
  }
}
