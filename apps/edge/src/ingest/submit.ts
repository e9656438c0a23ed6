import {
  type ChunkOptions,
  chunkSections,
  chunkText,
  DEFAULT_COLLECTION,
  DEFAULT_MODEL,
  type IngestRejection,
  type IngestReport,
  type Job,
  MAX_TASK_SIZE,
  PII_KINDS,
  type PiiKind,
  type Pool,
  type Privacy,
  type SectionChunk,
  TASK_SIZE,
  type Verification,
} from "@p2pa/shared";
import { keyringFor, openStore } from "../db/open.js";
import type { Credential, LiveVersion, NewChunk, NewDocument } from "../db/store.js";
import { sealTask } from "../dispatch/sealed-items.js";
import { dispatcherFor } from "../dispatch/shards.js";
import { vectorMetadata } from "../dispatch/store-result.js";
import {
  type DocumentMeta,
  type ItemCopy,
  type NewTask,
  type QueuedItem,
  type StoredTask,
  tasksOf,
} from "../dispatch/task-queue.js";
import { chunkIdOf } from "../lib/chunk-ids.js";
import { hex, sha256Hex, utf8 } from "../lib/crypto.js";
import { AppError, noCapacity } from "../lib/errors.js";
import { requireModel } from "../lib/models.js";
import { settings } from "../lib/settings.js";
import { windowFit } from "../lib/tokens.js";
import { maskPersonalData } from "../privacy/mask.js";
import { indexHasher } from "../search/terms.js";
import { assertChunkQuota } from "../tenant/limits.js";
import { filterableKeys } from "../vector/config.js";
import { writeVectors } from "../vector/index-writer.js";
import type { Section } from "./extract/index.js";
import { detectLanguages, normaliseText } from "./extract/index.js";
import {
  keepOriginals,
  keptApart,
  type NewOriginal,
  originalKey,
  TEXT_MEDIA_TYPE,
} from "./originals.js";
import { metaByDocument, pendingChunks, pendingWork, searchMetadata } from "./search-metadata.js";

/**
 * The submit flow every way in shares (a JSON job, an NDJSON stream, file uploads, appends to
 * an open job): each document is checked against its live versions (unchanged: skipped; new:
 * a version, pending while an older one is current), chunked along its sections, and each
 * chunk's vector is looked up in the embedding cache; the rest become tasks. The job's rows
 * are written in one transaction per batch, then the tasks go to the coordinator.
 */

// RPC payloads are capped; enqueue in slices well under the limit.
const ENQUEUE_SLICE_CHARS = 4_000_000;

/** What a job's documents are computed with, resolved from the request and the deployment. */
export interface JobSettings {
  model: string;
  collection: string;
  chunking: { maxChars: number; overlap: number };
  verification: Verification;
  pool: Pool;
  piiMask: PiiKind[];
  keepOriginals: boolean;
  /** Take vectors the embedding cache holds for the same text (results are cached either way). */
  useCache: boolean;
}

/** The job options of a request (JSON body, NDJSON header line, or upload form). */
export interface JobOptions {
  model?: string | undefined;
  collection?: string | undefined;
  chunking?: { maxChars?: number | undefined; overlap?: number | undefined } | undefined;
  verification?: Verification | undefined;
  pool?: Pool | undefined;
  privacy?: Privacy | undefined;
  keepOriginals?: boolean | undefined;
  cache?: boolean | undefined;
}

/** A document as it reaches the submit flow: its text (extracted for files) and its original. */
export interface SourceDocument {
  id?: string | undefined;
  text: string;
  metadata?: Record<string, unknown> | null | undefined;
  /** Headings and pages of the text (files); absent: the whole text is one section. */
  sections?: Section[] | undefined;
  /** The bytes as submitted, with their media type; absent: the text is the original. */
  original?: { bytes: Uint8Array; mediaType: string } | undefined;
}

/** The deployment's verification policy for jobs that do not choose one (`VERIFICATION`). */
function defaultVerification(env: Env): Verification {
  return settings(env).VERIFICATION;
}

/** The kinds of personal data a job masks: its own choice, else the deployment's PII_MASK. */
function maskedKinds(privacy: Privacy | undefined, env: Env): PiiKind[] {
  const choice: string | readonly string[] = privacy?.mask ?? (env.PII_MASK as string);
  if (choice === "all") return [...PII_KINDS];
  const list = typeof choice === "string" ? choice.split(",").map((k) => k.trim()) : choice;
  return PII_KINDS.filter((k) => list.includes(k));
}

/** The job's settings, or a 422 naming what is wrong with the options. */
export function resolveSettings(env: Env, o: JobOptions): JobSettings {
  const model = o.model ?? DEFAULT_MODEL;
  const info = requireModel(env, model);
  const maxChars = o.chunking?.maxChars ?? info.defaultChunkChars;
  if (maxChars > info.maxChunkChars) {
    throw new AppError(
      422,
      "unprocessable",
      `chunking.maxChars ${maxChars} is over the largest chunk for model ${model} (${info.maxChunkChars})`,
    );
  }
  const overlap = o.chunking?.overlap ?? Math.min(60, Math.floor(maxChars / 10));
  if (overlap >= maxChars / 2) {
    throw new AppError(
      422,
      "unprocessable",
      "chunking.overlap must be less than half of chunking.maxChars",
    );
  }
  return {
    model,
    collection: o.collection ?? DEFAULT_COLLECTION,
    chunking: { maxChars, overlap },
    verification: o.verification ?? defaultVerification(env),
    pool: o.pool ?? "any",
    piiMask: maskedKinds(o.privacy, env),
    keepOriginals: o.keepOriginals ?? true,
    useCache: o.cache ?? settings(env).EMBEDDING_CACHE === "on",
  };
}

/** A batch of documents made ready: rows to write, vectors already known, tasks to hand out. */
export interface PreparedBatch {
  documents: NewDocument[];
  chunks: NewChunk[];
  tasks: NewTask[];
  /** Vectors from the cache, written to the index before the rows. */
  known: {
    id: string;
    values: Float32Array;
    metadata: Record<string, string | number | boolean>;
  }[];
  unchanged: number;
  rejections: IngestRejection[];
  /** Seq numbers given to this batch's documents (taken or unchanged), from `firstSeq`. */
  seqs: number;
  cache: { hits: number; misses: number };
  /**
   * The search metadata of documents whose language was found after their tasks were made (by
   * document id): tasks sent before then learn it when the job is confirmed.
   */
  detected: DocumentMeta;
}

interface PrepareContext {
  env: Env;
  tenant: string;
  jobId: string;
  settings: JobSettings;
  /** The first document seq of the batch (a job's seqs run on across appends). */
  firstSeq: number;
  /**
   * Takes the batch's seqs from the job instead (a job that exists, which other requests may
   * be adding to at the same moment): the first of `count`.
   */
  reserve?: (count: number) => Promise<number>;
  /** Refuses the batch (quota, backlog) once its size is known, before anything is written. */
  check?: (size: { chunks: number; tasks: number }) => Promise<void>;
  /** Sends the batch's tasks once they are made, before it is written (see `Ingestion.add`). */
  send?: (tasks: NewTask[]) => Promise<void>;
}

/** Where each source document stands before it is chunked. */
type Decision =
  | { kind: "new"; state: "current" | "pending"; version: number }
  | { kind: "unchanged" }
  | { kind: "rejected"; code: string; message: string };

/** A new submission of a document against its live versions (see schema.documents). */
function decide(jobId: string, fingerprint: string, live: LiveVersion[]): Decision {
  const pending = live.find((v) => v.state === "pending");
  const current = live.find((v) => v.state === "current");
  const next = Math.max(0, ...live.map((v) => v.maxVersion)) + 1;
  // Either of its live versions may be this job's (a first version is current at once).
  if (live.some((v) => v.state !== "none" && v.jobId === jobId))
    return { kind: "rejected", code: "duplicate", message: "this job already has this document" };
  // The newest submission wins: a version still pending is superseded by a newer one (it never
  // becomes current), unless the newer one is the same.
  if (pending) {
    if (pending.fingerprint === fingerprint) return { kind: "unchanged" };
    return { kind: "new", state: "pending", version: next };
  }
  // A current version its job left with chunks not done (cancelled, or chunks failed) is
  // computed again when the same document is sent again: that is how a cut-off submit is
  // finished.
  if (current?.fingerprint === fingerprint && !current.stalled) return { kind: "unchanged" };
  return { kind: "new", state: current ? "pending" : "current", version: next };
}

/**
 * Items a new job's first round of tasks holds: the tasks of the first documents go out before
 * the cache keys of the rest are made, so that workers start sooner.
 */
const FIRST_ROUND_ITEMS = MAX_TASK_SIZE;

/** A document taken into the batch, before its row is made (after its first tasks go out). */
interface Draft {
  source: SourceDocument;
  /** Its content hash, where it was needed before the tasks went out (a document with an id). */
  hash: string | null;
  seq: number;
  docId: string;
  text: string;
  fingerprint: string | null;
  state: "current" | "pending";
  version: number;
  pieces: SectionChunk[];
  /** What its vectors carry; its detected language is added once its tasks are out. */
  meta: Record<string, string | number | boolean>;
}

/**
 * Prepares one batch: versions, chunks (cut to the model's window along the document's
 * sections), cache lookups, originals and keyword terms. Deterministic chunk and task ids for a
 * given job and seq, so a retried submit re-creates the same ones.
 *
 * Where the tasks go out before the batch is written (`ctx.send`), they go in two rounds: the
 * first documents' items (`FIRST_ROUND_ITEMS`), then the rest, each once its cache keys are
 * made and looked up. What is not needed to send them (the content hashes of documents without
 * an id, originals, languages, keyword terms) is done after.
 */
async function prepareBatch(ctx: PrepareContext, docs: SourceDocument[]): Promise<PreparedBatch> {
  const { env, tenant, jobId, settings } = ctx;
  const store = openStore(env);
  const keyring = keyringFor(env);
  const now = new Date().toISOString();
  const chunkOptions: ChunkOptions = {
    ...settings.chunking,
    fits: await windowFit(env, settings.model),
  };
  const filterable = filterableKeys(env);
  const contentHash = (d: SourceDocument) => sha256Hex(d.original?.bytes ?? d.text);

  // Only a document with an id has a fingerprint: it is compared when the id is submitted
  // again, so it is needed before the document's tasks are made. The fingerprint holds the
  // metadata as given: a detected language derives from the text.
  const hashes = await Promise.all(docs.map((d) => (d.id ? contentHash(d) : null)));
  const fingerprints = await Promise.all(
    docs.map((d, i) =>
      d.id
        ? sha256Hex(
            JSON.stringify([
              hashes[i],
              d.metadata ?? null,
              settings.model,
              settings.chunking,
              settings.piiMask,
            ]),
          )
        : null,
    ),
  );
  const named = docs.flatMap((d) => (d.id ? [d.id] : []));
  const live = new Map<string, LiveVersion[]>();
  for (const v of await store.liveVersions(tenant, settings.collection, named)) {
    live.set(v.docKey, [...(live.get(v.docKey) ?? []), v]);
  }

  const out: PreparedBatch = {
    documents: [],
    chunks: [],
    tasks: [],
    known: [],
    unchanged: 0,
    rejections: [],
    seqs: 0,
    cache: { hits: 0, misses: 0 },
    detected: {},
  };
  const items: QueuedItem[] = [];
  const drafts: Draft[] = [];
  const seen = new Set<string>();
  const decisions = docs.map((d, i): Decision => {
    const decision: Decision =
      d.id && seen.has(d.id)
        ? { kind: "rejected", code: "duplicate", message: "this request already has this id" }
        : d.id
          ? decide(jobId, fingerprints[i] as string, live.get(d.id) ?? [])
          : { kind: "new", state: "current", version: 1 };
    if (d.id) seen.add(d.id);
    return decision;
  });
  const taken = decisions.filter((x) => x.kind !== "rejected").length;
  const firstSeq = ctx.reserve && taken > 0 ? await ctx.reserve(taken) : ctx.firstSeq;
  docs.forEach((d, i) => {
    const decision = decisions[i] as Decision;
    if (decision.kind === "rejected") {
      out.rejections.push({
        ...(d.id ? { id: d.id } : {}),
        code: decision.code,
        message: decision.message,
      });
      return;
    }
    const seq = firstSeq + out.seqs++;
    if (decision.kind === "unchanged") {
      out.unchanged++;
      return;
    }
    // Extracted text is normalised already; a JSON or NDJSON document's is normalised here
    // (its original stays as sent). Chunk offsets refer to the normalised text.
    const text = d.sections ? d.text : normaliseText(d.text);
    // A document without an id is a document of its own: named by its job and place.
    const docId = d.id ?? `${jobId}-${seq}`;
    const pieces: SectionChunk[] = d.sections
      ? chunkSections(text, d.sections, chunkOptions)
      : chunkText(text, chunkOptions);
    const meta = searchMetadata(settings.collection, d.metadata ?? null, filterable);
    drafts.push({
      source: d,
      hash: hashes[i] ?? null,
      seq,
      docId,
      text,
      fingerprint: fingerprints[i] ?? null,
      state: decision.state,
      version: decision.version,
      pieces,
      meta,
    });
    for (const c of pieces) {
      const id = chunkIdOf(jobId, seq, c.index);
      out.chunks.push({
        id,
        documentSeq: seq,
        documentId: docId,
        index: c.index,
        text: c.text,
        start: c.start,
        end: c.end,
        ...(c.headings?.length ? { headings: c.headings } : {}),
        ...(c.page !== undefined ? { page: c.page } : {}),
      });
      // The owner keeps the original; a volunteer gets the text with personal data masked.
      const sent = settings.piiMask.length
        ? maskPersonalData(c.text, settings.piiMask).text
        : c.text;
      items.push({
        chunkId: id,
        documentId: docId,
        index: c.index,
        text: sent,
        meta,
        ...(decision.state === "pending" ? { pending: true as const } : {}),
      });
    }
  });

  // What the batch would cost is known now: it is refused before anything is written or sent.
  // The checks' round trips run while the cache keys are made and looked up.
  const checked =
    ctx.check?.({ chunks: out.chunks.length, tasks: Math.ceil(items.length / TASK_SIZE) }) ??
    Promise.resolve();
  // (Awaited below; a failure before then is not left unhandled.)
  checked.catch(() => {});

  // The embedding cache is keyed by the exact text a worker would embed.
  const cacheKey = await keyring.embeddingCacheKey(tenant);
  const byChunk = new Map(out.chunks.map((c) => [c.id, c]));
  const known: { item: QueuedItem; values: Float32Array }[] = [];
  const prefix = firstSeq === 0 ? `${jobId}.t` : `${jobId}.s${firstSeq}.t`;
  const rounds = ctx.send
    ? [items.slice(0, FIRST_ROUND_ITEMS), items.slice(FIRST_ROUND_ITEMS)]
    : [items];
  for (const round of rounds) {
    if (round.length === 0) continue;
    const keys = await Promise.all(round.map((it) => macHex(cacheKey, it.text)));
    const hits = settings.useCache
      ? await store.cachedVectors(tenant, settings.model, keys)
      : new Map<string, Float32Array>();
    // The same text twice in a round is computed once: the others are its copies.
    const leaders = new Map<string, QueuedItem>();
    const work: QueuedItem[] = [];
    round.forEach((it, i) => {
      const key = keys[i] as string;
      const chunk = byChunk.get(it.chunkId) as NewChunk;
      chunk.cacheKey = key;
      const vector = hits.get(key);
      if (vector) {
        chunk.cached = true;
        out.cache.hits++;
        known.push({ item: it, values: vector });
        return;
      }
      out.cache.misses++;
      const leader = leaders.get(key);
      if (leader) {
        const copy: ItemCopy = {
          chunkId: it.chunkId,
          documentId: it.documentId,
          index: it.index,
          ...(it.meta ? { meta: it.meta } : {}),
          ...(it.pending ? { pending: true as const } : {}),
        };
        leader.copies = [...(leader.copies ?? []), copy];
        return;
      }
      const lead = { ...it, cacheKey: key };
      leaders.set(key, lead);
      work.push(lead);
    });
    const tasks = tasksOf(prefix, work, out.tasks.length);
    out.tasks.push(...tasks);
    await checked;
    if (ctx.send && tasks.length) await ctx.send(tasks);
  }

  // The documents' rows, once their tasks are out: a document without an id is hashed now.
  const draftHashes = await Promise.all(drafts.map((d) => d.hash ?? contentHash(d.source)));
  const originals: { doc: NewDocument; original: NewOriginal }[] = [];
  drafts.forEach((draft, i) => {
    const d = draft.source;
    const hash = draftHashes[i] as string;
    const rawKey = settings.keepOriginals
      ? originalKey(
          tenant,
          { jobId, seq: draft.seq, contentHash: hash },
          d.original ? { file: true } : { file: false, text: d.text, chunks: draft.pieces },
        )
      : null;
    const doc: NewDocument = {
      seq: draft.seq,
      id: draft.docId,
      metadata: d.metadata ?? null,
      chars: draft.text.length,
      docKey: draft.docId,
      state: draft.state,
      version: draft.version,
      contentHash: hash,
      fingerprint: draft.fingerprint,
      rawKey,
      createdAt: now,
    };
    out.documents.push(doc);
    if (rawKey && keptApart(rawKey))
      originals.push({
        doc,
        original: d.original
          ? { key: rawKey, bytes: d.original.bytes, mediaType: d.original.mediaType }
          : { key: rawKey, text: d.text, mediaType: TEXT_MEDIA_TYPE },
      });
  });

  // Each document's language, as metadata (only where the metadata names none: a given `lang`
  // is kept as it is), and on its vectors where `lang` is filterable. Found after the tasks
  // went out, so that workers start sooner (for 2,000 one-sentence documents it took 12 to 31
  // ms of the 40 to 120 before the send); tasks that went out learn it with the confirmation.
  const detected = await detectLanguages(
    drafts.map((p) => (p.source.metadata && "lang" in p.source.metadata ? "" : p.text)),
  );
  const langFilterable = filterable.includes("lang");
  drafts.forEach((p, i) => {
    const lang = detected[i];
    if (!lang) return;
    const doc = out.documents[i] as NewDocument;
    doc.metadata = { ...(doc.metadata ?? {}), lang };
    if (!langFilterable) return;
    p.meta.lang = lang;
    out.detected[p.docId] = p.meta;
  });
  for (const { item, values } of known)
    out.known.push({ id: item.chunkId, values, metadata: vectorMetadata(item, tenant, jobId) });

  // Originals before the rows that name them: R2's now, D1's in the rows' own transaction.
  await keepOriginals(env, keyring, tenant, originals);
  // The keyword index holds each chunk's words as hashes under the tenant's term key.
  const hasher = await indexHasher(keyring, tenant);
  const terms = await hasher.documents(out.chunks.map((ch) => ch.text));
  out.chunks.forEach((ch, i) => {
    ch.terms = terms[i] as string;
  });
  return out;
}

async function macHex(key: CryptoKey, text: string): Promise<string> {
  const mac = await crypto.subtle.sign("HMAC", key, utf8.encode(text));
  return hex(new Uint8Array(mac, 0, 16));
}

/**
 * Writes the vectors the cache already had, before the rows that say they are done: through
 * the index writers of the job's shard where there are some (the index's client encodes each
 * vector as text, which they do on their own threads, in parallel).
 */
async function writeKnown(
  env: Env,
  model: string,
  jobId: string,
  batch: PreparedBatch,
): Promise<void> {
  await writeVectors(env, model, batch.known, dispatcherFor(env, model, jobId).id.toString());
}

/** Refuses work the coordinator cannot hold rather than queue it without bound. */
async function assertBacklogRoom(
  env: Env,
  model: string,
  jobId: string,
  tasks: number,
): Promise<void> {
  const backlog = await dispatcherFor(env, model, jobId).backlog();
  const limit = settings(env).MAX_BACKLOG_TASKS;
  if (backlog + tasks > limit) {
    throw noCapacity(`the queue is full (${backlog} tasks waiting); retry later`, 30);
  }
}

/** What the shard is told about a job along with its tasks. */
type DispatchedJob = {
  id: string;
  tenant: string;
  model: string;
  verification: Verification;
  pool: Pool;
};

/**
 * Hands a batch's tasks to the job's shard (sealed, in slices under the RPC limit). With no
 * task (everything unchanged or cached) the shard still learns of the job, and settles it
 * unless it is accepting more documents. `unconfirmed`: the job is not written yet (see
 * `Ingestion.add`).
 */
async function dispatchTasks(
  env: Env,
  job: DispatchedJob,
  tasks: NewTask[],
  extra: { accepting: boolean; cache?: { hits: number; misses: number }; unconfirmed?: true },
): Promise<void> {
  const dispatcher = dispatcherFor(env, job.model, job.id);
  const keyring = keyringFor(env);
  // Slices before the last keep the job open on the shard; the last says what the batch does.
  const during = {
    verify: job.verification,
    pool: job.pool,
    accepting: true,
    ...(extra.unconfirmed ? { unconfirmed: true } : {}),
  };
  let slice: StoredTask[] = [];
  let size = 0;
  try {
    for (const t of tasks) {
      // The coordinator keeps the text only sealed, like D1.
      const sealed = await sealTask(keyring, job.tenant, t.items);
      slice.push({ id: t.id, ...sealed });
      size += sealed.texts.reduce((n, [, s]) => n + s.length, 64 * t.items.length);
      if (size >= ENQUEUE_SLICE_CHARS) {
        await dispatcher.enqueue(job.id, job.tenant, job.model, slice, during);
        slice = [];
        size = 0;
      }
    }
    await dispatcher.enqueue(job.id, job.tenant, job.model, slice, { ...during, ...extra });
  } catch (err) {
    console.error("dispatch failed", job.id, err);
    throw noCapacity("the coordinator is unavailable; retry with the same Idempotency-Key");
  }
}

/**
 * The job whose tasks went out unconfirmed is written: the shard stores what they bring in
 * from now on. Its tasks are enqueued again if the shard no longer has them (it withdrew the
 * job while the write took longer than it waits).
 */
async function confirmJob(
  env: Env,
  job: DispatchedJob,
  tasks: NewTask[],
  extra: { accepting: boolean; cache: { hits: number; misses: number } },
  meta: DocumentMeta,
): Promise<void> {
  const answer = await dispatcherFor(env, job.model, job.id)
    .confirm(job.id, { ...extra, meta })
    .catch((err: unknown) => {
      console.error("confirm failed", job.id, err);
      throw noCapacity("the coordinator is unavailable; retry with the same Idempotency-Key");
    });
  if (answer === "missing") await dispatchTasks(env, job, tasks, extra);
}

/** Why a job stopped taking documents while a request was adding some. */
async function closedJob(env: Env, tenant: string, jobId: string): Promise<AppError> {
  const job = await openStore(env).getJob(tenant, jobId);
  if (!job) return new AppError(404, "not_found", `job ${jobId} was deleted`);
  const why = job.status === "cancelled" ? "it was cancelled" : "it was closed";
  return new AppError(409, "conflict", `job ${jobId} takes no more documents (${why})`);
}

/** What one request's documents came to, as the response reports it. */
export interface IngestTally {
  accepted: number;
  unchanged: number;
  rejected: number;
  rejections: IngestRejection[];
  tasks: number;
}

/** Rejections a response lists; the count covers all of them. */
const MAX_LISTED_REJECTIONS = 100;

/** The fields of a new job that are not its settings or its documents. */
export interface JobHeader {
  createdBy: string | null;
  /** Days its text is kept (null: kept), or "tenant": the tenant's default as the job is made. */
  textRetentionDays: number | null | "tenant";
  idempotencyKey: string | null;
  requestHash: string | null;
  webhook: { id: string; url: string } | null;
}

/**
 * One job being fed, batch by batch: the first batch creates it (with `accepting` set while
 * more may follow), later ones append; `close` ends the intake. Every way in goes through
 * here, so versions, cache, quotas and backlog are checked the same way for each.
 */
export class Ingestion {
  readonly tally: IngestTally = {
    accepted: 0,
    unchanged: 0,
    rejected: 0,
    rejections: [],
    tasks: 0,
  };
  private created: boolean;
  /** The job as the last batch left it; null before one, and after a close changes it. */
  private latest: Job | null = null;

  constructor(
    private readonly env: Env,
    private readonly cred: Credential,
    readonly jobId: string,
    readonly settings: JobSettings,
    private nextSeq: number,
    private readonly header: JobHeader | null,
  ) {
    this.created = header === null;
  }

  /** True once the job exists (its first batch was taken). */
  get exists(): boolean {
    return this.created;
  }

  /** The job as this request last wrote it (no read when nothing changed it since), or null. */
  get job(): Job | null {
    return this.latest;
  }

  /** What was taken and refused so far, as the 202 says it. */
  report(): IngestReport {
    const { accepted, unchanged, rejected, rejections } = this.tally;
    return { accepted, unchanged, rejected, rejections };
  }

  /** Notes rejections found before the submit flow (bad lines, unreadable files). */
  reject(rejections: IngestRejection[]): void {
    this.tally.rejected += rejections.length;
    const room = MAX_LISTED_REJECTIONS - this.tally.rejections.length;
    if (room > 0) this.tally.rejections.push(...rejections.slice(0, room));
  }

  /**
   * Takes a batch: prepared, checked against quotas and the backlog, written, dispatched.
   * `accepting`: more batches may follow, so the job stays open.
   */
  async add(docs: SourceDocument[], accepting: boolean): Promise<PreparedBatch> {
    // A new job's tasks go out as soon as they are made, and the job is written meanwhile: the
    // shard leases them at once, and holds what they bring in until the job is confirmed
    // written. A job that is not written is withdrawn from the shard.
    const early = this.created ? null : { sent: false, writing: false };
    try {
      return await this.addBatch(docs, accepting, early);
    } catch (err) {
      // A write that threw may still have committed (D1 can fail on the way back): the shard
      // asks D1 at the job's deadline, and keeps the job if it was written.
      if (early?.writing)
        console.error(
          "the job's write failed; its shard asks D1 whether it was written",
          this.jobId,
        );
      else if (early?.sent && !this.created)
        await dispatcherFor(this.env, this.settings.model, this.jobId)
          .withdraw(this.jobId)
          .catch((e: unknown) => {
            // The shard asks D1 itself once it has waited long enough.
            console.error("withdraw failed", this.jobId, e);
          });
      throw err;
    }
  }

  private async addBatch(
    docs: SourceDocument[],
    accepting: boolean,
    early: { sent: boolean; writing: boolean } | null,
  ): Promise<PreparedBatch> {
    const { env, jobId, settings } = this;
    const store = openStore(env);
    const job: DispatchedJob = { id: jobId, tenant: this.cred.tenant, ...settings };
    const batch = await prepareBatch(
      {
        ...(early
          ? {
              send: async (tasks: NewTask[]) => {
                early.sent = true;
                await dispatchTasks(env, job, tasks, { accepting: true, unconfirmed: true });
              },
            }
          : {}),
        env,
        tenant: this.cred.tenant,
        jobId,
        settings,
        firstSeq: this.nextSeq,
        ...(this.created
          ? {
              reserve: async (count: number) => {
                const first = await store.reserveSeqs(this.cred.tenant, jobId, count);
                if (first === null) throw await closedJob(env, this.cred.tenant, jobId);
                return first;
              },
            }
          : {}),
        check: async (size) => {
          // Both asked at once; a quota exceeded is said before a full queue.
          const refusals = await Promise.allSettled([
            assertChunkQuota(env, this.cred, size.chunks),
            assertBacklogRoom(env, settings.model, jobId, size.tasks),
          ]);
          for (const r of refusals) if (r.status === "rejected") throw r.reason;
        },
      },
      docs,
    );
    this.reject(batch.rejections);
    if (!this.created && batch.documents.length + batch.unchanged === 0) return batch;
    await writeKnown(env, settings.model, jobId, batch);
    if (!this.created) {
      const header = this.header as JobHeader;
      if (early) early.writing = early.sent;
      const made = await store.createJob({
        id: jobId,
        tenant: this.cred.tenant,
        model: settings.model,
        collection: settings.collection,
        chunking: settings.chunking,
        verification: settings.verification,
        pool: settings.pool,
        piiMask: settings.piiMask,
        keepOriginals: settings.keepOriginals,
        createdAt: new Date().toISOString(),
        ...header,
        documents: batch.documents,
        chunks: batch.chunks,
        unchanged: batch.unchanged,
        accepting,
      });
      if (early) early.writing = false;
      if (!made.created)
        throw new AppError(409, "conflict", "this job was created by another request");
      this.created = true;
    } else if (
      !(await store.appendDocuments({
        jobId,
        tenant: this.cred.tenant,
        documents: batch.documents,
        chunks: batch.chunks,
        unchanged: batch.unchanged,
      }))
    ) {
      throw await closedJob(env, this.cred.tenant, jobId);
    }
    this.nextSeq += batch.seqs;
    this.tally.accepted += batch.documents.length + batch.unchanged;
    this.tally.unchanged += batch.unchanged;
    this.tally.tasks += batch.tasks.length;
    const extra = { accepting, cache: batch.cache };
    if (early?.sent) await confirmJob(env, job, batch.tasks, extra, batch.detected);
    else await dispatchTasks(env, job, batch.tasks, extra);
    // A request made with an Idempotency-Key keeps its answer for a retry to get again.
    this.latest = await store.markDispatched(
      jobId,
      this.header?.idempotencyKey ? this.report() : undefined,
    );
    return batch;
  }

  /** Ends the intake: the job completes once its chunks are done. */
  async close(): Promise<void> {
    if (!this.created) return;
    this.latest = null;
    await openStore(this.env).closeJob(this.cred.tenant, this.jobId);
    await dispatcherFor(this.env, this.settings.model, this.jobId).close(this.jobId);
  }
}

/** A job's settings as it was created (for appends and retried submits). */
export function settingsOf(env: Env, job: Job): JobSettings {
  return {
    model: job.model,
    collection: job.collection,
    chunking: job.chunking,
    verification: job.verification,
    pool: job.pool,
    piiMask: job.privacy.mask,
    keepOriginals: job.keepOriginals,
    useCache: settings(env).EMBEDDING_CACHE === "on",
  };
}

/**
 * A retried submit whose first try wrote the job but stopped before it told the coordinator:
 * the tasks it sent ahead of the write are confirmed now; without them, its chunks still
 * pending become tasks again, from the rows (the same chunk ids, so whatever the first try did
 * hand over is not doubled).
 */
export async function redispatch(env: Env, tenant: string, job: Job): Promise<void> {
  const store = openStore(env);
  // The chunks still to compute, as written: their documents' metadata is what the tasks sent
  // ahead lacked (their languages), and without those tasks they are the work.
  const pending = await pendingChunks(env, store, tenant, job);
  const sentAhead = await dispatcherFor(env, job.model, job.id)
    .confirm(job.id, { accepting: job.accepting, meta: metaByDocument(pending) })
    .catch((err: unknown) => {
      console.error("confirm failed", job.id, err);
      throw noCapacity("the coordinator is unavailable; retry with the same Idempotency-Key");
    });
  if (sentAhead === "confirmed") {
    await store.markDispatched(job.id);
    return;
  }
  const tasks = tasksOf(`${job.id}.r`, await pendingWork(store, tenant, job, pending));
  await dispatchTasks(env, { ...job, tenant }, tasks, {
    accepting: job.accepting,
    cache: { hits: 0, misses: 0 },
  });
  await store.markDispatched(job.id);
}
