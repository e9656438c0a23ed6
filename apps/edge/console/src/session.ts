import { ApiError, createP2paClient, type P2paClient, unwrap } from "@p2pa/shared/client";

/**
 * The signed-in API key lives only in this tab's sessionStorage: closing the tab signs out,
 * and nothing is kept on disk or sent anywhere but this origin's API.
 */
const STORAGE_KEY = "p2pa.console.key";

export interface Session {
  client: P2paClient;
  /** An operator key: the workers page shows the whole fleet. */
  operator: boolean;
}

export const storedKey = () => sessionStorage.getItem(STORAGE_KEY);

function clientFor(key: string): P2paClient {
  return createP2paClient({ server: location.origin, key });
}

/**
 * Checks a key against the API (listing one job needs `jobs:read`) and keeps it when it works.
 * Throws the API's error (401 for a wrong key) otherwise.
 */
export async function signIn(key: string): Promise<Session> {
  const client = clientFor(key.trim());
  await unwrap(client.api.GET("/v1/jobs", { params: { query: { limit: 1 } } }));
  // Operators see the index size in the worker list; tenants see only their own workers.
  const fleet = await unwrap(client.api.GET("/v1/workers")).catch(() => null);
  sessionStorage.setItem(STORAGE_KEY, key.trim());
  return { client, operator: typeof fleet?.vectors === "number" };
}

export function signOut(): void {
  sessionStorage.removeItem(STORAGE_KEY);
}

/** The readable line for any failure: the API's code and message, or what went wrong. */
export function describeError(err: unknown): { title: string; message: string } {
  if (err instanceof ApiError) {
    if (err.status === 0) return { title: "Network error", message: err.message };
    return { title: `${err.status} ${err.code}`, message: err.message };
  }
  if (err instanceof Error) return { title: err.name, message: err.message };
  return { title: "Error", message: String(err) };
}

export const isUnauthorized = (err: unknown) => err instanceof ApiError && err.status === 401;

export { ApiError, unwrap };
