/**
 * The vector index as the product uses it: the subset of the Vectorize v2 binding (`Vectorize`
 * in worker-configuration.d.ts) with the same names and shapes, so that the real binding and
 * the local stand-in (`LocalVectorIndex`) can both be handed to callers as a `VectorIndex`.
 *
 * Semantics shared by both implementations (the local one documents its own limits):
 * - metric cosine; `score` is the cosine similarity, best first;
 * - `insert` keeps an existing vector with the same id, `upsert` replaces it;
 * - a vector id is unique across namespaces; `namespace` in a query restricts the search to it,
 *   no namespace searches all of them;
 * - `filter` is an AND over metadata keys (dots address nested keys), with implicit equality
 *   and `$eq`, `$ne`, `$in`, `$nin` (`$lt`, `$lte`, `$gt`, `$gte` too); filtering needs a metadata
 *   index on the key;
 * - topK defaults to 5; at most 100, or 50 when values or all metadata are returned.
 */
export interface VectorIndex {
  /** Adds vectors; an id that already exists keeps its stored vector. */
  insert(vectors: VectorizeVector[]): Promise<VectorizeAsyncMutation>;
  /** Adds vectors, replacing any stored vector with the same id. */
  upsert(vectors: VectorizeVector[]): Promise<VectorizeAsyncMutation>;
  /** Nearest vectors to `vector` by cosine similarity, after namespace and metadata filters. */
  query(
    vector: VectorFloatArray | number[],
    options?: VectorizeQueryOptions,
  ): Promise<VectorizeMatches>;
  /** The stored vectors with these ids (values and metadata); unknown ids are left out. */
  getByIds(ids: string[]): Promise<VectorizeVector[]>;
  /** Removes the vectors with these ids; unknown ids are ignored. */
  deleteByIds(ids: string[]): Promise<VectorizeAsyncMutation>;
  /** Vector count and dimension of the index. */
  describe(): Promise<VectorizeIndexInfo>;
}

/** Compile-time check only: `true` when `A` is assignable to `B`. */
type Assignable<A, B> = [A] extends [B] ? true : false;
function assertType<_T extends true>(): void {}

// The real v2 binding satisfies VectorIndex as is: callers may be given it unwrapped.
assertType<Assignable<Vectorize, VectorIndex>>();

// `wrangler types` declares every [[vectorize]] binding as the beta class `VectorizeIndex`,
// whose mutations return `{ ids, count }` and whose describe() says `vectorsCount`. A v2 index
// answers with the v2 shapes at runtime, so only the read side of the beta declaration lines
// up; getVectorIndex() casts env.VECTORIZE to `Vectorize` for that reason.
assertType<
  Assignable<Pick<VectorizeIndex, "query" | "getByIds">, Pick<VectorIndex, "query" | "getByIds">>
>();
assertType<Assignable<VectorizeIndex, VectorIndex> extends false ? true : false>();
