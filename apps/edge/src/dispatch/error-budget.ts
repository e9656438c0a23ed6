/**
 * A worker's error budget. Failures (bad results, failed tasks, expired leases) in a row
 * first limit the worker to one task at a time, then stop it for a cool-down; one good
 * result restores it. The worker is told why through an `error` frame.
 */
export interface Budget {
  /** Failures since the last good result. */
  failures: number;
  /** Epoch ms until which the worker gets no tasks; 0 when not cooling down. */
  coolUntil: number;
}

export const BUDGET_POLICY = { throttleAfter: 2, coolDownAfter: 5, coolDownMs: 60_000 } as const;

export const freshBudget = (): Budget => ({ failures: 0, coolUntil: 0 });

/** Counts a failure; `coolingDown` is true when this failure started a cool-down. */
export function recordFailure(
  b: Budget,
  now: number,
  policy = BUDGET_POLICY,
): { budget: Budget; coolingDown: boolean } {
  const failures = b.failures + 1;
  if (failures >= policy.coolDownAfter) {
    return { budget: { failures: 0, coolUntil: now + policy.coolDownMs }, coolingDown: true };
  }
  return { budget: { failures, coolUntil: b.coolUntil }, coolingDown: false };
}

export function recordSuccess(b: Budget): Budget {
  return { failures: 0, coolUntil: b.coolUntil };
}

/** How many tasks the worker may hold now, given what it asked for. */
export function allowedInFlight(
  b: Budget,
  now: number,
  asked: number,
  policy = BUDGET_POLICY,
): number {
  if (b.coolUntil > now) return 0;
  if (b.failures >= policy.throttleAfter) return Math.min(asked, 1);
  return asked;
}
