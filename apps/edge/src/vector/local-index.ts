import { DurableObject } from "cloudflare:workers";
import { configForName, type LocalIndexConfig } from "./config.js";
import { checkKey, compileFilter, metadataExpression, type SqlValue } from "./filter.js";
import { dot, norm, TopK } from "./topk.js";

const SCHEMA_VERSION = 1;

/**
 * Vectorize v2's limits (developers.cloudflare.com/vectorize/platform/limits and the query()
 * reference), enforced locally so that what works here also works in production.
 */
export const LIMITS = {
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

/** A stored vector as read back for results. */
type StoredRow = {
  namespace: string | null;
  metadata: string | null;
  vec: ArrayBuffer;
};

/** A validated vector, ready to bind. */
interface Prepared {
  id: string;
  namespace: string | null;
  norm: number;
  metadata: string | null;
  vec: ArrayBuffer;
  length: number;
}

/**
 * The local stand-in for a Vectorize index (Vectorize has no local simulator): the same
 * methods and result shapes, exact (brute-force) cosine search over Durable Object SQLite.
 * One object per model (`index:<model>`), like one Vectorize index per model in production.
 *
 * Storage: one row per vector, values as a float32 BLOB with its norm precomputed, metadata
 * as JSON. Namespace and metadata filters run in SQL (metadata indexes become SQLite
 * expression indexes), scoring runs in JS over Float32Array views of the BLOBs.
 *
 * Dimensions are fixed once and never change, as with `wrangler vectorize create
 * --dimensions`: by `configure()`, else from the object's name when it is `index:<known
 * model>`, else by the first write. A vector of any other length is rejected.
 *
 * Where it differs from Vectorize: mutations are applied before the call returns (Vectorize
 * applies them asynchronously, seconds later); search is exact rather than approximate;
 * filtering on a key without a metadata index throws (Vectorize matches nothing); metadata
 * indexes apply to vectors already stored (Vectorize only to vectors written afterwards);
 * `describe().processedUpToMutation` counts mutations rather than naming the last one.
 */
export class LocalVectorIndex extends DurableObject<Env> {
  private readonly sql: SqlStorage;
  private dimensions = 0;
  private metadataIndexes: string[] = [];

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    ctx.blockConcurrencyWhile(async () => {
      this.migrate();
      this.dimensions = Number(this.meta("dimensions") ?? 0);
      this.metadataIndexes = JSON.parse(this.meta("metadata_indexes") ?? "[]") as string[];
      const auto = configForName(ctx.id.name);
      // A model's index picks up metadata indexes added to the product later, as a deploy
      // would run create-metadata-index; it never changes an index's dimensions.
      if (auto && (this.dimensions === 0 || this.dimensions === auto.dimensions))
        this.applyConfig(auto);
    });
  }

  private migrate(): void {
    this.sql.exec("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)");
    if (Number(this.meta("schema") ?? 0) >= SCHEMA_VERSION) return;
    // Small columns first, the BLOB last: reading a row's id and metadata then never touches
    // the BLOB's overflow pages.
    this.sql.exec(`
      CREATE TABLE IF NOT EXISTS vectors (
        id TEXT NOT NULL UNIQUE, namespace TEXT, norm REAL NOT NULL, metadata TEXT,
        vec BLOB NOT NULL
      );
      CREATE INDEX IF NOT EXISTS vectors_namespace ON vectors (namespace);
    `);
    this.setMeta("schema", String(SCHEMA_VERSION));
  }

  /**
   * Sets the index's dimensions and adds metadata indexes (existing ones are kept). Idempotent;
   * throws when the index already has other dimensions.
   */
  async configure(config: LocalIndexConfig): Promise<void> {
    this.applyConfig(config);
  }

  private applyConfig({ dimensions, metadataIndexes = [] }: LocalIndexConfig): void {
    if (!Number.isInteger(dimensions) || dimensions < 1 || dimensions > LIMITS.maxDimensions)
      throw new Error(`dimensions must be an integer from 1 to ${LIMITS.maxDimensions}`);
    if (this.dimensions !== 0 && this.dimensions !== dimensions)
      throw new Error(`index has ${this.dimensions} dimensions; it cannot change to ${dimensions}`);
    for (const key of metadataIndexes) checkKey(key);
    const keys = [...new Set([...this.metadataIndexes, ...metadataIndexes])];
    if (keys.length > LIMITS.maxMetadataIndexes)
      throw new Error(`an index has at most ${LIMITS.maxMetadataIndexes} metadata indexes`);
    this.ctx.storage.transactionSync(() => {
      this.setMeta("dimensions", String(dimensions));
      this.setMeta("metadata_indexes", JSON.stringify(keys));
      // Named by position: the list only grows, so a key keeps its index name.
      keys.forEach((key, i) => {
        this.sql.exec(
          `CREATE INDEX IF NOT EXISTS vectors_meta_${i} ON vectors (${metadataExpression(key)})`,
        );
      });
    });
    this.dimensions = dimensions;
    this.metadataIndexes = keys;
  }

  /** Adds vectors; an id already stored keeps its vector (first one wins within a batch). */
  async insert(vectors: VectorizeVector[]): Promise<VectorizeAsyncMutation> {
    return this.write(vectors, false);
  }

  /** Adds vectors, replacing stored ones with the same id (last one wins within a batch). */
  async upsert(vectors: VectorizeVector[]): Promise<VectorizeAsyncMutation> {
    return this.write(vectors, true);
  }

  private write(vectors: VectorizeVector[], overwrite: boolean): VectorizeAsyncMutation {
    if (!Array.isArray(vectors)) throw new Error("vectors must be an array");
    if (vectors.length > LIMITS.maxBatch)
      throw new Error(`at most ${LIMITS.maxBatch} vectors per call, got ${vectors.length}`);
    const rows = vectors.map(prepare);
    // First write fixes the dimensions of an unconfigured index; the whole batch must agree.
    const dims = this.dimensions || (rows[0]?.length ?? 0);
    for (const r of rows) {
      if (r.length !== dims)
        throw new Error(
          `vector "${r.id}" has ${r.length} dimensions; the index has ${dims} dimensions`,
        );
    }
    const sql = `INSERT INTO vectors (id, namespace, norm, metadata, vec) VALUES (?, ?, ?, ?, ?)
      ON CONFLICT (id) DO ${
        overwrite
          ? "UPDATE SET namespace = excluded.namespace, norm = excluded.norm, metadata = excluded.metadata, vec = excluded.vec"
          : "NOTHING"
      }`;
    this.ctx.storage.transactionSync(() => {
      if (this.dimensions === 0 && dims > 0) this.setMeta("dimensions", String(dims));
      for (const r of rows) this.sql.exec(sql, r.id, r.namespace, r.norm, r.metadata, r.vec);
      this.countMutation();
    });
    this.dimensions = dims;
    return { mutationId: crypto.randomUUID() };
  }

  /**
   * The topK vectors closest to `vector` by cosine similarity, best first (ties by id), among
   * those in `namespace` (all namespaces when absent) that match `filter`.
   */
  async query(
    vector: VectorFloatArray | number[],
    options: VectorizeQueryOptions = {},
  ): Promise<VectorizeMatches> {
    const { topK = LIMITS.defaultTopK, returnValues = false, namespace, filter } = options;
    const level = metadataLevel(options.returnMetadata);
    const max = returnValues || level === "all" ? LIMITS.maxTopKWithData : LIMITS.maxTopK;
    if (!Number.isInteger(topK) || topK < 1 || topK > max)
      throw new Error(
        `topK must be an integer from 1 to ${max} ` +
          `(${LIMITS.maxTopKWithData} with returnValues or returnMetadata "all"), got ${topK}`,
      );
    const q = toFloat32(vector, "query vector");
    if (this.dimensions === 0) return { matches: [], count: 0 };
    if (q.length !== this.dimensions)
      throw new Error(
        `query vector has ${q.length} dimensions; the index has ${this.dimensions} dimensions`,
      );

    const where: string[] = [];
    const params: SqlValue[] = [];
    if (namespace !== undefined) {
      where.push("namespace = ?");
      params.push(namespace);
    }
    if (filter !== undefined) {
      const c = compileFilter(filter, this.metadataIndexes);
      where.push(c.sql);
      params.push(...c.params);
    }
    const qNorm = norm(q);
    const top = new TopK(topK);
    const cursor = this.sql.exec(
      `SELECT id, namespace, norm, vec FROM vectors${where.length ? ` WHERE ${where.join(" AND ")}` : ""}`,
      ...params,
    );
    for (const row of cursor.raw()) {
      const denom = qNorm * (row[2] as number);
      // A zero vector has no direction: it scores 0 rather than NaN, so it sorts predictably.
      const score = denom > 0 ? dot(q, new Float32Array(row[3] as ArrayBuffer)) / denom : 0;
      top.push(row[0] as string, score, row[1] as string | null);
    }

    const matches: VectorizeMatch[] = top.items.map(({ id, score, namespace: ns }) =>
      ns === null ? { id, score } : { id, score, namespace: ns },
    );
    if ((returnValues || level !== "none") && matches.length > 0) {
      const rows = this.rowsByIds(matches.map((m) => m.id));
      for (const m of matches) {
        const row = rows.get(m.id);
        if (!row) continue;
        if (returnValues) m.values = Array.from(new Float32Array(row.vec));
        if (level === "all") m.metadata = parseMetadata(row.metadata) ?? {};
        if (level === "indexed")
          m.metadata = pickIndexed(parseMetadata(row.metadata), this.metadataIndexes);
      }
    }
    return { matches, count: matches.length };
  }

  /** The stored vectors with these ids, in the order asked; unknown ids are left out. */
  async getByIds(ids: string[]): Promise<VectorizeVector[]> {
    const rows = this.rowsByIds(checkIds(ids));
    const out: VectorizeVector[] = [];
    for (const id of new Set(ids)) {
      const row = rows.get(id);
      if (!row) continue;
      const v: VectorizeVector = { id, values: Array.from(new Float32Array(row.vec)) };
      if (row.namespace !== null) v.namespace = row.namespace;
      const metadata = parseMetadata(row.metadata);
      if (metadata) v.metadata = metadata;
      out.push(v);
    }
    return out;
  }

  /** Removes the vectors with these ids; unknown ids are ignored. */
  async deleteByIds(ids: string[]): Promise<VectorizeAsyncMutation> {
    checkIds(ids);
    this.ctx.storage.transactionSync(() => {
      // One bound JSON array: DO SQLite takes at most 100 bound parameters per statement.
      this.sql.exec(
        "DELETE FROM vectors WHERE id IN (SELECT value FROM json_each(?))",
        JSON.stringify(ids),
      );
      this.countMutation();
    });
    return { mutationId: crypto.randomUUID() };
  }

  /** Vector count and dimensions (0 until configured or first written). */
  async describe(): Promise<VectorizeIndexInfo> {
    const { n } = this.sql.exec<{ n: number }>("SELECT count(*) AS n FROM vectors").one();
    return {
      vectorCount: n,
      dimensions: this.dimensions,
      processedUpToDatetime: Number(this.meta("mutated_at") ?? 0),
      processedUpToMutation: Number(this.meta("mutations") ?? 0),
    };
  }

  private rowsByIds(ids: string[]): Map<string, StoredRow> {
    const out = new Map<string, StoredRow>();
    if (ids.length === 0) return out;
    const cursor = this.sql.exec<StoredRow & { id: string }>(
      "SELECT id, namespace, metadata, vec FROM vectors WHERE id IN (SELECT value FROM json_each(?))",
      JSON.stringify(ids),
    );
    for (const { id, ...rest } of cursor) out.set(id, rest);
    return out;
  }

  private countMutation(): void {
    this.setMeta("mutations", String(Number(this.meta("mutations") ?? 0) + 1));
    this.setMeta("mutated_at", String(Date.now()));
  }

  private meta(key: string): string | undefined {
    return this.sql
      .exec<{ value: string }>("SELECT value FROM meta WHERE key = ?", key)
      .toArray()[0]?.value;
  }

  private setMeta(key: string, value: string): void {
    this.sql.exec("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", key, value);
  }
}

function byteLength(s: string): number {
  return utf8.encode(s).byteLength;
}

function checkIds(ids: string[]): string[] {
  if (!Array.isArray(ids) || ids.some((id) => typeof id !== "string"))
    throw new Error("ids must be an array of strings");
  return ids;
}

/** Copies values into a float32 array of their own (the stored form) and checks them. */
function toFloat32(values: VectorFloatArray | number[], what: string): Float32Array {
  if (!Array.isArray(values) && !(values instanceof Float32Array || values instanceof Float64Array))
    throw new Error(`${what} must be an array of numbers`);
  const v = new Float32Array(values);
  for (let i = 0; i < v.length; i++) {
    if (!Number.isFinite(v[i])) throw new Error(`${what} has a non-finite value at ${i}`);
  }
  return v;
}

function prepare(v: VectorizeVector): Prepared {
  if (typeof v?.id !== "string" || v.id.length === 0)
    throw new Error("every vector needs a non-empty string id");
  if (byteLength(v.id) > LIMITS.maxIdBytes)
    throw new Error(`vector id "${v.id}" is longer than ${LIMITS.maxIdBytes} bytes`);
  const values = toFloat32(v.values, `vector "${v.id}"`);
  const namespace = v.namespace ?? null;
  if (namespace !== null && byteLength(namespace) > LIMITS.maxNamespaceBytes)
    throw new Error(`namespace "${namespace}" is longer than ${LIMITS.maxNamespaceBytes} bytes`);
  const metadata = v.metadata === undefined ? null : JSON.stringify(v.metadata);
  if (metadata !== null && byteLength(metadata) > LIMITS.maxMetadataBytes)
    throw new Error(`metadata of "${v.id}" is over ${LIMITS.maxMetadataBytes} bytes`);
  return {
    id: v.id,
    namespace,
    norm: norm(values),
    metadata,
    vec: values.buffer as ArrayBuffer,
    length: values.length,
  };
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
    if (typeof value === "string") value = truncateUtf8(value, LIMITS.indexedStringBytes);
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
