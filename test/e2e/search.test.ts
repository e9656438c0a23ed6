import type { CollectionList, ErrorBody, Job, SearchResponse, SearchResult } from "@p2pa/shared";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TOPICS } from "../../scripts/lib/corpus.js";
import { allChunks, type System, startSystem, waitForJob } from "./harness.js";

/**
 * Search as a user drives it, on the real system with a real worker: collections, every filter
 * operator on document metadata, the three modes, the include switches and the score
 * threshold, and the errors a careless client gets.
 */

let sys: System;
let manuals: Job;
let news: Job;

/** Manuals: near-identical pump descriptions told apart only by their model codes. */
const PUMPS = ["QX-7731", "QX-7739", "QR-7731", "QV-2208"].map((code, i) => ({
  id: `pump-${code}`,
  text: `The ${code} centrifugal pump moves up to ${40 + i} litres a minute and runs quietly on a standard supply.`,
  metadata: { category: "pump", year: 2020 + i, lang: "en", source: "catalog" },
}));
const TOPIC_DOCS = TOPICS.slice(0, 8).map((t, i) => ({
  id: t.id,
  text: t.text,
  metadata: {
    category: i % 2 === 0 ? "science" : "life",
    year: 2015 + i,
    lang: i % 3 === 0 ? "de" : "en",
    // A number stored as a string must not match numeric filters.
    ...(i === 7 ? { year: "2022" } : {}),
    ...(i === 6 ? { author: "Ana" } : {}),
  },
}));

async function search(json: Record<string, unknown>) {
  return sys.api<SearchResponse>("/v1/search", { json });
}

/** Every document id a filter lets through, searching with a topK above the corpus size. */
async function idsFor(filter: Record<string, unknown>, collections?: string[]) {
  const r = await search({
    query: "anything at all",
    topK: 100,
    filter,
    ...(collections ? { collections } : {}),
  });
  expect(r.status, JSON.stringify(r.body)).toBe(200);
  return r.body.results.map((x) => x.chunk.documentId).sort();
}

beforeAll(async () => {
  sys = await startSystem();
  await sys.addWorker();
  const a = await sys.api<Job>("/v1/jobs", {
    json: { documents: PUMPS, collection: "manuals", verification: "off" },
  });
  const b = await sys.api<Job>("/v1/jobs", {
    json: { documents: TOPIC_DOCS, collection: "news", verification: "off" },
  });
  expect([a.status, b.status]).toEqual([202, 202]);
  manuals = await waitForJob<Job>(sys, a.body.id);
  news = await waitForJob<Job>(sys, b.body.id);
  expect([manuals.status, news.status]).toEqual(["completed", "completed"]);
}, 180_000);

afterAll(async () => {
  await sys?.stop();
});

describe("collections", () => {
  it("keeps each job's documents in its collection and searches one, several or all", async () => {
    const all = await idsFor({});
    expect(all).toEqual([...PUMPS, ...TOPIC_DOCS].map((d) => d.id).sort());
    expect(await idsFor({}, ["manuals"])).toEqual(PUMPS.map((d) => d.id).sort());
    expect(await idsFor({}, ["news"])).toEqual(TOPIC_DOCS.map((d) => d.id).sort());
    expect(await idsFor({}, ["news", "manuals"])).toEqual(all);
    expect(await idsFor({}, ["empty"])).toEqual([]);
    expect(await idsFor({ collection: { $ne: "news" } })).toEqual(PUMPS.map((d) => d.id).sort());

    const listed = await sys.api<CollectionList>("/v1/collections");
    expect(
      listed.body.data.map(({ name, jobs, documents }) => ({ name, jobs, documents })),
    ).toEqual([
      { name: "manuals", jobs: 1, documents: PUMPS.length },
      { name: "news", jobs: 1, documents: TOPIC_DOCS.length },
    ]);
    expect(listed.body.filterable).toEqual(["category", "source", "lang", "year", "author"]);
    const chunks = await allChunks(sys, news.id);
    expect(new Set(chunks.map((c) => c.collection))).toEqual(new Set(["news"]));
  });
});

describe("metadata filters, with the same answers in every mode", () => {
  const expected = (pred: (m: Record<string, unknown>) => boolean) =>
    [...PUMPS, ...TOPIC_DOCS]
      .filter((d) => pred(d.metadata))
      .map((d) => d.id)
      .sort();
  const cases: [string, Record<string, unknown>, (m: Record<string, unknown>) => boolean][] = [
    ["implicit equality", { category: "pump" }, (m) => m.category === "pump"],
    ["$eq", { lang: { $eq: "de" } }, (m) => m.lang === "de"],
    ["$ne (matches missing keys too)", { author: { $ne: "Ana" } }, (m) => m.author !== "Ana"],
    [
      "$in",
      { category: { $in: ["life", "pump"] } },
      (m) => ["life", "pump"].includes(String(m.category)),
    ],
    [
      "$nin",
      { category: { $nin: ["life", "pump"] } },
      (m) => !["life", "pump"].includes(String(m.category)),
    ],
    ["$lt on numbers", { year: { $lt: 2018 } }, (m) => typeof m.year === "number" && m.year < 2018],
    ["$lte", { year: { $lte: 2018 } }, (m) => typeof m.year === "number" && m.year <= 2018],
    ["$gt", { year: { $gt: 2021 } }, (m) => typeof m.year === "number" && m.year > 2021],
    [
      "$gte with $lt (a range)",
      { year: { $gte: 2016, $lt: 2021 } },
      (m) => typeof m.year === "number" && m.year >= 2016 && m.year < 2021,
    ],
    [
      "a number never equals a string",
      { year: { $in: [2022, 2023] } },
      (m) => m.year === 2022 || m.year === 2023,
    ],
    ["$gte on strings", { lang: { $gte: "e" } }, (m) => String(m.lang) >= "e"],
    [
      "several keys, AND-ed, with jobId",
      { jobId: "NEWS", lang: "en", category: "science" },
      (m) => m.lang === "en" && m.category === "science" && m.source === undefined,
    ],
  ];
  for (const [name, filter, pred] of cases) {
    it(name, async () => {
      const f = JSON.parse(JSON.stringify(filter).replace('"NEWS"', JSON.stringify(news.id)));
      const want = expected(pred);
      expect(await idsFor(f)).toEqual(want);
      // Keyword and hybrid modes apply the filter in SQL over D1; the answer set must agree
      // wherever the words match (every document here has "the" or "a": use a word they share).
      for (const mode of ["keyword", "hybrid"]) {
        const r = await search({ query: "the", topK: 100, filter: f, mode });
        expect(r.status).toBe(200);
        const got = r.body.results.map((x) => x.chunk.documentId);
        for (const id of got) expect(want, `${mode} returned ${id}`).toContain(id);
      }
    });
  }
});

describe("modes", () => {
  it("keyword and hybrid find an exact model code that meaning alone confuses", async () => {
    for (const { id } of PUMPS) {
      const code = id.slice("pump-".length);
      const keyword = await search({ query: `${code} pump`, topK: 3, mode: "keyword" });
      expect(keyword.body.results[0]?.chunk.documentId, `keyword ${code}`).toBe(id);
      expect(keyword.body.results[0]?.scores.keyword).toBeGreaterThan(0);
      const hybrid = await search({ query: `${code} pump`, topK: 3, mode: "hybrid" });
      expect(hybrid.body.mode).toBe("hybrid");
      expect(hybrid.body.results[0]?.chunk.documentId, `hybrid ${code}`).toBe(id);
      expect(hybrid.body.results[0]?.scores).toMatchObject({
        vector: expect.any(Number),
        keyword: expect.any(Number),
      });
    }
  });

  it("hybrid still finds a paraphrase that shares no word with its document", async () => {
    for (const t of TOPICS.slice(0, 8)) {
      const vector = await search({ query: t.paraphrase, topK: 1, collections: ["news"] });
      const hybrid = await search({
        query: t.paraphrase,
        topK: 3,
        mode: "hybrid",
        collections: ["news"],
      });
      expect(vector.body.results[0]?.chunk.documentId).toBe(t.id);
      expect(hybrid.body.results.map((r) => r.chunk.documentId)).toContain(t.id);
    }
  });

  it("keyword mode needs no worker and finds nothing for words no chunk holds", async () => {
    const r = await search({ query: "zyxwvut qqqq", mode: "keyword" });
    expect(r.status).toBe(200);
    expect(r.body.results).toEqual([]);
  });
});

describe("what comes back", () => {
  it("includes text, metadata and vectors as asked, and applies a score threshold", async () => {
    const t = TOPICS[0] as (typeof TOPICS)[number];
    const full = await search({ query: t.paraphrase, topK: 3, includeVectors: true });
    const first = full.body.results[0] as SearchResult;
    expect(first.chunk.text).toBe(t.text);
    expect(first.chunk.metadata).toMatchObject({ category: "science" });
    expect(first.chunk.vector).toHaveLength(512);
    const stored = (await allChunks(sys, news.id)).find((c) => c.id === first.chunk.id);
    expect(first.chunk.vector).toEqual(stored?.vector);

    const bare = await search({
      query: t.paraphrase,
      topK: 3,
      includeText: false,
      includeMetadata: false,
    });
    expect(Object.keys(bare.body.results[0]?.chunk ?? {})).not.toContain("text");
    expect(Object.keys(bare.body.results[0]?.chunk ?? {})).not.toContain("metadata");
    expect(Object.keys(bare.body.results[0]?.chunk ?? {})).not.toContain("vector");

    const threshold = ((full.body.results[0]?.score ?? 0) + (full.body.results[1]?.score ?? 0)) / 2;
    const above = await search({ query: t.paraphrase, topK: 10, minScore: threshold });
    expect(above.body.results.map((r) => r.chunk.id)).toEqual([first.chunk.id]);
    for (const r of (await search({ query: t.paraphrase, topK: 10 })).body.results)
      expect(r.scores.vector).toBe(r.score);
  });
});

describe("bad input", () => {
  it("answers 422 with a reason and leaves what is stored alone", async () => {
    const bad: [Record<string, unknown>, RegExp][] = [
      [{ query: "x", filter: { owner: "me" } }, /cannot filter on "owner"/],
      [{ query: "x", filter: { tenant: "someone-else" } }, /cannot filter on "tenant"/],
      [{ query: "x", filter: { year: { $regex: "20" } } }, /filter/],
      [{ query: "x", filter: { year: { $lt: true } } }, /filter/],
      [{ query: "x", filter: { year: {} } }, /operator/],
      [{ query: "x", collections: ["news"], filter: { collection: "news" } }, /not both/],
      [{ query: "x", collections: ["Not A Name"] }, /collection name/],
      [{ query: "x", mode: "fuzzy" }, /mode/],
      [{ query: "x", top_k: 3 }, /top_k|Unrecognized/i],
      [{ query: "x", minScore: "high" }, /minScore/],
    ];
    for (const [json, message] of bad) {
      const r = await sys.api<ErrorBody>("/v1/search", {
        json,
      });
      expect(r.status, JSON.stringify(json)).toBe(422);
      expect(
        `${r.body.error.message} ${JSON.stringify(r.body.error)}`,
        JSON.stringify(json),
      ).toMatch(message);
    }
    const job = await sys.api<ErrorBody>("/v1/jobs", {
      json: { documents: [{ text: "hello" }], collection: "../etc" },
    });
    expect(job.status).toBe(422);
    expect(await idsFor({}, ["manuals"])).toEqual(PUMPS.map((d) => d.id).sort());
  });
});

describe("deletion reaches the keyword index", () => {
  it("a deleted job's words find nothing any more", async () => {
    const code = "QV-2208";
    expect(
      (await search({ query: code, mode: "keyword" })).body.results.map((r) => r.chunk.documentId),
    ).toContain(`pump-${code}`);
    const del = await sys.api(`/v1/jobs/${manuals.id}`, { method: "DELETE" });
    expect(del.status).toBe(204);
    expect((await search({ query: code, mode: "keyword" })).body.results).toEqual([]);
    expect(await idsFor({}, ["manuals"])).toEqual([]);
  });
});

describe("detected languages", () => {
  it("filters on the language found in each document's text, on a job a worker computed while it was written", async () => {
    const documents = [
      {
        id: "tide-en",
        text: "The harbour was quiet this morning, and the fishing boats stayed tied up along the old stone quay until the tide turned.",
      },
      {
        id: "tide-fr",
        text: "Le port était calme ce matin, et les bateaux de pêche sont restés amarrés le long du vieux quai de pierre jusqu'à la marée.",
      },
      {
        id: "rain-fr",
        text: "Il pleut depuis trois jours et la rivière a débordé sur la route du vieux moulin, disent les voisins du village.",
      },
      {
        id: "rain-de",
        text: "Es regnet seit drei Tagen, und der Fluss ist über die Straße zur alten Mühle getreten, sagen die Nachbarn im Dorf.",
      },
      // A language given is kept as given.
      { id: "given", text: "A short note about the quay.", metadata: { lang: "fr" } },
    ];
    const res = await sys.api<Job>("/v1/jobs", {
      json: { documents, collection: "languages", verification: "off" },
    });
    expect(res.status).toBe(202);
    expect((await waitForJob<Job>(sys, res.body.id)).status).toBe("completed");
    expect(await idsFor({ lang: "fr" }, ["languages"])).toEqual(["given", "rain-fr", "tide-fr"]);
    expect(await idsFor({ lang: "de" }, ["languages"])).toEqual(["rain-de"]);
    expect(await idsFor({ lang: { $in: ["en", "de"] } }, ["languages"])).toEqual([
      "rain-de",
      "tide-en",
    ]);
    const hybrid = await search({
      query: "the old stone quay",
      mode: "hybrid",
      collections: ["languages"],
      filter: { lang: "en" },
    });
    expect(hybrid.status).toBe(200);
    expect(hybrid.body.results.map((r) => r.chunk.documentId)).toEqual(["tide-en"]);
  });
});
