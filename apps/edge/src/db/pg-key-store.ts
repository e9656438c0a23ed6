import { sql } from "drizzle-orm";
import type { KeyRow, Rewrap, TenantKeyStore } from "../lib/key-store.js";
import type { PgClient } from "./pg-client.js";

const COLUMNS = sql.raw("tenant, version, wrapped, wrapped_by, created_at");
/** Tries of an added version that met a concurrent rotation (each loser tries the next number). */
const ADD_TRIES = 8;

/** `tenant_keys` in Postgres (the table of schema-pg.ts). */
export class PgKeyStore implements TenantKeyStore {
  readonly name: string;

  /** `database` tells databases apart in `name` (the connection string; no credentials kept). */
  constructor(
    private readonly pg: PgClient,
    database: string,
  ) {
    let where = database;
    try {
      const u = new URL(database);
      where = `${u.host}${u.pathname}`;
    } catch {
      // Not a URL: named as given.
    }
    this.name = `postgres:${where}`;
  }

  private rows<T>(query: ReturnType<typeof sql>): Promise<T[]> {
    return this.pg.run(async (db) => (await db.execute(query)).rows as T[]);
  }

  async addVersion(tenant: string, wrapped: string, wrappedBy: string, at: string) {
    // Two rotations at once read the same highest version: the unique index lets one in and the
    // other inserts nothing, then tries the next number. (D1 runs one writer at a time.)
    for (let i = 0; i < ADD_TRIES; i++) {
      const [row] = await this.rows<{ version: number }>(sql`INSERT INTO tenant_keys
          (tenant, version, wrapped, wrapped_by, created_at)
        SELECT ${tenant}::text, COALESCE(MAX(version), 0) + 1, ${wrapped}::text, ${wrappedBy}::text, ${at}::text
        FROM tenant_keys WHERE tenant = ${tenant}
        ON CONFLICT DO NOTHING RETURNING version`);
      if (row) return row.version;
    }
    return null;
  }

  async addFirst(tenant: string, wrapped: string, wrappedBy: string, at: string) {
    await this.rows(sql`INSERT INTO tenant_keys (tenant, version, wrapped, wrapped_by, created_at)
      VALUES (${tenant}, 1, ${wrapped}, ${wrappedBy}, ${at}) ON CONFLICT DO NOTHING`);
  }

  async newest(tenant: string) {
    const [row] = await this.rows<KeyRow>(
      sql`SELECT ${COLUMNS} FROM tenant_keys WHERE tenant = ${tenant} ORDER BY version DESC LIMIT 1`,
    );
    return row ?? null;
  }

  async get(tenant: string, version: number) {
    const [row] = await this.rows<KeyRow>(
      sql`SELECT ${COLUMNS} FROM tenant_keys WHERE tenant = ${tenant} AND version = ${version}`,
    );
    return row ?? null;
  }

  list(tenant: string) {
    return this.rows<Pick<KeyRow, "version" | "wrapped_by" | "created_at">>(
      sql`SELECT version, wrapped_by, created_at FROM tenant_keys WHERE tenant = ${tenant} ORDER BY version`,
    );
  }

  notWrappedBy(by: string, after: [string, number], limit: number) {
    return this.rows<KeyRow>(sql`SELECT tenant, version, wrapped, wrapped_by FROM tenant_keys
      WHERE wrapped_by <> ${by} AND (tenant, version) > (${after[0]}::text, ${after[1]}::int)
      ORDER BY tenant, version LIMIT ${limit}`);
  }

  async rewrap(updates: Rewrap[]) {
    if (updates.length === 0) return 0;
    const input = JSON.stringify(
      updates.map((u) => ({
        tenant: u.tenant,
        version: u.version,
        old_wrapped: u.from.wrapped,
        old_by: u.from.wrappedBy,
        wrapped: u.to.wrapped,
        new_by: u.to.wrappedBy,
      })),
    );
    // One statement: all of the page's rewraps, each applied only to a row still as it was read.
    const changed = await this.rows<{ version: number }>(sql`UPDATE tenant_keys k
      SET wrapped = x.wrapped, wrapped_by = x.new_by
      FROM json_to_recordset(${input}::json) AS x(tenant text, version int, old_wrapped text,
        old_by text, wrapped text, new_by text)
      WHERE k.tenant = x.tenant AND k.version = x.version AND k.wrapped = x.old_wrapped
        AND k.wrapped_by = x.old_by
      RETURNING k.version`);
    return changed.length;
  }

  async countNotWrappedBy(by: string) {
    const [row] = await this.rows<{ n: number }>(
      sql`SELECT count(*)::int AS n FROM tenant_keys WHERE wrapped_by <> ${by}`,
    );
    return row?.n ?? 0;
  }

  async destroy(tenant: string) {
    const deleted = await this.rows(
      sql`DELETE FROM tenant_keys WHERE tenant = ${tenant} RETURNING version`,
    );
    return deleted.length;
  }
}
