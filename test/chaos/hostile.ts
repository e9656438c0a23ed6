import { PROTOCOL_VERSION } from "@p2pa/shared";
import WebSocket from "ws";

export interface HostileReport {
  framesSent: number;
  errorFrames: number;
  rejectedResults: number;
  closeCode: number | null;
  byKind: Record<string, number>;
}

/**
 * A peer that speaks the protocol and breaks every rule it can: malformed and unknown
 * frames, oversized frames, results for tasks it was never leased, duplicates, wrong
 * dimensions, NaN and Infinity, and a flood. Returns what the edge answered.
 */
export async function runHostileClient(server: string, token: string): Promise<HostileReport> {
  const ws = new WebSocket(`${server.replace(/^http/, "ws")}/v1/workers/connect?model=use-lite`, {
    headers: { Authorization: `Bearer ${token}` },
  });
  const report: HostileReport = {
    framesSent: 0,
    errorFrames: 0,
    rejectedResults: 0,
    closeCode: null,
    byKind: {},
  };
  const tasks: { taskId: string; leaseId: string; items: { chunkId: string }[] }[] = [];
  ws.on("message", (raw) => {
    const m = JSON.parse(String(raw)) as { type: string; status?: string } & (typeof tasks)[number];
    if (m.type === "error") report.errorFrames++;
    if (m.type === "ack" && m.status === "rejected") report.rejectedResults++;
    if (m.type === "task") tasks.push(m);
  });
  const closed = new Promise<void>((r) =>
    ws.on("close", (code) => {
      report.closeCode = code;
      r();
    }),
  );
  await new Promise<void>((resolve, reject) => {
    ws.once("open", () => resolve());
    ws.once("error", reject);
  });
  const send = (kind: string, frame: unknown) => {
    if (ws.readyState !== WebSocket.OPEN) return;
    ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
    report.framesSent++;
    report.byKind[kind] = (report.byKind[kind] ?? 0) + 1;
  };
  const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const vec = (values: number[] | Float32Array) =>
    Buffer.from(Float32Array.from(values).buffer).toString("base64");
  const unit = new Float32Array(512);
  unit[0] = 1;

  send("result before hello", {
    type: "result",
    v: PROTOCOL_VERSION,
    taskId: "t",
    leaseId: "l",
    vectors: [{ chunkId: "c", vector: vec(unit) }],
  });
  send("hello", {
    type: "hello",
    v: PROTOCOL_VERSION,
    version: "evil",
    models: [{ id: "use-lite", dimension: 512 }],
    device: "cpu",
    threads: 1,
    batchSize: 1,
    capacity: 0,
  });
  await pause(100);
  send("malformed JSON", "{{{{");
  send("unknown type", { type: "give_me_everything", v: PROTOCOL_VERSION });
  send("old protocol's credit", { type: "credit", v: PROTOCOL_VERSION, n: 1000 });
  send("window over the limit", { type: "ready", v: PROTOCOL_VERSION, capacity: 100_000 });
  send("never-leased result", {
    type: "result",
    v: PROTOCOL_VERSION,
    taskId: "job_x.t0",
    leaseId: "forged",
    vectors: [{ chunkId: "job_x.00000.00000", vector: vec(unit) }],
  });
  send("ready", { type: "ready", v: PROTOCOL_VERSION, capacity: 3 });
  await pause(500);
  const [t1, t2, t3] = tasks;
  if (t1) {
    send("wrong dimensions", {
      type: "result",
      v: PROTOCOL_VERSION,
      taskId: t1.taskId,
      leaseId: t1.leaseId,
      vectors: t1.items.map((i) => ({
        chunkId: i.chunkId,
        vector: vec(new Float32Array(384).fill(0.05)),
      })),
    });
  }
  if (t2) {
    send("NaN values", {
      type: "result",
      v: PROTOCOL_VERSION,
      taskId: t2.taskId,
      leaseId: t2.leaseId,
      vectors: t2.items.map((i) => ({
        chunkId: i.chunkId,
        vector: vec(new Float32Array(512).fill(Number.NaN)),
      })),
    });
  }
  if (t3) {
    const inf = new Float32Array(512);
    inf[1] = Number.POSITIVE_INFINITY;
    send("Infinity values", {
      type: "result",
      v: PROTOCOL_VERSION,
      taskId: t3.taskId,
      leaseId: t3.leaseId,
      vectors: t3.items.map((i) => ({ chunkId: i.chunkId, vector: vec(inf) })),
    });
    send("duplicate result", {
      type: "result",
      v: PROTOCOL_VERSION,
      taskId: t3.taskId,
      leaseId: t3.leaseId,
      vectors: t3.items.map((i) => ({ chunkId: i.chunkId, vector: vec(inf) })),
    });
  }
  await pause(300);
  for (let i = 0; i < 2000 && ws.readyState === WebSocket.OPEN; i++)
    send("flood", { type: "heartbeat", v: PROTOCOL_VERSION, leaseIds: [], capacity: 0 });
  for (let i = 0; i < 40 && ws.readyState === WebSocket.OPEN; i++)
    send("garbage after flood", "garbage");
  await Promise.race([closed, pause(5000)]);
  if (ws.readyState === WebSocket.OPEN) ws.close();

  // An oversized frame, on a connection of its own: the edge refuses it and drops the peer.
  const big = new WebSocket(`${server.replace(/^http/, "ws")}/v1/workers/connect?model=use-lite`, {
    headers: { Authorization: `Bearer ${token}` },
  });
  await new Promise<void>((resolve) => {
    big.once("open", () => {
      big.send(
        JSON.stringify({
          type: "ready",
          v: PROTOCOL_VERSION,
          capacity: 1,
          pad: "x".repeat(5 * 1024 * 1024),
        }),
      );
      report.framesSent++;
      report.byKind["oversized frame"] = 1;
    });
    big.on("message", (raw) => {
      if ((JSON.parse(String(raw)) as { type: string }).type === "error") report.errorFrames++;
    });
    big.once("close", () => resolve());
    big.once("error", () => resolve());
    setTimeout(() => {
      big.terminate();
      resolve();
    }, 5000).unref();
  });
  return report;
}
