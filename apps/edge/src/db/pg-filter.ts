import { type SQL, sql } from "drizzle-orm";
import { compilePostgresFilterParts } from "../vector/postgres-filter.js";
import type { KeywordFilter } from "./store.js";

/**
 * The keyword index's metadata filter on Postgres: the pgvector index's condition
 * (vector/postgres-filter.ts, with the meaning vector/filter.ts specifies, and its validation:
 * an invalid filter fails with the same message as on D1) over `metadata`, a jsonb expression
 * spliced in verbatim, its values bound as drizzle parameters.
 */
export function pgKeywordFilter(f: KeywordFilter, metadata: string): SQL {
  const { text, params } = compilePostgresFilterParts(f.metadata, f.keys, metadata);
  return sql.join(
    text.flatMap((t, i) => (i === 0 ? [sql.raw(t)] : [sql.param(params[i - 1]), sql.raw(t)])),
  );
}
