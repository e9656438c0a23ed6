import { ErrorCode } from "@p2pa/shared";
import { UserError } from "./errors.js";
import { refusalOf } from "./served.js";

/** What the server answered to the connect route, asked over plain HTTP. */
export interface ProbeAnswer {
  /** The server as an http(s) origin. */
  base: URL;
  /** The connect route that was asked. */
  probe: URL;
  res: Response;
  /** How long the answer that counted took. */
  ms: number;
}

/** The server as an http(s) URL (a ws:// or wss:// --server is asked over http:// or https://). */
export function httpBase(server: string): URL {
  return new URL(server.replace(/^ws/, "http"));
}

/**
 * Asks the connect route over plain HTTP, with the token. A server that is restarting or briefly
 * unreachable is waited for up to `waitMs` (as the connection is once running); a wrong address
 * still fails within that time, with what to check. `waitMs` 0 asks once.
 */
export async function reachServer(
  server: string,
  token: string,
  opts: { waitMs: number; log?: (line: string) => void },
): Promise<ProbeAnswer> {
  const base = httpBase(server);
  const probe = new URL("/v1/workers/connect", base);
  const deadline = Date.now() + opts.waitMs;
  for (let delay = 500; ; delay = Math.min(delay * 2, 8000)) {
    const started = performance.now();
    try {
      const res = await fetch(probe, {
        headers: { Authorization: `Bearer ${token}` },
        signal: AbortSignal.timeout(10_000),
      });
      return { base, probe, res, ms: performance.now() - started };
    } catch (err) {
      const cause = whyUnreachable(err);
      if (Date.now() + delay > deadline)
        throw new UserError(
          `cannot reach the server at ${base.origin} (${cause})`,
          "Check --server and that the server is running.",
          3,
        );
      opts.log?.(`cannot reach ${base.origin} yet (${cause}); trying again in ${delay / 1000} s`);
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

/**
 * fetch says only "fetch failed"; its cause says why: a code (ECONNREFUSED, ENOTFOUND), one per
 * address tried (localhost has two), or a message (e.g. "bad port" for ports browsers block).
 */
function whyUnreachable(err: unknown): string {
  const cause = (
    err as { cause?: { code?: string; message?: string; errors?: { code?: string }[] } }
  ).cause;
  return (
    cause?.code ?? cause?.errors?.[0]?.code ?? cause?.message ?? String((err as Error).message)
  );
}

/**
 * What an answer to the probe means. A p2pa server answers a plain GET of the WebSocket route
 * with 426 once the token is a worker token's (or refuses the model it defaults to, after the
 * token); 401 and 403 say what is wrong with the token.
 * `failed` names what the person should look at: the server address or the token.
 */
export type ProbeVerdict =
  | { ok: true; url: URL }
  | { ok: false; failed: "server" | "token"; error: UserError };

export async function judgeProbe({ base, probe, res }: ProbeAnswer): Promise<ProbeVerdict> {
  const token = (error: UserError): ProbeVerdict => ({ ok: false, failed: "token", error });
  if (res.status === 401)
    return token(
      new UserError("the server rejected the token", "Ask the operator for a worker token.", 4),
    );
  if (res.status === 403) {
    const body = (await res.json().catch(() => null)) as {
      error?: { code?: string; message?: string };
    } | null;
    if (body?.error?.code === ErrorCode.enum.quarantined)
      return token(
        new UserError(
          `the server quarantined this token: ${body.error.message ?? ""}`,
          "Check this machine's model and hardware, then ask the operator for a new token.",
          4,
        ),
      );
    return token(
      new UserError(
        "that token is an API key, not a worker token",
        "Use the worker token the operator gave you.",
        4,
      ),
    );
  }
  // A server that checks the model before the upgrade refuses the default one it was asked about:
  // it took the token (that is checked first), and each model is asked about on its own.
  const refused =
    (res.status === 404 || res.status === 422) &&
    refusalOf(res.status, await res.json().catch(() => null)) !== null;
  // Nothing else reads the body; dropping it frees the connection.
  await res.body?.cancel().catch(() => undefined);
  if (res.status !== 426 && !refused)
    return {
      ok: false,
      failed: "server",
      error: new UserError(
        `unexpected answer ${res.status} from ${probe.href}`,
        "Is --server a p2pa server?",
        3,
      ),
    };
  const url = new URL(probe);
  url.protocol = base.protocol === "https:" ? "wss:" : "ws:";
  return { ok: true, url };
}

/**
 * Checks the server answers and takes the token before any socket is opened, trying a server it
 * cannot reach for up to `waitMs`; returns the WebSocket URL to connect to.
 */
export async function preflight(
  server: string,
  token: string,
  waitMs: number,
  log: (line: string) => void,
): Promise<URL> {
  const verdict = await judgeProbe(await reachServer(server, token, { waitMs, log }));
  if (!verdict.ok) throw verdict.error;
  return verdict.url;
}
