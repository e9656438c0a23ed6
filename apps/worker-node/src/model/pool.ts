// Several sessions of one model, each on an inference thread of its own (threaded.ts), taking
// embed calls side by side: data parallelism across batches rather than operator parallelism
// within one.
//
// Why: a session given every core splits each operator across its threads, and they wait for
// one another at the end of every operator, so one thread slowed by anything else on the
// machine (the donor's own programs, the worker's I/O) holds up all of them. Sessions of fewer
// threads running different batches need no such meeting. Measured on this project's 2-core
// machine with use-lite, batches of 32: two 1-thread sessions embedded 5-9% more long chunks a
// second than one 2-thread session and 10-13% more sentences, and with a process busy half of
// one core in 5 ms bursts beside them, 35% and 40-50% more (the 2-thread session lost 38% of its
// pace to a quarter of the machine). The vectors are the same to the bit: MLAS splits a MatMul
// over rows and columns, never over the sum, whatever the thread count.
import { stat } from "node:fs/promises";
import os from "node:os";
import { loadModelThreaded } from "./threaded.js";
import { UrgentFirst } from "./turns.js";
import type { Embedder, EmbedderStats, EmbedOptions, LoadOptions } from "./types.js";

/** Sessions a CPU pool has when none is asked for: one per thread, at most this many. */
const DEFAULT_CPU_SESSIONS = 4;

/**
 * Sessions when `opts.sessions` is not given: on the CPU one per thread up to
 * DEFAULT_CPU_SESSIONS (so 16 threads make 4 sessions of 4); on a GPU one, which the device
 * itself parallelises.
 */
export function defaultSessions(opts: Pick<LoadOptions, "threads" | "executionProviders">): number {
  const threads = opts.threads ?? os.availableParallelism();
  const cpu = (opts.executionProviders?.[0] ?? "cpu") === "cpu";
  return cpu ? Math.max(1, Math.min(threads, DEFAULT_CPU_SESSIONS)) : 1;
}

/**
 * Sessions the machine's memory allows for a model file of `bytes`: each session holds its
 * weights and the arena of its runs (counted as twice the file), within a quarter of the
 * machine's memory. Never less than one.
 */
export function sessionsMemoryAllows(bytes: number, totalMemory = os.totalmem()): number {
  return Math.max(1, Math.floor(totalMemory / 4 / Math.max(1, 2 * bytes)));
}

/** Threads each of `sessions` sessions gets out of `threads`: an equal share, at least one. */
export function threadsPerSession(threads: number, sessions: number): number {
  return Math.max(1, Math.floor(threads / sessions));
}

/** "2 sessions of 1 thread": how a pool of `sessions` runs on `threads`. */
export function describeSessions(sessions: number, threads: number): string {
  const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`;
  return `${plural(sessions, "session")} of ${plural(threadsPerSession(threads, sessions), "thread")}`;
}

interface Call {
  texts: string[];
  resolve: (vectors: Float32Array[]) => void;
  reject: (err: Error) => void;
}

/**
 * Loads a model as `loadModelThreaded` does, `opts.sessions` times (default: defaultSessions),
 * the threads shared between them (`threads / sessions` each, at least one). The first session
 * loads alone, so a model converted or downloaded on first use is fetched once; the others then
 * load from the cache side by side. When `opts.sessions` is not given, the pool has no more
 * sessions than sessionsMemoryAllows (the first is then loaded again with its larger share).
 *
 * The Embedder returned runs one call per session at a time; calls beyond that wait in the pool
 * (urgent ones, `embed(texts, { urgent: true })`, before the others) and go to the first
 * session free. Its `parallelism` is the number of sessions: keep that many calls in flight,
 * and one more so that a session never waits for the next.
 */
export async function loadModelPool(idOrPath: string, opts: LoadOptions): Promise<Embedder> {
  const { sessions: asked, ...load } = opts;
  const threads = load.threads ?? os.availableParallelism();
  let sessions = asked ?? defaultSessions(load);
  if (!Number.isInteger(sessions) || sessions < 1)
    throw new Error(`sessions must be a positive integer, got ${sessions}`);
  const shareOf = (n: number) => threadsPerSession(threads, n);

  let first = await loadModelThreaded(idOrPath, { ...load, threads: shareOf(sessions) });
  const members: Embedder[] = [first];
  try {
    const allowed =
      asked === undefined
        ? sessionsMemoryAllows((await stat(first.info.modelPath)).size)
        : sessions;
    if (allowed < sessions) {
      // Fewer sessions, so more threads each: the first is loaded again (from the cache now).
      sessions = allowed;
      members.pop();
      await first.dispose();
      first = await loadModelThreaded(idOrPath, { ...load, threads: shareOf(sessions) });
      members.push(first);
    }
    const share = shareOf(sessions);
    members.push(
      ...(await Promise.all(
        Array.from({ length: sessions - 1 }, () =>
          loadModelThreaded(idOrPath, { ...load, threads: share }),
        ),
      )),
    );
  } catch (err) {
    await Promise.all(members.map((m) => m.dispose()));
    throw err;
  }

  const idle = [...members];
  const waiting = new UrgentFirst<Call>();
  let ended: Error | null = null;
  const pump = () => {
    for (let m = idle.pop(); m; m = idle.pop()) {
      const call = waiting.shift();
      if (!call) {
        idle.push(m);
        return;
      }
      const member = m;
      member
        .embed(call.texts)
        .then(call.resolve, call.reject)
        .finally(() => {
          idle.push(member);
          pump();
        });
    }
  };

  const stats: EmbedderStats = {
    get texts() {
      return members.reduce((n, m) => n + m.stats.texts, 0);
    },
    get batches() {
      return members.reduce((n, m) => n + m.stats.batches, 0);
    },
    get truncated() {
      return members.reduce((n, m) => n + m.stats.truncated, 0);
    },
  };
  let disposing: Promise<void> | null = null;
  return {
    manifest: first.manifest,
    info: first.info,
    stats,
    parallelism: members.length,
    countTokens: first.countTokens,
    embed(texts: string[], options: EmbedOptions = {}) {
      if (ended) return Promise.reject(ended);
      return new Promise<Float32Array[]>((resolve, reject) => {
        waiting.push({ texts, resolve, reject }, options.urgent === true);
        pump();
      });
    },
    dispose() {
      disposing ??= (async () => {
        ended = new Error(`model ${first.manifest.id} was disposed`);
        for (let call = waiting.shift(); call; call = waiting.shift()) call.reject(ended);
        await Promise.all(members.map((m) => m.dispose()));
      })();
      return disposing;
    },
  };
}
