import type { PoolClient } from "@neondatabase/serverless";
import { type PostgresEnv, postgresPool } from "../db/postgres.js";
import { configForName, type LocalIndexConfig, localIndexName } from "./config.js";
import { checkKey } from "./filter.js";
import {
  parseVector,
  type SearchRow,
  searchSettings,
  searchStatement,
  vectorText,
} from "./pgvector-search.js";
import { compilePostgresFilter, jsonbKeyExpression } from "./postgres-filter.js";
import type { VectorIndex } from "./types.js";
import {
  checkDimensions,
  checkIds,
  checkMetadataIndexCount,
  type Prepared,
  prepareBatch,
  queryOptions,
  queryVector,
  returnedMetadata,
  toMatch,
  vectorsByIds,
} from "./vectorize-rules.js";

/**
 * A Vectorize-shaped index in Postgres with pgvector (`VECTOR_BACKEND = "pgvector"`), with the
 * semantics of the `VectorIndex` interface and the local index's answers: the same checks and
 * messages, the same strictly typed filters (postgres-filter.ts), scores as cosine similarity
 * best first with ties by id, mutations applied before the call returns and counted in
 * `describe().processedUpToMutation`.
 *
 * Storage: one table per index (per model), created on first use in each isolate: `id text`
 * primary key (ids are unique across namespaces), `namespace`, `embedding vector(d)` and
 * `metadata jsonb`, with an HNSW index (`vector_cosine_ops`), a namespace index and an
 * expression index on `metadata -> key` per metadata index. A registry table holds each index's
 * dimensions, metadata indexes (the list only grows, as the local index's does) and mutation
 * count. Needs pgvector 0.8 or later (iterative index scans).
 *
 * Connections: in workerd a socket belongs to the request or Durable Object that opened it.
 * Tried in workerd (test/vector/pgvector.test.ts keeps the part that must hold): a pool opened
 * in one Durable Object event still works in that object's later events, also after an idle
 * pause; but the same pool used from another Durable Object, or from a Worker request, fails
 * inside the driver ("Cannot perform I/O on behalf of a different Durable Object") and the query
 * never settles, and the hung client then keeps `pool.end()` from finishing. Every Durable Object
 * of an isolate gets the same `env` object, so nothing a handle sees tells its owner apart, and
 * an open socket would keep the Dispatcher (which stores results) from hibernating. So no pool
 * outlives a call: each call opens a pool, uses one connection of it and ends it before it
 * returns (3 to 6 ms of connection set-up against the local Postgres, against 1 ms for a query
 * on an open one), and a handle works from anywhere, any number of times.
 *
 * Search: one statement (pgvector-search.ts): the HNSW index with iterative scans, or what
 * Postgres plans as cheaper, and when that comes back short of topK, an exact pass over the
 * matching rows; so a result holds min(topK, matches) vectors, all matching.
 *
 * Where it differs from the local index: stored metadata comes back with jsonb's key order,
 * and metadata may not hold U+0000 or unpaired surrogates (refused with an error); ids and
 * namespaces may not hold U+0000; scores are pgvector's, summed in float32 (equal to the local
 * index's to about 1e-6); ties order ids by code point rather than by UTF-16 unit.
 */
export function pgvectorIndex(
  env: PostgresEnv,
  name: string,
  config: LocalIndexConfig | undefined,
): VectorIndex {
  return new PgvectorIndex(env, name, config && checkConfig(config));
}

/** The pgvector index of `model`, configured like its Vectorize index (config.ts). */
export function modelPgvectorIndex(env: Env, model: string): VectorIndex {
  return pgvectorIndex(env, model, configForName(localIndexName(model), env));
}

/**
 * The table of the index `name`: `vectors_` and a readable slug of the name, then a hash of the
 * name so that names which slug alike ("use-lite", "use_lite") never share a table. At most 49
 * characters, leaving room for index names within Postgres's 63.
 */
export function pgvectorTable(name: string): string {
  const slug = name
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, "_")
    .slice(0, 32);
  return `vectors_${slug}_${fnv1a(name)}`;
}

/** The table that lists every index, its dimensions, metadata indexes and mutations. */
const REGISTRY = "p2pa_vector_indexes";

/**
 * Indexes whose schema this isolate has already checked (by database and name), with their
 * dimensions and metadata indexes. Plain values only: a promise shared between requests would
 * tie one request to another's I/O.
 */
const ready = new Map<string, { dimensions: number; indexes: readonly string[] }>();

interface Config {
  dimensions: number;
  metadataIndexes: string[];
}

class PgvectorIndex implements VectorIndex {
  private readonly table: string;

  constructor(
    private readonly env: PostgresEnv,
    private readonly name: string,
    private readonly config: Config | undefined,
  ) {
    this.table = `"${pgvectorTable(name)}"`;
  }

  async insert(vectors: VectorizeVector[]): Promise<VectorizeAsyncMutation> {
    return this.write(vectors, false);
  }

  async upsert(vectors: VectorizeVector[]): Promise<VectorizeAsyncMutation> {
    return this.write(vectors, true);
  }

  /**
   * Writes a batch in one statement. Insert keeps a stored id and the first of a batch; upsert
   * replaces it and the last of a batch wins (Postgres refuses to update one row twice in a
   * statement, so the batch is reduced first).
   */
  private async write(
    vectors: VectorizeVector[],
    overwrite: boolean,
  ): Promise<VectorizeAsyncMutation> {
    const { dimensions } = this.requireConfig();
    const byId = new Map<string, Prepared>();
    for (const row of prepareBatch(vectors, dimensions)) {
      checkStorable(row);
      if (overwrite || !byId.has(row.id)) byId.set(row.id, row);
    }
    const rows = [...byId.values()];
    await this.session(async (db) => {
      // The count moves in the same statement, so it never misses a write; a data-modifying
      // WITH that nothing reads runs after the main statement, so its row lock is held briefly.
      await db.query(
        `WITH counted AS (${this.countMutation("$5", "$6")})
        INSERT INTO ${this.table} (id, namespace, embedding, metadata)
        SELECT id, namespace, embedding::vector, metadata::jsonb
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
          AS v (id, namespace, embedding, metadata)
        ON CONFLICT (id) DO ${
          overwrite
            ? "UPDATE SET namespace = excluded.namespace, embedding = excluded.embedding, metadata = excluded.metadata"
            : "NOTHING"
        }`,
        [
          rows.map((r) => r.id),
          rows.map((r) => r.namespace),
          rows.map((r) => vectorText(r.values)),
          rows.map((r) => r.metadata),
          Date.now(),
          this.name,
        ],
      );
    });
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
    const { dimensions } = this.requireConfig();
    const { topK, returnValues, level } = queryOptions(options);
    const q = queryVector(vector, dimensions);
    const { namespace, filter } = options;
    // A filter that cannot run costs nothing once this isolate knows the metadata indexes.
    const known = this.knownIndexes();
    if (filter !== undefined && known) compilePostgresFilter(filter, known);

    const matches = await this.session(async (db, indexed) => {
      const { sql, params } = searchStatement({
        table: this.table,
        query: q,
        topK,
        namespace,
        filter,
        indexed,
        withMetadata: level !== "none",
        withValues: returnValues,
      });
      await db.query(`BEGIN; ${searchSettings(topK)}`);
      const { rows } = await db.query<SearchRow>(sql, params);
      await db.query("COMMIT");
      return rows.map((r) => {
        const m = toMatch(r.id, r.score, r.namespace);
        if (returnValues) m.values = parseVector(r.embedding ?? "[]");
        if (level !== "none") m.metadata = returnedMetadata(level, r.metadata ?? null, indexed);
        return m;
      });
    });
    return { matches, count: matches.length };
  }

  /** The stored vectors with these ids, in the order asked; unknown ids are left out. */
  async getByIds(ids: string[]): Promise<VectorizeVector[]> {
    this.requireConfig();
    checkIds(ids);
    if (ids.length === 0) return [];
    const stored = await this.session(async (db) => {
      const { rows } = await db.query<{
        id: string;
        namespace: string | null;
        metadata: string | null;
        embedding: string;
      }>(
        `SELECT id, namespace, metadata::text AS metadata, embedding::text AS embedding
        FROM ${this.table} WHERE id = ANY($1::text[])`,
        [ids.filter((id) => !id.includes("\u0000"))],
      );
      return new Map(
        rows.map((r) => [
          r.id,
          { namespace: r.namespace, metadata: r.metadata, values: parseVector(r.embedding) },
        ]),
      );
    });
    return vectorsByIds(ids, stored);
  }

  /** Removes the vectors with these ids; unknown ids are ignored. */
  async deleteByIds(ids: string[]): Promise<VectorizeAsyncMutation> {
    this.requireConfig();
    checkIds(ids);
    await this.session(async (db) => {
      await db.query(
        `WITH counted AS (${this.countMutation("$2", "$3")})
        DELETE FROM ${this.table} WHERE id = ANY($1::text[])`,
        [ids.filter((id) => !id.includes("\u0000")), Date.now(), this.name],
      );
    });
    return { mutationId: crypto.randomUUID() };
  }

  /** Vector count, dimensions and the mutations applied so far. */
  async describe(): Promise<VectorizeIndexInfo> {
    this.requireConfig();
    const row = await this.session(async (db) => {
      const { rows } = await db.query<{
        n: string;
        dimensions: number;
        mutations: string;
        mutated_at: string;
      }>(
        `SELECT (SELECT count(*) FROM ${this.table}) AS n, dimensions, mutations, mutated_at
        FROM ${REGISTRY} WHERE name = $1`,
        [this.name],
      );
      return rows[0];
    });
    if (!row) throw new Error(`vector index "${this.name}" is missing from ${REGISTRY}`);
    return {
      vectorCount: Number(row.n),
      dimensions: row.dimensions,
      processedUpToDatetime: Number(row.mutated_at),
      processedUpToMutation: Number(row.mutations),
    };
  }

  private countMutation(at: string, name: string): string {
    return `UPDATE ${REGISTRY} SET mutations = mutations + 1,
      mutated_at = GREATEST(mutated_at, ${at}::bigint) WHERE name = ${name}`;
  }

  private requireConfig(): Config {
    if (!this.config)
      throw new Error(`no vector index is configured for "${this.name}": it is not a known model`);
    return this.config;
  }

  private readyKey(): string {
    return JSON.stringify([this.env.DATABASE_URL, this.name]);
  }

  /**
   * The metadata indexes this isolate knows the index has, when they include every one this
   * handle is configured with and the dimensions agree; otherwise undefined (the schema must be
   * checked first).
   */
  private knownIndexes(): readonly string[] | undefined {
    const { dimensions, metadataIndexes } = this.requireConfig();
    const known = ready.get(this.readyKey());
    if (!known || known.dimensions !== dimensions) return undefined;
    return metadataIndexes.every((k) => known.indexes.includes(k)) ? known.indexes : undefined;
  }

  /**
   * Runs `work` on one connection of a pool opened for this call alone, after making sure the
   * index's tables exist, and ends the pool before returning (see the class comment for why no
   * pool outlives a call). A transaction left open by a failed statement is rolled back.
   */
  private async session<T>(
    work: (db: PoolClient, indexed: readonly string[]) => Promise<T>,
  ): Promise<T> {
    const pool = postgresPool(this.env);
    try {
      const db = await pool.connect();
      try {
        const indexed = await this.ensureSchema(db);
        return await work(db, indexed);
      } catch (e) {
        await db.query("ROLLBACK").catch(() => undefined);
        throw e;
      } finally {
        db.release();
      }
    } finally {
      await pool.end().catch(() => undefined);
    }
  }

  /**
   * Creates the registry, this index's table and its indexes if missing, once per isolate, under
   * an advisory lock so that isolates starting together do not race on the DDL. Returns the
   * metadata indexes: those already registered, then any new ones configured.
   */
  private async ensureSchema(db: PoolClient): Promise<readonly string[]> {
    const known = this.knownIndexes();
    if (known) return known;
    const { dimensions, metadataIndexes } = this.requireConfig();
    await db.query(`BEGIN;
      SELECT pg_advisory_xact_lock(hashtext('${REGISTRY}'));
      CREATE EXTENSION IF NOT EXISTS vector;
      CREATE TABLE IF NOT EXISTS ${REGISTRY} (
        name text PRIMARY KEY, table_name text NOT NULL, dimensions integer NOT NULL,
        metadata_indexes jsonb NOT NULL, mutations bigint NOT NULL DEFAULT 0,
        mutated_at bigint NOT NULL DEFAULT 0
      )`);
    const { rows } = await db.query<{ dimensions: number; metadata_indexes: string[] }>(
      `SELECT dimensions, metadata_indexes FROM ${REGISTRY} WHERE name = $1`,
      [this.name],
    );
    const stored = rows[0];
    if (stored && stored.dimensions !== dimensions)
      throw new Error(
        `index "${this.name}" has ${stored.dimensions} dimensions; it cannot change to ${dimensions}`,
      );
    const keys = [...new Set([...(stored?.metadata_indexes ?? []), ...metadataIndexes])];
    checkMetadataIndexCount(keys);
    const table = pgvectorTable(this.name);
    await db.query(
      `INSERT INTO ${REGISTRY} (name, table_name, dimensions, metadata_indexes)
      VALUES ($1, $2, $3, $4::jsonb)
      ON CONFLICT (name) DO UPDATE SET metadata_indexes = excluded.metadata_indexes`,
      [this.name, table, dimensions, JSON.stringify(keys)],
    );
    await db.query(`
      CREATE TABLE IF NOT EXISTS "${table}" (
        id text PRIMARY KEY, namespace text, embedding vector(${dimensions}) NOT NULL,
        metadata jsonb
      );
      CREATE INDEX IF NOT EXISTS "${table}_ns" ON "${table}" (namespace);
      CREATE INDEX IF NOT EXISTS "${table}_hnsw" ON "${table}"
        USING hnsw (embedding vector_cosine_ops);
      ${keys
        .map(
          (k) =>
            `CREATE INDEX IF NOT EXISTS "${table}_m${fnv1a(k)}" ON "${table}" (${jsonbKeyExpression(k)});`,
        )
        .join("\n")}
      COMMIT`);
    ready.set(this.readyKey(), { dimensions, indexes: keys });
    return keys;
  }
}

function checkConfig({ dimensions, metadataIndexes = [] }: LocalIndexConfig): Config {
  checkDimensions(dimensions);
  for (const key of metadataIndexes) checkKey(key);
  const keys = [...new Set(metadataIndexes)];
  checkMetadataIndexCount(keys);
  return { dimensions, metadataIndexes: keys };
}

/**
 * JSON.stringify writes U+0000 and unpaired surrogates as `\u` escapes (and leaves paired ones
 * as they are), and jsonb refuses both: an escape after an odd run of backslashes is one.
 */
const UNSTORABLE_ESCAPE = /(?<!\\)(?:\\\\)*\\u(?:0000|d[89a-f][0-9a-f]{2})/;

/** Refuses, with a reason, what Postgres cannot store (text never holds U+0000). */
function checkStorable(row: Prepared): void {
  if (row.id.includes("\u0000"))
    throw new Error(`vector id "${row.id}" holds U+0000, which Postgres cannot store`);
  if (row.namespace?.includes("\u0000"))
    throw new Error(`namespace of "${row.id}" holds U+0000, which Postgres cannot store`);
  if (row.metadata !== null && UNSTORABLE_ESCAPE.test(row.metadata))
    throw new Error(
      `metadata of "${row.id}" holds U+0000 or an unpaired surrogate, which Postgres cannot store`,
    );
}

/** 32-bit FNV-1a of a string's UTF-16 units, as 8 hex digits: short, stable names. */
function fnv1a(s: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0).toString(16).padStart(8, "0");
}
