/**
 * Migrates a Durable Object's tables step by step: a `meta` row per component records the
 * schema version applied, and `steps[i]` is the DDL that takes version i to version i + 1.
 * An object created today runs every step; one created by an older release runs only the
 * steps it lacks. Constructors call this on every start; it costs one read when current.
 * Run it under `blockConcurrencyWhile`.
 */
export function migrateOnce(sql: SqlStorage, component: string, steps: readonly string[]): void {
  sql.exec("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)");
  const row = sql
    .exec<{ value: string }>("SELECT value FROM meta WHERE key = ?", component)
    .toArray()[0];
  const applied = Number(row?.value ?? 0);
  for (let v = applied; v < steps.length; v++) {
    sql.exec(steps[v] as string);
    sql.exec("INSERT OR REPLACE INTO meta VALUES (?, ?)", component, String(v + 1));
  }
}
