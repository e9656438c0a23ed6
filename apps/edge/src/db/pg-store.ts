import type { ApiKey, Collection, IngestReport, Job, Quotas } from "@p2pa/shared";
import { and, asc, desc, eq, isNull, ne, type SQL, sql } from "drizzle-orm";
import { hex } from "../lib/crypto.js";
import { type PgClient, type PgDatabase, pgError } from "./pg-client.js";
import { pgKeywordFilter } from "./pg-filter.js";
import {
  appendedCounters,
  cacheHits,
  chunkColumns,
  chunkPageWhere,
  credentialColumns,
  credentialState,
  dayAgo,
  documentListWhere,
  idempotentJob,
  jobListWhere,
  newChunkRows,
  newCredentialRow,
  newDocumentRows,
  newJobRow,
  newOriginalRows,
  noUsage,
  patchedSettings,
  pendingKeys,
  type RecordGroups,
  removedCounters,
  StoreBase,
  settledOnArrival,
  settledStatus,
  stalledVersion,
  toApiKey,
  toCredential,
  toJob,
  toTenantSettings,
  undoneChunks,
  vectorBytes,
  vectorOfHex,
  withCounts,
} from "./rows.js";
import { SHARED_ORIGINAL } from "./schema.js";
import * as schema from "./schema-pg.js";
import type {
  CacheEntry,
  ChunkUsage,
  Credential,
  DocumentListFilter,
  JobListFilter,
  KeywordQuery,
  LiveVersion,
  MetadataStore,
  NewChunk,
  NewCredential,
  NewDocument,
  NewDocuments,
  NewJob,
  TenantSettings,
  TextSealer,
  VersionRow,
  WorkerInfo,
} from "./store.js";

/**
 * Bytes of JSON per many-row statement (documents, chunks, keyword entries, originals, cache
 * entries): Postgres takes far more, this keeps each message and its parse modest.
 */
const STATEMENT_BYTES = 2_000_000;

/** A text[] parameter. */
function texts(values: readonly string[]): SQL {
  return sql`${sql.param([...values])}::text[]`;
}

/** An int[] parameter. */
function ints(values: readonly number[]): SQL {
  return sql`${sql.param([...values])}::int[]`;
}

/** `rows` in groups of at most STATEMENT_BYTES of JSON, each group as one JSON array text. */
function jsonGroups(rows: readonly unknown[]): string[] {
  const out: string[] = [];
  let group: string[] = [];
  let bytes = 0;
  for (const row of rows) {
    const json = JSON.stringify(row);
    if (group.length > 0 && bytes + json.length > STATEMENT_BYTES) {
      out.push(`[${group.join(",")}]`);
      group = [];
      bytes = 0;
    }
    group.push(json);
    bytes += json.length + 1;
  }
  if (group.length > 0) out.push(`[${group.join(",")}]`);
  return out;
}

/** The terms of an FTS5 expression that is an OR of quoted terms (search/terms.ts). */
function matchTerms(match: string): string[] {
  if (match.trim() === "") return [];
  if (!/^"[^"]*"( OR "[^"]*")*$/.test(match.trim()))
    throw new Error('keyword match must be an OR of quoted terms ("a" OR "b")');
  // FTS5's ascii tokenizer folds ASCII case.
  return [...match.matchAll(/"([^"]*)"/g)].map((m) => (m[1] as string).toLowerCase());
}

/** A job ends once it takes no more documents, its chunks are settled and so are its versions. */
const JOB_SETTLED = sql`NOT accepting AND chunks_done + chunks_failed >= chunks_total
  AND NOT EXISTS (SELECT 1 FROM documents WHERE documents.job_id = jobs.id AND documents.state = 'pending')`;

/** The metadata a keyword search filters on: FILTER_METADATA's, as jsonb. */
const PG_FILTER_METADATA = `(coalesce(d.metadata::jsonb, '{}'::jsonb) || jsonb_build_object('jobId', c.job_id, 'documentId', c.document_id, 'collection', j.collection))`;

/** The columns of a VersionRow, from documents `d` joined to jobs `j`. */
const VERSION_COLUMNS = sql`d.job_id AS "jobId", d.seq, d.id, d.tenant, d.collection,
  d.doc_key AS "docKey", d.state, d.version, d.content_hash AS "contentHash", d.raw_key AS "rawKey",
  d.metadata, d.chars, d.chunks, d.error, d.created_at AS "createdAt", d.pruned_at AS "prunedAt",
  j.model, j.status AS "jobStatus", NOT ${undoneChunks("d")} AS "complete"`;

/**
 * Postgres implementation of the metadata store (drizzle-orm over Neon's serverless driver),
 * giving the answers D1Store gives to the same calls. Where D1Store sends a batch (one
 * transaction), this runs one transaction; where D1's single writer made an order of reads and
 * writes safe, the job's row is locked first (`lockJobs`), so that recording results, settling
 * versions and changing a job's documents take their turns per job as they do on D1.
 */
export class PgStore extends StoreBase implements MetadataStore {
  /**
   * `pg` holds the connections (see pg-client.ts for how long they live); `sealer` seals and
   * opens chunk text (see StoreBase).
   */
  constructor(
    private readonly pg: PgClient,
    sealer?: TextSealer,
  ) {
    super(sealer);
  }

  /** Ends the store's connections now (they also end on their own once idle). */
  close(): Promise<void> {
    return this.pg.close();
  }

  private run<T>(fn: (db: PgDatabase) => Promise<T>): Promise<T> {
    return this.pg.run(fn);
  }

  private async rows<T>(query: SQL, db?: PgDatabase): Promise<T[]> {
    const exec = async (d: PgDatabase) => (await d.execute(query)).rows as T[];
    return db ? exec(db) : this.run(exec);
  }

  /** Locks the jobs' rows until the transaction ends, in one order (so two lockers never deadlock). */
  private async lockJobs(tx: PgDatabase, jobIds: readonly string[]): Promise<void> {
    const ids = [...new Set(jobIds)].sort();
    if (ids.length === 0) return;
    await tx.execute(sql`SELECT id FROM jobs WHERE id = ANY(${texts(ids)}) ORDER BY id FOR UPDATE`);
  }

  async ping(): Promise<boolean> {
    try {
      const [r] = await this.rows<{ ok: number }>(sql`SELECT 1 AS ok`);
      return r?.ok === 1;
    } catch {
      return false;
    }
  }

  // Credentials and tenant settings.

  async findCredential(hash: string): Promise<Credential | null> {
    const c = schema.credentials;
    const [row] = await this.run((db) =>
      db
        .select(credentialColumns(c))
        .from(c)
        .where(and(eq(c.hash, hash), isNull(c.revokedAt)))
        .limit(1),
    );
    return row ? toCredential(row) : null;
  }

  async createCredential(c: NewCredential): Promise<void> {
    await this.run((db) => db.insert(schema.credentials).values(newCredentialRow(c)));
  }

  async listCredentials(tenant: string): Promise<ApiKey[]> {
    const c = schema.credentials;
    const rows = await this.run((db) =>
      db.select().from(c).where(eq(c.tenant, tenant)).orderBy(desc(c.createdAt), desc(c.id)),
    );
    return rows.map(toApiKey);
  }

  async getCredential(tenant: string, id: string): Promise<ApiKey | null> {
    const c = schema.credentials;
    const [r] = await this.run((db) =>
      db
        .select()
        .from(c)
        .where(and(eq(c.tenant, tenant), eq(c.id, id)))
        .limit(1),
    );
    return r ? toApiKey(r) : null;
  }

  async updateCredential(tenant: string, id: string, patch: { label?: string; quotas?: Quotas }) {
    const c = schema.credentials;
    const set: Partial<typeof c.$inferInsert> = {};
    if (patch.label !== undefined) set.name = patch.label;
    if (patch.quotas !== undefined) set.quotas = patch.quotas;
    if (Object.keys(set).length === 0) return (await this.getCredential(tenant, id)) !== null;
    const changed = await this.run((db) =>
      db
        .update(c)
        .set(set)
        .where(and(eq(c.tenant, tenant), eq(c.id, id), isNull(c.revokedAt)))
        .returning({ id: c.id }),
    );
    return changed.length > 0;
  }

  async revokeTenantCredential(tenant: string, id: string): Promise<boolean> {
    const c = schema.credentials;
    const changed = await this.run((db) =>
      db
        .update(c)
        .set({ revokedAt: new Date().toISOString() })
        .where(and(eq(c.tenant, tenant), eq(c.id, id), ne(c.kind, "admin"), isNull(c.revokedAt)))
        .returning({ id: c.id }),
    );
    return changed.length > 0;
  }

  async touchCredential(id: string): Promise<void> {
    const c = schema.credentials;
    await this.run((db) =>
      db.update(c).set({ lastUsedAt: new Date().toISOString() }).where(eq(c.id, id)),
    );
  }

  async quarantineCredential(id: string, reason: string): Promise<void> {
    const c = schema.credentials;
    await this.run((db) =>
      db
        .update(c)
        .set({ quarantinedAt: new Date().toISOString(), quarantineReason: reason })
        .where(and(eq(c.id, id), isNull(c.quarantinedAt))),
    );
  }

  async revokeCredential(id: string, kind: Credential["kind"]): Promise<boolean> {
    const c = schema.credentials;
    const changed = await this.run((db) =>
      db
        .update(c)
        .set({ revokedAt: new Date().toISOString() })
        .where(and(eq(c.id, id), eq(c.kind, kind), isNull(c.revokedAt)))
        .returning({ id: c.id }),
    );
    return changed.length > 0;
  }

  async credentialStates(
    ids: string[],
  ): Promise<Map<string, "active" | "revoked" | "quarantined">> {
    const out = new Map<string, "active" | "revoked" | "quarantined">();
    if (ids.length === 0) return out;
    const c = schema.credentials;
    const rows = await this.run((db) =>
      db
        .select({
          id: c.id,
          revokedAt: c.revokedAt,
          quarantinedAt: c.quarantinedAt,
          expiresAt: c.expiresAt,
        })
        .from(c)
        .where(sql`${c.id} = ANY(${texts(ids)})`),
    );
    const now = new Date().toISOString();
    for (const r of rows) out.set(r.id, credentialState(r, now));
    return out;
  }

  async tenantSettings(tenant: string): Promise<TenantSettings | null> {
    const t = schema.tenantSettings;
    const [r] = await this.run((db) => db.select().from(t).where(eq(t.tenant, tenant)).limit(1));
    return r ? toTenantSettings(r) : null;
  }

  async putTenantSettings(tenant: string, patch: Partial<Omit<TenantSettings, "updatedAt">>) {
    const next = patchedSettings(await this.tenantSettings(tenant), patch);
    const t = schema.tenantSettings;
    await this.run((db) =>
      db
        .insert(t)
        .values({ tenant, ...next })
        .onConflictDoUpdate({ target: t.tenant, set: next }),
    );
    return next;
  }

  async chunkUsage(tenant: string, keyId: string): Promise<ChunkUsage> {
    const since = dayAgo();
    const [r] = await this.rows<ChunkUsage>(sql`SELECT
        coalesce(sum(CASE WHEN created_at > ${since} THEN chunks_total END), 0)::float8 AS "tenantLast24h",
        coalesce(sum(CASE WHEN created_at > ${since} AND created_by = ${keyId} THEN chunks_total END), 0)::float8 AS "keyLast24h",
        min(CASE WHEN created_at > ${since} THEN created_at END) AS "tenantOldestAt",
        min(CASE WHEN created_at > ${since} AND created_by = ${keyId} THEN created_at END) AS "keyOldestAt",
        coalesce(sum(CASE WHEN status IN ('queued', 'running') THEN chunks_total - chunks_failed ELSE chunks_done END - chunks_pruned), 0)::float8 AS "storedVectors"
      FROM jobs WHERE tenant = ${tenant}`);
    return r ?? noUsage();
  }

  async chunksByKey(tenant: string): Promise<Map<string, number>> {
    const since = dayAgo();
    const rows = await this.rows<{ key: string | null; n: number }>(sql`
      SELECT created_by AS key, sum(chunks_total)::float8 AS n FROM jobs
      WHERE tenant = ${tenant} AND created_at > ${since} GROUP BY created_by`);
    return new Map(rows.flatMap((r) => (r.key ? [[r.key, r.n] as const] : [])));
  }

  async tenantJobs(tenant: string) {
    const j = schema.jobs;
    return this.run((db) =>
      db.select({ id: j.id, model: j.model }).from(j).where(eq(j.tenant, tenant)),
    );
  }

  async eraseTenant(tenant: string): Promise<void> {
    await this.pg.transaction(async (tx) => {
      await tx.delete(schema.credentials).where(eq(schema.credentials.tenant, tenant));
      await tx.delete(schema.tenantSettings).where(eq(schema.tenantSettings.tenant, tenant));
      await tx.delete(schema.embeddingCache).where(eq(schema.embeddingCache.tenant, tenant));
      await tx.delete(schema.originals).where(eq(schema.originals.tenant, tenant));
    });
  }

  // Jobs: creating, appending, closing, settling.

  protected override async jobInsert(input: NewJob) {
    const jobRow = newJobRow(input);
    const sealed = await this.sealChunks(input.tenant, input.chunks);
    // One transaction: the job appears with all its chunks or not at all.
    return () =>
      this.pg.transaction(async (tx) => {
        await tx.insert(schema.jobs).values(jobRow);
        await this.insertDocuments(tx, input.id, input.tenant, input.collection, input, sealed);
        await this.settle(tx, [input.id]);
        const [row] = await tx.select().from(schema.jobs).where(eq(schema.jobs.id, input.id));
        if (!row) throw new Error(`job ${input.id} vanished after insert`);
        return toJob(row);
      });
  }

  protected override isUniqueViolation(err: unknown): boolean {
    return pgError(err)?.code === "23505";
  }

  /** The unique indexes on current and on pending versions (documents_current, documents_pending). */
  protected override isVersionRace(err: unknown): boolean {
    const e = pgError(err);
    return e?.code === "23505" && /^documents_(current|pending)$/.test(e.constraint ?? "");
  }

  async reserveSeqs(tenant: string, jobId: string, count: number): Promise<number | null> {
    const j = schema.jobs;
    const [row] = await this.run((db) =>
      db
        .update(j)
        .set({ nextSeq: sql`greatest(${j.nextSeq}, ${j.documents}) + ${count}` })
        .where(and(eq(j.id, jobId), eq(j.tenant, tenant), eq(j.accepting, true)))
        .returning({ next: j.nextSeq }),
    );
    return row ? row.next - count : null;
  }

  async appendDocuments(input: NewDocuments): Promise<boolean> {
    const j = schema.jobs;
    const where = and(eq(j.id, input.jobId), eq(j.tenant, input.tenant));
    const [open] = await this.run((db) =>
      db.select({ accepting: j.accepting }).from(j).where(where).limit(1),
    );
    if (!open?.accepting) return false;
    const sealed = await this.sealChunks(input.tenant, input.chunks);
    try {
      return await this.pg.transaction(async (tx) => {
        // Under the job's lock: a job closed since the read above takes nothing.
        const [job] = await tx
          .select({ collection: j.collection, accepting: j.accepting })
          .from(j)
          .where(where)
          .for("update");
        if (!job?.accepting) return false;
        await tx.update(j).set(appendedCounters(input)).where(eq(j.id, input.jobId));
        await this.insertDocuments(tx, input.jobId, input.tenant, job.collection, input, sealed);
        return true;
      });
    } catch (err) {
      throw this.raced(err);
    }
  }

  async closeJob(tenant: string, id: string): Promise<boolean> {
    const j = schema.jobs;
    return this.pg.transaction(async (tx) => {
      const closed = await tx
        .update(j)
        .set({ accepting: false })
        .where(and(eq(j.id, id), eq(j.tenant, tenant), eq(j.accepting, true)))
        .returning({ id: j.id });
      await this.settle(tx, [id]);
      return closed.length > 0;
    });
  }

  /** The jobs' status from their counters, once they have stopped taking documents. */
  private async settle(tx: PgDatabase, jobIds: readonly string[]): Promise<void> {
    await tx.execute(sql`UPDATE jobs SET
        status = ${settledStatus(JOB_SETTLED)},
        completed_at = CASE WHEN ${JOB_SETTLED} THEN ${new Date().toISOString()} ELSE completed_at END
      WHERE id = ANY(${texts(jobIds)}) AND status IN ('queued', 'running')`);
  }

  /**
   * Adds documents with their chunks (text sealed by the caller), keyword entries and cache
   * adoptions, then makes current the pending versions that are already complete (every chunk
   * from the cache): D1Store's documentInserts, as statements of the caller's transaction.
   */
  private async insertDocuments(
    tx: PgDatabase,
    jobId: string,
    tenant: string,
    collection: string,
    input: { documents: NewDocument[]; chunks: NewChunk[] },
    sealed: readonly string[],
  ): Promise<void> {
    // A new pending version supersedes one still pending from an earlier job (the newest wins).
    const pending = pendingKeys(input.documents);
    if (pending.length > 0)
      await tx.execute(sql`UPDATE documents
        SET state = 'superseded', error = 'a newer version was submitted before it was done'
        WHERE tenant = ${tenant} AND collection = ${collection} AND state = 'pending'
          AND job_id <> ${jobId} AND doc_key = ANY(${texts(pending)})`);
    for (const group of jsonGroups(
      newOriginalRows(input.documents).map((r) => ({
        key: r.key,
        media_type: r.mediaType,
        body: r.body,
      })),
    ))
      await tx.execute(sql`INSERT INTO originals (key, tenant, media_type, body)
        SELECT x.key, ${tenant}, x.media_type, x.body
        FROM json_to_recordset(${group}::json) AS x(key text, media_type text, body text)`);
    for (const group of jsonGroups(
      newDocumentRows(input).map((d) => ({
        seq: d.seq,
        id: d.id,
        doc_key: d.docKey,
        state: d.state,
        version: d.version,
        content_hash: d.contentHash,
        fingerprint: d.fingerprint,
        raw_key: d.rawKey,
        metadata: d.metadata,
        chars: d.chars,
        chunks: d.chunks,
        created_at: d.createdAt,
      })),
    ))
      await tx.execute(sql`INSERT INTO documents (job_id, seq, id, tenant, collection, doc_key,
          state, version, content_hash, fingerprint, raw_key, metadata, chars, chunks, created_at)
        SELECT ${jobId}, x.seq, x.id, ${tenant}, ${collection}, x.doc_key, x.state, x.version,
          x.content_hash, x.fingerprint, x.raw_key, x.metadata, x.chars, x.chunks, x.created_at
        FROM json_to_recordset(${group}::json) AS x(seq int, id text, doc_key text, state text,
          version int, content_hash text, fingerprint text, raw_key text, metadata json, chars int,
          chunks int, created_at text)`);
    // Two submits that read the same live versions give their new versions the same number:
    // the one written second takes the next (at the very same moment, the unique index on
    // pending versions refuses one of them).
    if (pending.length > 0)
      await tx.execute(sql`UPDATE documents n
        SET version = (SELECT max(m.version) FROM documents m WHERE m.tenant = n.tenant
          AND m.collection = n.collection AND m.doc_key = n.doc_key) + 1
        WHERE n.job_id = ${jobId} AND n.doc_key = ANY(${texts(pending)})
          AND EXISTS (SELECT 1 FROM documents o WHERE o.tenant = n.tenant
            AND o.collection = n.collection AND o.doc_key = n.doc_key AND o.version = n.version
            AND o.job_id <> n.job_id)`);
    for (const group of jsonGroups(
      newChunkRows(input.chunks, sealed).map((c) => ({
        id: c.id,
        document_id: c.documentId,
        idx: c.index,
        text: c.text,
        start: c.start,
        end: c.end,
        status: c.status,
        headings: c.headings,
        page: c.page,
        cache_key: c.cacheKey,
      })),
    ))
      await tx.execute(sql`INSERT INTO chunks (id, job_id, document_id, idx, text, start, "end",
          status, headings, page, cache_key)
        SELECT x.id, ${jobId}, x.document_id, x.idx, x.text, x.start, x."end", x.status,
          x.headings, x.page, x.cache_key
        FROM json_to_recordset(${group}::json) AS x(id text, document_id text, idx int,
          text text, start int, "end" int, status text, headings json, page int, cache_key text)`);
    await this.insertKeywords(tx, jobId, input.chunks);
    // A hit moves the cache entry to this job: it goes when the chunk that now uses it goes.
    const hits = cacheHits(input.chunks);
    if (hits.length > 0)
      await tx.execute(sql`UPDATE embedding_cache SET job_id = ${jobId}
        WHERE tenant = ${tenant} AND model = (SELECT model FROM jobs WHERE id = ${jobId})
          AND key = ANY(${texts(hits)})`);
    await this.promotion(tx, jobId, settledOnArrival(input));
  }

  /**
   * The keyword index's entries for new chunks: a keyword_rows row each, its document (terms
   * and their count) in chunk_terms, and a posting per distinct term. Terms are split as FTS5's
   * ascii tokenizer splits hex hashes separated by spaces, ASCII case folded.
   */
  private async insertKeywords(tx: PgDatabase, jobId: string, chunks: NewChunk[]): Promise<void> {
    const indexed = chunks.flatMap((c) => (c.terms ? [{ chunk_id: c.id, terms: c.terms }] : []));
    for (const group of jsonGroups(indexed))
      await tx.execute(sql`WITH input AS (
          SELECT * FROM json_to_recordset(${group}::json) AS x(chunk_id text, terms text)),
        added AS (
          INSERT INTO keyword_rows (chunk_id, job_id) SELECT chunk_id, ${jobId} FROM input
          RETURNING id, chunk_id),
        words AS (
          SELECT a.id, w.term FROM added a JOIN input i ON i.chunk_id = a.chunk_id,
            unnest(string_to_array(lower(i.terms), ' ')) AS w(term)
          WHERE w.term <> ''),
        docs AS (
          INSERT INTO chunk_terms (id, terms, tokens)
          SELECT a.id, i.terms, (SELECT count(*) FROM words w WHERE w.id = a.id)
          FROM added a JOIN input i ON i.chunk_id = a.chunk_id)
        INSERT INTO chunk_term_postings (term, row_id, tf)
        SELECT term, id, count(*) FROM words GROUP BY term, id`);
  }

  /**
   * Settles the job's pending versions among `seqs`: one whose chunks are all done becomes
   * current as the current one is superseded (first, so the unique index on current versions
   * holds); one with a failed chunk and none left to do fails, and the current version stays.
   * Returns how many versions it superseded.
   */
  private async promotion(tx: PgDatabase, jobId: string, seqs: number[]): Promise<number> {
    if (seqs.length === 0) return 0;
    const which = sql`n.job_id = ${jobId} AND n.seq = ANY(${ints(seqs)})`;
    const allDone = sql`NOT EXISTS (SELECT 1 FROM chunks c WHERE c.job_id = n.job_id AND c.document_id = n.id AND c.status <> 'done')`;
    const superseded = await tx.execute(sql`UPDATE documents SET state = 'superseded'
      WHERE state = 'current' AND (tenant, collection, doc_key) IN (
        SELECT n.tenant, n.collection, n.doc_key FROM documents n
        WHERE ${which} AND n.state = 'pending' AND ${allDone})`);
    await tx.execute(sql`UPDATE documents SET state = 'current'
      WHERE job_id = ${jobId} AND state = 'pending'
        AND seq IN (SELECT n.seq FROM documents n WHERE ${which} AND ${allDone})`);
    await tx.execute(sql`UPDATE documents
      SET state = 'failed', error = 'some of its chunks failed; the previous version stays current'
      WHERE job_id = ${jobId} AND state = 'pending'
        AND seq IN (SELECT n.seq FROM documents n WHERE ${which}
          AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.job_id = n.job_id AND c.document_id = n.id AND c.status = 'pending')
          AND EXISTS (SELECT 1 FROM chunks c WHERE c.job_id = n.job_id AND c.document_id = n.id AND c.status = 'failed'))`);
    return superseded.rowCount ?? 0;
  }

  async findJobByIdempotencyKey(tenant: string, key: string) {
    const j = schema.jobs;
    const [r] = await this.run((db) =>
      db
        .select()
        .from(j)
        .where(and(eq(j.tenant, tenant), eq(j.idempotencyKey, key)))
        .limit(1),
    );
    return r ? idempotentJob(r) : null;
  }

  async markDispatched(jobId: string, ingest?: IngestReport): Promise<Job | null> {
    const j = schema.jobs;
    const [r] = await this.run((db) =>
      db
        .update(j)
        .set({ dispatchedAt: new Date().toISOString(), ...(ingest ? { ingest } : {}) })
        .where(eq(j.id, jobId))
        .returning(),
    );
    return r ? toJob(r) : null;
  }

  async getJob(tenant: string, id: string): Promise<Job | null> {
    const j = schema.jobs;
    const [r] = await this.run((db) =>
      db
        .select()
        .from(j)
        .where(and(eq(j.id, id), eq(j.tenant, tenant)))
        .limit(1),
    );
    return r ? toJob(r) : null;
  }

  async getJobById(id: string): Promise<Job | null> {
    const j = schema.jobs;
    const [r] = await this.run((db) => db.select().from(j).where(eq(j.id, id)).limit(1));
    return r ? toJob(r) : null;
  }

  async listJobs(tenant: string, q: JobListFilter): Promise<Job[]> {
    const j = schema.jobs;
    const rows = await this.run((db) =>
      db
        .select()
        .from(j)
        .where(and(...jobListWhere(j, tenant, q)))
        .orderBy(desc(j.createdAt), desc(j.id))
        .limit(q.limit),
    );
    return rows.map(toJob);
  }

  async markStarted(jobId: string): Promise<void> {
    const j = schema.jobs;
    await this.run((db) =>
      db
        .update(j)
        .set({ status: "running", startedAt: new Date().toISOString() })
        .where(and(eq(j.id, jobId), eq(j.status, "queued"))),
    );
  }

  async cancelJob(tenant: string, id: string): Promise<boolean> {
    const j = schema.jobs;
    return this.pg.transaction(async (tx) => {
      await this.lockJobs(tx, [id]);
      const cancelled = await tx
        .update(j)
        .set({ status: "cancelled", accepting: false, completedAt: new Date().toISOString() })
        .where(and(eq(j.id, id), eq(j.tenant, tenant), sql`${j.status} IN ('queued', 'running')`))
        .returning({ id: j.id });
      // Its new versions never become current: the ones they would replace stay.
      await tx.execute(sql`UPDATE documents SET state = 'cancelled', error = 'its job was cancelled'
        WHERE job_id = ${id} AND state = 'pending'
          AND (SELECT status FROM jobs WHERE id = ${id}) = 'cancelled'`);
      return cancelled.length > 0;
    });
  }

  async deleteJob(jobId: string): Promise<void> {
    await this.pg.transaction(async (tx) => {
      await this.lockJobs(tx, [jobId]);
      await this.dropKeywords(tx, jobId);
      await this.dropCached(tx, jobId);
      await tx.delete(schema.chunks).where(eq(schema.chunks.jobId, jobId));
      await tx.delete(schema.documents).where(eq(schema.documents.jobId, jobId));
      await tx.delete(schema.jobs).where(eq(schema.jobs.id, jobId));
    });
  }

  async purgeText(jobId: string): Promise<void> {
    await this.pg.transaction(async (tx) => {
      await this.dropKeywords(tx, jobId);
      await tx.update(schema.chunks).set({ text: "" }).where(eq(schema.chunks.jobId, jobId));
      // Its originals are no longer its to keep (the caller deletes those no one else names).
      await tx
        .update(schema.documents)
        .set({ rawKey: null })
        .where(eq(schema.documents.jobId, jobId));
      await tx
        .update(schema.jobs)
        .set({ textPurgedAt: new Date().toISOString() })
        .where(and(eq(schema.jobs.id, jobId), isNull(schema.jobs.textPurgedAt)));
    });
  }

  /**
   * Takes chunks out of the keyword index: a job's, or one document's (its terms derive from
   * the text, so they go wherever the text goes). chunk_terms and the postings go with their
   * keyword_rows row (ON DELETE CASCADE).
   */
  private async dropKeywords(tx: PgDatabase, jobId: string, documentId?: string) {
    await tx.execute(
      documentId === undefined
        ? sql`DELETE FROM keyword_rows WHERE job_id = ${jobId}`
        : sql`DELETE FROM keyword_rows WHERE job_id = ${jobId} AND chunk_id IN (
            SELECT id FROM chunks WHERE job_id = ${jobId} AND document_id = ${documentId})`,
    );
  }

  /**
   * Drops the cache entries a job's chunks hold (one document's, or all): the vector of deleted
   * text goes with it. An entry another job has adopted since is not this job's, and stays.
   */
  private async dropCached(tx: PgDatabase, jobId: string, documentId?: string) {
    const doc = documentId === undefined ? sql`` : sql` AND document_id = ${documentId}`;
    await tx.execute(sql`DELETE FROM embedding_cache WHERE job_id = ${jobId} AND key IN (
      SELECT cache_key FROM chunks WHERE job_id = ${jobId}${doc} AND cache_key IS NOT NULL)`);
  }

  // Documents and their versions.

  async getDocument(tenant: string, jobId: string, documentId: string) {
    const d = schema.documents;
    return this.run(async (db) => {
      const [doc] = await db
        .select({ seq: d.seq, id: d.id, rawKey: d.rawKey })
        .from(d)
        .innerJoin(schema.jobs, eq(schema.jobs.id, d.jobId))
        .where(and(eq(d.jobId, jobId), eq(d.id, documentId), eq(schema.jobs.tenant, tenant)))
        .limit(1);
      if (!doc) return null;
      const c = schema.chunks;
      const rows = await db
        .select({ id: c.id })
        .from(c)
        .where(and(eq(c.jobId, jobId), eq(c.documentId, documentId)));
      return { ...doc, chunkIds: rows.map((r) => r.id) };
    });
  }

  async deleteDocument(jobId: string, seq: number): Promise<void> {
    await this.pg.transaction(async (tx) => {
      await this.lockJobs(tx, [jobId]);
      const d = schema.documents;
      const [doc] = await tx
        .select({ id: d.id })
        .from(d)
        .where(and(eq(d.jobId, jobId), eq(d.seq, seq)));
      if (!doc) return;
      const count = (status: "done" | "failed" | null) =>
        sql`(SELECT count(*)::int FROM chunks WHERE job_id = ${jobId} AND document_id = ${doc.id}${status ? sql` AND status = ${status}` : sql``})`;
      // Counters first, while the chunks are still there to count.
      await tx.update(schema.jobs).set(removedCounters(count)).where(eq(schema.jobs.id, jobId));
      await this.dropKeywords(tx, jobId, doc.id);
      await this.dropCached(tx, jobId, doc.id);
      const c = schema.chunks;
      await tx.delete(c).where(and(eq(c.jobId, jobId), eq(c.documentId, doc.id)));
      await tx.delete(d).where(and(eq(d.jobId, jobId), eq(d.seq, seq)));
    });
  }

  async liveVersions(tenant: string, collection: string, keys: string[]): Promise<LiveVersion[]> {
    if (keys.length === 0) return [];
    return this.rows<LiveVersion>(sql`SELECT d.doc_key AS "docKey",
        CASE WHEN d.state IN ('current', 'pending') THEN d.state ELSE 'none' END AS state, d.version,
        d.fingerprint, d.job_id AS "jobId",
        (SELECT max(m.version) FROM documents m WHERE m.tenant = d.tenant
          AND m.collection = d.collection AND m.doc_key = d.doc_key) AS "maxVersion",
        ${stalledVersion("d")} AS "stalled"
      FROM documents d
      WHERE d.tenant = ${tenant} AND d.collection = ${collection}
        AND d.doc_key = ANY(${texts([...new Set(keys)])})
        AND (d.state IN ('current', 'pending') OR d.version = (SELECT max(m.version) FROM documents m
          WHERE m.tenant = d.tenant AND m.collection = d.collection AND m.doc_key = d.doc_key))`);
  }

  async documentVersions(tenant: string, collection: string | undefined, key: string) {
    const inCollection = collection === undefined ? sql`` : sql` AND d.collection = ${collection}`;
    // SQLite puts NULLs last in a descending order.
    return this.rows<VersionRow>(sql`SELECT ${VERSION_COLUMNS}
      FROM documents d JOIN jobs j ON j.id = d.job_id
      WHERE d.tenant = ${tenant}${inCollection} AND d.doc_key = ${key}
      ORDER BY d.version DESC, d.created_at DESC NULLS LAST`);
  }

  async listDocuments(tenant: string, q: DocumentListFilter) {
    return this.rows<VersionRow>(sql`SELECT ${VERSION_COLUMNS}
      FROM documents d JOIN jobs j ON j.id = d.job_id
      WHERE ${and(...documentListWhere("d", tenant, q))}
      ORDER BY d.collection, d.doc_key LIMIT ${q.limit}`);
  }

  async versionsToPrune(tenant: string, limit: number) {
    // A version superseded while its job still runs is pruned once the job has ended.
    return this.rows<VersionRow>(sql`SELECT ${VERSION_COLUMNS}
      FROM documents d JOIN jobs j ON j.id = d.job_id
      WHERE d.tenant = ${tenant} AND d.state = 'superseded' AND d.pruned_at IS NULL
        AND j.status NOT IN ('queued', 'running')
      LIMIT ${limit}`);
  }

  async pruneVersions(versions: { jobId: string; seq: number; id: string }[]): Promise<void> {
    if (versions.length === 0) return;
    const input = sql`(SELECT * FROM json_to_recordset(${JSON.stringify(
      versions.map((v) => ({ job_id: v.jobId, seq: v.seq, id: v.id })),
    )}::json) AS x(job_id text, seq int, id text))`;
    const now = new Date().toISOString();
    await this.pg.transaction(async (tx) => {
      await tx.execute(sql`DELETE FROM keyword_rows k USING chunks c, ${input} v
        WHERE k.job_id = v.job_id AND c.id = k.chunk_id AND c.job_id = v.job_id AND c.document_id = v.id`);
      await tx.execute(sql`DELETE FROM embedding_cache e USING chunks c, ${input} v
        WHERE e.job_id = v.job_id AND e.key = c.cache_key AND c.job_id = v.job_id AND c.document_id = v.id`);
      await tx.execute(sql`UPDATE jobs j SET chunks_pruned = j.chunks_pruned + x.n
        FROM (SELECT c.job_id, count(*) AS n FROM chunks c JOIN ${input} v
          ON c.job_id = v.job_id AND c.document_id = v.id WHERE c.status = 'done' GROUP BY c.job_id) x
        WHERE j.id = x.job_id`);
      await tx.execute(sql`DELETE FROM chunks c USING ${input} v
        WHERE c.job_id = v.job_id AND c.document_id = v.id`);
      // Its original is no longer its (the caller deletes it unless another row names it).
      await tx.execute(sql`UPDATE documents d SET pruned_at = ${now}, raw_key = NULL FROM ${input} v
        WHERE d.job_id = v.job_id AND d.seq = v.seq AND d.state = 'superseded'`);
    });
  }

  async sharedOriginalsInUse(tenant: string, rawKeys: string[]): Promise<Set<string>> {
    if (rawKeys.length === 0) return new Set();
    const rows = await this.rows<{ k: string }>(sql`SELECT DISTINCT raw_key AS k FROM documents
      WHERE raw_key = ANY(${texts(rawKeys)}) AND ${sql.raw(SHARED_ORIGINAL)}
        AND tenant = ${tenant} AND pruned_at IS NULL`);
    return new Set(rows.map((r) => r.k));
  }

  async originalsOf(jobId: string): Promise<string[]> {
    const rows = await this.rows<{ k: string }>(
      sql`SELECT DISTINCT raw_key AS k FROM documents WHERE job_id = ${jobId} AND raw_key IS NOT NULL`,
    );
    return rows.map((r) => r.k);
  }

  async liveRows(tenant: string, names: [string, string][]) {
    if (names.length === 0) return [];
    return this.rows<VersionRow>(sql`SELECT ${VERSION_COLUMNS}
      FROM documents d JOIN jobs j ON j.id = d.job_id
      WHERE d.tenant = ${tenant} AND d.state IN ('current', 'pending')
        AND (d.collection, d.doc_key) IN (SELECT * FROM unnest(${texts(names.map((n) => n[0]))},
          ${texts(names.map((n) => n[1]))}))`);
  }

  async getOriginal(tenant: string, key: string) {
    const o = schema.originals;
    const [row] = await this.run((db) =>
      db
        .select({ mediaType: o.mediaType, body: o.body })
        .from(o)
        .where(and(eq(o.tenant, tenant), eq(o.key, key)))
        .limit(1),
    );
    return row ?? null;
  }

  async deleteOriginals(tenant: string, keys: string[]) {
    if (keys.length === 0) return;
    await this.rows(
      sql`DELETE FROM originals WHERE tenant = ${tenant} AND key = ANY(${texts(keys)})`,
    );
  }

  async listCollections(tenant: string): Promise<Collection[]> {
    return this.run(async (db) => {
      const rows = await this.rows<Omit<Collection, "documents" | "chunks">>(
        sql`SELECT collection AS name, count(*)::int AS jobs, min(created_at) AS "createdAt",
            max(coalesce(completed_at, created_at)) AS "updatedAt"
          FROM jobs WHERE tenant = ${tenant} GROUP BY collection ORDER BY collection`,
        db,
      );
      const live = await this.rows<{ name: string; documents: number; chunks: number }>(
        sql`SELECT d.collection AS name, count(*)::int AS documents,
            coalesce(sum(d.chunks), 0)::float8 AS chunks
          FROM documents d WHERE d.tenant = ${tenant} AND d.state = 'current' GROUP BY d.collection`,
        db,
      );
      return withCounts(rows, live);
    });
  }

  // Chunks: reading them, recording their results, settling their versions.

  private chunkQuery(db: PgDatabase) {
    const c = schema.chunks;
    return db
      .select(chunkColumns(schema))
      .from(c)
      .innerJoin(schema.jobs, eq(schema.jobs.id, c.jobId))
      .innerJoin(
        schema.documents,
        and(eq(schema.documents.jobId, c.jobId), eq(schema.documents.id, c.documentId)),
      );
  }

  async listChunks(tenant: string, jobId: string, after: string | null, limit: number) {
    const c = schema.chunks;
    const rows = await this.run((db) =>
      this.chunkQuery(db)
        .where(and(...chunkPageWhere(c, schema.jobs, tenant, jobId, after)))
        .orderBy(asc(c.id))
        .limit(limit),
    );
    return this.openChunks(tenant, rows);
  }

  async getChunks(tenant: string, ids: string[], opts: { currentOnly?: boolean } = {}) {
    if (ids.length === 0) return [];
    const rows = await this.run((db) =>
      this.chunkQuery(db).where(
        and(
          sql`${schema.chunks.id} = ANY(${texts(ids)})`,
          eq(schema.jobs.tenant, tenant),
          opts.currentOnly ? eq(schema.documents.state, "current") : undefined,
        ),
      ),
    );
    return this.openChunks(tenant, rows);
  }

  async chunkIds(jobId: string): Promise<string[]> {
    const c = schema.chunks;
    const rows = await this.run((db) => db.select({ id: c.id }).from(c).where(eq(c.jobId, jobId)));
    return rows.map((r) => r.id);
  }

  /**
   * Moves pending chunks to `to` and each job's counter by exactly the chunks that changed
   * (a replay changes none), under the jobs' locks, so that the versions found settled are
   * those with nothing left to compute once this transaction's changes are counted, as D1's
   * single writer gives it. Then the jobs' status.
   */
  protected override async record(
    groups: RecordGroups,
    to: "done" | "failed",
    reason: string | null,
  ): Promise<Map<string, number[]>> {
    const settled = new Map<string, Set<number>>(groups.map((g) => [g.jobId, new Set()]));
    const jobIds = [...settled.keys()];
    const pairs = groups.flatMap((g) => g.chunkIds.map((id) => ({ job_id: g.jobId, id })));
    if (jobIds.length > 0) {
      const counter = sql.raw(to === "done" ? "chunks_done" : "chunks_failed");
      await this.pg.transaction(async (tx) => {
        await this.lockJobs(tx, jobIds);
        for (const group of jsonGroups(pairs)) {
          const rows = await this.rows<{ job_id: string; seq: number }>(
            sql`WITH input AS (
                SELECT * FROM json_to_recordset(${group}::json) AS x(job_id text, id text)),
              changed AS (
                UPDATE chunks c SET status = ${to}, error = ${reason} FROM input i
                WHERE c.job_id = i.job_id AND c.id = i.id AND c.status = 'pending'
                RETURNING c.job_id),
              moved AS (
                UPDATE jobs j SET ${counter} = j.${counter} + n.n
                FROM (SELECT job_id, count(*)::int AS n FROM changed GROUP BY job_id) n
                WHERE j.id = n.job_id)
              SELECT d.job_id, d.seq FROM documents d
              WHERE d.state = 'pending'
                AND EXISTS (SELECT 1 FROM chunks c JOIN input i ON i.job_id = c.job_id AND i.id = c.id
                  WHERE c.job_id = d.job_id AND c.document_id = d.id)
                -- This statement sees the chunks as they were before it: the ones it moves
                -- are pending there, and are not left to compute.
                AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.job_id = d.job_id
                  AND c.document_id = d.id AND c.status = 'pending'
                  AND NOT EXISTS (SELECT 1 FROM input i WHERE i.job_id = c.job_id AND i.id = c.id))`,
            tx,
          );
          for (const r of rows) settled.get(r.job_id)?.add(r.seq);
        }
        // A job none of whose versions waits (they were superseded or cancelled) may end here.
        await this.settle(tx, jobIds);
      });
    }
    return new Map([...settled].map(([jobId, seqs]) => [jobId, [...seqs]]));
  }

  async settledVersions(jobId: string): Promise<number[]> {
    const rows = await this.rows<{ seq: number }>(sql`SELECT d.seq FROM documents d
      WHERE d.job_id = ${jobId} AND d.state = 'pending'
        AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.job_id = d.job_id AND c.document_id = d.id AND c.status = 'pending')`);
    return rows.map((r) => r.seq);
  }

  async promote(jobId: string, seqs: number[]): Promise<{ superseded: number }> {
    return this.pg.transaction(async (tx) => {
      await this.lockJobs(tx, [jobId]);
      const superseded = await this.promotion(tx, jobId, seqs);
      await this.settle(tx, [jobId]);
      return { superseded };
    });
  }

  // The embedding cache and the keyword index.

  async cachedVectors(tenant: string, model: string, keys: string[]) {
    const out = new Map<string, Float32Array>();
    if (keys.length === 0) return out;
    const rows = await this.rows<{ key: string; vector: string }>(
      sql`SELECT key, encode(vector, 'hex') AS vector FROM embedding_cache
        WHERE tenant = ${tenant} AND model = ${model} AND key = ANY(${texts([...new Set(keys)])})`,
    );
    for (const r of rows) out.set(r.key, vectorOfHex(r.vector));
    return out;
  }

  async cachePut(tenant: string, model: string, jobId: string, entries: CacheEntry[]) {
    // One row per key, the last given winning (as row-by-row upserts on D1 leave it).
    const byKey = new Map(entries.map((e) => [e.key, e.vector]));
    const groups = jsonGroups([...byKey].map(([key, v]) => ({ key, vector: hex(vectorBytes(v)) })));
    if (groups.length === 0) return;
    const now = new Date().toISOString();
    await this.pg.transaction(async (tx) => {
      for (const group of groups)
        await tx.execute(sql`INSERT INTO embedding_cache (tenant, model, key, vector, job_id, created_at)
          SELECT ${tenant}, ${model}, x.key, decode(x.vector, 'hex'), ${jobId}, ${now}
          FROM json_to_recordset(${group}::json) AS x(key text, vector text)
          ON CONFLICT (tenant, model, key)
          DO UPDATE SET job_id = excluded.job_id, vector = excluded.vector`);
    });
  }

  /**
   * FTS5's BM25 (k1 = 1.2, b = 0.75, an IDF at or below zero taken as 1e-6), computed from the
   * postings over the whole index as FTS5 counts its table: the same scores D1 gives, summed in
   * the query's term order as FTS5 sums its phrases. Ties go by chunk id.
   */
  async keywordSearch(q: KeywordQuery) {
    const terms = matchTerms(q.match);
    if (terms.length === 0) return [];
    const filter = q.filter ? sql` AND ${pgKeywordFilter(q.filter, PG_FILTER_METADATA)}` : sql``;
    return this.rows<{ id: string; score: number; terms: string }>(sql`
      WITH q AS (SELECT term, min(pos) AS pos FROM unnest(${texts(terms)}) WITH ORDINALITY AS t(term, pos) GROUP BY term),
      stats AS (SELECT count(*)::float8 AS n, coalesce(sum(tokens), 0)::float8 AS total FROM chunk_terms),
      idf AS (
        SELECT q.term, q.pos, CASE WHEN x.v <= 0 THEN 1e-6::float8 ELSE x.v END AS w
        FROM q JOIN (SELECT term, count(*)::float8 AS hits FROM chunk_term_postings
          WHERE term IN (SELECT term FROM q) GROUP BY term) h ON h.term = q.term,
          stats, LATERAL (SELECT ln((stats.n - h.hits + 0.5::float8) / (h.hits + 0.5::float8)) AS v) x),
      scored AS (
        SELECT p.row_id, sum(idf.w * ((p.tf::float8 * (1.2::float8 + 1.0::float8))
            / (p.tf::float8 + 1.2::float8 * (1::float8 - 0.75::float8 + 0.75::float8 * t.tokens::float8 / (stats.total / stats.n))))
          ORDER BY idf.pos) AS score
        FROM chunk_term_postings p JOIN idf ON idf.term = p.term
          JOIN chunk_terms t ON t.id = p.row_id, stats
        GROUP BY p.row_id)
      SELECT k.chunk_id AS id, s.score, t.terms
      FROM scored s
      JOIN keyword_rows k ON k.id = s.row_id
      JOIN chunk_terms t ON t.id = s.row_id
      JOIN chunks c ON c.id = k.chunk_id
      JOIN jobs j ON j.id = c.job_id
      LEFT JOIN documents d ON d.job_id = c.job_id AND d.id = c.document_id
      WHERE j.tenant = ${q.tenant} AND j.model = ${q.model}
        AND c.status = 'done' AND d.state = 'current'${filter}
      ORDER BY s.score DESC, k.chunk_id
      LIMIT ${q.limit}`);
  }

  // The worker registry.

  async upsertWorker(w: WorkerInfo): Promise<void> {
    const row = { ...w, lastSeenAt: w.connectedAt, disconnectedAt: null };
    await this.run((db) =>
      db
        .insert(schema.workers)
        .values(row)
        .onConflictDoUpdate({ target: schema.workers.id, set: row }),
    );
  }

  async workerSeen(id: string, chunksDone: number, disconnected: boolean): Promise<void> {
    const now = new Date().toISOString();
    await this.run((db) =>
      db
        .update(schema.workers)
        .set({ lastSeenAt: now, chunksDone, ...(disconnected ? { disconnectedAt: now } : {}) })
        .where(eq(schema.workers.id, id)),
    );
  }
}
