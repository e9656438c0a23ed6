import { z } from "zod";
import { Retention } from "./access.js";

/** Limits on what one request may carry. */
export const REQUEST_LIMITS = {
  maxDocumentsPerJob: 10_000,
  maxDocumentChars: 1_000_000,
  maxJobChars: 20_000_000,
  maxMetadataBytes: 4096,
  maxQueryChars: 4000,
  maxEmbeddingInputs: 256,
  maxTopK: 100,
} as const;

export const WEBHOOK_EVENT_TYPES = [
  "job.completed",
  "job.completed_with_errors",
  "job.failed",
  "job.cancelled",
  "job.progress",
] as const;
export const WebhookEventType = z.enum(WEBHOOK_EVENT_TYPES).meta({ id: "WebhookEventType" });
export type WebhookEventType = z.infer<typeof WebhookEventType>;

/** A job's states, in the order a job moves through them (D1's column takes the same list). */
export const JOB_STATUSES = [
  "queued",
  "running",
  "completed",
  "completed_with_errors",
  "failed",
  "cancelled",
] as const;
export const JobStatus = z.enum(JOB_STATUSES).meta({ id: "JobStatus" });
export type JobStatus = z.infer<typeof JobStatus>;
/** The states a job ends in: each has its webhook event (`job.<status>`) and live event. */
export const TERMINAL_STATUSES = [
  "completed",
  "completed_with_errors",
  "failed",
  "cancelled",
] as const satisfies readonly JobStatus[];
export type TerminalStatus = (typeof TERMINAL_STATUSES)[number];
/** True once a job has ended (it will not run again). */
export const isTerminal = (status: string): status is TerminalStatus =>
  (TERMINAL_STATUSES as readonly string[]).includes(status);

/** A lone half of a surrogate pair: D1 stores it as U+FFFD while workers get it raw. */
const UNPAIRED_SURROGATE =
  /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|[\uDC00-\uDFFF](?<![\uD800-\uDBFF][\uDC00-\uDFFF])/;

// Native in Node 20 and workerd and several times faster than the regex on a 20M-char job;
// the regex is kept to find the offset, and for runtimes without it.
const nativeIsWellFormed = (String.prototype as { isWellFormed?: (this: string) => boolean })
  .isWellFormed;

/** The UTF-16 offset of the first unpaired surrogate in `s`, or -1 when it is well formed. */
export function unpairedSurrogateAt(s: string): number {
  if (nativeIsWellFormed?.call(s)) return -1;
  return s.search(UNPAIRED_SURROGATE);
}

/** `documents.3.text` as `documents[3].text`, the way a client names the field. */
function fieldName(path: readonly PropertyKey[], fallback: string): string {
  let out = "";
  for (const p of path) {
    if (typeof p === "number") out += `[${p}]`;
    else if (typeof p === "string" && /^[A-Za-z_$][\w$]*$/.test(p)) out += out ? `.${p}` : p;
    else out += `[${JSON.stringify(String(p))}]`;
  }
  return out || fallback;
}

function surrogateMessage(where: string, s: string): string {
  const at = unpairedSurrogateAt(s);
  const unit = s.charCodeAt(at).toString(16).toUpperCase();
  return `${where} holds an unpaired UTF-16 surrogate (\\u${unit}) at offset ${at}; send well-formed Unicode text`;
}

/**
 * A string that must be well-formed UTF-16. Storing a lone surrogate would silently turn it
 * into U+FFFD, so chunk offsets and what workers embed would stop matching the stored text.
 */
export const WellFormedText = () =>
  z.string().refine((s) => unpairedSurrogateAt(s) === -1, {
    error: (iss) => surrogateMessage(fieldName(iss.path ?? [], "text"), String(iss.input ?? "")),
  });

const RESERVED_METADATA_KEYS = new Set(["__proto__", "constructor", "prototype"]);

function nulMessage(where: string, s: string): string {
  return `${where} holds U+0000 (NUL) at offset ${s.indexOf("\u0000")}, which metadata cannot store; remove it`;
}

const MetadataRecord = z.record(
  z.string().max(128),
  z.union([
    // Postgres stores no NUL in text or JSON, so no backend may take one.
    WellFormedText()
      .max(1024)
      .refine((s) => !s.includes("\u0000"), {
        error: (iss) =>
          nulMessage(fieldName(iss.path ?? [], "metadata value"), String(iss.input ?? "")),
      }),
    z.number(),
    z.boolean(),
    z.null(),
  ]),
);

/**
 * Metadata keys are checked on the raw parsed JSON: the record parser skips an own
 * `__proto__` key, so a check after it would never see that key and it would vanish.
 */
const Metadata = z
  .preprocess((raw, ctx) => {
    if (raw === null || typeof raw !== "object" || Array.isArray(raw)) return raw;
    for (const key of Object.keys(raw)) {
      if (RESERVED_METADATA_KEYS.has(key)) {
        ctx.addIssue({
          code: "custom",
          path: [key],
          input: raw,
          message: `metadata key "${key}" is reserved; use another name`,
        });
      } else if (unpairedSurrogateAt(key) !== -1) {
        ctx.addIssue({
          code: "custom",
          path: [key],
          input: raw,
          message: surrogateMessage(`metadata key ${JSON.stringify(key)}`, key),
        });
      } else if (key.includes("\u0000")) {
        ctx.addIssue({
          code: "custom",
          path: [key],
          input: raw,
          message: nulMessage(`metadata key ${JSON.stringify(key)}`, key),
        });
      }
    }
    return raw;
  }, MetadataRecord)
  .refine((m) => JSON.stringify(m).length <= REQUEST_LIMITS.maxMetadataBytes, {
    message: `metadata must serialise to at most ${REQUEST_LIMITS.maxMetadataBytes} bytes`,
  })
  .meta({ description: "Flat key/value pairs stored with every chunk of the document." });

export const DocumentInput = z
  .object({
    id: WellFormedText()
      .min(1)
      .max(128)
      .regex(/^[\w.:@/-]+$/, "id may hold letters, digits and _ . : @ / -")
      // A URL cannot name these: clients and runtimes resolve them as path steps.
      .refine((id) => id !== "." && id !== "..", { message: "id may not be . or .." })
      .optional()
      .meta({ description: "Your id for the document; generated when absent." }),
    text: WellFormedText()
      .max(REQUEST_LIMITS.maxDocumentChars)
      // Control characters are removed from the text before it is chunked: one made of them
      // alone would be an empty document.
      .refine((t) => /[^\s\p{Cc}]/u.test(t), {
        message: "text must not be empty (spaces and control characters alone are removed)",
      }),
    metadata: Metadata.optional(),
  })
  .meta({ id: "DocumentInput" });
export type DocumentInput = z.infer<typeof DocumentInput>;

export const ChunkingInput = z
  .object({
    maxChars: z.number().int().min(50).max(8000).optional(),
    overlap: z.number().int().min(0).max(4000).optional(),
  })
  .meta({ id: "Chunking" });

export const VERIFICATIONS = ["auto", "always", "off"] as const;
export const Verification = z.enum(VERIFICATIONS).meta({
  id: "Verification",
  description:
    "How workers' results are verified before they are stored. auto: a second donor confirms the results of new, recently wrong or spot-checked workers whenever one is connected; always: every task is confirmed by two donors (the job waits for a second one); off: the first valid result is stored.",
});
export type Verification = z.infer<typeof Verification>;

export const POOLS = ["any", "own"] as const;
export const Pool = z.enum(POOLS).meta({
  id: "Pool",
  description:
    "Which workers may see the text: any connected worker, or only workers that joined with this tenant's own worker tokens.",
});
export type Pool = z.infer<typeof Pool>;

/** Kinds of personal data the edge can mask before text leaves it for a volunteer. */
export const PII_KINDS = ["email", "phone", "card", "iban", "ip", "ssn", "secret_url"] as const;
export const PiiKind = z.enum(PII_KINDS).meta({ id: "PiiKind" });
export type PiiKind = z.infer<typeof PiiKind>;

export const Privacy = z
  .object({
    mask: z.union([z.literal("all"), z.literal("none"), z.array(PiiKind).max(PII_KINDS.length)]),
  })
  .strict()
  .meta({
    id: "Privacy",
    description:
      "Personal data to mask before text leaves the edge: workers see typed placeholders (<EMAIL>, <PHONE>, <CARD>, <IBAN>, <IP>, <SSN>, <URL>); chunks, search results and exports keep the original.",
  });
export type Privacy = z.infer<typeof Privacy>;

/** The collection a job's documents go to when it names none. */
export const DEFAULT_COLLECTION = "default";

export const CollectionName = z
  .string()
  .regex(
    /^[a-z0-9][a-z0-9_-]{0,63}$/,
    "a collection name is 1 to 64 lowercase letters, digits, _ or -, starting with a letter or digit",
  )
  .meta({
    id: "CollectionName",
    description: "A named namespace of a tenant's documents; searches target one or several.",
  });

/** A job's options: the body of a JSON job without its documents, an NDJSON header, a form field. */
const jobOptionFields = {
  collection: CollectionName.optional().meta({
    description: `Default: "${DEFAULT_COLLECTION}".`,
  }),
  chunking: ChunkingInput.optional(),
  model: z.string().min(1).max(64).optional(),
  open: z.boolean().optional().meta({
    description:
      "Keep the job open for more documents (POST /v1/jobs/{id}/documents) until it is closed; it cannot complete before. Default: false.",
  }),
  cache: z.boolean().optional().meta({
    description:
      "Take vectors already computed and verified for the same text (the tenant's embedding cache) instead of sending those chunks to workers. Default: the deployment's EMBEDDING_CACHE (on).",
  }),
  keepOriginals: z.boolean().optional().meta({
    description:
      "Keep each document's original (sealed, under its content hash) in the document store. Default: true.",
  }),
  verification: Verification.optional().meta({
    description: "Default: the deployment's VERIFICATION (auto).",
  }),
  pool: Pool.optional().meta({ description: "Default: any." }),
  privacy: Privacy.optional().meta({ description: "Default: the deployment's PII_MASK (none)." }),
  retention: Retention.optional().meta({ description: "Default: the tenant's policy (keep)." }),
  webhook: z
    .object({
      url: z.string().min(1).max(2048),
      events: z.array(WebhookEventType).min(1).optional(),
    })
    .optional()
    .meta({
      description: "A webhook for this job only; its signing secret is in the 202 response, once.",
    }),
};

export const CreateJobOptions = z.object(jobOptionFields).strict().meta({
  id: "CreateJobOptions",
  description:
    'A job\'s options without its documents: the first line of an NDJSON body as {"job": {...}}, or the `options` field of a file upload.',
});
export type CreateJobOptions = z.infer<typeof CreateJobOptions>;

export const CreateJobRequest = z
  .object({
    documents: z.array(DocumentInput).min(1).max(REQUEST_LIMITS.maxDocumentsPerJob),
    ...jobOptionFields,
  })
  .refine((r) => r.documents.reduce((n, d) => n + d.text.length, 0) <= REQUEST_LIMITS.maxJobChars, {
    message: `a job may hold at most ${REQUEST_LIMITS.maxJobChars} characters of text`,
  })
  .refine(
    (r) => {
      const ids = r.documents.flatMap((d) => (d.id ? [d.id] : []));
      return new Set(ids).size === ids.length;
    },
    { message: "document ids must be unique within a job" },
  )
  .meta({ id: "CreateJobRequest" });
export type CreateJobRequest = z.infer<typeof CreateJobRequest>;

export const Job = z
  .object({
    id: z.string(),
    status: JobStatus,
    model: z.string(),
    collection: z.string(),
    documents: z.number().int(),
    documentsUnchanged: z.number().int().meta({
      description:
        "Documents submitted again exactly as their current version: skipped, nothing computed.",
    }),
    chunks: z.object({
      total: z.number().int(),
      done: z.number().int(),
      failed: z.number().int(),
      cached: z.number().int().meta({
        description:
          "Chunks whose vector came from the embedding cache (also counted in done): no worker computed them.",
      }),
    }),
    accepting: z.boolean().meta({
      description: "True while the job takes more documents; it completes only once closed.",
    }),
    keepOriginals: z.boolean().meta({
      description: "Whether the originals of the job's documents are kept in the document store.",
    }),
    chunking: z.object({ maxChars: z.number().int(), overlap: z.number().int() }),
    verification: Verification,
    pool: Pool,
    privacy: z.object({ mask: z.array(PiiKind) }),
    retention: z.object({
      textDays: z.number().int().nullable(),
      textPurgedAt: z.string().optional().meta({
        description: "When the job's raw documents and chunk text were dropped.",
      }),
    }),
    createdAt: z.string(),
    completedAt: z.string().optional(),
    webhook: z
      .object({ id: z.string(), url: z.string(), secret: z.string().optional() })
      .optional()
      .meta({ description: "The job's own webhook; the secret appears only in the 202 response." }),
  })
  .meta({ id: "Job" });
export type Job = z.infer<typeof Job>;

export const Chunk = z
  .object({
    id: z.string(),
    jobId: z.string(),
    documentId: z.string(),
    collection: z.string(),
    index: z.number().int(),
    text: z.string().nullable().meta({
      description: "null once the job's text retention has ended (the vector stays).",
    }),
    /** Offsets of the chunk in its document's text. */
    start: z.number().int(),
    end: z.number().int(),
    metadata: z.record(z.string(), z.unknown()),
    headings: z.array(z.string()).optional().meta({
      description: "The headings the chunk sits under in its document, outermost first.",
    }),
    page: z.number().int().optional().meta({ description: "The PDF page the chunk is on." }),
    status: z.enum(["pending", "done", "failed"]),
    error: z.string().optional().meta({ description: "Why the chunk failed, when it did." }),
    vector: z.array(z.number()).optional(),
  })
  .meta({ id: "Chunk" });
export type Chunk = z.infer<typeof Chunk>;

export const ChunkPage = z
  .object({ data: z.array(Chunk), nextCursor: z.string().nullable() })
  .meta({ id: "ChunkPage" });
export type ChunkPage = z.infer<typeof ChunkPage>;

export const ChunkQuery = z.object({
  cursor: z.string().max(64).optional(),
  limit: z.coerce.number().int().min(1).max(1000).default(100),
  includeVectors: z
    .enum(["true", "false", "1", "0"])
    .optional()
    .transform((s) => s === "true" || s === "1"),
});

export const JobListQuery = z.object({
  status: JobStatus.optional(),
  collection: CollectionName.optional(),
  cursor: z.string().max(128).optional(),
  limit: z.coerce.number().int().min(1).max(100).default(20),
});

export const JobList = z
  .object({ data: z.array(Job), nextCursor: z.string().nullable() })
  .meta({ id: "JobList" });
export type JobList = z.infer<typeof JobList>;

export const AppendDocumentsRequest = z
  .object({
    documents: z.array(DocumentInput).min(1).max(REQUEST_LIMITS.maxDocumentsPerJob),
    close: z.boolean().optional().meta({
      description: "Close the job after these documents: it completes once they are done.",
    }),
  })
  .strict()
  .meta({ id: "AppendDocumentsRequest" });
export type AppendDocumentsRequest = z.infer<typeof AppendDocumentsRequest>;

/** A document or line the edge did not take, and why; the others were taken. */
export const IngestRejection = z
  .object({
    line: z.number().int().optional().meta({ description: "NDJSON line (1-based)." }),
    file: z.string().optional().meta({ description: "Uploaded file name." }),
    id: z.string().optional(),
    code: z.string(),
    message: z.string(),
  })
  .meta({ id: "IngestRejection" });
export type IngestRejection = z.infer<typeof IngestRejection>;

export const IngestReport = z
  .object({
    accepted: z.number().int().meta({ description: "Documents taken into the job." }),
    unchanged: z.number().int().meta({
      description: "Of those, documents identical to their current version (skipped).",
    }),
    rejected: z.number().int(),
    rejections: z.array(IngestRejection).meta({ description: "The first 100 rejections." }),
  })
  .meta({ id: "IngestReport" });
export type IngestReport = z.infer<typeof IngestReport>;

export const DOCUMENT_VERSION_STATES = [
  "pending",
  "current",
  "superseded",
  "failed",
  "cancelled",
] as const;

export const DocumentVersion = z
  .object({
    version: z.number().int(),
    state: z.enum(DOCUMENT_VERSION_STATES).meta({
      description:
        "pending: being indexed (search shows the current version meanwhile); current: the version search shows; superseded: replaced by a later version (its chunks are gone); failed or cancelled: never became current.",
    }),
    jobId: z.string(),
    chunks: z.number().int(),
    chars: z.number().int(),
    contentHash: z.string().nullable(),
    original: z.boolean().meta({ description: "Whether the original is kept." }),
    createdAt: z.string().nullable(),
    error: z.string().optional(),
  })
  .meta({ id: "DocumentVersion" });
export type DocumentVersion = z.infer<typeof DocumentVersion>;

export const DocumentStatus = z.enum(["indexing", "ready", "failed"]).meta({
  id: "DocumentStatus",
  description:
    "indexing: its newest version is being computed; ready: its current version is searchable with every chunk computed, and no newer one is pending; failed: it has no current version, or its current version's job ended with chunks not computed (cancelled, or chunks failed: send it again to finish it).",
});

export const Document = z
  .object({
    id: z.string(),
    collection: z.string(),
    status: DocumentStatus,
    metadata: z.record(z.string(), z.unknown()),
    current: DocumentVersion.nullable(),
    pending: DocumentVersion.nullable(),
    versions: z.array(DocumentVersion).meta({ description: "Every version, newest first." }),
  })
  .meta({ id: "Document" });
export type Document = z.infer<typeof Document>;

export const DocumentSummary = Document.omit({ versions: true }).meta({ id: "DocumentSummary" });
export type DocumentSummary = z.infer<typeof DocumentSummary>;

export const DocumentList = z
  .object({ data: z.array(DocumentSummary), nextCursor: z.string().nullable() })
  .meta({ id: "DocumentList" });
export type DocumentList = z.infer<typeof DocumentList>;

export const DocumentListQuery = z.object({
  collection: CollectionName.optional().meta({ description: "Default: all collections." }),
  status: DocumentStatus.optional(),
  jobId: z
    .string()
    .max(64)
    .optional()
    .meta({ description: "Documents with a version in this job." }),
  prefix: z.string().max(128).optional().meta({ description: "Ids starting with this." }),
  cursor: z.string().max(256).optional(),
  limit: z.coerce.number().int().min(1).max(100).default(20),
});

export const DocumentParams = z.object({
  id: z.string().min(1).max(128),
});

export const DocumentQuery = z.object({
  collection: CollectionName.optional().meta({
    description:
      "The document's collection; when absent, the one collection holding a document of this id (422 when several do).",
  }),
});

const FilterScalar = z.union([z.string().max(1024), z.number(), z.boolean()]);
const FilterOperators = z
  .object({
    $eq: z.union([FilterScalar, z.null()]).optional(),
    $ne: z.union([FilterScalar, z.null()]).optional(),
    $in: z.array(FilterScalar).max(100).optional(),
    $nin: z.array(FilterScalar).max(100).optional(),
    $lt: z.union([z.string().max(1024), z.number()]).optional(),
    $lte: z.union([z.string().max(1024), z.number()]).optional(),
    $gt: z.union([z.string().max(1024), z.number()]).optional(),
    $gte: z.union([z.string().max(1024), z.number()]).optional(),
  })
  .strict()
  .refine((o) => Object.keys(o).length > 0, { message: "a filter condition needs an operator" });

export const SearchFilter = z
  .record(z.string().min(1).max(128), z.union([FilterScalar, z.null(), FilterOperators]))
  .refine((f) => Object.keys(f).length <= 10, { message: "a filter has at most 10 keys" })
  .meta({
    id: "SearchFilter",
    description:
      "Vectorize's metadata filter: keys are jobId, documentId, collection or a filterable document metadata key (GET /v1/collections lists them); a value means equality, or an object of $eq, $ne, $in, $nin, $lt, $lte, $gt, $gte, all of which must hold. Numbers compare with numbers and strings with strings; $ne and $nin also match chunks without the key.",
  });
export type SearchFilter = z.infer<typeof SearchFilter>;

export const SEARCH_MODES = ["vector", "keyword", "hybrid"] as const;
export const SearchMode = z.enum(SEARCH_MODES).meta({
  id: "SearchMode",
  description:
    "vector: by meaning (cosine similarity); keyword: by the query's words (BM25 over chunk text); hybrid: both lists fused by reciprocal rank, which finds exact names and codes that meaning alone misses.",
});
export type SearchMode = z.infer<typeof SearchMode>;

export const SearchRequest = z
  .object({
    query: WellFormedText().min(1).max(REQUEST_LIMITS.maxQueryChars),
    topK: z.number().int().min(1).max(REQUEST_LIMITS.maxTopK).default(10),
    mode: SearchMode.default("vector"),
    model: z.string().min(1).max(64).optional(),
    pool: Pool.optional().meta({
      description: "Which workers may embed the query (default any); own keeps it on your workers.",
    }),
    collections: z.array(CollectionName).min(1).max(10).optional().meta({
      description: "Collections to search; all of the tenant's when absent.",
    }),
    filter: SearchFilter.optional(),
    minScore: z.number().finite().optional().meta({
      description:
        "Leave out results whose score is below this: a cosine similarity in vector mode, a BM25 score in keyword mode, a fused reciprocal-rank score in hybrid mode.",
    }),
    includeText: z.boolean().default(true),
    includeMetadata: z.boolean().default(true),
    includeVectors: z.boolean().default(false),
  })
  .strict()
  .meta({ id: "SearchRequest" });
export type SearchRequest = z.input<typeof SearchRequest>;

export const SearchResult = z
  .object({
    score: z.number().meta({ description: "The score the results are ranked by (see minScore)." }),
    scores: z
      .object({
        vector: z.number().optional().meta({ description: "Cosine similarity to the query." }),
        keyword: z.number().optional().meta({ description: "BM25 score of the query's words." }),
      })
      .meta({ description: "The score of each list the chunk was found in." }),
    chunk: Chunk.omit({
      status: true,
      vector: true,
      error: true,
      text: true,
      metadata: true,
    }).extend({
      text: Chunk.shape.text.optional(),
      metadata: Chunk.shape.metadata.optional(),
      vector: z.array(z.number()).optional(),
    }),
  })
  .meta({ id: "SearchResult" });
export type SearchResult = z.infer<typeof SearchResult>;

export const SearchResponse = z
  .object({ mode: SearchMode, results: z.array(SearchResult) })
  .meta({ id: "SearchResponse" });
export type SearchResponse = z.infer<typeof SearchResponse>;

export const Collection = z
  .object({
    name: z.string(),
    jobs: z.number().int(),
    documents: z.number().int(),
    chunks: z.number().int(),
    createdAt: z.string(),
    updatedAt: z.string(),
  })
  .meta({ id: "Collection" });
export type Collection = z.infer<typeof Collection>;

export const CollectionList = z
  .object({
    data: z.array(Collection),
    filterable: z.array(z.string()).meta({
      description:
        "Document metadata keys searches can filter on, besides jobId, documentId and collection.",
    }),
  })
  .meta({ id: "CollectionList" });
export type CollectionList = z.infer<typeof CollectionList>;

export const EmbeddingsRequest = z
  .object({
    input: z.union([
      WellFormedText().min(1).max(REQUEST_LIMITS.maxQueryChars),
      z
        .array(WellFormedText().min(1).max(REQUEST_LIMITS.maxQueryChars))
        .min(1)
        .max(REQUEST_LIMITS.maxEmbeddingInputs),
    ]),
    model: z.string().min(1).max(64),
    encoding_format: z.enum(["float", "base64"]).optional(),
    dimensions: z.number().int().positive().optional(),
    user: z.string().max(256).optional(),
    pool: Pool.optional().meta({
      description: "Which workers may embed the input (default any); own keeps it on your workers.",
    }),
  })
  .meta({ id: "EmbeddingsRequest" });
export type EmbeddingsRequest = z.infer<typeof EmbeddingsRequest>;

export const EmbeddingsResponse = z
  .object({
    object: z.literal("list"),
    data: z.array(
      z.object({
        object: z.literal("embedding"),
        index: z.number().int(),
        embedding: z.union([z.array(z.number()), z.string()]),
      }),
    ),
    model: z.string(),
    usage: z.object({ prompt_tokens: z.number().int(), total_tokens: z.number().int() }),
  })
  .meta({ id: "EmbeddingsResponse" });
export type EmbeddingsResponse = z.infer<typeof EmbeddingsResponse>;

export const ErrorCode = z.enum([
  "bad_request",
  "invalid_json",
  "validation_failed",
  "unauthorized",
  "forbidden",
  "quarantined",
  "not_found",
  "model_not_found",
  "conflict",
  "payload_too_large",
  "unsupported_media_type",
  "unprocessable",
  "rate_limited",
  "quota_exceeded",
  "expired",
  "not_configured",
  "no_capacity",
  "internal",
]);
export type ErrorCode = z.infer<typeof ErrorCode>;

export const ErrorBody = z
  .object({
    error: z.object({
      code: ErrorCode,
      message: z.string(),
      details: z.unknown().optional(),
    }),
  })
  .meta({ id: "Error" });
export type ErrorBody = z.infer<typeof ErrorBody>;

/** The events an endpoint gets when it names none: every terminal job event. */
export const DEFAULT_WEBHOOK_EVENTS: WebhookEventType[] = [
  "job.completed",
  "job.completed_with_errors",
  "job.failed",
  "job.cancelled",
];

export const CreateWebhookRequest = z
  .object({
    url: z.string().min(1).max(2048),
    events: z.array(WebhookEventType).min(1).max(WEBHOOK_EVENT_TYPES.length).optional(),
  })
  .meta({ id: "CreateWebhookRequest" });
export type CreateWebhookRequest = z.infer<typeof CreateWebhookRequest>;

export const UpdateWebhookRequest = z
  .object({
    url: z.string().min(1).max(2048).optional(),
    events: z.array(WebhookEventType).min(1).max(WEBHOOK_EVENT_TYPES.length).optional(),
  })
  .strict()
  .refine((r) => r.url !== undefined || r.events !== undefined, {
    message: "send url, events or both",
  })
  .meta({ id: "UpdateWebhookRequest" });
export type UpdateWebhookRequest = z.infer<typeof UpdateWebhookRequest>;

export const WebhookEndpoint = z
  .object({
    id: z.string(),
    url: z.string(),
    events: z.array(WebhookEventType),
    jobId: z.string().nullable(),
    createdAt: z.string(),
    secret: z
      .string()
      .optional()
      .meta({ description: "Signing secret (whsec_…); shown only when created." }),
  })
  .meta({ id: "WebhookEndpoint" });
export type WebhookEndpoint = z.infer<typeof WebhookEndpoint>;

export const WebhookDelivery = z
  .object({
    id: z.string().meta({ description: "The webhook-id header: the same on every attempt." }),
    endpointId: z.string(),
    eventType: z.string(),
    jobId: z.string().nullable(),
    status: z.enum(["pending", "delivered", "exhausted", "cancelled"]),
    attempts: z.number().int(),
    nextAttemptAt: z.string().nullable(),
    createdAt: z.string(),
    lastResponseCode: z.number().int().nullable(),
    lastLatencyMs: z.number().int().nullable(),
    attemptLog: z.array(
      z.object({
        at: z.string(),
        responseCode: z.number().int().nullable(),
        latencyMs: z.number().int().nullable().meta({
          description: "Time to the response, in 10 ms steps; null when no response came.",
        }),
        error: z
          .enum(["connection_failed", "timeout", "http_error", "target_not_allowed"])
          .nullable()
          .meta({
            description:
              "Why the attempt failed, null when delivered. Only the class is given, never the underlying network error. target_not_allowed: the deployment no longer allows the endpoint's URL, and the delivery was cancelled.",
          }),
      }),
    ),
  })
  .meta({ id: "WebhookDelivery" });
export type WebhookDelivery = z.infer<typeof WebhookDelivery>;

/** One connected worker as GET /v1/workers lists it. */
export const WorkerInfo = z
  .object({
    id: z.string(),
    token: z
      .string()
      .meta({ description: "The worker token it joined with (what an operator revokes)." }),
    name: z.string().nullable(),
    version: z.string().nullable(),
    models: z.array(z.string()),
    device: z.string().nullable(),
    threads: z.number().int().nullable(),
    connectedAt: z.string(),
    capacity: z.number().int().meta({ description: "Tasks the worker says it can hold at once." }),
    limit: z.number().int().meta({
      description:
        "The most it may hold now: its capacity within what it earned and its error budget.",
    }),
    held: z.number().int().meta({ description: "Tasks it holds now (open leases)." }),
    room: z.number().int(),
    draining: z.boolean(),
    coolingDown: z.boolean(),
    failures: z.number().int().meta({
      description:
        "Failures since its last good result (its error budget: 2 throttle it to one task, 5 cool it down).",
    }),
    chunksDone: z.number().int().meta({ description: "Chunks credited on this connection." }),
    chunksPerSecond: z
      .number()
      .meta({ description: "Chunks credited per second over the last minute." }),
  })
  .meta({ id: "WorkerInfo" });
export type WorkerInfo = z.infer<typeof WorkerInfo>;

export const DonorReputation = z
  .object({
    donor: z.string(),
    agreed: z.number().int().meta({ description: "Results another donor confirmed." }),
    disagreed: z
      .number()
      .int()
      .meta({ description: "Times it was outvoted by two donors that agreed." }),
    streak: z.number().int(),
    quarantinedAt: z.number().nullable(),
    reason: z.string().nullable(),
    trusted: z.boolean(),
  })
  .meta({ id: "DonorReputation" });

export const WorkerList = z
  .object({
    model: z.string(),
    vectors: z
      .number()
      .int()
      .optional()
      .meta({ description: "Vectors in the model's index (operators)." }),
    shards: z.array(
      z.object({
        workers: z.array(WorkerInfo),
        tasks: z
          .record(z.string(), z.number())
          .optional()
          .meta({ description: "Tasks by state (operators)." }),
        health: z
          .object({
            readyTasks: z.number().int(),
            oldestReadyMs: z.number(),
            workers: z.number().int(),
            workersWithRoom: z.number().int(),
            stalled: z.boolean(),
          })
          .optional(),
        donors: z.array(DonorReputation).optional().meta({
          description: "Each donor's verification record (operators).",
        }),
      }),
    ),
  })
  .meta({ id: "WorkerList" });
export type WorkerList = z.infer<typeof WorkerList>;

/** A model this deployment serves, as GET /v1/models lists it (OpenAI's shape, and more). */
export const ModelObject = z
  .object({
    id: z.string(),
    object: z.literal("model"),
    created: z.number().int().meta({ description: "Unix seconds; 0 for a built-in model." }),
    owned_by: z.string(),
    dimension: z.number().int(),
    maxTokens: z.number().int().meta({ description: "The model's token window." }),
    defaultChunkChars: z.number().int(),
    maxChunkChars: z.number().int(),
    manifest: z
      .object({ url: z.string(), sha256: z.string() })
      .optional()
      .meta({ description: "Where workers fetch the model (absent for a built-in model)." }),
    workers: z.number().int().meta({ description: "Workers connected for it now." }),
  })
  .meta({ id: "Model" });
export type ModelObject = z.infer<typeof ModelObject>;

export const ModelList = z
  .object({ object: z.literal("list"), data: z.array(ModelObject) })
  .meta({ id: "ModelList" });
export type ModelList = z.infer<typeof ModelList>;
