import { z } from "zod";

/**
 * What an API key may do. A key holds one or more scopes; `admin` manages the tenant itself
 * (keys, audit log, retention, erasure) and implies every other scope.
 */
export const SCOPES = ["jobs:write", "jobs:read", "search", "webhooks", "admin"] as const;
export const Scope = z.enum(SCOPES).meta({
  id: "Scope",
  description:
    "jobs:write submits, cancels and deletes jobs and documents; jobs:read reads jobs, chunks, exports, live progress and workers; search runs /v1/search and /v1/embeddings; webhooks manages webhook endpoints; admin manages keys, the audit log, retention and the tenant, and implies every other scope.",
});
export type Scope = z.infer<typeof Scope>;

/** Limits that apply to one key or to a whole tenant; 0 or absent: no limit. */
export const Quotas = z
  .object({
    requestsPerMinute: z.number().int().min(0).max(1_000_000).optional(),
    chunksPerDay: z.number().int().min(0).max(1_000_000_000).optional(),
    storedVectors: z.number().int().min(0).max(1_000_000_000).optional().meta({
      description: "Tenant only: chunks kept in the index (stored or still being computed).",
    }),
  })
  .strict()
  .meta({ id: "Quotas" });
export type Quotas = z.infer<typeof Quotas>;

export const CreateKeyRequest = z
  .object({
    kind: z.enum(["api", "worker"]).default("api").meta({
      description: "api: a key for this API; worker: a join token for p2pa-worker.",
    }),
    label: z.string().min(1).max(128),
    scopes: z.array(Scope).min(1).max(SCOPES.length).optional().meta({
      description: "For api keys; default every scope except admin.",
    }),
    expiresAt: z.iso.datetime({ offset: true }).optional(),
    quotas: Quotas.omit({ storedVectors: true }).optional(),
  })
  .strict()
  .meta({ id: "CreateKeyRequest" });
export type CreateKeyRequest = z.infer<typeof CreateKeyRequest>;

export const UpdateKeyRequest = z
  .object({
    label: z.string().min(1).max(128).optional(),
    quotas: Quotas.omit({ storedVectors: true }).optional(),
  })
  .strict()
  .meta({ id: "UpdateKeyRequest" });
export type UpdateKeyRequest = z.infer<typeof UpdateKeyRequest>;

export const ApiKey = z
  .object({
    id: z.string(),
    kind: z.enum(["api", "worker", "admin"]),
    label: z.string().nullable(),
    prefix: z.string().nullable().meta({ description: "The secret's first characters." }),
    scopes: z.array(Scope),
    quotas: Quotas,
    createdAt: z.string(),
    expiresAt: z.string().nullable(),
    lastUsedAt: z.string().nullable(),
    revokedAt: z.string().nullable(),
    secret: z.string().optional().meta({ description: "Shown once, in the 201 response." }),
  })
  .meta({ id: "ApiKey" });
export type ApiKey = z.infer<typeof ApiKey>;

/** Text retention: how long raw documents and chunk text outlive the job's end. */
export const Retention = z
  .object({
    textDays: z.number().int().min(0).max(36_500).nullable().meta({
      description:
        "Days the raw documents and chunk text are kept after the job ends; 0 drops them as soon as it ends (vectors and metadata stay); null keeps them until deleted.",
    }),
  })
  .strict()
  .meta({ id: "Retention" });
export type Retention = z.infer<typeof Retention>;

export const TenantPolicy = z
  .object({ retention: Retention })
  .strict()
  .meta({ id: "TenantPolicy" });
export type TenantPolicy = z.infer<typeof TenantPolicy>;

export const Usage = z
  .object({
    tenant: z.string(),
    quotas: Quotas,
    requestsLastMinute: z.number().int(),
    chunksLast24h: z.number().int(),
    storedVectors: z.number().int(),
    keys: z.array(
      z.object({
        id: z.string(),
        quotas: Quotas,
        requestsLastMinute: z.number().int(),
        chunksLast24h: z.number().int(),
      }),
    ),
  })
  .meta({ id: "Usage" });
export type Usage = z.infer<typeof Usage>;

export const AUDIT_ACTIONS = [
  "job.created",
  "job.cancelled",
  "job.deleted",
  "document.deleted",
  "export.read",
  "webhook.created",
  "webhook.changed",
  "webhook.deleted",
  "key.created",
  "key.changed",
  "key.revoked",
  "quota.changed",
  "policy.changed",
  "encryption.rotated",
  "text.purged",
  "tenant.erased",
] as const;
export type AuditAction = (typeof AUDIT_ACTIONS)[number];

export const AuditEntrySchema = z
  .object({
    seq: z.number().int(),
    at: z.string(),
    tenant: z.string(),
    actor: z.string().meta({ description: "The key id that acted, or system." }),
    action: z.string(),
    target: z.string().nullable(),
    ip: z.string().nullable(),
    userAgent: z.string().nullable(),
    details: z.record(z.string(), z.unknown()),
    prevHash: z.string(),
    hash: z.string().meta({
      description: "SHA-256 of the entry's canonical JSON without hash; chains to prevHash.",
    }),
  })
  .meta({ id: "AuditEntry" });

export const AuditQuery = z.object({
  cursor: z.string().max(64).optional(),
  limit: z.coerce.number().int().min(1).max(500).default(100),
  action: z
    .string()
    .max(64)
    .regex(/^[a-z.]+$/)
    .optional()
    .meta({ description: "An action, or a prefix ending in a dot (job.)." }),
  actor: z.string().max(128).optional(),
  since: z.iso.datetime({ offset: true }).optional(),
  until: z.iso.datetime({ offset: true }).optional(),
  order: z.enum(["asc", "desc"]).default("asc"),
});
