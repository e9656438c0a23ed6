/**
 * When webhook attempts happen. The default follows Svix's published schedule: at once, then
 * after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h (8 attempts over about 27 hours).
 * Deployments (and tests) set their own with WEBHOOK_SCHEDULE, seconds separated by commas.
 */
const DEFAULT_SCHEDULE_SECONDS = [0, 5, 300, 1800, 7200, 18000, 36000, 36000];

/** Parses WEBHOOK_SCHEDULE; falls back to the default on anything malformed. */
export function parseSchedule(raw: string | undefined): number[] {
  if (!raw) return DEFAULT_SCHEDULE_SECONDS;
  const parts = raw.split(",").map((s) => Number(s.trim()));
  if (parts.length === 0 || parts.some((n) => !Number.isFinite(n) || n < 0))
    return DEFAULT_SCHEDULE_SECONDS;
  return parts;
}

/**
 * Delay before attempt `n` (0-based) in ms, with ±10% jitter so that many deliveries failing
 * together do not retry in lockstep. Null when there is no attempt `n`: the delivery is exhausted.
 */
export function delayBefore(
  schedule: number[],
  n: number,
  random: () => number = Math.random,
): number | null {
  const base = schedule[n];
  if (base === undefined) return null;
  const jitter = base * 0.1 * (random() * 2 - 1);
  return Math.round((base + jitter) * 1000);
}
