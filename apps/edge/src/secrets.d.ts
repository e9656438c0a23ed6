// Secrets are not in wrangler.toml, so `wrangler types` does not list them.
declare namespace Cloudflare {
  interface Env {
    /** Deployment keys that wrap each tenant's data keys: `id:base64,…`, the first current. */
    P2PA_DATA_KEYS?: string;
    /** Bootstrap credentials: lines of `kind:tenant:sha256hex`. */
    P2PA_CREDENTIALS?: string;
  }
}
