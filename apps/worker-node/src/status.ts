import { once } from "node:events";
import { createServer, type Server } from "node:http";
import type { Worker } from "./worker.js";

/**
 * What the donor sees: on a terminal one live line (state, model, device, tasks, rate);
 * elsewhere plain timestamped log lines, one per event and a progress line every 10 s.
 */
export class StatusReporter {
  private timer: ReturnType<typeof setInterval> | null = null;
  private lastChunks = 0;
  private lastAt = Date.now();
  private rate = 0;
  private readonly tty: boolean;

  constructor(
    private readonly worker: () => Worker | null,
    private readonly label: { model: string; device: string; threads: number },
    private readonly out: NodeJS.WriteStream = process.stderr,
  ) {
    this.tty = Boolean(out.isTTY) && process.env.CI !== "true";
  }

  start(): void {
    this.timer = setInterval(() => this.tick(), this.tty ? 500 : 10_000);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    if (this.tty) this.out.write("\n");
  }

  /** Logs an event; on a TTY the live line is redrawn under it. */
  log(message: string): void {
    if (this.tty) this.out.write(`\r\x1b[2K${message}\n`);
    else this.out.write(`${new Date().toISOString()} ${message}\n`);
    if (this.tty) this.draw();
  }

  private tick(): void {
    const w = this.worker();
    if (!w) return;
    const now = Date.now();
    const dt = (now - this.lastAt) / 1000;
    const instant = (w.stats.chunksDone - this.lastChunks) / Math.max(dt, 0.001);
    // Smooth the rate so the line does not flicker between batches.
    this.rate = this.rate === 0 ? instant : this.rate * 0.7 + instant * 0.3;
    this.lastChunks = w.stats.chunksDone;
    this.lastAt = now;
    if (this.tty) this.draw();
    else this.log(this.line());
  }

  line(): string {
    const w = this.worker();
    const s = w?.stats;
    const state = s?.state ?? "loading";
    const { model, device, threads } = this.label;
    return `${state.padEnd(12)} ${model} on ${device} x${threads}  tasks ${s?.tasksDone ?? 0}  chunks ${s?.chunksDone ?? 0}  queries ${s?.embedsDone ?? 0}  ${this.rate.toFixed(1)} chunks/s`;
  }

  private draw(): void {
    const dot =
      this.worker()?.stats.state === "connected" ? "\x1b[32m●\x1b[0m" : "\x1b[33m●\x1b[0m";
    this.out.write(`\r\x1b[2K${dot} ${this.line()}`);
  }
}

/**
 * `--status-port`: the worker's state as JSON on 127.0.0.1 only, for a donor's monitoring and
 * for checking the edge's picture of this worker against the worker's own.
 */
export async function serveStatus(
  port: number,
  worker: () => Worker | null,
  label: { model: string; device: string; threads: number },
): Promise<Server> {
  const server = createServer((req, res) => {
    if (req.method !== "GET" || req.url !== "/status") {
      res.writeHead(404, { "Content-Type": "application/json" });
      res.end(JSON.stringify({ error: { code: "not_found", message: "try GET /status" } }));
      return;
    }
    const w = worker();
    const body = {
      ...label,
      stats: w?.stats ?? null,
      window: w?.window() ?? null,
    };
    res.writeHead(200, { "Content-Type": "application/json", "Cache-Control": "no-store" });
    res.end(JSON.stringify(body));
  });
  server.listen(port, "127.0.0.1");
  await once(server, "listening");
  server.unref();
  return server;
}
