import { once } from "node:events";
import { createServer, type Server } from "node:http";
import { threadsPerSession } from "./model/pool.js";
import type { Worker } from "./worker.js";

/**
 * What the status line reads from a worker; `models`, from a worker that serves several models
 * (one connection each), lists them, each read the same way.
 */
export type StatusSource = Pick<Worker, "stats" | "window" | "inferenceMsAt" | "tasksHeld"> & {
  models?(): ModelPart[];
};

/** One model of a worker that serves several, and its connection. */
export interface ModelPart {
  model: string;
  source: StatusSource;
}

export interface StatusLabel {
  model: string;
  device: string;
  threads: number;
  /** Sessions of the model, once loaded (the threads are shared between them). */
  sessions?: number;
}

/** The figures the status line and `/status` show, over the reporter's window. */
export interface StatusFigures {
  /** Chunks credited per second. */
  chunksPerSecond: number;
  /** Share of wall time the model spent running, 0-100. */
  busyPercent: number;
  /** Tasks leased to this worker and not yet finished. */
  tasksHeld: number;
  /** Wall time the two rates above were measured over. */
  windowMs: number;
}

interface Reading {
  inferenceMs: number;
  chunks: number;
}

interface Sample extends Reading {
  at: number;
  /** Each model's reading, in the order `models()` lists them. */
  parts: Reading[];
}

interface ReporterOptions {
  /** The clock, in ms, on the same scale as performance.now() (what the worker times with). */
  now?: () => number;
}

/** How far back rate and busy % look on a terminal: long enough not to flicker between batches. */
const TTY_WINDOW_MS = 5_000;
const TTY_INTERVAL_MS = 500;
/** Without a terminal, one line every interval, about that interval. */
const LOG_INTERVAL_MS = 10_000;
/** Longest model label shown: a model URL or path would push the line past ~100 columns. */
const MODEL_LABEL_MAX = 16;

/**
 * What the donor sees: on a terminal one live line (state, model, device, rate, model busy %,
 * tasks held, credit earned); elsewhere plain timestamped log lines, one per event and the same
 * figures every 10 s.
 */
export class StatusReporter {
  private timer: ReturnType<typeof setInterval> | null = null;
  /** Readings at each tick, oldest first, reaching just past the window. */
  private readonly samples: Sample[] = [];
  private readonly tty: boolean;
  private readonly windowMs: number;
  private readonly now: () => number;

  constructor(
    readonly worker: () => StatusSource | null,
    readonly label: StatusLabel,
    private readonly out: NodeJS.WritableStream & {
      isTTY?: boolean;
      columns?: number;
    } = process.stderr,
    opts: ReporterOptions = {},
  ) {
    this.tty = Boolean(out.isTTY) && process.env.CI !== "true";
    this.windowMs = this.tty ? TTY_WINDOW_MS : LOG_INTERVAL_MS;
    this.now = opts.now ?? (() => performance.now());
    this.samples.push(this.read(this.now()));
  }

  start(): void {
    this.timer = setInterval(() => this.tick(), this.tty ? TTY_INTERVAL_MS : LOG_INTERVAL_MS);
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

  /** Takes a reading and shows it: redraws the live line, or logs a line. */
  tick(): void {
    const now = this.now();
    this.samples.push(this.read(now));
    // Keep the newest reading at or before the window's start as the base of the rates.
    while (this.samples.length > 1 && (this.samples[1] as Sample).at <= now - this.windowMs)
      this.samples.shift();
    if (this.tty) this.draw();
    else this.log(this.line());
  }

  private read(at: number): Sample {
    const w = this.worker();
    return {
      at,
      ...reading(w, at),
      parts: (w?.models?.() ?? []).map((p) => reading(p.source, at)),
    };
  }

  /** Rates since the oldest reading kept (the last window), to now. */
  figures(): StatusFigures {
    return this.measure(this.worker(), (s) => s);
  }

  /** Each model's figures, where the worker serves several models; else an empty list. */
  modelFigures(): { part: ModelPart; figures: StatusFigures }[] {
    return (this.worker()?.models?.() ?? []).map((part, i) => ({
      part,
      figures: this.measure(part.source, (s) => s.parts[i]),
    }));
  }

  /** Figures of `source`, whose reading in each sample `pick` finds. */
  private measure(
    source: StatusSource | null,
    pick: (s: Sample) => Reading | undefined,
  ): StatusFigures {
    const now = this.now();
    const current = pick(this.read(now)) ?? reading(source, now);
    const oldest = this.samples[0];
    // A model not yet read when the window began counts from now: no rate rather than a wrong one.
    const base = (oldest && pick(oldest)) ?? current;
    const span = oldest ? now - oldest.at : 0;
    const per = (delta: number) => (span > 0 ? delta / span : 0);
    return {
      chunksPerSecond: 1000 * per(current.chunks - base.chunks),
      busyPercent: Math.min(100, Math.max(0, 100 * per(current.inferenceMs - base.inferenceMs))),
      tasksHeld: source?.tasksHeld() ?? 0,
      windowMs: span,
    };
  }

  line(): string {
    const w = this.worker();
    const s = w?.stats;
    const f = this.figures();
    const parts = w?.models?.() ?? [];
    const several = parts.length > 1;
    const { device, threads, sessions = 1 } = this.label;
    // "x2": one session of two threads; "2x1": two sessions of one thread each.
    const shape =
      sessions > 1 ? `${sessions}x${threadsPerSession(threads, sessions)}` : `x${threads}`;
    const rate = f.chunksPerSecond.toFixed(f.chunksPerSecond < 100 ? 1 : 0);
    const queries = s?.embedsDone ?? 0;
    const model =
      several && this.label.model.length > MODEL_LABEL_MAX
        ? `${parts.length} models`
        : shorten(this.label.model, MODEL_LABEL_MAX);
    const line = [
      stateText(s?.state, parts).padEnd(12),
      `${model} ${device} ${shape}`,
      `${rate} chunks/s`,
      `busy ${f.busyPercent.toFixed(0).padStart(3)}%`,
      `held ${f.tasksHeld}`,
      `credit ${compact(s?.chunksDone ?? 0)} chunks`,
      // Real-time queries are shown once there are any: most workers only ever see batches.
      ...(queries ? [`${compact(queries)} queries`] : []),
    ].join("  ");
    // A log line has room for each model's own; the live line keeps to one terminal row.
    if (this.tty || !several) return line;
    const each = parts.map(
      ({ model, source }) =>
        `${model}: ${source.stats.state}, held ${source.tasksHeld()}, credit ${compact(source.stats.chunksDone)} chunks`,
    );
    return `${line}  [${each.join("; ")}]`;
  }

  private draw(): void {
    const dot =
      this.worker()?.stats.state === "connected" ? "\x1b[32m●\x1b[0m" : "\x1b[33m●\x1b[0m";
    // A line wider than the terminal wraps, and `\r` then redraws only its last row.
    const width = (this.out.columns ?? 0) > 2 ? (this.out.columns as number) - 3 : Infinity;
    this.out.write(`\r\x1b[2K${dot} ${this.line().slice(0, width)}`);
  }
}

function reading(source: StatusSource | null, at: number): Reading {
  return { inferenceMs: source?.inferenceMsAt(at) ?? 0, chunks: source?.stats.chunksDone ?? 0 };
}

/**
 * The state column: the worker's state; for several models whose connections disagree, how many
 * are connected.
 */
function stateText(state: string | undefined, parts: readonly ModelPart[]): string {
  if (parts.length < 2) return state ?? "loading";
  const up = parts.filter((p) => p.source.stats.state === "connected").length;
  return up === 0 || up === parts.length ? (state ?? "loading") : `${up}/${parts.length} connected`;
}

/** Keeps the start and the end of a long label (a model URL or path), which tell most. */
function shorten(text: string, max: number): string {
  if (text.length <= max) return text;
  const head = Math.ceil((max - 1) / 2);
  return `${text.slice(0, head)}…${text.slice(text.length - (max - 1 - head))}`;
}

/** 1234 as is, 123456 as 123k, 12345678 as 12.3M: a count that grows for days keeps its width. */
function compact(n: number): string {
  if (n < 100_000) return String(n);
  if (n < 1_000_000) return `${Math.round(n / 1000)}k`;
  return `${(n / 1_000_000).toFixed(1)}M`;
}

function rounded(f: StatusFigures) {
  return {
    busyPercent: Math.round(f.busyPercent * 10) / 10,
    tasksHeld: f.tasksHeld,
    chunksPerSecond: Math.round(f.chunksPerSecond * 100) / 100,
  };
}

/**
 * `--status-port`: the worker's state as JSON on 127.0.0.1 only, for a donor's monitoring and
 * for checking the edge's picture of this worker against the worker's own.
 */
export async function serveStatus(port: number, status: StatusReporter): Promise<Server> {
  const server = createServer((req, res) => {
    if (req.method !== "GET" || req.url !== "/status") {
      res.writeHead(404, { "Content-Type": "application/json" });
      res.end(JSON.stringify({ error: { code: "not_found", message: "try GET /status" } }));
      return;
    }
    const w = status.worker();
    const f = w ? status.figures() : null;
    const models = w?.models
      ? status.modelFigures().map(({ part, figures }) => ({
          model: part.model,
          stats: part.source.stats,
          window: part.source.window(),
          ...rounded(figures),
        }))
      : undefined;
    const body = {
      ...status.label,
      stats: w?.stats ?? null,
      window: w?.window() ?? null,
      ...(f ? rounded(f) : { busyPercent: null, tasksHeld: null, chunksPerSecond: null }),
      /** What busyPercent and chunksPerSecond were measured over. */
      measuredOverMs: f ? Math.round(f.windowMs) : null,
      // Each model's connection, where the worker serves models (their sums are above).
      ...(models ? { models } : {}),
    };
    res.writeHead(200, { "Content-Type": "application/json", "Cache-Control": "no-store" });
    res.end(JSON.stringify(body));
  });
  server.listen(port, "127.0.0.1");
  await once(server, "listening");
  server.unref();
  return server;
}
