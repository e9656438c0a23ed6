import type { JobEnd, JobProgress, P2paClient } from "@p2pa/shared/client";
import { Presets, SingleBar } from "cli-progress";

/** How often a log line reports progress when stderr is not a terminal. */
const LOG_EVERY_MS = 5000;

/** "1m 05s" for what is left at the current rate, "-" while there is no rate yet. */
function timeLeft(chunks: number, rate: number): string {
  if (chunks <= 0) return "0s";
  if (rate <= 0) return "-";
  const s = Math.ceil(chunks / rate);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

interface Tracked {
  total: number;
  settled: number;
  rate: number;
}

/**
 * Follows jobs to their end over the live event stream, with one progress bar and ETA for all
 * of them on a terminal (log lines elsewhere). A cut connection resumes where it left off (the
 * stream's Last-Event-ID); a job that ended already reports its end at once.
 */
export async function follow(
  client: P2paClient,
  jobs: { id: string; chunks: { total: number; done: number; failed: number } }[],
  opts: { quiet: boolean },
): Promise<JobEnd[]> {
  const tracked = new Map<string, Tracked>(
    jobs.map((j) => [
      j.id,
      { total: j.chunks.total, settled: j.chunks.done + j.chunks.failed, rate: 0 },
    ]),
  );
  const sum = () => {
    let total = 0;
    let settled = 0;
    let rate = 0;
    for (const t of tracked.values()) {
      total += t.total;
      settled += t.settled;
      rate += t.rate;
    }
    return { total, settled, rate };
  };
  const tty = Boolean(process.stderr.isTTY) && !opts.quiet;
  const bar = tty
    ? new SingleBar(
        {
          format: "{bar} {percentage}% | {value}/{total} chunks | {rate} chunks/s | ETA {left}",
          barsize: 30,
          hideCursor: true,
          stream: process.stderr,
          barCompleteChar: "█",
          barIncompleteChar: "░",
        },
        Presets.shades_classic,
      )
    : null;
  const start = sum();
  const startedAt = Date.now();
  bar?.start(start.total, start.settled, { rate: "0.0", left: "-" });
  let lastLog = 0;
  const log = (line: string) => {
    if (!opts.quiet) process.stderr.write(bar ? `\r\x1b[2K${line}\n` : `${line}\n`);
  };
  const update = () => {
    const s = sum();
    if (bar) {
      bar.setTotal(s.total);
      bar.update(s.settled, {
        rate: s.rate.toFixed(1),
        left: timeLeft(s.total - s.settled, s.rate),
      });
    } else if (!opts.quiet && Date.now() - lastLog >= LOG_EVERY_MS) {
      lastLog = Date.now();
      process.stderr.write(`chunks ${s.settled}/${s.total} (${s.rate.toFixed(1)} chunks/s)\n`);
    }
  };
  const watches = jobs.map((j) =>
    client.watch(j.id, {
      onProgress: (p: JobProgress) => {
        tracked.set(j.id, {
          total: p.chunks.total,
          settled: p.chunks.done + p.chunks.failed,
          rate: p.chunksPerSecond,
        });
        update();
      },
      onReconnect: () => log(`connection to the server cut; resumed following job ${j.id}`),
    }),
  );
  const stop = () => {
    for (const w of watches) w.close();
    bar?.stop();
    process.stderr.write(
      `\nstopped following; the jobs go on. Follow them again with: p2pa watch ${jobs.map((j) => j.id).join(" ")}\n`,
    );
    process.exit(130);
  };
  process.once("SIGINT", stop);
  try {
    const ends = await Promise.all(
      watches.map((w, i) =>
        w.done.then((end) => {
          const id = jobs[i]?.id ?? end.id;
          tracked.set(id, {
            total: end.chunks.total,
            settled: end.chunks.done + end.chunks.failed,
            rate: 0,
          });
          update();
          return end;
        }),
      ),
    );
    // The last frame shows the whole run's average rate.
    const end = sum();
    const secs = Math.max((Date.now() - startedAt) / 1000, 0.001);
    bar?.update(end.settled, {
      rate: ((end.settled - start.settled) / secs).toFixed(1),
      left: "0s",
    });
    bar?.stop();
    if (!bar && !opts.quiet) {
      const s = sum();
      process.stderr.write(`chunks ${s.settled}/${s.total}\n`);
    }
    return ends;
  } finally {
    process.off("SIGINT", stop);
    for (const w of watches) w.close();
  }
}
