/** Which webhook targets a deployment accepts: public only, plus loopback, or anything. */
export type PrivateTargets = "none" | "loopback" | "all";

export function parsePrivateTargets(raw: string | undefined): PrivateTargets {
  return raw === "loopback" || raw === "all" ? raw : "none";
}

function ipv4(host: string): number[] | null {
  const m = host.match(/^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/);
  if (!m) return null;
  const parts = m.slice(1).map(Number);
  return parts.every((p) => p <= 255) ? parts : null;
}

/** Classifies a URL host: loopback, private (RFC 1918, link-local, CGNAT, ULA…) or public. */
export function classifyHost(hostname: string): "loopback" | "private" | "public" {
  const host = hostname.toLowerCase().replace(/^\[|\]$/g, "");
  if (host === "localhost" || host.endsWith(".localhost")) return "loopback";
  if (
    host.endsWith(".local") ||
    host.endsWith(".internal") ||
    host.endsWith(".lan") ||
    (!host.includes(".") && !host.includes(":"))
  ) {
    return "private";
  }
  const v4 = ipv4(host);
  if (v4) {
    const [a, b] = v4 as [number, number, number, number];
    if (a === 127) return "loopback";
    if (a === 10 || a === 0 || (a === 172 && b >= 16 && b <= 31) || (a === 192 && b === 168))
      return "private";
    if (a === 169 && b === 254) return "private";
    if (a === 100 && b >= 64 && b <= 127) return "private";
    if (a >= 224) return "private";
    return "public";
  }
  if (host.includes(":")) {
    if (host === "::1") return "loopback";
    if (host === "::" || /^f[cd]/.test(host) || /^fe[89ab]/.test(host)) return "private";
    const mapped = host.match(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/);
    if (mapped?.[1]) return classifyHost(mapped[1]);
    return "public";
  }
  return "public";
}

/** Why a webhook URL is refused under the deployment's policy, or null when it is allowed. */
export function checkTarget(raw: string, policy: PrivateTargets): string | null {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return "not a valid URL";
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") return "must be an http(s) URL";
  if (url.username || url.password) return "must not carry credentials";
  const kind = classifyHost(url.hostname);
  if (kind === "public")
    return url.protocol === "https:" || policy !== "none" ? null : "must use https";
  if (policy === "all") return null;
  if (kind === "loopback" && policy === "loopback") return null;
  return `targets a ${kind} address, which this deployment does not allow`;
}
