import ipaddr from "ipaddr.js";

/** Which webhook targets a deployment accepts: public only, plus loopback, or anything. */
export type PrivateTargets = "none" | "loopback" | "all";

export type HostKind = "loopback" | "private" | "public";

export function parsePrivateTargets(raw: string | undefined): PrivateTargets {
  return raw === "loopback" || raw === "all" ? raw : "none";
}

/** Ordinary global unicast (2000::/3); everything else in IPv6 is reserved or local. */
const GLOBAL_UNICAST = ipaddr.IPv6.parse("2000::");
/** The NAT64 well-known prefix (RFC 6052); global only when the address it embeds is. */
const NAT64_WKP = ipaddr.IPv6.parse("64:ff9b::");

/**
 * Names that reach a cloud provider's instance metadata service. Most already fall under the
 * single-label or private-suffix rules; they are listed so that a change to those rules
 * cannot reopen them.
 */
const METADATA_NAMES = [
  "metadata",
  "metadata.google.internal",
  "metadata.goog",
  "instance-data",
  "instance-data.ec2.internal",
  "metadata.azure.com",
  "metadata.tencentyun.com",
  "metadata.packet.net",
  "metadata.platformequinix.com",
  "rancher-metadata",
  "kubernetes.default",
  "kubernetes.default.svc",
];

/**
 * Suffixes that only a local resolver answers: mDNS and private-use names (local, internal,
 * home.arpa, and the de facto lan/home/corp/…), Kubernetes service names, and the
 * special-use names public DNS never resolves (RFC 6761, 7686, 9476).
 */
const PRIVATE_SUFFIXES = [
  "local",
  "localdomain",
  "internal",
  "home.arpa",
  "lan",
  "home",
  "corp",
  "intranet",
  "private",
  "svc",
  "test",
  "example",
  "invalid",
  "onion",
  "alt",
];

const LOOPBACK_NAMES = ["localhost", "localhost.localdomain"];

function under(name: string, suffixes: readonly string[]): boolean {
  return suffixes.some((s) => name === s || name.endsWith(`.${s}`));
}

function v4Kind(ip: ipaddr.IPv4): HostKind {
  // range() names every IANA special-purpose block; only plain unicast is an outside host.
  const range = ip.range();
  if (range === "loopback") return "loopback";
  return range === "unicast" ? "public" : "private";
}

/** The IPv4 address in 16-bit groups i and i + 1 of an IPv6 address. */
function v4At(ip: ipaddr.IPv6, i: number): ipaddr.IPv4 {
  const hi = ip.parts[i] ?? 0;
  const lo = ip.parts[i + 1] ?? 0;
  return new ipaddr.IPv4([hi >> 8, hi & 0xff, lo >> 8, lo & 0xff]);
}

function v6Kind(ip: ipaddr.IPv6): HostKind {
  const range: string = ip.range();
  switch (range) {
    case "loopback":
      return "loopback";
    // A dual-stack socket connects to the embedded IPv4 address itself.
    case "ipv4Mapped":
      return v4Kind(ip.toIPv4Address());
    // Translated and tunnelled forms reach their embedded IPv4 address through a gateway,
    // never this host's loopback, so a non-public embedded address is private, not loopback.
    case "rfc6052":
      return ip.match(NAT64_WKP, 96) && v4Kind(v4At(ip, 6)) === "public" ? "public" : "private";
    case "6to4":
      return v4Kind(v4At(ip, 1)) === "public" ? "public" : "private";
    case "unicast":
      // Also catches IPv4-compatible (::a.b.c.d) and other blocks of ::/8 ipaddr leaves unnamed.
      return ip.match(GLOBAL_UNICAST, 3) ? "public" : "private";
    default:
      // Teredo (its client address is obfuscated and reached through a relay), site-local,
      // ULA, link-local, multicast, documentation, discard, ORCHID, SRv6 and the rest.
      return "private";
  }
}

function nameKind(host: string): HostKind {
  // A trailing dot names the same host (fully qualified), so "localhost." is localhost.
  const name = host.replace(/\.+$/, "");
  if (under(name, LOOPBACK_NAMES)) return "loopback";
  // Single labels resolve through the resolver's search domains, i.e. inside a network.
  if (!name.includes(".")) return "private";
  if (under(name, METADATA_NAMES) || under(name, PRIVATE_SUFFIXES)) return "private";
  return "public";
}

/**
 * The host as the WHATWG URL parser (the one fetch uses) reads it: lowercased, IDNA-mapped,
 * and every IPv4 spelling (decimal, octal, hex, short forms) turned into dotted decimal.
 */
function canonicalHost(raw: string): string | null {
  const host = raw.includes(":") && !raw.startsWith("[") ? `[${raw}]` : raw;
  // Anything that would end the authority would classify a different host than the one given.
  if (/[/?#@\\\s]/.test(host)) return null;
  try {
    return new URL(`http://${host}/`).hostname;
  } catch {
    return null;
  }
}

/**
 * Classifies a URL host by the address it names: loopback, private (any IANA special-purpose
 * block that is not plain global unicast, and names only a local resolver answers) or public.
 * Names are not resolved here; see the README on webhook targets.
 */
export function classifyHost(hostname: string): HostKind {
  const host = canonicalHost(hostname);
  if (!host) return "private";
  try {
    if (host.startsWith("[")) return v6Kind(ipaddr.IPv6.parse(host.slice(1, -1)));
    if (ipaddr.IPv4.isValidFourPartDecimal(host)) return v4Kind(ipaddr.IPv4.parse(host));
  } catch {
    return "private";
  }
  return nameKind(host);
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
