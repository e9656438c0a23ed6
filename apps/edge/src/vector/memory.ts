/**
 * The in-memory form of a vector index and its search, kept free of Workers APIs so that
 * scripts/index-recall.ts can measure exactly this code in plain Node.
 *
 * Per vector (a "slot"): its id, namespace, the float32 values as stored with their norm, the
 * values of the indexed metadata keys (for filtering), and a binary code of d bits. A query
 * narrows the slots to those that pass the namespace and filter tests, then either scores them
 * all exactly (few candidates) or ranks them by the Hamming distance between codes, keeps the
 * `rescoreCount(topK)` nearest and scores only those exactly.
 *
 * The code of a vector holds one bit per dimension: whether its unit vector lies above the
 * per-dimension mean of all stored unit vectors. Real embeddings are not centred on the origin
 * (every component has a non-zero mean), so uncentred sign bits are mostly the same for all
 * vectors; centring spreads them and makes Hamming distance follow the angle between vectors.
 */
import { dot, norm, type Scored, TopK } from "./topk.js";

/** One AND-ed condition on an indexed metadata key: `test` gets the slot's value of `key`. */
export interface KeyTest {
  readonly key: string;
  readonly test: (value: unknown) => boolean;
}

/** Which slots a query considers. */
export interface Selection {
  /** Only vectors in this namespace; all namespaces when absent. */
  namespace?: string | undefined;
  /** Conditions on indexed metadata keys, all of which must hold. */
  tests?: readonly KeyTest[] | undefined;
  /** Overrides `rescoreCount(topK)` and turns widening off; for measurements and tests. */
  rescore?: number | undefined;
}

/** A vector as handed to the memory form. */
export interface Entry {
  id: string;
  namespace: string | null;
  /** The stored float32 values; copied in, so the caller may reuse the array. */
  values: Float32Array;
  /** The values of the indexed metadata keys, in the order of `MemoryIndex.keys`. */
  fields: readonly unknown[];
}

/**
 * How many of the Hamming-nearest candidates get an exact score: 20 per result, at least 800.
 * Measured with scripts/index-recall.ts (100,000 vectors of 512 dimensions made from real
 * use-lite sentence embeddings, 250 real-text queries, three levels of added noise), topK 10:
 * 200 rescored gave recall@10 0.994–0.997, 400 gave 0.999–1.0, 800 gave 0.9996–1.0, each
 * doubling costing about 1 ms on top of a Hamming scan of about 5 ms. The floor of 800 buys a
 * wide margin over 0.98 for data less clustered than ours; 20 per result kept recall@50 at
 * 0.999 and recall@100 at 0.998 (R 1000 and 2000).
 */
const RESCORE_PER_RESULT = 20;
const RESCORE_MIN = 800;

/**
 * A search scores more candidates while any result lies within this many bits of the widest
 * Hamming distance scored so far, doubling them each time, up to MAX_WIDENING times the first
 * count. Queries near their matches stop at once; a query near nothing, whose matches the codes
 * cannot tell apart from the rest, widens. On 100,000 vectors made from real embeddings, with
 * 200 queries of which half are about nothing in the index (product codes, names, questions on
 * other subjects): 800 scored without widening gave recall@10 0.90 on those; widening with a
 * margin of 2, 4, 6 and 8 bits gave 0.93, 0.96, 0.994 (the whole mix) and 0.996, the median
 * query still scoring 844 and one in ten over 4,000.
 */
const EDGE_MARGIN_BITS = 6;
const MAX_WIDENING = 16;

export function rescoreCount(topK: number): number {
  return Math.max(RESCORE_PER_RESULT * topK, RESCORE_MIN);
}

const MIN_CAPACITY = 16;

export class MemoryIndex {
  readonly dimensions: number;
  /** The indexed metadata keys, in the order of `Entry.fields`. */
  readonly keys: readonly string[];
  /** 32-bit words per code. */
  private readonly words: number;

  private n = 0;
  private capacity = 0;
  /** Stored values, slot-major: slot s is `values[s*d .. (s+1)*d)`. */
  private values = new Float32Array(0);
  private norms = new Float64Array(0);
  /** Codes, slot-major, `words` per slot. Int32 so the scan's bit arithmetic stays int32. */
  private codes = new Int32Array(0);
  private ids: string[] = [];
  private namespaces: (string | null)[] = [];
  /** One column per indexed key: `columns[k][slot]` is the slot's value of `keys[k]`. */
  private readonly columns: unknown[][];
  private readonly columnOf: Map<string, number>;
  private readonly slots = new Map<string, number>();

  /** The centre the codes were computed against (see rebuildCodes). */
  private readonly mean: Float64Array;
  /** Vector count when the codes were last rebuilt, and writes since then. */
  private builtFor = 0;
  private changes = 0;

  private last = { selected: 0, scored: 0 };

  // Per-query scratch, kept to avoid allocating 100,000-element arrays on every query.
  private candidates = new Int32Array(0);
  private distances = new Uint16Array(0);
  private readonly histogram: Uint32Array;
  private readonly queryCode: Int32Array;
  private readonly unit: Float64Array;

  constructor(dimensions: number, keys: readonly string[], capacity = 0) {
    if (!Number.isInteger(dimensions) || dimensions < 1)
      throw new Error("dimensions must be a positive integer");
    this.dimensions = dimensions;
    this.keys = [...keys];
    this.words = Math.ceil(dimensions / 32);
    this.columns = this.keys.map(() => []);
    this.columnOf = new Map(this.keys.map((k, i) => [k, i]));
    this.mean = new Float64Array(dimensions);
    this.histogram = new Uint32Array(dimensions + 1);
    this.queryCode = new Int32Array(this.words);
    this.unit = new Float64Array(dimensions);
    this.grow(Math.max(capacity, MIN_CAPACITY));
  }

  /** Builds the memory form of many vectors at once, computing the codes once at the end. */
  static from(
    dimensions: number,
    keys: readonly string[],
    entries: Iterable<Entry>,
    capacity = 0,
  ): MemoryIndex {
    const index = new MemoryIndex(dimensions, keys, capacity);
    for (const e of entries) {
      if (index.slots.has(e.id)) index.write(index.slots.get(e.id) as number, e, false);
      else index.append(e, false);
    }
    index.rebuildCodes();
    return index;
  }

  get size(): number {
    return this.n;
  }

  has(id: string): boolean {
    return this.slots.has(id);
  }

  /** The stored values of `id` (a view into the index: copy before keeping it). */
  valuesOf(id: string): Float32Array | undefined {
    const slot = this.slots.get(id);
    if (slot === undefined) return undefined;
    const d = this.dimensions;
    return this.values.subarray(slot * d, slot * d + d);
  }

  /** Adds a vector, replacing the one stored under the same id. */
  upsert(entry: Entry): void {
    const slot = this.slots.get(entry.id);
    if (slot === undefined) this.append(entry, true);
    else this.write(slot, entry, true);
    this.changes++;
    this.maybeRebuild();
  }

  /** Removes a vector; false when it was not stored. */
  delete(id: string): boolean {
    const slot = this.slots.get(id);
    if (slot === undefined) return false;
    // Swap-remove: the last slot moves into the hole, so slots stay dense and a delete is O(d).
    const last = this.n - 1;
    if (slot !== last) {
      const d = this.dimensions;
      const w = this.words;
      this.values.copyWithin(slot * d, last * d, last * d + d);
      this.codes.copyWithin(slot * w, last * w, last * w + w);
      this.norms[slot] = this.norms[last] as number;
      const moved = this.ids[last] as string;
      this.ids[slot] = moved;
      this.namespaces[slot] = this.namespaces[last] as string | null;
      for (const col of this.columns) col[slot] = col[last];
      this.slots.set(moved, slot);
    }
    this.ids.pop();
    this.namespaces.pop();
    for (const col of this.columns) col.pop();
    this.slots.delete(id);
    this.n--;
    this.changes++;
    this.maybeRebuild();
    return true;
  }

  /**
   * The topK vectors closest to `query` by cosine similarity among the selected slots, best
   * first, ties by id. Exact when at most `rescoreCount(topK)` slots are selected; otherwise
   * only the Hamming-nearest that many are scored, so a true match can (rarely) be missed.
   */
  search(query: Float32Array, topK: number, selection: Selection = {}): Scored[] {
    if (query.length !== this.dimensions)
      throw new Error(`query has ${query.length} dimensions, not ${this.dimensions}`);
    const selected = this.select(selection);
    const count = selected ?? this.n;
    const top = new TopK(topK);
    const qNorm = norm(query);
    const rescore = selection.rescore ?? rescoreCount(topK);
    // A fixed count (measurements, tests) scores exactly that many: no widening.
    const widen = selection.rescore === undefined;
    // A zero query scores every vector 0, so the answer is the smallest ids: no code helps.
    if (count <= rescore || qNorm === 0) {
      for (let c = 0; c < count; c++)
        this.score(selected === undefined ? c : (this.candidates[c] as number), query, qNorm, top);
      this.last = { selected: count, scored: count };
      return top.items;
    }
    this.encodeQuery(query, qNorm);
    let cutoff = this.hammingScan(selected, count, rescore);
    const dist = this.distances;
    const hist = this.histogram;
    const distOf = new Map<string, number>();
    // Every candidate at the cutoff distance is kept, not just enough to reach `rescore`, so
    // which ones get scored never depends on slot order (which deletes shuffle).
    let scored = 0;
    let below = -1;
    for (;;) {
      for (let c = 0; c < count; c++) {
        const h = dist[c] as number;
        if (h > below && h <= cutoff) {
          const slot = selected === undefined ? c : (this.candidates[c] as number);
          this.score(slot, query, qNorm, top);
          distOf.set(this.ids[slot] as string, h);
          scored++;
        }
      }
      // Widen while a result came from near the edge of what was scored: then the codes did
      // not separate the best matches from the rest (a query far from everything, whose
      // nearest vectors are all about as near), and more of them may be better still.
      let edge = 0;
      for (const item of top.items) edge = Math.max(edge, distOf.get(item.id) ?? 0);
      if (!widen || edge + EDGE_MARGIN_BITS <= cutoff || scored >= count) break;
      if (scored >= rescore * MAX_WIDENING) break;
      below = cutoff;
      let total = scored;
      while (total < scored * 2 && cutoff < this.dimensions) total += hist[++cutoff] as number;
    }
    this.last = { selected: count, scored };
    return top.items;
  }

  /**
   * What the last search did: how many vectors passed the selection and how many of them got
   * an exact score. For tests and measurements: codes that fail to separate vectors show up as
   * many more scored than `rescoreCount(topK)` (ties at the cutoff are all kept).
   */
  get lastSearch(): Readonly<{ selected: number; scored: number }> {
    return this.last;
  }

  /**
   * Fills `candidates` with the slots that pass the selection and returns their number;
   * undefined when nothing is excluded (every slot, in order, without copying).
   */
  private select({ namespace, tests = [] }: Selection): number | undefined {
    if (namespace === undefined && tests.length === 0) return undefined;
    if (this.candidates.length < this.n) this.candidates = new Int32Array(this.capacity);
    const cand = this.candidates;
    const columns = tests.map(({ key }) => {
      const k = this.columnOf.get(key);
      if (k === undefined) throw new Error(`"${key}" is not an indexed key of this index`);
      return this.columns[k] as unknown[];
    });
    // Column by column: one tight loop per condition over the survivors of the previous one,
    // the first over all slots directly.
    let m = 0;
    let first = 0;
    if (namespace !== undefined) {
      const ns = this.namespaces;
      for (let s = 0; s < this.n; s++) if (ns[s] === namespace) cand[m++] = s;
    } else {
      const col = columns[0] as unknown[];
      const test = (tests[0] as KeyTest).test;
      for (let s = 0; s < this.n; s++) if (test(col[s])) cand[m++] = s;
      first = 1;
    }
    for (let t = first; t < tests.length; t++) {
      const col = columns[t] as unknown[];
      const test = (tests[t] as KeyTest).test;
      let kept = 0;
      for (let c = 0; c < m; c++) {
        const s = cand[c] as number;
        if (test(col[s])) cand[kept++] = s;
      }
      m = kept;
    }
    return m;
  }

  private score(slot: number, query: Float32Array, qNorm: number, top: TopK): void {
    const d = this.dimensions;
    const denom = qNorm * (this.norms[slot] as number);
    // A zero vector has no direction: it scores 0 rather than NaN, so it sorts predictably.
    const s = denom > 0 ? dot(query, this.values.subarray(slot * d, slot * d + d)) / denom : 0;
    top.push(this.ids[slot] as string, s, this.namespaces[slot] as string | null);
  }

  /**
   * Hamming distance from the query's code to each candidate's, into `distances`, and the
   * smallest distance at or below which at least `keep` candidates lie. A histogram over
   * 0..d instead of a sort: the distance has only d+1 values.
   */
  private hammingScan(selected: number | undefined, count: number, keep: number): number {
    if (this.distances.length < count) this.distances = new Uint16Array(this.capacity);
    const dist = this.distances;
    const hist = this.histogram;
    hist.fill(0);
    const codes = this.codes;
    const q = this.queryCode;
    const w = this.words;
    const cand = this.candidates;
    for (let c = 0; c < count; c++) {
      const off = (selected === undefined ? c : (cand[c] as number)) * w;
      let h = 0;
      for (let i = 0; i < w; i++) {
        // Population count of the differing bits, SWAR style (JS has no popcount). Written to
        // stay in int32 (signed shifts where the mask clears the sign, `| 0` on the one
        // subtraction that can overflow): V8 then keeps it off doubles, twice as fast.
        let x = (codes[off + i] as number) ^ (q[i] as number);
        x = (x - ((x >> 1) & 0x55555555)) | 0;
        x = (x & 0x33333333) + ((x >> 2) & 0x33333333);
        x = (x + (x >> 4)) & 0x0f0f0f0f;
        h += Math.imul(x, 0x01010101) >>> 24;
      }
      dist[c] = h;
      hist[h] = (hist[h] as number) + 1;
    }
    let cutoff = 0;
    for (let total = hist[0] as number; total < keep; total += hist[cutoff] as number) cutoff++;
    return cutoff;
  }

  private encodeQuery(query: Float32Array, qNorm: number): void {
    const u = this.unit;
    const inv = 1 / qNorm;
    for (let i = 0; i < this.dimensions; i++) u[i] = (query[i] as number) * inv;
    this.encodeUnit(u, this.queryCode, 0);
  }

  /** Writes the code of unit vector `u` (centred on `mean`) at `out[off .. off+words)`. */
  private encodeUnit(u: Float64Array, out: Int32Array, off: number): void {
    const d = this.dimensions;
    const mean = this.mean;
    for (let word = 0; word < this.words; word++) {
      let bits = 0;
      const end = Math.min(32, d - word * 32);
      for (let b = 0; b < end; b++) {
        const i = word * 32 + b;
        if ((u[i] as number) > (mean[i] as number)) bits |= 1 << b;
      }
      out[off + word] = bits;
    }
  }

  private encodeSlot(slot: number): void {
    const d = this.dimensions;
    const base = slot * d;
    const nrm = this.norms[slot] as number;
    const inv = nrm > 0 ? 1 / nrm : 0;
    const u = this.unit;
    for (let i = 0; i < d; i++) u[i] = (this.values[base + i] as number) * inv;
    this.encodeUnit(u, this.codes, slot * this.words);
  }

  /**
   * The codes are relative to a mean that moves as vectors come and go. Recomputing it (and
   * with it every code, O(n·d)) after each write would make writes as slow as a full scan, so
   * new vectors are coded against the mean as it stood, and the mean and all codes are rebuilt
   * when the count has doubled or halved since the last build, or when as many writes as the
   * build covered have happened (a wholesale replacement that keeps the count). Each rebuild
   * follows at least builtFor/2 writes, so its cost is amortised O(d) per write. Stale codes
   * only cost recall, never correctness: every returned score is computed exactly.
   */
  private maybeRebuild(): void {
    const built = this.builtFor;
    if (this.n >= 2 * built || 2 * this.n <= built || this.changes >= built) this.rebuildCodes();
  }

  /** Recomputes the mean of the unit vectors and every code; also gives back spare capacity. */
  private rebuildCodes(): void {
    if (this.capacity > 4 * Math.max(this.n, MIN_CAPACITY)) this.resize(2 * this.n);
    const d = this.dimensions;
    const mean = this.mean;
    mean.fill(0);
    let counted = 0;
    for (let s = 0; s < this.n; s++) {
      const nrm = this.norms[s] as number;
      if (nrm === 0) continue;
      const inv = 1 / nrm;
      const base = s * d;
      for (let i = 0; i < d; i++)
        mean[i] = (mean[i] as number) + (this.values[base + i] as number) * inv;
      counted++;
    }
    if (counted > 0) for (let i = 0; i < d; i++) mean[i] = (mean[i] as number) / counted;
    for (let s = 0; s < this.n; s++) this.encodeSlot(s);
    this.builtFor = this.n;
    this.changes = 0;
  }

  private append(e: Entry, encode: boolean): void {
    // Checked before anything changes, so a bad entry leaves no half-added slot behind.
    this.checkLength(e);
    if (this.n === this.capacity) this.grow(this.capacity * 2);
    const slot = this.n++;
    this.ids.push(e.id);
    this.namespaces.push(null);
    for (const col of this.columns) col.push(undefined);
    this.slots.set(e.id, slot);
    this.write(slot, e, encode);
  }

  private checkLength(e: Entry): void {
    if (e.values.length !== this.dimensions)
      throw new Error(`vector "${e.id}" has ${e.values.length} dimensions, not ${this.dimensions}`);
  }

  private write(slot: number, e: Entry, encode: boolean): void {
    this.checkLength(e);
    const d = this.dimensions;
    this.values.set(e.values, slot * d);
    this.norms[slot] = norm(e.values);
    this.namespaces[slot] = e.namespace;
    this.columns.forEach((col, k) => {
      col[slot] = e.fields[k];
    });
    if (encode) this.encodeSlot(slot);
  }

  private grow(capacity: number): void {
    this.resize(Math.max(capacity, MIN_CAPACITY));
  }

  private resize(capacity: number): void {
    const cap = Math.max(capacity, this.n, MIN_CAPACITY);
    const d = this.dimensions;
    const w = this.words;
    const values = new Float32Array(cap * d);
    values.set(this.values.subarray(0, this.n * d));
    const norms = new Float64Array(cap);
    norms.set(this.norms.subarray(0, this.n));
    const codes = new Int32Array(cap * w);
    codes.set(this.codes.subarray(0, this.n * w));
    this.values = values;
    this.norms = norms;
    this.codes = codes;
    this.capacity = cap;
    // Scratch is reallocated on demand at the new size.
    this.candidates = new Int32Array(0);
    this.distances = new Uint16Array(0);
  }
}
