/** One entry of a ranked list: best first. */
export interface Ranked {
  id: string;
  score: number;
}

/**
 * Reciprocal rank fusion (Cormack, Clarke and Büttcher, SIGIR 2009): each list gives a chunk
 * 1 / (k + rank), and the sums decide. Only ranks count, so a cosine similarity and a BM25
 * score, which share no scale, can be fused without tuning; k = 60 is the paper's constant,
 * which damps the difference between the first few ranks of any one list.
 *
 * Ties (the same sum) go to the chunk ranked higher in the first list, then by id, so results
 * are stable from one call to the next.
 */
export const RRF_K = 60;

export function fuse(lists: Ranked[][], k = RRF_K): Ranked[] {
  const sums = new Map<string, { score: number; first: number }>();
  lists.forEach((list, l) => {
    list.forEach((r, i) => {
      const entry = sums.get(r.id) ?? { score: 0, first: Number.POSITIVE_INFINITY };
      entry.score += 1 / (k + i + 1);
      if (l === 0) entry.first = i;
      sums.set(r.id, entry);
    });
  });
  return [...sums]
    .sort(
      ([a, x], [b, y]) => y.score - x.score || x.first - y.first || (a < b ? -1 : a > b ? 1 : 0),
    )
    .map(([id, { score }]) => ({ id, score }));
}
