/** A token bucket: `rate` messages a second on average, bursts up to `burst`. */
export interface Bucket {
  tokens: number;
  at: number;
}

const MESSAGE_RATE = { rate: 200, burst: 400 } as const;

/** Takes one token; returns the new bucket and whether the message may pass. */
export function take(
  b: Bucket | undefined,
  now: number,
  limits: { rate: number; burst: number } = MESSAGE_RATE,
): { bucket: Bucket; ok: boolean } {
  const prev = b ?? { tokens: limits.burst, at: now };
  const tokens = Math.min(limits.burst, prev.tokens + ((now - prev.at) / 1000) * limits.rate);
  if (tokens < 1) return { bucket: { tokens, at: now }, ok: false };
  return { bucket: { tokens: tokens - 1, at: now }, ok: true };
}
