import {
  DEFAULT_MODEL,
  type SearchFilter,
  type SearchMode,
  type SearchRequest,
  type SearchResponse,
  type SearchResult,
} from "@p2pa/shared";
import type { z } from "zod";
import { keyringFor, openStore } from "../db/open.js";
import { FILTER_METADATA, type MetadataStore } from "../db/store.js";
import { AppError } from "../lib/errors.js";
import { requireModel } from "../lib/models.js";
import { embedNow } from "../lib/realtime.js";
import { assertWithinWindow } from "../lib/tokens.js";
import { filterableKeys } from "../vector/config.js";
import { compileFilter } from "../vector/filter.js";
import { getVectorIndex, vectorsOf } from "../vector/index.js";
import { fuse, fusionMatches, type Ranked } from "./fuse.js";
import { queryTerms, wordsHeld } from "./terms.js";

type Request = z.output<typeof SearchRequest>;

/** Keys a search filter may name besides the deployment's filterable document keys. */
const PRODUCT_FILTER_KEYS = ["jobId", "documentId", "collection"] as const;

/**
 * How deep each list goes before fusion in hybrid mode: a chunk ranked 40th by meaning and 2nd
 * by words should still be found for a top 10. Vectorize returns at most 100 matches.
 */
const FUSION_DEPTH = { min: 50, max: 100, perResult: 3 } as const;

/**
 * One search: the query's vector against the model's index, its words against the keyword
 * index, or both fused by reciprocal rank; then the chunks themselves from the metadata store.
 * Every list is held to the tenant, the collections asked for and the same filter (compiled
 * once for the vector index and once as SQL for the keyword index, with the same semantics).
 */
export async function search(env: Env, tenant: string, req: Request): Promise<SearchResponse> {
  const model = req.model ?? DEFAULT_MODEL;
  requireModel(env, model);
  const filter = checkedFilter(env, req);
  const store = openStore(env);
  // A pending document version's vectors are in the index before it becomes current (and a
  // superseded one's until they are pruned): each list reaches as deep as Vectorize allows, so
  // the chunks search may not show leave room for topK it may.
  const depth =
    req.mode === "hybrid"
      ? Math.min(
          FUSION_DEPTH.max,
          Math.max(FUSION_DEPTH.min, req.topK * FUSION_DEPTH.perResult, req.topK),
        )
      : FUSION_DEPTH.max;

  const [byVector, keywordHits] = await Promise.all([
    req.mode === "keyword" ? null : vectorList(env, tenant, model, req, filter, depth),
    req.mode === "vector" ? null : keywordList(env, store, tenant, model, req, filter, depth),
  ]);
  const byKeyword = req.mode === "hybrid" ? fusionMatches(keywordHits ?? []) : (keywordHits ?? []);
  const ranked = rank(req.mode, byVector ?? [], byKeyword).filter(
    (r) => req.minScore === undefined || r.score >= req.minScore,
  );
  // Ranked by depth, shown by topK: chunks of versions not (or no longer) current are dropped
  // when materialised, and the next ones take their place.
  const results = await materialise(env, store, tenant, model, req, ranked);
  return { mode: req.mode, results: results.slice(0, req.topK) };
}

/**
 * The request's filter with its keys checked: the product's keys and the deployment's
 * filterable document keys only (Vectorize can filter on nothing else), never the tenant, and
 * collections either as `collections` or as a filter on `collection`, not both.
 */
function checkedFilter(env: Env, req: Request): SearchFilter {
  const allowed: string[] = [...PRODUCT_FILTER_KEYS, ...filterableKeys(env)];
  const filter: SearchFilter = { ...(req.filter ?? {}) };
  for (const key of Object.keys(filter)) {
    if (!allowed.includes(key))
      throw new AppError(
        422,
        "unprocessable",
        `cannot filter on "${key}": searches filter on ${allowed.join(", ")}`,
        { filterable: allowed },
      );
  }
  if (req.collections) {
    if (filter.collection !== undefined)
      throw new AppError(
        422,
        "unprocessable",
        "give collections either as `collections` or as a filter on `collection`, not both",
      );
    filter.collection = { $in: req.collections };
  }
  try {
    // Validates operators and values the way the index will, so a bad filter is a 422 here.
    if (Object.keys(filter).length > 0) compileFilter(filter, allowed, FILTER_METADATA);
  } catch (err) {
    throw new AppError(422, "unprocessable", `invalid filter: ${(err as Error).message}`);
  }
  return filter;
}

async function vectorList(
  env: Env,
  tenant: string,
  model: string,
  req: Request,
  filter: SearchFilter,
  depth: number,
): Promise<Ranked[]> {
  await assertWithinWindow(env, model, [req.query], "query");
  const {
    vectors: [vector],
  } = await embedNow(env, model, [req.query], { tenant, ...(req.pool ? { pool: req.pool } : {}) });
  const { matches } = await getVectorIndex(env, model).query(vector as Float32Array, {
    topK: depth,
    filter: { ...filter, tenant } as VectorizeVectorMetadataFilter,
    returnMetadata: "none",
  });
  return matches.map((m) => ({ id: m.id, score: m.score }));
}

async function keywordList(
  env: Env,
  store: MetadataStore,
  tenant: string,
  model: string,
  req: Request,
  filter: SearchFilter,
  depth: number,
): Promise<(Ranked & { held: number; asked: number })[]> {
  const terms = await queryTerms(keyringFor(env), tenant, req.query);
  if (!terms) return [];
  const keys = Object.keys(filter);
  const hits = await store.keywordSearch({
    tenant,
    model,
    match: terms.match,
    // Each store compiles the filter for its database (checkedFilter has validated it).
    ...(keys.length > 0 ? { filter: { metadata: filter, keys } } : {}),
    limit: depth,
  });
  const asked = terms.words.length;
  return hits.map((h) => ({ id: h.id, score: h.score, held: wordsHeld(h.terms, terms), asked }));
}

interface Scored {
  id: string;
  score: number;
  scores: SearchResult["scores"];
}

/** The mode's ranking: one list as it is, or both fused. */
function rank(mode: SearchMode, byVector: Ranked[], byKeyword: Ranked[]): Scored[] {
  if (mode === "vector") return byVector.map((r) => ({ ...r, scores: { vector: r.score } }));
  if (mode === "keyword") return byKeyword.map((r) => ({ ...r, scores: { keyword: r.score } }));
  const vector = new Map(byVector.map((r) => [r.id, r.score]));
  const keyword = new Map(byKeyword.map((r) => [r.id, r.score]));
  return fuse([byVector, byKeyword]).map(({ id, score }) => ({
    id,
    score,
    scores: {
      ...(vector.has(id) ? { vector: vector.get(id) as number } : {}),
      ...(keyword.has(id) ? { keyword: keyword.get(id) as number } : {}),
    },
  }));
}

/** The ranked chunks as results, with text, metadata and vectors as asked. */
async function materialise(
  env: Env,
  store: MetadataStore,
  tenant: string,
  model: string,
  req: Request,
  ranked: Scored[],
): Promise<SearchResult[]> {
  const rows = await store.getChunks(
    tenant,
    ranked.map((r) => r.id),
    { currentOnly: true },
  );
  const chunks = new Map(rows.map((r) => [r.id, r]));
  // A vector whose chunk is gone (deleted a moment ago; Vectorize applies deletes later) or
  // belongs to a version that is not current is not shown.
  const top = ranked.filter((r) => chunks.has(r.id)).slice(0, req.topK);
  const vectors = req.includeVectors
    ? await vectorsOf(
        getVectorIndex(env, model),
        top.map((r) => r.id),
      )
    : new Map<string, number[]>();
  return top.flatMap((r) => {
    const chunk = chunks.get(r.id);
    if (!chunk) return [];
    const { status: _s, error: _e, text, metadata, ...rest } = chunk;
    const vector = vectors.get(r.id);
    return [
      {
        score: r.score,
        scores: r.scores,
        chunk: {
          ...rest,
          ...(req.includeText ? { text } : {}),
          ...(req.includeMetadata ? { metadata } : {}),
          ...(vector ? { vector } : {}),
        },
      },
    ];
  });
}
