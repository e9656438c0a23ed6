import { env } from "cloudflare:test";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { getVectorIndex, vectorsOf } from "../src/vector/index.js";
import { IndexWriter, writeVectors } from "../src/vector/index-writer.js";
import { packVectors, unpackVectors } from "../src/vector/packed.js";
import { call, type Frame, KEYS, TestWorker, workerToken } from "./helpers.js";

// A shard hands its vectors to index writers (INDEX_WRITERS): what reaches the index must be
// what the donors sent, bit for bit, through the group write and through a replacing
// version's held vectors alike.

const vars = env as unknown as Record<string, string>;
beforeEach(() => {
  vars.INDEX_WRITERS = "3";
});
afterEach(() => {
  delete vars.INDEX_WRITERS;
});

/** A unit vector of its own for each chunk id, with values of every magnitude. */
function vectorOf(chunkId: string): Float32Array {
  let h = 2166136261;
  for (const ch of chunkId) h = Math.imul(h ^ ch.charCodeAt(0), 16777619) >>> 0;
  const v = new Float32Array(512);
  let norm = 0;
  for (let i = 0; i < v.length; i++) {
    h = Math.imul(h ^ (h >>> 15), 2246822519) >>> 0;
    v[i] = (h / 2 ** 32 - 0.5) * 10 ** -(i % 7);
    norm += (v[i] as number) ** 2;
  }
  for (let i = 0; i < v.length; i++) v[i] = (v[i] as number) / Math.sqrt(norm);
  return v;
}

const bits = (v: ArrayLike<number>) => Array.from(new Uint32Array(Float32Array.from(v).buffer));

async function counter(name: string): Promise<number> {
  const text = await (await call("/v1/metrics", { key: KEYS.admin })).text();
  return Number(text.match(new RegExp(`^${name} (\\d+)$`, "m"))?.[1] ?? 0);
}

/** Answers tasks with each chunk's own vector until the job is done; returns the ids answered. */
async function computeAll(w: TestWorker, jobId: string): Promise<string[]> {
  const ids: string[] = [];
  w.ready(4);
  for (;;) {
    const j = (await (await call(`/v1/jobs/${jobId}`)).json()) as { status: string };
    if (j.status === "completed") return ids;
    const t = (await w.next("task")) as Frame & { items: { chunkId: string }[] };
    ids.push(...t.items.map((it) => it.chunkId));
    w.send(w.resultFor(t, (_, i) => vectorOf((t.items[i] as { chunkId: string }).chunkId)));
    await w.next("ack");
  }
}

async function post(body: unknown): Promise<{ id: string }> {
  const res = await call("/v1/jobs", { method: "POST", json: body });
  expect(res.status).toBe(202);
  return (await res.json()) as { id: string };
}

describe("index writers", () => {
  it("pack a write's vectors into one buffer and unpack them bit for bit", () => {
    const vectors = ["a", "b", "c"].map((id, i) => ({
      id,
      values: vectorOf(id),
      ...(i === 1 ? { namespace: "ns" } : {}),
      ...(i !== 2 ? { metadata: { tenant: "t1", index: i, current: true } } : {}),
    }));
    const packed = packVectors(vectors);
    expect(packed.values.length).toBe(3 * 512);
    const back = unpackVectors(structuredClone(packed));
    expect(back.map((v) => ({ ...v, values: bits(v.values) }))).toEqual(
      vectors.map((v) => ({ ...v, values: bits(v.values) })),
    );
    expect(() => packVectors([...vectors, { id: "d", values: new Float32Array(384) }])).toThrow(
      /384 dimensions/,
    );
  });

  it("write directly with none, and split among them with some", async () => {
    const vectors = Array.from({ length: 200 }, (_, i) => ({
      id: `writer-direct-${i}`,
      values: vectorOf(`writer-direct-${i}`),
    }));
    vars.INDEX_WRITERS = "0";
    expect(await writeVectors(env, "use-lite", vectors.slice(0, 100), "test")).toBe(0);
    vars.INDEX_WRITERS = "3";
    // 100 vectors are two writers' worth (at least 64 each), 200 take all three.
    expect(await writeVectors(env, "use-lite", vectors.slice(0, 100), "test")).toBe(2);
    expect(await writeVectors(env, "use-lite", vectors, "test")).toBe(3);
    // A configuration without the writers' binding (from before them) writes directly.
    const { INDEX_WRITER: _, ...older } = env;
    expect(await writeVectors(older as Env, "use-lite", vectors, "test")).toBe(0);
    const stored = await vectorsOf(
      getVectorIndex(env, "use-lite"),
      vectors.map((v) => v.id),
    );
    for (const v of vectors) expect(bits(stored.get(v.id) ?? [])).toEqual(bits(v.values));
  });

  it("hand a large write over in messages of at most 2,048 vectors, each writer taking its in turn", async () => {
    const vectors = Array.from({ length: 4500 }, (_, i) => ({
      id: `writer-large-${i}`,
      values: vectorOf(`writer-large-${i}`),
      metadata: { part: Math.floor(i / 2048) },
    }));
    vars.INDEX_WRITERS = "2";
    // Three messages (2,048, 2,048 and 404 vectors), not two of 2,250: the first writer
    // takes two of them in turn.
    expect(await writeVectors(env, "use-lite", vectors, "test")).toBe(3);
    const stored = await vectorsOf(
      getVectorIndex(env, "use-lite"),
      vectors.map((v) => v.id),
    );
    expect(stored.size).toBe(4500);
    for (const v of vectors) expect(bits(stored.get(v.id) ?? [])).toEqual(bits(v.values));
  });

  it("store what donors sent, bit for bit, for a new document and for the version replacing it", async () => {
    const collection = `writers-${crypto.randomUUID().slice(0, 8)}`;
    const w = await TestWorker.connect();
    try {
      const handed = await counter("p2pa_index_writer_vectors_total");
      /** The same 150 document names, each with a text of this version's. */
      const version = (label: string) =>
        post({
          collection,
          verification: "off",
          documents: Array.from({ length: 150 }, (_, i) => ({
            id: `doc-${i}`,
            text: `${label} version of note ${i} in ${collection}.`,
          })),
        });
      const first = await version("First");
      const v1 = await computeAll(w, first.id);
      expect(v1.length).toBe(150);
      // Replacing versions: their vectors are held until complete, then written together.
      const second = await version("Second");
      const v2 = await computeAll(w, second.id);
      expect(v2.length).toBe(150);
      const index = getVectorIndex(env, "use-lite");
      const stored = await vectorsOf(index, [...v1, ...v2]);
      for (const id of v2) expect(bits(stored.get(id) ?? [])).toEqual(bits(vectorOf(id)));
      // Every vector went through the writers (the first version's may be pruned already).
      expect((await counter("p2pa_index_writer_vectors_total")) - handed).toBe(300);
      const [match] = (
        await index.query(vectorOf(v2[7] as string), { topK: 1, returnMetadata: "all" })
      ).matches;
      expect(match?.id).toBe(v2[7]);
      expect(match?.metadata).toMatchObject({ collection, jobId: second.id });
    } finally {
      w.ws.close();
    }
  });

  it("put a group write's tasks back when a writer fails, and store each chunk once after", async () => {
    const collection = `writer-down-${crypto.randomUUID().slice(0, 8)}`;
    const w = await TestWorker.connect();
    const down = vi
      .spyOn(IndexWriter.prototype, "upsert")
      .mockRejectedValueOnce(new Error("index unavailable"));
    try {
      const j = await post({
        collection,
        verification: "off",
        documents: Array.from({ length: 100 }, (_, i) => ({
          text: `Note ${i} written while an index writer was down (${collection}).`,
        })),
      });
      w.ready(1);
      const statuses: string[] = [];
      const answered: string[] = [];
      for (;;) {
        const job = (await (await call(`/v1/jobs/${j.id}`)).json()) as {
          status: string;
          chunks: { total: number; done: number; failed: number };
        };
        if (job.status === "completed") {
          expect(job.chunks).toMatchObject({ total: 100, done: 100, failed: 0 });
          break;
        }
        const t = (await w.next("task")) as Frame & { items: { chunkId: string }[] };
        answered.push(...t.items.map((it) => it.chunkId));
        w.send(w.resultFor(t, (_, i) => vectorOf((t.items[i] as { chunkId: string }).chunkId)));
        statuses.push(String((await w.next("ack")).status));
      }
      // The first write failed whole and its task came back; every chunk is stored once.
      expect(statuses[0]).toBe("rejected");
      expect(statuses.slice(1).every((s) => s === "stored")).toBe(true);
      const ids = [...new Set(answered)];
      expect(ids.length).toBe(100);
      const stored = await vectorsOf(getVectorIndex(env, "use-lite"), ids);
      for (const id of ids) expect(bits(stored.get(id) ?? [])).toEqual(bits(vectorOf(id)));
      const chunks = (await (await call(`/v1/jobs/${j.id}/chunks?limit=500`)).json()) as {
        data: { id: string; status: string }[];
      };
      expect(chunks.data.filter((c) => c.status === "done").length).toBe(100);
    } finally {
      down.mockRestore();
      w.ws.close();
    }
  });

  it("write a submit's cached vectors through the writers of the job's shard, bit for bit", async () => {
    const tag = crypto.randomUUID().slice(0, 8);
    const texts = Array.from({ length: 70 }, (_, i) => `Cached note ${i} (${tag}).`);
    const a = await TestWorker.connect({}, await workerToken(`writer_a_${tag}`));
    const b = await TestWorker.connect({}, await workerToken(`writer_b_${tag}`));
    try {
      // Vectors enter the cache once a second donor has confirmed them.
      const first = await post({
        verification: "always",
        cache: true,
        documents: texts.map((text) => ({ text })),
      });
      a.ready(1);
      b.ready(1);
      for (;;) {
        const j = (await (await call(`/v1/jobs/${first.id}`)).json()) as { status: string };
        if (j.status === "completed") break;
        for (const w of [a, b]) {
          const t = (await w.next("task", 300).catch(() => null)) as
            | (Frame & { items: { chunkId: string; text: string }[] })
            | null;
          if (!t) continue;
          w.send(w.resultFor(t, (_, i) => vectorOf(t.items[i]?.text ?? "")));
          await w.next("ack");
        }
      }
      const handed = vi.spyOn(IndexWriter.prototype, "upsert");
      const again = (await post({ cache: true, documents: texts.map((text) => ({ text })) })) as {
        id: string;
        chunks?: { cached: number };
      };
      const parts = handed.mock.calls.map(([, packed]) => packed.ids);
      handed.mockRestore();
      expect(again.chunks?.cached).toBe(70);
      // Two writers' worth (at least 64 vectors each): every vector handed over once.
      expect(parts.length).toBe(2);
      const ids = parts.flat();
      expect(new Set(ids).size).toBe(70);
      const stored = await vectorsOf(getVectorIndex(env, "use-lite"), ids);
      const chunks = (await (await call(`/v1/jobs/${again.id}/chunks?limit=500`)).json()) as {
        data: { id: string; text: string }[];
      };
      for (const c of chunks.data)
        expect(bits(stored.get(c.id) ?? [])).toEqual(bits(vectorOf(c.text)));
    } finally {
      a.ws.close();
      b.ws.close();
    }
  });
});
