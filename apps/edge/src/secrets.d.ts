// Secrets are not in wrangler.toml, so `wrangler types` does not list them.
declare namespace Cloudflare {
  interface Env {
    /** Deployment keys that wrap each tenant's data keys: `id:base64,…`, the first current. */
    P2PA_DATA_KEYS?: string;
    /** Bootstrap credentials: lines of `kind:tenant:sha256hex`. */
    P2PA_CREDENTIALS?: string;
    /** Postgres connection string, when the metadata store or the vector index is Postgres. */
    DATABASE_URL?: string;
    /** A WebSocket proxy of one's own in front of Postgres (`host:port/path`), instead of Neon's. */
    PG_WS_PROXY?: string;
  }
}
