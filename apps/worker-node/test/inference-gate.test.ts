import { describe, expect, it } from "vitest";
import { InferenceGate } from "../src/inference-gate.js";

// The gate that makes the models of one worker take turns: one call at a time, real-time
// requests before batch work, first come first served otherwise.

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("the inference gate", () => {
  it("runs one call at a time, real-time calls first, others in arrival order", async () => {
    const gate = new InferenceGate();
    const order: string[] = [];
    let running = 0;
    let most = 0;
    const call = (name: string, urgent: boolean, ms: number) =>
      gate.run(urgent, async () => {
        running++;
        most = Math.max(most, running);
        order.push(name);
        await sleep(ms);
        running--;
        return name;
      });
    const first = call("batch-a", false, 30);
    // Queued while batch-a runs: a real-time call overtakes the batches waiting before it.
    const rest = [
      call("batch-b", false, 5),
      call("batch-c", false, 5),
      call("query-1", true, 5),
      call("query-2", true, 5),
    ];
    expect(await Promise.all([first, ...rest])).toEqual([
      "batch-a",
      "batch-b",
      "batch-c",
      "query-1",
      "query-2",
    ]);
    expect(order).toEqual(["batch-a", "query-1", "query-2", "batch-b", "batch-c"]);
    expect(most).toBe(1);
  });

  it("passes the turn on when a call fails", async () => {
    const gate = new InferenceGate();
    const failing = gate.run(false, async () => {
      await sleep(5);
      throw new Error("inference failed");
    });
    const next = gate.run(false, async () => "ran");
    await expect(failing).rejects.toThrow("inference failed");
    expect(await next).toBe("ran");
    // Free again: a call now starts at once.
    expect(await gate.run(true, async () => "at once")).toBe("at once");
  });
});
