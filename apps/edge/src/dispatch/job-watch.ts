import { isTerminal, type Job } from "@p2pa/shared";
import type { JobLog } from "./job-log.js";

/** How long a change waits for others before the streams hear of it. */
const FLUSH_MS = 100;
/** Progress frames are coalesced to at most one per interval per stream. */
const PROGRESS_MS = 500;
/** A comment line on idle streams, so proxies keep them open. */
const KEEPALIVE_MS = 15_000;
/** What a client is told to wait before reconnecting (it resumes from its last event id). */
const RECONNECT_MS = 1000;
/** Events read from the log per step: a long backlog is sent in slices. */
const EVENTS_PER_READ = 500;
/** Bytes queued for one stream before it is skipped until its client reads. */
const QUEUE_BYTES = 1 << 20;

interface Watcher {
  writer: WritableStreamDefaultWriter<ArrayBuffer | ArrayBufferView>;
  /** The last event id sent. */
  after: number;
  chunks: boolean;
  /** Counters in the last progress frame sent, or null before the first. */
  last: Job["chunks"] | null;
  lastSent: number;
  lastWrite: number;
  rate: { at: number; settled: number; value: number };
  /** Waiting for its client to read (its queue is full). */
  blocked: boolean;
  closed: boolean;
}

interface Watched {
  watchers: Set<Watcher>;
  timer: ReturnType<typeof setTimeout> | null;
  /** A pass is running; a change meanwhile runs another after it. */
  running: boolean;
  again: boolean;
}

const encoder = new TextEncoder();

/** One Server-Sent Events frame. `data` is JSON, so it holds no line breaks. */
function frame(f: { event?: string; id?: string; data?: string; retry?: number }): Uint8Array {
  let s = "";
  if (f.event) s += `event: ${f.event}\n`;
  if (f.id !== undefined) s += `id: ${f.id}\n`;
  if (f.retry !== undefined) s += `retry: ${f.retry}\n`;
  if (f.data !== undefined) s += `data: ${f.data}\n`;
  return encoder.encode(`${s}\n`);
}

const KEEPALIVE = encoder.encode(": keepalive\n\n");

/**
 * Live progress streams, pushed by the coordinator that keeps the job's event log. A stream
 * hears of a job when its log grows: the job's counters are read once per pass (at most every
 * FLUSH_MS) for all of its streams, and nothing is read while a job is idle, however many
 * streams watch it. A client that does not read is skipped (its queue is capped) until it does,
 * and resumes from the last event it was sent; one that goes away is dropped.
 */
export class JobWatch {
  private readonly jobs = new Map<string, Watched>();
  private keepalive: ReturnType<typeof setInterval> | null = null;

  constructor(
    private readonly log: JobLog,
    /** The job's current record (D1), or null once it is deleted. */
    private readonly readJob: (jobId: string) => Promise<Job | null>,
    /** Called once per read of a job's record, for the metrics. */
    private readonly onRead: () => void = () => {},
  ) {}

  /** Streams currently open, over all jobs. */
  get size(): number {
    let n = 0;
    for (const w of this.jobs.values()) n += w.watchers.size;
    return n;
  }

  /**
   * A stream of the job's events after `after` (an event id it sent before, or 0): progress,
   * chunk events when `chunks`, and the terminal event, after which it closes.
   */
  open(jobId: string, after: number, chunks: boolean): ReadableStream<Uint8Array> {
    // The runtime's own byte pipe: it crosses the RPC boundary without a JavaScript pump.
    const { readable, writable } = new IdentityTransformStream({ highWaterMark: QUEUE_BYTES });
    const writer = writable.getWriter();
    const now = Date.now();
    const watcher: Watcher = {
      writer,
      after,
      chunks,
      last: null,
      lastSent: 0,
      lastWrite: now,
      rate: { at: now, settled: -1, value: 0 },
      blocked: false,
      closed: false,
    };
    let watched = this.jobs.get(jobId);
    if (!watched) {
      watched = { watchers: new Set(), timer: null, running: false, again: false };
      this.jobs.set(jobId, watched);
    }
    watched.watchers.add(watcher);
    // The client went away (the stream was cancelled): forget it.
    writer.closed.then(
      () => this.drop(jobId, watcher),
      () => this.drop(jobId, watcher),
    );
    this.startKeepalive();
    this.changed(jobId, 0);
    return readable;
  }

  /** The job's log grew (or it was deleted): its streams hear of it shortly. */
  changed(jobId: string, delay = FLUSH_MS): void {
    const watched = this.jobs.get(jobId);
    if (!watched) return;
    if (watched.running) {
      watched.again = true;
      return;
    }
    if (watched.timer !== null) return;
    watched.timer = setTimeout(() => {
      watched.timer = null;
      void this.pass(jobId, watched);
    }, delay);
  }

  private async pass(jobId: string, watched: Watched): Promise<void> {
    watched.running = true;
    watched.again = false;
    let wait: number | null = null;
    try {
      this.onRead();
      let job = await this.readJob(jobId);
      for (const w of [...watched.watchers]) {
        if (!job) {
          this.close(jobId, w);
          continue;
        }
        const next = await this.serve(jobId, w, job, () => this.reread(jobId)).catch(() => {
          this.close(jobId, w);
          return null;
        });
        if (next && typeof next === "object") job = next.job;
        if (typeof next === "number") wait = wait === null ? next : Math.min(wait, next);
      }
    } catch (err) {
      // D1 could not be read: try again shortly rather than leave the streams waiting.
      console.error("live progress: reading job", jobId, err);
      wait = FLUSH_MS * 10;
    } finally {
      watched.running = false;
    }
    if (watched.watchers.size === 0) return;
    if (watched.again) this.changed(jobId);
    else if (wait !== null) this.changed(jobId, wait);
  }

  private async reread(jobId: string): Promise<Job | null> {
    this.onRead();
    return this.readJob(jobId);
  }

  /**
   * Sends one stream what it has not seen. Returns when it wants another pass (ms) for a
   * progress frame it held back, or the fresher job record it read.
   */
  private async serve(
    jobId: string,
    w: Watcher,
    job: Job,
    reread: () => Promise<Job | null>,
  ): Promise<number | { job: Job } | null> {
    if (w.closed || this.isBlocked(jobId, w)) return null;
    for (;;) {
      const batch = this.log.events(jobId, w.after, EVENTS_PER_READ);
      for (const e of batch) {
        if (e.kind === "end") {
          // The terminal event may be newer than the record read for this pass.
          const fresh = isTerminal(job.status) ? job : await reread();
          const final = fresh ?? job;
          const status = (JSON.parse(e.data) as { status?: string }).status ?? final.status;
          this.progress(w, final, true);
          w.after = e.seq;
          this.write(w, {
            event: status,
            id: String(e.seq),
            data: JSON.stringify({
              id: jobId,
              status,
              chunks: final.chunks,
              completedAt: final.completedAt,
            }),
          });
          this.close(jobId, w);
          return fresh && fresh !== job ? { job: fresh } : null;
        }
        w.after = e.seq;
        if (w.chunks) this.write(w, { event: "chunk", id: String(e.seq), data: e.data });
      }
      if (batch.length < EVENTS_PER_READ || this.isBlocked(jobId, w)) break;
    }
    return this.progress(w, job, w.last === null);
  }

  /** A progress frame if the counters moved and the last one is old enough; else when to retry. */
  private progress(w: Watcher, job: Job, force: boolean): number | null {
    const settled = job.chunks.done + job.chunks.failed;
    const now = Date.now();
    const same =
      w.last !== null && w.last.done === job.chunks.done && w.last.failed === job.chunks.failed;
    if (!force && same) return null;
    if (!force && now - w.lastSent < PROGRESS_MS) return PROGRESS_MS - (now - w.lastSent);
    if (w.rate.settled < 0) w.rate.settled = settled;
    else if (now > w.rate.at) {
      w.rate.value = ((settled - w.rate.settled) * 1000) / (now - w.rate.at);
      w.rate.at = now;
      w.rate.settled = settled;
    }
    this.write(w, {
      event: "progress",
      id: String(w.after),
      // Ask clients to reconnect quickly after a drop; they resume from the last id.
      ...(w.last === null ? { retry: RECONNECT_MS } : {}),
      data: JSON.stringify({
        status: job.status,
        chunks: job.chunks,
        chunksPerSecond: Math.round(w.rate.value * 10) / 10,
      }),
    });
    w.last = { ...job.chunks };
    w.lastSent = now;
    return null;
  }

  /** True while the stream's queue is full: it is served again once its client has read. */
  private isBlocked(jobId: string, w: Watcher): boolean {
    if (w.blocked) return true;
    if ((w.writer.desiredSize ?? 0) > 0) return false;
    w.blocked = true;
    w.writer.ready.then(
      () => {
        w.blocked = false;
        this.changed(jobId, 0);
      },
      () => this.drop(jobId, w),
    );
    return true;
  }

  private write(w: Watcher, f: Parameters<typeof frame>[0]): void {
    this.send(w, frame(f));
  }

  private send(w: Watcher, bytes: Uint8Array): void {
    if (w.closed) return;
    w.lastWrite = Date.now();
    // A write fails only once the client has gone; writer.closed then drops the stream.
    w.writer.write(bytes).catch(() => {});
  }

  private close(jobId: string, w: Watcher): void {
    if (!w.closed) {
      w.closed = true;
      w.writer.close().catch(() => {});
    }
    this.drop(jobId, w);
  }

  private drop(jobId: string, w: Watcher): void {
    w.closed = true;
    const watched = this.jobs.get(jobId);
    if (!watched?.watchers.delete(w)) return;
    if (watched.watchers.size === 0) {
      if (watched.timer !== null) clearTimeout(watched.timer);
      this.jobs.delete(jobId);
    }
    if (this.jobs.size === 0 && this.keepalive !== null) {
      clearInterval(this.keepalive);
      this.keepalive = null;
    }
  }

  private startKeepalive(): void {
    if (this.keepalive !== null) return;
    this.keepalive = setInterval(() => {
      const now = Date.now();
      for (const watched of this.jobs.values())
        for (const w of watched.watchers)
          if (!w.blocked && now - w.lastWrite >= KEEPALIVE_MS) this.send(w, KEEPALIVE);
    }, KEEPALIVE_MS / 3);
  }
}
