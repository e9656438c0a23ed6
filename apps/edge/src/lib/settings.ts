import { VERIFICATIONS } from "@p2pa/shared";
import { z } from "zod";
import { DEFAULT_VERIFY_POLICY } from "../dispatch/verify.js";

/**
 * The deployment's tunable variables (`[vars]` in wrangler.toml), parsed once per environment
 * with their defaults. A value that is set but not valid is refused with the variable named,
 * rather than quietly replaced by a default the operator did not choose.
 */

const count = (fallback: number, min = 1) => z.coerce.number().int().min(min).default(fallback);
const share = (fallback: number) => z.coerce.number().min(0).max(1).default(fallback);

const SettingsSchema = z.object({
  /** Dispatcher shards per model. */
  DISPATCH_SHARDS: count(1),
  /**
   * Index writers each shard hands its vectors to (vector/index-writer.ts); unset: 4 where the
   * index's client encodes vectors as text (Vectorize, pgvector), none for the local index.
   */
  INDEX_WRITERS: z.coerce.number().int().min(0).max(32).optional(),
  /** How long a worker holds a task before it must renew the lease. */
  LEASE_MS: count(60_000, 1000),
  /** The longest a lease lives however often it is renewed (at least LEASE_MS). */
  LEASE_MAX_MS: count(5 * 60_000, 1000),
  /**
   * About how long a task should take its worker, at the pace its recent results came in: a
   * task's size follows (from 32 chunks to 256), never more than a tenth of LEASE_MS.
   */
  TASK_WORK_MS: count(2_000),
  /** How long after a lease is reassigned a late result from it still counts. */
  LEASE_GIVE_UP_MS: count(10 * 60_000, 1000),
  /** Verification for jobs that do not choose one. */
  VERIFICATION: z.enum(VERIFICATIONS).default("auto"),
  /** Cosine two donors' vectors must reach to agree. */
  VERIFY_MIN_COSINE: z.coerce.number().gt(0).max(1).default(DEFAULT_VERIFY_POLICY.agreeCosine),
  /** Share of a trusted donor's results sent to a second donor anyway. */
  VERIFY_SPOT_RATE: share(DEFAULT_VERIFY_POLICY.spotRate),
  /** Share of leases that carry a known-answer check. */
  VERIFY_CANARY_RATE: share(0.1),
  /** Connections one worker token may hold on a shard. */
  MAX_CONNECTIONS_PER_TOKEN: count(16),
  /** Tasks a shard holds waiting before submits are refused. */
  MAX_BACKLOG_TASKS: count(200_000),
  /** The embedding cache for jobs that do not choose. */
  EMBEDDING_CACHE: z.enum(["on", "off"]).default("on"),
  /** How long one webhook attempt may take. */
  WEBHOOK_TIMEOUT_MS: count(15_000, 100),
  /** At most one job.progress event per job per this many seconds. */
  WEBHOOK_PROGRESS_SECONDS: count(10),
});

export type Settings = z.infer<typeof SettingsSchema>;

/** A variable is set to something it cannot mean (maps to HTTP 503, like a missing key). */
export class SettingsInvalid extends Error {
  constructor(readonly problems: string[]) {
    super(`the deployment's variables are not valid: ${problems.join("; ")}`);
    this.name = "SettingsInvalid";
  }
}

/** Parsed settings by the raw values they came from (a test may change a variable at run time). */
const parsed = new Map<string, Settings>();

/** The deployment's settings; throws `SettingsInvalid` naming each bad variable. */
export function settings(env: Env): Settings {
  const vars: Record<string, unknown> = {};
  for (const key of Object.keys(SettingsSchema.shape)) {
    const raw = (env as unknown as Record<string, unknown>)[key];
    // An empty or missing variable takes its default.
    if (typeof raw === "string" ? raw.trim() !== "" : raw !== undefined) vars[key] = raw;
  }
  const key = JSON.stringify(vars);
  const hit = parsed.get(key);
  if (hit) return hit;
  const r = SettingsSchema.safeParse(vars);
  if (!r.success)
    throw new SettingsInvalid(
      r.error.issues.map(
        (i) => `${i.path.join(".")}=${JSON.stringify(vars[String(i.path[0])])}: ${i.message}`,
      ),
    );
  const out = { ...r.data, LEASE_MAX_MS: Math.max(r.data.LEASE_MAX_MS, r.data.LEASE_MS) };
  if (parsed.size > 100) parsed.clear();
  parsed.set(key, out);
  return out;
}
