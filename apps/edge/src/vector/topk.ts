/** Euclidean norm, accumulated in float64 so it matches what `dot` sees. */
export function norm(v: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < v.length; i++) {
    const x = v[i] as number;
    s += x * x;
  }
  return Math.sqrt(s);
}

/**
 * Dot product of two equal-length vectors. Unrolled by four with independent accumulators:
 * this loop is the whole cost of a query once the rows are read, and the unrolling roughly
 * halves it in V8.
 */
export function dot(a: Float32Array, b: Float32Array): number {
  const n = a.length;
  const m = n - (n % 4);
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  for (let i = 0; i < m; i += 4) {
    s0 += (a[i] as number) * (b[i] as number);
    s1 += (a[i + 1] as number) * (b[i + 1] as number);
    s2 += (a[i + 2] as number) * (b[i + 2] as number);
    s3 += (a[i + 3] as number) * (b[i + 3] as number);
  }
  for (let i = m; i < n; i++) s0 += (a[i] as number) * (b[i] as number);
  return s0 + s1 + s2 + s3;
}

/** One kept candidate. */
export interface Scored {
  id: string;
  score: number;
  namespace: string | null;
}

/**
 * The k best candidates of a stream, best first: higher score, then smaller id, so equal
 * scores come back in a stable order. A sorted array with binary insertion: k is at most 100,
 * and after the first few hundred rows almost every candidate is rejected by one comparison.
 */
export class TopK {
  readonly items: Scored[] = [];
  constructor(private readonly k: number) {}

  /** Whether a candidate would be kept; lets the caller skip building it. */
  admits(score: number, id: string): boolean {
    if (this.items.length < this.k) return true;
    const last = this.items[this.items.length - 1] as Scored;
    return score > last.score || (score === last.score && id < last.id);
  }

  push(id: string, score: number, namespace: string | null): void {
    if (!this.admits(score, id)) return;
    let lo = 0;
    let hi = this.items.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const m = this.items[mid] as Scored;
      if (m.score > score || (m.score === score && m.id < id)) lo = mid + 1;
      else hi = mid;
    }
    this.items.splice(lo, 0, { id, score, namespace });
    if (this.items.length > this.k) this.items.pop();
  }
}
