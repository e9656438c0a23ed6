import { describe, expect, it } from "vitest";
import { InferenceGate } from "../src/inference-gate.js";

// The gate that makes the models of one worker take turns: one model at a time (its sessions
// may run several calls), real-time requests before batch work, first come first served
// otherwise.

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Calls through one gate, recording which start and how many of each model run at once. */
function recorder(gate: InferenceGate) {
  const order: string[] = [];
  const running = new Map<string, number>();
  let mixed = false;
  let mostOfOne = 0;
  const call = (model: string, name: string, urgent: boolean, ms: number) =>
    gate.run(model, urgent, async () => {
      running.set(model, (running.get(model) ?? 0) + 1);
      if ([...running].some(([m, n]) => m !== model && n > 0)) mixed = true;
      mostOfOne = Math.max(mostOfOne, running.get(model) ?? 0);
      order.push(name);
      await sleep(ms);
      running.set(model, (running.get(model) ?? 0) - 1);
      return name;
    });
  return { call, order, mixed: () => mixed, mostOfOne: () => mostOfOne };
}

describe("the inference gate", () => {
  it("lets one model's calls run together, and no two models at once", async () => {
    const r = recorder(new InferenceGate());
    const a = [r.call("a", "a1", false, 30), r.call("a", "a2", false, 30)];
    const b = [r.call("b", "b1", false, 5)];
    // Model b waits: a takes no new call meanwhile, and the turn passes when a's calls end.
    const late = r.call("a", "a3", false, 5);
    expect(await Promise.all([...a, ...b, late])).toEqual(["a1", "a2", "b1", "a3"]);
    expect(r.order).toEqual(["a1", "a2", "b1", "a3"]);
    expect(r.mostOfOne()).toBe(2);
    expect(r.mixed()).toBe(false);
  });

  it("gives the turn to real-time calls first, whichever model they are for", async () => {
    const r = recorder(new InferenceGate());
    const first = r.call("a", "batch-a", false, 30);
    // Queued while batch-a runs: real-time calls overtake the batches waiting before them, and
    // each turn takes every waiting call of its model.
    const rest = [
      r.call("b", "batch-b", false, 5),
      r.call("a", "batch-a2", false, 5),
      r.call("b", "query-b", true, 5),
      r.call("a", "query-a", true, 5),
    ];
    await Promise.all([first, ...rest]);
    expect(r.order).toEqual(["batch-a", "query-b", "batch-b", "query-a", "batch-a2"]);
    expect(r.mixed()).toBe(false);
  });

  it("passes the turn on when a call fails", async () => {
    const gate = new InferenceGate();
    const failing = gate.run("a", false, async () => {
      await sleep(5);
      throw new Error("inference failed");
    });
    const next = gate.run("b", false, async () => "ran");
    await expect(failing).rejects.toThrow("inference failed");
    expect(await next).toBe("ran");
    // Free again: a call now starts at once.
    expect(await gate.run("a", true, async () => "at once")).toBe("at once");
  });
});
