/**
 * What every stand-in for a Vectorize index enforces and returns the same way: Vectorize v2's
 * limits (developers.cloudflare.com/vectorize/platform/limits and the query() reference), the
 * checks on vectors, ids and queries with their error messages, and the shape of metadata a
 * query returns. The local index and the pgvector index both apply them from here.
 */

const VECTORIZE_LIMITS = {
  maxDimensions: 1536,
  maxIdBytes: 64,
  maxNamespaceBytes: 64,
  maxMetadataBytes: 10 * 1024,
  /** Vectors per insert/upsert call through a Workers binding. */
  maxBatch: 1000,
  defaultTopK: 5,
  /** topK without values and with metadata "none" or "indexed". */
  maxTopK: 100,
  /** topK with `returnValues: true` or `returnMetadata: "all"`. */
  maxTopKWithData: 50,
  maxMetadataIndexes: 10,
  /** Vectorize indexes (and returns as "indexed") only the first 64 bytes of a string. */
  indexedStringBytes: 64,
} as const;

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

/** A validated vector: float32 values as stored, metadata as its JSON text. */
export interface Prepared {
  id: string;
  namespace: string | null;
  metadata: string | null;
  values: Float32Array;
}

/**
 * Checks one vector of a write against Vectorize's limits. `inPlace`: float32 values are used
 * as they are, not copied (for a write that is done with them before it returns).
 */
function prepare(v: VectorizeVector, inPlace: boolean): Prepared {
  if (typeof v?.id !== "string" || v.id.length === 0)
    throw new Error("every vector needs a non-empty string id");
  if (byteLength(v.id) > VECTORIZE_LIMITS.maxIdBytes)
    throw new Error(`vector id "${v.id}" is longer than ${VECTORIZE_LIMITS.maxIdBytes} bytes`);
  const values = toFloat32(v.values, `vector "${v.id}"`, inPlace);
  const namespace = v.namespace ?? null;
  if (namespace !== null && byteLength(namespace) > VECTORIZE_LIMITS.maxNamespaceBytes)
    throw new Error(
      `namespace "${namespace}" is longer than ${VECTORIZE_LIMITS.maxNamespaceBytes} bytes`,
    );
  const metadata = v.metadata === undefined ? null : JSON.stringify(v.metadata);
  if (metadata !== null && byteLength(metadata) > VECTORIZE_LIMITS.maxMetadataBytes)
    throw new Error(`metadata of "${v.id}" is over ${VECTORIZE_LIMITS.maxMetadataBytes} bytes`);
  return { id: v.id, namespace, metadata, values };
}

/**
 * Checks a write's batch size and every vector in it, and that all have `dimensions`; with
 * `dimensions` 0 (an index not sized yet) all must have the length of the first. `inPlace`:
 * the caller is done with the values before it returns (see `prepare`).
 */
export function prepareBatch(
  vectors: VectorizeVector[],
  dimensions: number,
  inPlace = false,
): Prepared[] {
  if (!Array.isArray(vectors)) throw new Error("vectors must be an array");
  if (vectors.length > VECTORIZE_LIMITS.maxBatch)
    throw new Error(`at most ${VECTORIZE_LIMITS.maxBatch} vectors per call, got ${vectors.length}`);
  const rows = vectors.map((v) => prepare(v, inPlace));
  const dims = dimensions || (rows[0]?.values.length ?? 0);
  for (const r of rows) {
    if (r.values.length !== dims)
      throw new Error(
        `vector "${r.id}" has ${r.values.length} dimensions; the index has ${dims} dimensions`,
      );
  }
  return rows;
}

/** Checks an index's dimensions against Vectorize's bounds. */
export function checkDimensions(dimensions: number): void {
  if (
    !Number.isInteger(dimensions) ||
    dimensions < 1 ||
    dimensions > VECTORIZE_LIMITS.maxDimensions
  )
    throw new Error(`dimensions must be an integer from 1 to ${VECTORIZE_LIMITS.maxDimensions}`);
}

/** Checks the number of an index's metadata indexes (distinct keys) against Vectorize's. */
export function checkMetadataIndexCount(keys: readonly string[]): void {
  if (keys.length > VECTORIZE_LIMITS.maxMetadataIndexes)
    throw new Error(`an index has at most ${VECTORIZE_LIMITS.maxMetadataIndexes} metadata indexes`);
}

/**
 * Values as float32 (the stored form), checked: a copy of their own, or with `inPlace` float32
 * values as they are.
 */
function toFloat32(
  values: VectorFloatArray | number[],
  what: string,
  inPlace = false,
): Float32Array {
  if (!Array.isArray(values) && !(values instanceof Float32Array || values instanceof Float64Array))
    throw new Error(`${what} must be an array of numbers`);
  const v = inPlace && values instanceof Float32Array ? values : new Float32Array(values);
  for (let i = 0; i < v.length; i++) {
    if (!Number.isFinite(v[i])) throw new Error(`${what} has a non-finite value at ${i}`);
  }
  return v;
}

/**
 * A query vector checked and in the stored form, of the index's `dimensions` (any length while
 * the index is not sized yet, `dimensions` 0).
 */
export function queryVector(vector: VectorFloatArray | number[], dimensions: number): Float32Array {
  const q = toFloat32(vector, "query vector");
  if (dimensions !== 0 && q.length !== dimensions)
    throw new Error(
      `query vector has ${q.length} dimensions; the index has ${dimensions} dimensions`,
    );
  return q;
}

export function checkIds(ids: string[]): string[] {
  if (!Array.isArray(ids) || ids.some((id) => typeof id !== "string"))
    throw new Error("ids must be an array of strings");
  return ids;
}

/** A query's options checked: topK within Vectorize's bounds, and the metadata level asked. */
export function queryOptions(options: VectorizeQueryOptions): {
  topK: number;
  returnValues: boolean;
  level: VectorizeMetadataRetrievalLevel;
} {
  const { topK = VECTORIZE_LIMITS.defaultTopK, returnValues = false } = options;
  const level = metadataLevel(options.returnMetadata);
  const max =
    returnValues || level === "all" ? VECTORIZE_LIMITS.maxTopKWithData : VECTORIZE_LIMITS.maxTopK;
  if (!Number.isInteger(topK) || topK < 1 || topK > max)
    throw new Error(
      `topK must be an integer from 1 to ${max} ` +
        `(${VECTORIZE_LIMITS.maxTopKWithData} with returnValues or returnMetadata "all"), got ${topK}`,
    );
  return { topK, returnValues, level };
}

function metadataLevel(
  m: VectorizeQueryOptions["returnMetadata"],
): VectorizeMetadataRetrievalLevel {
  // The boolean form is the v1 API: true meant everything.
  if (m === undefined || m === false) return "none";
  if (m === true) return "all";
  if (m === "none" || m === "indexed" || m === "all") return m;
  throw new Error(`returnMetadata must be "none", "indexed" or "all", got ${String(m)}`);
}

/** A match as Vectorize returns it: no `namespace` key for a vector without one. */
export function toMatch(id: string, score: number, namespace: string | null): VectorizeMatch {
  return namespace === null ? { id, score } : { id, score, namespace };
}

/**
 * The metadata a match carries at `level`, from the stored JSON: none, all of it (`{}` when
 * there is none), or the indexed keys as `pickIndexed` returns them.
 */
export function returnedMetadata(
  level: VectorizeMetadataRetrievalLevel,
  json: string | null,
  indexed: readonly string[],
): Record<string, VectorizeVectorMetadata> | undefined {
  if (level === "none") return undefined;
  const metadata = parseMetadata(json);
  return level === "all" ? (metadata ?? {}) : pickIndexed(metadata, indexed);
}

/** A vector as stored: its namespace and metadata JSON as kept, its values read back. */
export interface StoredVector {
  namespace: string | null;
  metadata: string | null;
  values: number[];
}

/**
 * What getByIds returns: the stored vectors with these ids, in the order first asked, each id
 * once; ids missing from `stored` are left out.
 */
export function vectorsByIds(
  ids: readonly string[],
  stored: ReadonlyMap<string, StoredVector>,
): VectorizeVector[] {
  const out: VectorizeVector[] = [];
  for (const id of new Set(ids)) {
    const row = stored.get(id);
    if (!row) continue;
    const v: VectorizeVector = { id, values: row.values };
    if (row.namespace !== null) v.namespace = row.namespace;
    const metadata = parseMetadata(row.metadata);
    if (metadata) v.metadata = metadata;
    out.push(v);
  }
  return out;
}

function parseMetadata(json: string | null): Record<string, VectorizeVectorMetadata> | undefined {
  return json === null ? undefined : (JSON.parse(json) as Record<string, VectorizeVectorMetadata>);
}

/**
 * What Vectorize returns for `returnMetadata: "indexed"`: only the indexed keys with scalar
 * values, strings cut to their first 64 bytes on a character boundary.
 */
function pickIndexed(
  metadata: Record<string, VectorizeVectorMetadata> | undefined,
  keys: readonly string[],
): Record<string, VectorizeVectorMetadata> {
  const out: Record<string, unknown> = {};
  for (const key of keys) {
    const path = key.split(".");
    let value: unknown = metadata;
    for (const seg of path) value = (value as Record<string, unknown> | undefined)?.[seg];
    if (typeof value === "string") value = truncateUtf8(value, VECTORIZE_LIMITS.indexedStringBytes);
    else if (typeof value !== "number" && typeof value !== "boolean") continue;
    let target = out;
    for (const seg of path.slice(0, -1)) {
      target[seg] ??= {};
      target = target[seg] as Record<string, unknown>;
    }
    target[path[path.length - 1] as string] = value;
  }
  return out as Record<string, VectorizeVectorMetadata>;
}

function truncateUtf8(s: string, maxBytes: number): string {
  const bytes = utf8.encode(s);
  if (bytes.length <= maxBytes) return s;
  let end = maxBytes;
  // Back off while the first byte left out continues a character, so none is cut in half.
  while (end > 0 && ((bytes[end] as number) & 0xc0) === 0x80) end--;
  return fromUtf8.decode(bytes.subarray(0, end));
}

function byteLength(s: string): number {
  return utf8.encode(s).byteLength;
}
