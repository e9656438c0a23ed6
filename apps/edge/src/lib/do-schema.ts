/**
 * Creates a Durable Object's tables once per schema version: a `meta` row per component
 * records the version applied, so constructors can call this on every start cheaply.
 * Run it under `blockConcurrencyWhile`.
 */
export function migrateOnce(
  sql: SqlStorage,
  component: string,
  version: number,
  ddl: string,
): void {
  sql.exec("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)");
  const row = sql
    .exec<{ value: string }>("SELECT value FROM meta WHERE key = ?", component)
    .toArray()[0];
  if (Number(row?.value ?? 0) >= version) return;
  sql.exec(ddl);
  sql.exec("INSERT OR REPLACE INTO meta VALUES (?, ?)", component, String(version));
}
