import type { JobEnd, JobProgress, JobRecord, P2paClient } from "@p2pa/shared/client";

/**
 * One live stream per job for the whole tab, shared by every view that shows the job (the
 * list and the job page), with the throughput it reported sampled over time: the job page
 * plots what was seen while the console was open.
 */
export interface LiveState {
  status: JobRecord["status"];
  chunks: JobRecord["chunks"];
  chunksPerSecond: number;
  ended: boolean;
  /** Why the stream could not be followed. */
  error?: unknown;
}

type Listener = (s: LiveState) => void;

interface Stream {
  state: LiveState | null;
  listeners: Set<Listener>;
  close(): void;
}

/** Seconds since the epoch and chunks per second, one pair per progress event. */
export interface Samples {
  t: number[];
  v: number[];
}

const streams = new Map<string, Stream>();
const samples = new Map<string, Samples>();
const MAX_SAMPLES = 3600;

export function samplesOf(jobId: string): Samples {
  let s = samples.get(jobId);
  if (!s) {
    s = { t: [], v: [] };
    samples.set(jobId, s);
  }
  return s;
}

function sample(jobId: string, rate: number) {
  const s = samplesOf(jobId);
  s.t.push(Date.now() / 1000);
  s.v.push(rate);
  if (s.t.length > MAX_SAMPLES) {
    s.t.shift();
    s.v.shift();
  }
}

/** Follows a job until it ends; returns the function that stops listening. */
export function followJob(client: P2paClient, jobId: string, listener: Listener): () => void {
  let stream = streams.get(jobId);
  if (!stream) {
    const created: Stream = { state: null, listeners: new Set(), close: () => {} };
    const publish = (state: LiveState) => {
      created.state = state;
      for (const l of created.listeners) l(state);
    };
    const watch = client.watch(jobId, {
      onProgress(p: JobProgress) {
        sample(jobId, p.chunksPerSecond);
        publish({ ...p, ended: false });
      },
    });
    watch.done.then(
      (end: JobEnd) => {
        sample(jobId, 0);
        publish({ status: end.status, chunks: end.chunks, chunksPerSecond: 0, ended: true });
        streams.delete(jobId);
      },
      (error: unknown) => {
        const last = created.state;
        publish({
          status: last?.status ?? "queued",
          chunks: last?.chunks ?? { total: 0, done: 0, failed: 0, cached: 0 },
          chunksPerSecond: 0,
          ended: true,
          error,
        });
        streams.delete(jobId);
      },
    );
    created.close = () => watch.close();
    stream = created;
    streams.set(jobId, stream);
  }
  const s = stream;
  s.listeners.add(listener);
  if (s.state) listener(s.state);
  return () => {
    s.listeners.delete(listener);
    if (s.listeners.size === 0) {
      s.close();
      streams.delete(jobId);
    }
  };
}

/** Closes every stream (signing out). */
export function closeAll(): void {
  for (const s of streams.values()) s.close();
  streams.clear();
  samples.clear();
}
