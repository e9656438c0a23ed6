import { exports } from "cloudflare:workers";

export const KEYS = { api: "test_api_key", other: "other_tenant_key", worker: "test_worker_token" };

/** Calls the edge the way a client would, through its fetch handler. */
export function call(
  path: string,
  init: RequestInit & { key?: string | null; json?: unknown } = {},
) {
  const headers = new Headers(init.headers);
  if (init.key !== null) headers.set("Authorization", `Bearer ${init.key ?? KEYS.api}`);
  let body = init.body;
  if (init.json !== undefined) {
    body = JSON.stringify(init.json);
    if (!headers.has("Content-Type")) headers.set("Content-Type", "application/json");
  }
  return (exports as unknown as { default: Fetcher }).default.fetch(`http://edge.test${path}`, {
    ...init,
    headers,
    body,
  });
}

export async function errorOf(res: Response) {
  const body = (await res.json()) as {
    error: { code: string; message: string; details?: unknown };
  };
  return { status: res.status, ...body.error };
}
