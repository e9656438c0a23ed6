import { writeFileSync } from "node:fs";
import WebSocket from "ws";

/**
 * A CPU profile of the local edge's Worker and Durable Objects, taken over wrangler dev's
 * DevTools port (the Chrome DevTools Protocol's Profiler). The .cpuprofile it writes opens in
 * Chrome DevTools or speedscope; `summary` lists where the samples fell.
 */

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export class EdgeProfiler {
  private nextId = 1;
  private readonly waiting = new Map<number, (result: unknown) => void>();

  private constructor(
    private readonly ws: WebSocket,
    private readonly intervalUs: number,
  ) {
    ws.on("message", (raw) => {
      const msg = JSON.parse(String(raw)) as { id?: number; result?: unknown };
      if (msg.id !== undefined) this.waiting.get(msg.id)?.(msg.result);
    });
  }

  static async start(inspectorPort: number, intervalUs = 200): Promise<EdgeProfiler> {
    const ws = new WebSocket(`ws://127.0.0.1:${inspectorPort}/ws`);
    await new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("error", reject);
    });
    const p = new EdgeProfiler(ws, intervalUs);
    await p.call("Profiler.enable");
    await p.call("Profiler.setSamplingInterval", { interval: intervalUs });
    await p.call("Profiler.start");
    return p;
  }

  private call(method: string, params?: unknown): Promise<unknown> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.ws.send(JSON.stringify({ id, method, params }));
    });
  }

  /**
   * Stops, writes the profile to `file` and returns a summary of its busiest functions, with
   * how long this isolate was busy (neither idle nor away: see `summary`), in ms.
   */
  async stop(file: string, top = 25): Promise<{ text: string; busyMs: number }> {
    const { profile } = (await this.call("Profiler.stop")) as { profile: CpuProfile };
    this.ws.close();
    writeFileSync(file, JSON.stringify(profile));
    return summary(profile, top, this.intervalUs);
  }
}

const AWAY = "(between samples: the thread away from this isolate, e.g. in D1)";
const IDLE = "(idle) :0:0";
/** The profiler's own nodes, which are no function of the edge's. */
const NOT_CODE = new Set(["(root)", "(program)", "(idle)", "(garbage collector)"]);

/**
 * Self time by function, and the share of the profile that was idle or collecting garbage;
 * then each named function's time with everything it called (where a path's time went).
 * A sample that comes long after the one before (the thread was away from this isolate: in
 * D1's or another object's work, or in native code) is counted for one interval; the rest of
 * the gap is shown on a line of its own, not charged to whatever function ran next.
 */
function summary(
  profile: CpuProfile,
  top: number,
  intervalUs: number,
): { text: string; busyMs: number } {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, ProfileNode>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n);
  // An anonymous function is named by the nearest named function that called it.
  const nameOf = (n: ProfileNode): string => {
    if (n.callFrame.functionName) return n.callFrame.functionName;
    for (let p = parent.get(n.id); p; p = parent.get(p.id))
      if (p.callFrame.functionName) return `(anonymous in ${p.callFrame.functionName})`;
    return "(anonymous)";
  };
  const self = new Map<string, number>();
  const inclusive = new Map<string, number>();
  let total = 0;
  profile.samples.forEach((id, i) => {
    const gap = profile.timeDeltas[i] ?? 0;
    total += gap;
    const dt = Math.min(gap, 4 * intervalUs);
    if (gap > dt) self.set(AWAY, (self.get(AWAY) ?? 0) + gap - dt);
    const node = byId.get(id);
    const f = node?.callFrame;
    const file = f?.url.split("/").slice(-2).join("/") ?? "";
    const key =
      node && f ? `${nameOf(node)} ${file}:${f.lineNumber + 1}:${f.columnNumber + 1}` : "?";
    self.set(key, (self.get(key) ?? 0) + dt);
    // Each named function on the sample's stack, once (recursion counts once).
    const seen = new Set<string>();
    for (let n = node; n; n = parent.get(n.id)) {
      const name = n.callFrame.functionName;
      if (!name || NOT_CODE.has(name) || seen.has(name)) continue;
      seen.add(name);
      inclusive.set(name, (inclusive.get(name) ?? 0) + dt);
    }
  });
  const line = ([k, us]: [string, number]) =>
    `${((100 * us) / total).toFixed(1).padStart(5)}%  ${(us / 1000).toFixed(0).padStart(6)} ms  ${k}`;
  const busyMs = (total - (self.get(AWAY) ?? 0) - (self.get(IDLE) ?? 0)) / 1000;
  return {
    text: [
      `profile: ${(total / 1000).toFixed(0)} ms sampled, this isolate busy ${busyMs.toFixed(0)} ms`,
      "self time:",
      ...[...self.entries()]
        .sort((a, b) => b[1] - a[1])
        .slice(0, top)
        .map(line),
      "with what they called (a function's samples, and its callees'):",
      ...[...inclusive.entries()]
        .sort((a, b) => b[1] - a[1])
        .slice(0, top)
        .map(line),
    ].join("\n"),
    busyMs,
  };
}
