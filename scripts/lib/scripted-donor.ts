import { randomBytes } from "node:crypto";
import { encodeResultFrame, encodeVector, PROTOCOL_VERSION } from "@p2pa/shared";
import WebSocket from "ws";

/** A task as the edge sends it. */
export interface TaskFrame {
  taskId: string;
  leaseId: string;
  items: { chunkId: string; text: string }[];
}

/**
 * A scripted donor speaking the real protocol over a real WebSocket: it takes tasks within
 * its window and answers each with whatever `answer` returns (honest, lying, lazy). Every
 * frame it receives is kept, so a test can read exactly what a volunteer saw.
 */
export class ScriptedDonor {
  readonly received: { type: string; [k: string]: unknown }[] = [];
  tasks = 0;
  /** Chunks answered so far (items of the tasks answered). */
  chunks = 0;
  /** Bytes of every frame received from the edge, and of every result sent to it. */
  bytesIn = 0;
  bytesOut = 0;
  /** When the first task arrived (Date.now()), or null. */
  firstTaskAt: number | null = null;
  closeCode: number | null = null;
  /** The id the edge gave this connection (its welcome), once connected. */
  workerId: string | null = null;
  private ws!: WebSocket;
  /** Whether the edge took the offer of binary results in its welcome. */
  private binaryAccepted = false;
  /** A vector returned again (a fixed answer) is encoded once. */
  private readonly encoded = new WeakMap<Float32Array, string>();

  constructor(
    private readonly server: string,
    private readonly token: string,
    private readonly answer: (task: TaskFrame, n: number) => Promise<Float32Array[]>,
    private readonly capacity = 2,
    /** Keep every frame received (tests read them); a benchmark keeps none. */
    private readonly keepFrames = true,
    /**
     * Offer binary float32 result frames in hello, as p2pa-worker does, and send them when the
     * edge's welcome takes the offer (an edge from before them never does).
     */
    private readonly binary = false,
  ) {}

  async connect(): Promise<void> {
    this.ws = new WebSocket(`${this.server.replace(/^http/, "ws")}/v1/workers/connect`, {
      headers: { Authorization: `Bearer ${this.token}` },
      // As p2pa-worker: no permessage-deflate.
      perMessageDeflate: false,
    });
    this.ws.on("close", (code) => {
      this.closeCode = code;
    });
    this.ws.on("message", (raw: Buffer) => {
      this.bytesIn += raw.length;
      void this.onFrame(String(raw));
    });
    await new Promise<void>((resolve, reject) => {
      this.ws.once("open", () => resolve());
      this.ws.once("error", reject);
    });
    const welcomed = new Promise<void>((resolve) => {
      const check = (raw: WebSocket.RawData) => {
        const frame = JSON.parse(String(raw)) as {
          type: string;
          workerId?: string;
          binaryResults?: boolean;
        };
        if (frame.type === "welcome") {
          this.workerId = frame.workerId ?? null;
          this.binaryAccepted = frame.binaryResults === true;
          this.ws.off("message", check);
          resolve();
        }
      };
      this.ws.on("message", check);
    });
    this.ws.send(
      JSON.stringify({
        type: "hello",
        v: PROTOCOL_VERSION,
        version: "scripted",
        session: randomBytes(18).toString("base64url"),
        models: [{ id: "use-lite", dimension: 512 }],
        device: "cpu",
        threads: 1,
        batchSize: 32,
        capacity: this.capacity,
        ...(this.binary ? { binaryResults: true } : {}),
      }),
    );
    await welcomed;
  }

  /** Closes the connection; resolves once it is closed. */
  close(): Promise<void> {
    if (this.ws.readyState === WebSocket.CLOSED) return Promise.resolve();
    const closed = new Promise<void>((resolve) => this.ws.once("close", () => resolve()));
    this.ws.close();
    return closed;
  }

  private async onFrame(raw: string): Promise<void> {
    const frame = JSON.parse(raw) as { type: string } & Partial<TaskFrame>;
    if (this.keepFrames) this.received.push(frame);
    if (frame.type !== "task") return;
    const task = frame as TaskFrame;
    this.firstTaskAt ??= Date.now();
    const vectors = await this.answer(task, this.tasks++);
    if (this.ws.readyState !== WebSocket.OPEN) return;
    const payload =
      this.binary && this.binaryAccepted
        ? encodeResultFrame({
            taskId: task.taskId,
            leaseId: task.leaseId,
            vectors: task.items.map((it, i) => ({
              chunkId: it.chunkId,
              values: vectors[i] as Float32Array,
            })),
          })
        : JSON.stringify({
            type: "result",
            v: PROTOCOL_VERSION,
            taskId: task.taskId,
            leaseId: task.leaseId,
            vectors: task.items.map((it, i) => ({
              chunkId: it.chunkId,
              vector: this.encode(vectors[i] as Float32Array),
            })),
          });
    this.bytesOut += Buffer.byteLength(payload);
    this.chunks += task.items.length;
    this.ws.send(payload);
  }

  private encode(v: Float32Array): string {
    let s = this.encoded.get(v);
    if (s === undefined) {
      s = encodeVector(v);
      this.encoded.set(v, s);
    }
    return s;
  }
}

/** A random unit vector: plausible (right dimension, unit norm, finite) and wrong. */
export function randomUnit(dim = 512): Float32Array {
  const v = Float32Array.from({ length: dim }, () => Math.random() - 0.5);
  const n = Math.hypot(...v);
  return v.map((x) => x / n);
}
