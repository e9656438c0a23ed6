import { MAX_TASK_SIZE, TASK_SIZE } from "@p2pa/shared";
import { describe, expect, it } from "vitest";
import { Pace } from "../src/dispatch/peers.js";

/** A worker whose results of `chunks` came in every `everyMs`, `n` times, the last at `end`. */
function paced(chunks: number, everyMs: number, n: number, end = 100_000): Pace {
  const pace = new Pace();
  for (let i = n - 1; i >= 0; i--) pace.note(chunks, end - i * everyMs);
  return pace;
}

describe("task size by pace", () => {
  it("gives an unmeasured worker one default task, then about two seconds of its own work", () => {
    expect(paced(32, 200, 3).taskSize(100_000, 2_000)).toBe(TASK_SIZE);
    // 32 chunks every 500 ms is 64 a second: 128 in two seconds.
    expect(paced(32, 500, 8).taskSize(100_000, 2_000)).toBe(128);
    // A slow laptop (32 chunks every 4 s) never gets less than the default.
    expect(paced(32, 4_000, 6).taskSize(100_000, 2_000)).toBe(TASK_SIZE);
    // A fast GPU gets the most a task holds, and no more.
    expect(paced(256, 50, 8).taskSize(100_000, 2_000)).toBe(MAX_TASK_SIZE);
    // Results that all came at once count as fast.
    expect(paced(32, 0, 4).taskSize(100_000, 2_000)).toBe(MAX_TASK_SIZE);
  });

  it("sizes in whole default tasks and forgets a pace measured long ago", () => {
    // 32 chunks every 700 ms: 91 in two seconds, cut down to 64.
    expect(paced(32, 700, 8).taskSize(100_000, 2_000)).toBe(64);
    // The same worker, a minute after its last result, starts again from the default.
    expect(paced(32, 50, 8).taskSize(160_000, 2_000)).toBe(TASK_SIZE);
  });
});
