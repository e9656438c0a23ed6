import { env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { METADATA_INDEXES } from "../../src/vector/config.js";
import { localVectorIndex } from "../../src/vector/index.js";

// Timings only, no assertions on them; skipped unless asked for:
//   VITE_VECTOR_BENCH=1 npx vitest run --project edge test/vector/bench
const enabled = Boolean((import.meta as { env?: Record<string, unknown> }).env?.VITE_VECTOR_BENCH);

const DIMS = 512;
const JOBS = 10;

describe.runIf(enabled)("LocalVectorIndex query time, 512 dimensions", () => {
  for (const total of [20_000, 100_000]) {
    it(`${total} vectors`, { timeout: 300_000 }, async () => {
      const name = `bench:${crypto.randomUUID()}`;
      const stub = env.LOCAL_VECTORS.get(env.LOCAL_VECTORS.idFromName(name));
      await stub.configure({ dimensions: DIMS, metadataIndexes: [...METADATA_INDEXES] });
      const index = localVectorIndex(env.LOCAL_VECTORS, name);
      const random = () => {
        const v = new Float32Array(DIMS);
        for (let i = 0; i < DIMS; i++) v[i] = Math.random() * 2 - 1;
        return v;
      };

      let t = performance.now();
      for (let start = 0; start < total; start += 1000) {
        await index.upsert(
          Array.from({ length: 1000 }, (_, i) => ({
            id: `bench-job-${(start + i) % JOBS}.${String(start + i).padStart(6, "0")}`,
            values: random(),
            metadata: { tenant: "t1", jobId: `job-${(start + i) % JOBS}`, documentId: "d" },
          })),
        );
      }
      const writeMs = performance.now() - t;
      expect((await index.describe()).vectorCount).toBe(total);
      // The first query reads every vector back from SQLite into the in-memory form.
      t = performance.now();
      await index.query(random(), { topK: 10 });
      const loadMs = performance.now() - t;

      const time = async (options: VectorizeQueryOptions) => {
        const runs: number[] = [];
        for (let i = 0; i < 21; i++) {
          const q = random();
          t = performance.now();
          await index.query(q, options);
          runs.push(performance.now() - t);
        }
        runs.sort((a, b) => a - b);
        return `median ${runs[10]?.toFixed(1)} ms (min ${runs[0]?.toFixed(1)}, max ${runs[20]?.toFixed(1)})`;
      };
      console.log(
        [
          `${total} x ${DIMS}: upsert ${(writeMs / 1000).toFixed(1)} s in batches of 1000`,
          `  first query (loads the in-memory form): ${loadMs.toFixed(0)} ms`,
          `  topK 10, tenant filter:         ${await time({ topK: 10, filter: { tenant: "t1" } })}`,
          `  topK 10, no filter:             ${await time({ topK: 10 })}`,
          `  topK 10, one job (1/${JOBS}):       ${await time({ topK: 10, filter: { tenant: "t1", jobId: "job-3" } })}`,
          `  topK 50, values + all metadata: ${await time({ topK: 50, returnValues: true, returnMetadata: "all" })}`,
        ].join("\n"),
      );
    });
  }
});
