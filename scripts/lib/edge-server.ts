/**
 * The local edge as `npm start`, the end-to-end tests and the benchmarks run it: wrangler's dev
 * server (`unstable_startWorker`, the engine behind `wrangler dev`) on wrangler.toml, with local
 * D1, R2, Durable Objects and the local vector index, in a process of its own
 * (scripts/lib/local-edge.ts starts it and stops it with a signal).
 *
 * Unlike `wrangler dev`, it runs without the DevTools inspector unless asked for one. With the
 * inspector attached, wrangler enables its Network domain: every D1 call and Durable Object
 * request is reported to wrangler's Node process with its body, and written to a debug log
 * under ~/.config/.wrangler/logs (a gigabyte over a day of tests). That costs CPU the edge
 * itself would not spend in production (about 75 µs a chunk on a job of one-sentence
 * documents, on the same cores as the donor's model) and fills the disk.
 *
 * It also bundles the Worker once, without esbuild's watch mode. The dev server bundles with
 * esbuild watching every input file even when it is told not to reload (`watch: false`), and
 * esbuild watches by polling: about 2% of a core for as long as the edge runs, idle or not.
 * Given a custom build step, wrangler runs that step and bundles the same entry point with the
 * same options but without esbuild's watcher (it watches the paths the step names instead, with
 * the file system's notifications). The step here does nothing (`node --version`) and the path
 * is wrangler.toml: the Worker is bundled from source at every start, as before.
 *
 * Usage: edge-server.ts '<json of EdgeServerOptions>'
 */
import { unstable_startWorker } from "wrangler";

export interface EdgeServerOptions {
  port: number;
  persistTo: string;
  /** Plain-text variables over wrangler.toml's [vars]. */
  vars: Record<string, string>;
  /** DevTools inspector port (profiling, debugging); none when absent. */
  inspectorPort?: number;
  logLevel: "info" | "warn";
}

const opts = JSON.parse(process.argv[2] ?? "") as EdgeServerOptions;
const worker = await unstable_startWorker({
  config: "wrangler.toml",
  // A build step that does nothing: the bundle without esbuild's polling watcher (above).
  build: { custom: { command: "node --version", watch: "wrangler.toml" } },
  bindings: Object.fromEntries(
    Object.entries(opts.vars).map(([name, value]) => [name, { type: "plain_text", value }]),
  ),
  dev: {
    server: { hostname: "127.0.0.1", port: opts.port },
    inspector:
      opts.inspectorPort === undefined
        ? false
        : { hostname: "127.0.0.1", port: opts.inspectorPort },
    persist: opts.persistTo,
    logLevel: opts.logLevel,
    watch: false,
  },
});
await worker.ready;

let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  try {
    await worker.dispose();
  } finally {
    process.exit(0);
  }
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
