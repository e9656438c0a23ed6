import path from "node:path";
import { build } from "esbuild";
import { Miniflare } from "miniflare";
import { ROOT } from "./local-edge.js";

/**
 * What handing vectors to the index costs the thread that does it, measured inside workerd
 * (the runtime's own V8): the CPU of workerd's process per 512-dimension vector, for
 *   - `binding`: the Vectorize binding's `upsert`, as deployed (workerd's own client module,
 *     NDJSON). Vectorize has no local service, so each call fails once the client has encoded
 *     its request; what is measured is that encoding, which is all a caller's thread pays;
 *   - `handOver`: what a shard pays instead with index writers (vector/index-writer.ts): the
 *     vectors packed into one buffer (the product's `packVectors`) and serialized as an RPC
 *     serializes them;
 *   - `clone`: the vectors serialized as they are, one array each (what an RPC to the local
 *     index serializes).
 * Calls of 1,000 vectors, 20 per measurement, the three by turns, `runs` times; medians.
 */

const VECTORS = 1000;
const CALLS = 20;

const WORKER = `
import { packVectors } from "./packed.js";
const dim = 512;
let x = 7;
const r = () => { x = (x * 1103515245 + 12345) % 2147483648; return x / 2147483648 - 0.5; };
const vectors = Array.from({ length: ${VECTORS} }, (_, i) => {
  const values = new Float32Array(dim);
  let s = 0;
  for (let j = 0; j < dim; j++) { values[j] = r(); s += values[j] * values[j]; }
  for (let j = 0; j < dim; j++) values[j] /= Math.sqrt(s);
  return { id: "job_0123456789abcdef.00001." + String(i).padStart(5, "0"), values,
    metadata: { tenant: "t1", jobId: "job_0123456789abcdef", documentId: "d" + i, index: 0, collection: "default" } };
});
export default {
  async fetch(req, env) {
    const what = new URL(req.url).pathname.slice(1);
    let refused = 0;
    for (let k = 0; k < ${CALLS}; k++) {
      if (what === "binding") await env.VECTORIZE.upsert(vectors).catch(() => refused++);
      else if (what === "handOver") structuredClone(packVectors(vectors));
      else if (what === "clone") structuredClone(vectors);
    }
    return Response.json({ refused });
  },
};
`;

export interface IndexClientReport {
  vectors: number;
  /** µs of workerd's CPU a vector, medians over the runs. */
  binding: number;
  handOver: number;
  clone: number;
  runs: { binding: number; handOver: number; clone: number }[];
}

async function cpuSecondsOf(pid: number): Promise<number> {
  const { readFile } = await import("node:fs/promises");
  const stat = (await readFile(`/proc/${pid}/stat`, "utf8")).split(") ")[1]?.split(" ") ?? [];
  return (Number(stat[11]) + Number(stat[12])) / 100;
}

export async function indexClientBench(opts: { runs: number }): Promise<IndexClientReport> {
  const bundle = await build({
    stdin: {
      contents: WORKER,
      resolveDir: path.join(ROOT, "apps/edge/src/vector"),
      loader: "js",
    },
    bundle: true,
    format: "esm",
    write: false,
  });
  const mf = new Miniflare({
    modules: true,
    script: bundle.outputFiles[0]?.text ?? "",
    compatibilityDate: "2026-04-26",
    vectorize: { VECTORIZE: { index_name: "p2pa-bench" } },
  });
  try {
    await mf.ready;
    const { execFileSync } = await import("node:child_process");
    // Miniflare's runtime: the workerd process this one started.
    const pid = Number(
      execFileSync("pgrep", ["-P", String(process.pid), "-x", "workerd"])
        .toString()
        .trim(),
    );
    const measure = async (what: string) => {
      const c0 = await cpuSecondsOf(pid);
      const res = await mf.dispatchFetch(`http://bench/${what}`);
      const { refused } = (await res.json()) as { refused: number };
      if (what === "binding" && refused !== CALLS)
        throw new Error(`the Vectorize binding answered ${CALLS - refused} calls locally`);
      return (1e6 * ((await cpuSecondsOf(pid)) - c0)) / (CALLS * VECTORS);
    };
    // A first pass of each warms the isolate up.
    for (const what of ["binding", "handOver", "clone"]) await measure(what);
    const runs: IndexClientReport["runs"] = [];
    for (let r = 0; r < opts.runs; r++)
      runs.push({
        binding: await measure("binding"),
        handOver: await measure("handOver"),
        clone: await measure("clone"),
      });
    const med = (k: keyof IndexClientReport["runs"][number]) =>
      [...runs.map((x) => x[k])].sort((a, b) => a - b)[Math.floor(runs.length / 2)] as number;
    return {
      vectors: VECTORS,
      binding: med("binding"),
      handOver: med("handOver"),
      clone: med("clone"),
      runs,
    };
  } finally {
    await mf.dispose();
  }
}
