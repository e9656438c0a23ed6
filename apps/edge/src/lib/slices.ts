/**
 * `items` in consecutive slices of at most `size`, in order (none for no items). The storage
 * APIs cap what one call takes (D1's 100 bound parameters, Vectorize's ids per delete, R2's
 * keys per delete), so long lists go through them a slice at a time.
 */
export function slices<T>(items: readonly T[], size: number): T[][] {
  if (!(size >= 1)) throw new RangeError(`slice size must be at least 1, got ${size}`);
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}
