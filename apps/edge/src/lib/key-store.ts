/**
 * Where the keyring keeps tenant data keys (`tenant_keys`): the few reads and writes keyring.ts
 * makes, behind one interface, with D1 here and Postgres in db/pg-key-store.ts. Each write keeps
 * the guarantee the keyring relies on (see each method); the keyring itself never sees SQL.
 */

/** One stored version of a tenant key (column names as stored). */
export interface KeyRow {
  tenant: string;
  version: number;
  /** base64 of the AES-KW wrapped key. */
  wrapped: string;
  /** Id of the deployment key that wrapped it. */
  wrapped_by: string;
  created_at: string;
}

/** A compare-and-set rewrap of one key version. */
export interface Rewrap {
  tenant: string;
  version: number;
  /** What the row must still hold for the rewrap to apply. */
  from: { wrapped: string; wrappedBy: string };
  to: { wrapped: string; wrappedBy: string };
}

export interface TenantKeyStore {
  /**
   * Names the storage: the keyring's per-isolate caches are kept apart per storage, so two
   * stores in one isolate (tests run both backends) never share a tenant's keys.
   */
  readonly name: string;
  /**
   * Adds the tenant's next version (highest + 1, or 1) and returns its number. Concurrent calls
   * each get a version of their own; null only when no version could be added.
   */
  addVersion(
    tenant: string,
    wrapped: string,
    wrappedBy: string,
    at: string,
  ): Promise<number | null>;
  /** Adds version 1 unless the tenant has it already (another isolate may add it at once). */
  addFirst(tenant: string, wrapped: string, wrappedBy: string, at: string): Promise<void>;
  /** The tenant's highest version. */
  newest(tenant: string): Promise<KeyRow | null>;
  get(tenant: string, version: number): Promise<KeyRow | null>;
  /** The tenant's versions in order (no key material). */
  list(tenant: string): Promise<Pick<KeyRow, "version" | "wrapped_by" | "created_at">[]>;
  /** Up to `limit` versions not wrapped by `by`, after `after` in (tenant, version) order. */
  notWrappedBy(by: string, after: [string, number], limit: number): Promise<KeyRow[]>;
  /** Applies the rewraps whose rows are unchanged, in one transaction; returns how many did. */
  rewrap(updates: Rewrap[]): Promise<number>;
  /** How many versions (of all tenants) are not wrapped by `by`. */
  countNotWrappedBy(by: string): Promise<number>;
  /** Deletes all of the tenant's versions; returns how many there were. */
  destroy(tenant: string): Promise<number>;
}

const COLUMNS = "tenant, version, wrapped, wrapped_by, created_at";

/** `tenant_keys` in D1. */
export class D1KeyStore implements TenantKeyStore {
  readonly name = "d1";

  constructor(private readonly db: D1Database) {}

  async addVersion(tenant: string, wrapped: string, wrappedBy: string, at: string) {
    // One statement, so concurrent rotations each get their own version (D1 serialises writes).
    const row = await this.db
      .prepare(
        `INSERT INTO tenant_keys (tenant, version, wrapped, wrapped_by, created_at)
         SELECT ?1, COALESCE(MAX(version), 0) + 1, ?2, ?3, ?4 FROM tenant_keys WHERE tenant = ?1
         ON CONFLICT DO NOTHING RETURNING version`,
      )
      .bind(tenant, wrapped, wrappedBy, at)
      .first<{ version: number }>();
    return row?.version ?? null;
  }

  async addFirst(tenant: string, wrapped: string, wrappedBy: string, at: string) {
    await this.db
      .prepare(
        `INSERT INTO tenant_keys (tenant, version, wrapped, wrapped_by, created_at)
         VALUES (?, 1, ?, ?, ?) ON CONFLICT DO NOTHING`,
      )
      .bind(tenant, wrapped, wrappedBy, at)
      .run();
  }

  newest(tenant: string) {
    return this.db
      .prepare(`SELECT ${COLUMNS} FROM tenant_keys WHERE tenant = ? ORDER BY version DESC LIMIT 1`)
      .bind(tenant)
      .first<KeyRow>();
  }

  get(tenant: string, version: number) {
    return this.db
      .prepare(`SELECT ${COLUMNS} FROM tenant_keys WHERE tenant = ? AND version = ?`)
      .bind(tenant, version)
      .first<KeyRow>();
  }

  async list(tenant: string) {
    const { results } = await this.db
      .prepare(
        "SELECT version, wrapped_by, created_at FROM tenant_keys WHERE tenant = ? ORDER BY version",
      )
      .bind(tenant)
      .all<Pick<KeyRow, "version" | "wrapped_by" | "created_at">>();
    return results;
  }

  async notWrappedBy(by: string, after: [string, number], limit: number) {
    const { results } = await this.db
      .prepare(
        `SELECT tenant, version, wrapped, wrapped_by FROM tenant_keys
         WHERE wrapped_by != ?1 AND (tenant, version) > (?2, ?3)
         ORDER BY tenant, version LIMIT ?4`,
      )
      .bind(by, after[0], after[1], limit)
      .all<KeyRow>();
    return results;
  }

  async rewrap(updates: Rewrap[]) {
    if (updates.length === 0) return 0;
    const statements = updates.map((u) =>
      this.db
        .prepare(
          `UPDATE tenant_keys SET wrapped = ?1, wrapped_by = ?2
           WHERE tenant = ?3 AND version = ?4 AND wrapped = ?5 AND wrapped_by = ?6`,
        )
        .bind(u.to.wrapped, u.to.wrappedBy, u.tenant, u.version, u.from.wrapped, u.from.wrappedBy),
    );
    let changed = 0;
    for (const r of await this.db.batch(statements)) changed += r.meta.changes;
    return changed;
  }

  async countNotWrappedBy(by: string) {
    const left = await this.db
      .prepare("SELECT COUNT(*) AS n FROM tenant_keys WHERE wrapped_by != ?")
      .bind(by)
      .first<{ n: number }>();
    return left?.n ?? 0;
  }

  async destroy(tenant: string) {
    const r = await this.db.prepare("DELETE FROM tenant_keys WHERE tenant = ?").bind(tenant).run();
    return r.meta.changes;
  }
}
