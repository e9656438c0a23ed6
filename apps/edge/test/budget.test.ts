import { describe, expect, it } from "vitest";
import {
  allowedInFlight,
  BUDGET_POLICY,
  freshBudget,
  recordFailure,
  recordSuccess,
} from "../src/dispatch/error-budget.js";
import { take } from "../src/dispatch/rate-limit.js";

describe("worker error budget", () => {
  it("throttles a failing worker, then cools it down, and a good result restores it", () => {
    let b = freshBudget();
    const now = 1_000_000;
    expect(allowedInFlight(b, now, 8)).toBe(8);
    for (let i = 0; i < BUDGET_POLICY.throttleAfter; i++) b = recordFailure(b, now).budget;
    expect(allowedInFlight(b, now, 8)).toBe(1);
    let cooling = false;
    for (let i = BUDGET_POLICY.throttleAfter; i < BUDGET_POLICY.coolDownAfter; i++)
      ({ budget: b, coolingDown: cooling } = recordFailure(b, now));
    expect(cooling).toBe(true);
    expect(allowedInFlight(b, now + 1000, 8)).toBe(0);
    expect(allowedInFlight(b, now + BUDGET_POLICY.coolDownMs + 1, 8)).toBe(8);
    b = recordSuccess(recordFailure(recordFailure(freshBudget(), now).budget, now).budget);
    expect(allowedInFlight(b, now, 8)).toBe(8);
  });
});

describe("message rate limit", () => {
  it("lets a burst through, refuses a flood, and refills with time", () => {
    const limits = { rate: 10, burst: 5 };
    let bucket: ReturnType<typeof take>["bucket"] | undefined;
    let passed = 0;
    for (let i = 0; i < 50; i++) {
      const r = take(bucket, 0, limits);
      bucket = r.bucket;
      if (r.ok) passed++;
    }
    expect(passed).toBe(5);
    expect(take(bucket, 1000, limits).ok).toBe(true);
  });
});
