import { describe, expect, it } from "vitest";
import { type TaskEvent, type TaskState, transition } from "../src/dispatch/task-state.js";

const ALL: TaskState[] = ["pending", "leased", "storing", "done", "failed", "cancelled"];

describe("task state machine", () => {
  it("walks the happy path pending -> leased -> storing -> done", () => {
    expect(transition("pending", { type: "lease" })).toBe("leased");
    expect(transition("leased", { type: "result" })).toBe("storing");
    expect(transition("storing", { type: "stored" })).toBe("done");
  });

  it("puts a task back on expiry, release, store errors and retryable failures", () => {
    expect(transition("leased", { type: "expire" })).toBe("pending");
    expect(transition("leased", { type: "release" })).toBe("pending");
    expect(transition("storing", { type: "store_error" })).toBe("pending");
    expect(transition("leased", { type: "fail", exhausted: false })).toBe("pending");
    expect(transition("leased", { type: "fail", exhausted: true })).toBe("failed");
  });

  it("never moves a stored, failed or cancelled task, and never expires one being stored", () => {
    const events: TaskEvent[] = [
      { type: "lease" },
      { type: "result" },
      { type: "stored" },
      { type: "store_error" },
      { type: "recover" },
      { type: "expire" },
      { type: "release" },
      { type: "fail", exhausted: false },
      { type: "cancel" },
    ];
    for (const s of ["done", "failed", "cancelled"] as TaskState[]) {
      for (const e of events) expect(transition(s, e), `${s} + ${e.type}`).toBeNull();
    }
    // Only a recompute (its donor was caught lying) takes a stored task back.
    expect(transition("failed", { type: "recompute" })).toBeNull();
    expect(transition("storing", { type: "expire" })).toBeNull();
    expect(transition("storing", { type: "cancel" })).toBeNull();
    expect(transition("pending", { type: "result" })).toBeNull();
  });

  it("takes a late result (expired lease, before give-up) whether or not the task was reassigned", () => {
    expect(transition("pending", { type: "late_result" })).toBe("storing");
    expect(transition("leased", { type: "late_result" })).toBe("storing");
    expect(transition("storing", { type: "late_result" })).toBeNull();
    expect(transition("done", { type: "late_result" })).toBeNull();
  });

  it("recovers only a task cut off mid-write, back to the queue", () => {
    expect(ALL.filter((s) => transition(s, { type: "recover" }) !== null)).toEqual(["storing"]);
    expect(transition("storing", { type: "recover" })).toBe("pending");
  });

  it("sends a held result's task back for confirmation, gives up on disagreement, recomputes a stored one", () => {
    expect(transition("storing", { type: "await_confirmation" })).toBe("pending");
    expect(transition("storing", { type: "give_up" })).toBe("failed");
    expect(transition("done", { type: "recompute" })).toBe("pending");
    for (const s of ["pending", "leased", "failed", "cancelled"] as TaskState[]) {
      expect(transition(s, { type: "await_confirmation" })).toBeNull();
      expect(transition(s, { type: "recompute" })).toBeNull();
    }
  });

  it("cancels only work that is not yet stored", () => {
    expect(ALL.filter((s) => transition(s, { type: "cancel" }) === "cancelled")).toEqual([
      "pending",
      "leased",
    ]);
  });
});
