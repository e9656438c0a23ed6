import { describe, expect, it } from "vitest";
import { EdgeMessage, PROTOCOL_VERSION, parseMessage, WorkerMessage } from "../src/protocol.js";
import { checkEmbedding, decodeVector, encodeVector } from "../src/vector-codec.js";

describe("parseMessage", () => {
  const hello = {
    type: "hello",
    v: PROTOCOL_VERSION,
    version: "0.1.0",
    models: [{ id: "use-lite", dimension: 512 }],
    device: "cpu",
    threads: 2,
    batchSize: 32,
    capacity: 3,
  };

  it("accepts a valid frame and types it", () => {
    const r = parseMessage(WorkerMessage, JSON.stringify(hello));
    expect(r.ok && r.message.type === "hello" && r.message.threads).toBe(2);
  });

  it("turns malformed, unknown and mistyped frames into typed errors", () => {
    expect(parseMessage(WorkerMessage, "{nope")).toMatchObject({
      ok: false,
      error: { code: "bad_json" },
    });
    expect(
      parseMessage(WorkerMessage, JSON.stringify({ type: "steal_all", v: PROTOCOL_VERSION })),
    ).toMatchObject({
      ok: false,
      error: { code: "bad_message" },
    });
    const wrong = parseMessage(WorkerMessage, JSON.stringify({ ...hello, threads: "many" }));
    expect(wrong).toMatchObject({ ok: false, error: { code: "bad_message" } });
    expect(!wrong.ok && wrong.error.message).toContain("threads");
    expect(parseMessage(WorkerMessage, JSON.stringify({ ...hello, v: 99 }))).toMatchObject({
      ok: false,
      error: { code: "unsupported_version", message: expect.stringMatching(/99.*speaks 2/) },
    });
    // Version 1's incremental credit is gone: a window is stated, never added to.
    expect(
      parseMessage(WorkerMessage, JSON.stringify({ type: "credit", v: PROTOCOL_VERSION, n: 1 })),
    ).toMatchObject({ ok: false, error: { code: "bad_message" } });
    expect(
      parseMessage(
        WorkerMessage,
        JSON.stringify({ type: "ready", v: PROTOCOL_VERSION, capacity: 65 }),
      ),
    ).toMatchObject({ ok: false, error: { code: "bad_message" } });
    expect(parseMessage(WorkerMessage, "null")).toMatchObject({
      ok: false,
      error: { code: "bad_message" },
    });
  });

  it("rejects oversized frames before parsing them", () => {
    const huge = JSON.stringify({ type: "credit", v: 1, n: 1, pad: "x".repeat(5 * 1024 * 1024) });
    expect(parseMessage(WorkerMessage, huge)).toMatchObject({
      ok: false,
      error: { code: "too_large" },
    });
  });

  it("parses edge frames from binary payloads", () => {
    const frame = new TextEncoder().encode(
      JSON.stringify({ type: "error", v: PROTOCOL_VERSION, code: "x", message: "y" }),
    );
    expect(parseMessage(EdgeMessage, frame.buffer as ArrayBuffer)).toMatchObject({ ok: true });
  });
});

describe("vector codec", () => {
  it("round-trips float32 vectors exactly", () => {
    const v = Float32Array.from({ length: 512 }, (_, i) => Math.sin(i) / 7);
    expect(Array.from(decodeVector(encodeVector(v)) ?? [])).toEqual(Array.from(v));
  });

  it("rejects payloads that are not whole float32s", () => {
    expect(decodeVector("AAA=")).toBeNull();
    expect(decodeVector("!!!")).toBeNull();
  });

  it("flags wrong dimension, non-finite values and unnormalised vectors", () => {
    const unit = new Float32Array(4).fill(0.5);
    expect(checkEmbedding(unit, 4)).toBeNull();
    expect(checkEmbedding(unit, 8)).toMatch(/dimension/);
    expect(checkEmbedding(Float32Array.from([Number.NaN, 0, 0, 1]), 4)).toMatch(/non-finite/);
    expect(checkEmbedding(new Float32Array(4).fill(2), 4)).toMatch(/norm/);
  });
});
