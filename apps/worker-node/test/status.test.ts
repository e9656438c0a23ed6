import type { AddressInfo } from "node:net";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { StatusReporter, type StatusSource, serveStatus } from "../src/status.js";
import type { WindowView, WorkerStats } from "../src/worker.js";
import { combinedState, WorkerGroup } from "../src/worker-group.js";

// The status line and /status against a worker whose counters the test sets, on a clock the
// test moves: what the donor sees for a given state of the worker.

/** A worker as the status line reads it; `busyMs` is what the model ran until now. */
class FakeWorker implements StatusSource {
  stats: WorkerStats = {
    state: "connected",
    workerId: "wkr_1",
    tasksDone: 0,
    chunksDone: 0,
    embedsDone: 0,
    rejected: 0,
    startedAt: 0,
    inferenceMs: 0,
  };
  busyMs = 0;
  held = 0;
  leaseIds: string[] = [];
  window(): WindowView {
    return {
      capacity: 3,
      queued: 0,
      computing: 0,
      room: 3,
      awaitingAck: 0,
      leaseIds: this.leaseIds,
    };
  }
  inferenceMsAt(): number {
    return this.busyMs;
  }
  tasksHeld(): number {
    return this.held;
  }
  async stop(): Promise<void> {
    this.stats.state = "stopped";
  }
}

/** A write stream that keeps what it is given. */
function fakeStream(isTTY: boolean, columns?: number) {
  const chunks: string[] = [];
  return {
    chunks,
    stream: {
      isTTY,
      columns,
      write(s: string) {
        chunks.push(s);
        return true;
      },
    } as unknown as NodeJS.WriteStream,
  };
}

let clock = 0;
const now = () => clock;
const label = { model: "use-lite", device: "cpu", threads: 2 };

beforeEach(() => {
  clock = 0;
  // The reporter treats CI as no terminal; these tests say what the stream is themselves.
  vi.stubEnv("CI", "");
});
afterEach(() => {
  vi.unstubAllEnvs();
});

/** Moves the clock in the reporter's steps on a terminal, with the model busy `share` of it. */
function run(reporter: StatusReporter, w: FakeWorker, ms: number, share: number, chunksPerS = 0) {
  for (let t = 0; t < ms; t += 500) {
    clock += 500;
    w.busyMs += 500 * share;
    w.stats.chunksDone += (chunksPerS * 500) / 1000;
    reporter.tick();
  }
}

describe("the status line on a terminal", () => {
  it("redraws one line in place with rate, busy %, tasks held and credit", () => {
    const w = new FakeWorker();
    const { chunks, stream } = fakeStream(true);
    const reporter = new StatusReporter(() => w, label, stream, { now });
    w.held = 6;
    w.stats.embedsDone = 3;
    run(reporter, w, 6000, 0.75, 40);
    const last = chunks.at(-1) as string;
    // Cleared and redrawn from the start of the line, never a new line.
    expect(last.startsWith("\r\x1b[2K")).toBe(true);
    expect(chunks.join("")).not.toContain("\n");
    expect(last).toContain("connected");
    expect(last).toContain("use-lite cpu x2");
    expect(last).toContain("40.0 chunks/s");
    // Once the model is loaded as two sessions, each of one of the two threads.
    const pooled = new StatusReporter(() => w, { ...label, sessions: 2 }, fakeStream(true).stream, {
      now,
    });
    expect(pooled.line()).toContain("use-lite cpu 2x1");
    expect(last).toContain("busy  75%");
    expect(last).toContain("held 6");
    expect(last).toContain("credit 240 chunks");
    expect(last).toContain("3 queries");
  });

  it("measures busy % over the last few seconds, not since the start", () => {
    const w = new FakeWorker();
    const { chunks, stream } = fakeStream(true);
    const reporter = new StatusReporter(() => w, label, stream, { now });
    run(reporter, w, 20_000, 1);
    expect(chunks.at(-1)).toContain("busy 100%");
    // Idle for 6 s after 20 s flat out: 77% since the start, nothing in the last 5 s.
    run(reporter, w, 6000, 0);
    expect(chunks.at(-1)).toContain("busy   0%");
    expect(chunks.at(-1)).toContain("0.0 chunks/s");
    // Half of the last window busy.
    run(reporter, w, 2500, 1);
    expect(reporter.figures().busyPercent).toBeCloseTo(50, 0);
  });

  it("shows the credit the edge acked, and tasks held falling as acks come", () => {
    const w = new FakeWorker();
    const { chunks, stream } = fakeStream(true);
    const reporter = new StatusReporter(() => w, label, stream, { now });
    w.held = 4;
    run(reporter, w, 500, 0);
    expect(chunks.at(-1)).toContain("held 4");
    expect(chunks.at(-1)).toContain("credit 0 chunks");
    w.held = 1;
    w.stats.tasksDone = 3;
    w.stats.chunksDone = 96;
    run(reporter, w, 500, 0);
    expect(chunks.at(-1)).toContain("held 1");
    expect(chunks.at(-1)).toContain("credit 96 chunks");
  });

  it("fits about 100 columns with big counts and a long model, and never wraps a narrow terminal", () => {
    const w = new FakeWorker();
    w.stats = { ...w.stats, state: "reconnecting", chunksDone: 12_345_678 };
    w.held = 64;
    const long = {
      model: "https://models.example.com/sentence-transformers/all-MiniLM-L6-v2/p2pa-model.json",
      device: "cuda",
      threads: 16,
    };
    const reporter = new StatusReporter(() => w, long, fakeStream(true).stream, { now });
    run(reporter, w, 1000, 1, 2500);
    const line = reporter.line();
    expect(line.length).toBeLessThanOrEqual(100);
    expect(line).toContain("credit 12.3M chunks");
    expect(line).toContain("2500 chunks/s");
    expect(line).toContain("https://…el.json cuda x16");
    expect(line).not.toContain("queries");
    w.stats.embedsDone = 456_789;
    expect(reporter.line()).toContain("457k queries");
    const narrow = fakeStream(true, 60);
    const small = new StatusReporter(() => w, long, narrow.stream, { now });
    small.tick();
    // After the coloured dot and its space, at most columns - 3 characters of the line.
    const drawn = (narrow.chunks.at(-1) as string).split("\x1b[0m ")[1] ?? "";
    expect(drawn.length).toBe(57);
    expect(small.line().startsWith(drawn)).toBe(true);
  });
});

describe("the status log without a terminal", () => {
  it("logs the same figures every interval, measured over that interval", () => {
    const w = new FakeWorker();
    const { chunks, stream } = fakeStream(false);
    const reporter = new StatusReporter(() => w, label, stream, { now });
    w.held = 2;
    clock += 10_000;
    w.busyMs += 10_000;
    w.stats.chunksDone += 500;
    reporter.tick();
    clock += 10_000;
    w.busyMs += 2_500;
    w.stats.chunksDone += 100;
    w.stats.tasksDone = 19;
    reporter.tick();
    expect(chunks).toHaveLength(2);
    const last = chunks.at(-1) as string;
    expect(last).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z connected/);
    expect(last.endsWith("\n")).toBe(true);
    expect(last).not.toContain("\x1b");
    expect(last).toContain("busy  25%");
    expect(last).toContain("10.0 chunks/s");
    expect(last).toContain("held 2");
    expect(last).toContain("credit 600 chunks");
  });
});

describe("--status-port", () => {
  it("adds busy %, tasks held and the rate to the JSON, keeping stats and window", async () => {
    const w = new FakeWorker();
    w.stats.chunksDone = 42;
    w.held = 5;
    const reporter = new StatusReporter(() => w, label, fakeStream(true).stream, { now });
    run(reporter, w, 5000, 0.4, 10);
    const server = await serveStatus(0, reporter);
    try {
      const port = (server.address() as AddressInfo).port;
      const body = (await (await fetch(`http://127.0.0.1:${port}/status`)).json()) as Record<
        string,
        unknown
      >;
      expect(body).toMatchObject({
        model: "use-lite",
        device: "cpu",
        threads: 2,
        stats: { state: "connected", workerId: "wkr_1", chunksDone: 92 },
        window: { capacity: 3, room: 3, leaseIds: [] },
        busyPercent: 40,
        tasksHeld: 5,
        chunksPerSecond: 10,
        measuredOverMs: 5000,
      });
      const missing = await fetch(`http://127.0.0.1:${port}/nope`);
      expect(missing.status).toBe(404);
    } finally {
      server.close();
    }
  });

  it("answers nulls before the worker exists", async () => {
    const reporter = new StatusReporter(() => null, label, fakeStream(false).stream, { now });
    const server = await serveStatus(0, reporter);
    try {
      const port = (server.address() as AddressInfo).port;
      const body = await (await fetch(`http://127.0.0.1:${port}/status`)).json();
      expect(body).toMatchObject({ stats: null, window: null, busyPercent: null, tasksHeld: null });
    } finally {
      server.close();
    }
  });
});

describe("a worker serving several models", () => {
  /** Two models' connections, seen as one worker, and each on its own. */
  function twoModels() {
    const lite = new FakeWorker();
    const bert = new FakeWorker();
    bert.stats.workerId = "wkr_2";
    const group = new WorkerGroup([
      { model: "use-lite", worker: lite },
      { model: "tiny-bert", worker: bert },
    ]);
    return { lite, bert, group };
  }
  const both = { model: "use-lite,tiny-bert", device: "cpu", threads: 2 };

  it("shows the sums on one line, how many connections are up, and each model in the log", () => {
    const { lite, bert, group } = twoModels();
    const tty = fakeStream(true);
    const live = new StatusReporter(() => group, both, tty.stream, { now });
    lite.held = 2;
    bert.held = 3;
    for (let t = 0; t < 5000; t += 500) {
      clock += 500;
      lite.busyMs += 500 * 0.5;
      bert.busyMs += 500 * 0.25;
      lite.stats.chunksDone += 10;
      bert.stats.chunksDone += 5;
      live.tick();
    }
    const line = tty.chunks.at(-1) as string;
    expect(line).toContain("connected");
    expect(line).toContain("2 models cpu x2");
    expect(line).toContain("30.0 chunks/s");
    expect(line).toContain("busy  75%");
    expect(line).toContain("held 5");
    expect(line).toContain("credit 150 chunks");
    // The live line keeps to one row: no per-model list there.
    expect(line).not.toContain("tiny-bert");

    bert.stats.state = "reconnecting";
    expect(live.line().startsWith("1/2 connected")).toBe(true);

    const log = fakeStream(false);
    const logged = new StatusReporter(() => group, both, log.stream, { now });
    clock += 10_000;
    logged.tick();
    expect(log.chunks.at(-1)).toContain(
      "[use-lite: connected, held 2, credit 100 chunks; tiny-bert: reconnecting, held 3, credit 50 chunks]",
    );
  });

  it("serves the sums and each model's own figures on --status-port", async () => {
    const { lite, bert, group } = twoModels();
    lite.leaseIds = ["l1"];
    bert.leaseIds = ["l2", "l3"];
    lite.held = 1;
    bert.held = 2;
    const reporter = new StatusReporter(() => group, both, fakeStream(true).stream, { now });
    for (let t = 0; t < 5000; t += 500) {
      clock += 500;
      lite.busyMs += 500 * 0.4;
      lite.stats.chunksDone += 10;
      reporter.tick();
    }
    const server = await serveStatus(0, reporter);
    try {
      const port = (server.address() as AddressInfo).port;
      const body = await (await fetch(`http://127.0.0.1:${port}/status`)).json();
      expect(body).toMatchObject({
        model: "use-lite,tiny-bert",
        stats: { state: "connected", workerId: null, chunksDone: 100 },
        window: { capacity: 6, room: 6, leaseIds: ["l1", "l2", "l3"] },
        busyPercent: 40,
        tasksHeld: 3,
        chunksPerSecond: 20,
        models: [
          {
            model: "use-lite",
            stats: { workerId: "wkr_1", chunksDone: 100 },
            window: { capacity: 3, leaseIds: ["l1"] },
            busyPercent: 40,
            tasksHeld: 1,
            chunksPerSecond: 20,
          },
          {
            model: "tiny-bert",
            stats: { workerId: "wkr_2", chunksDone: 0 },
            busyPercent: 0,
            tasksHeld: 2,
            chunksPerSecond: 0,
          },
        ],
      });
    } finally {
      server.close();
    }
  });

  it("reads one model as that worker itself: the same figures and JSON as before", () => {
    const w = new FakeWorker();
    const group = new WorkerGroup([{ model: "use-lite", worker: w }]);
    expect(group.stats).toBe(w.stats);
    expect(group.window()).toEqual(w.window());
    const reporter = new StatusReporter(() => group, label, fakeStream(false).stream, { now });
    expect(reporter.line()).not.toContain("[");
    expect(reporter.line()).toContain("use-lite cpu x2");
  });

  it("shows one state for connections that disagree: the one that needs attention first", () => {
    expect(combinedState(["connected", "connected"])).toBe("connected");
    expect(combinedState(["connected", "reconnecting"])).toBe("reconnecting");
    expect(combinedState(["connecting", "connected"])).toBe("connecting");
    expect(combinedState(["draining", "stopped"])).toBe("draining");
    expect(combinedState(["connected", "stopped"])).toBe("draining");
    expect(combinedState(["stopped", "stopped"])).toBe("stopped");
  });
});
