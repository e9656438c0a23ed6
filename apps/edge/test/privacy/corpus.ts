/**
 * A labelled, seeded corpus for the personal-data masker: sentences carrying personal data
 * of every kind (each item's exact span recorded), sentences carrying only ordinary numbers
 * that must come back unchanged, and ordinary URLs that must stay. Values are built from
 * the real rules of each format (numbering plans, issuer ranges and Luhn, the IBAN registry
 * and mod-97, SSA ranges), not from the masker, so the figures measure it honestly.
 *
 * Used by test/privacy/mask.test.ts (inside workerd) and scripts/privacy-eval.ts (Node).
 */
import { rng } from "../../../../scripts/lib/corpus.js";
import { PII_KINDS, type PiiKind, PLACEHOLDERS } from "../../src/privacy/mask.js";

interface Item {
  kind: PiiKind;
  value: string;
  start: number;
  end: number;
}

/** A text with its personal data items, in order, not overlapping. */
interface PositiveSample {
  text: string;
  items: Item[];
}

const NEGATIVE_CATEGORIES = [
  "date",
  "time",
  "order_id",
  "version",
  "price",
  "quantity",
  "year",
  "isbn",
  "postal_code",
  "percentage",
  "coordinate",
  "semver_range",
  "short_number",
  "code",
  "card_like_luhn_fail",
  "iban_like_bad_check",
  "ssn_invalid_range",
  "measurement",
  "identifier",
  "table_row",
] as const;
type NegativeCategory = (typeof NEGATIVE_CATEGORIES)[number];

/** A text with one ordinary value in it; nothing in it may be masked. */
interface NegativeSample<C extends string = NegativeCategory> {
  text: string;
  category: C;
  value: string;
}

export interface PrivacyCorpus {
  positives: PositiveSample[];
  /** Ordinary numbers of many kinds. */
  negatives: NegativeSample[];
  /** URLs without credentials, which stay as they are. */
  plainUrls: NegativeSample<"plain_url">[];
}

// ---------------------------------------------------------------------------------------
// Seeded randomness

/** mulberry32: small, fast, and the same sequence on every machine. */
export class Rand {
  /** The project's one seeded PRNG, so corpora are reproducible the same way everywhere. */
  private readonly source: () => number;
  constructor(seed: number) {
    this.source = rng(seed);
  }
  next(): number {
    return this.source();
  }
  /** Integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.next() * xs.length)] as T;
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  digits(n: number): string {
    let s = "";
    for (let i = 0; i < n; i++) s += String(this.int(0, 9));
    return s;
  }
  /** Digits whose first one is not 0. */
  num(n: number): string {
    return String(this.int(1, 9)) + this.digits(n - 1);
  }
  chars(n: number, alphabet: string): string {
    let s = "";
    for (let i = 0; i < n; i++) s += alphabet[this.int(0, alphabet.length - 1)];
    return s;
  }
}

const pad = (n: number, w: number) => String(n).padStart(w, "0");
const UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const ALNUM_UPPER = `${UPPER}0123456789`;
const TOKEN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const HEX = "0123456789abcdef";

// ---------------------------------------------------------------------------------------
// People, places, words

const FIRST = [
  "james",
  "mary",
  "olivia",
  "liam",
  "sophie",
  "lukas",
  "noah",
  "emma",
  "mateo",
  "aisha",
  "yuki",
  "priya",
  "hannah",
  "ingrid",
  "dmitri",
  "nuno",
  "ana",
  "giulia",
  "pierre",
  "thomas",
  "sarah",
  "kenji",
  "wei",
  "fatima",
  "oscar",
  "chloe",
  "zoe",
  "soren",
  "lucia",
  "omar",
];
const FIRST_ACCENTED = ["jörg", "zoë", "søren", "chloé", "josé", "łukasz", "émilie", "björn"];
const LAST = [
  "smith",
  "muller",
  "garcia",
  "dubois",
  "rossi",
  "kowalski",
  "jensen",
  "obrien",
  "nakamura",
  "silva",
  "novak",
  "andersson",
  "patel",
  "nguyen",
  "schmidt",
  "martin",
  "bianchi",
  "vandijk",
  "fernandez",
  "kim",
  "haddad",
  "tanaka",
  "walker",
  "lopez",
];
const LAST_ACCENTED = ["müller", "garcía", "fernández", "sørensen", "dvořák", "gößling"];
/** First names used in generated personal data (also by scripts/privacy-search.ts). */
export const NAMES = [
  "Maria",
  "John",
  "Amélie",
  "Jürgen",
  "Siobhan",
  "Kwame",
  "Mei",
  "Rafael",
  "Ingrid",
  "Tomasz",
  "Aarav",
  "Chloé",
  "Zoë",
  "Björn",
];
const DOMAINS = [
  "example.com",
  "example.org",
  "mail.example.net",
  "acme-corp.co.uk",
  "uni-heidelberg.de",
  "company.io",
  "startup.ai",
  "gmail.com",
  "outlook.fr",
  "yahoo.co.jp",
  "post.example.museum",
  "support.shop-online.com",
  "dept.university.edu",
  "web.de",
  "proton.me",
  "fastmail.fm",
  "example.travel",
  "münchen-stadt.de",
  "xn--mnchen-3ya.de",
  "bank.example.ch",
];
const HOSTS = [
  "example.com",
  "api.example.com",
  "files.example.org",
  "storage.example.net",
  "hooks.example.io",
  "app.acme-corp.co.uk",
  "cdn.example.de",
  "internal.example.local",
  "portal.example.fr",
];
const PATH_WORDS = [
  "reports",
  "invoices",
  "v1",
  "v2",
  "api",
  "export",
  "download",
  "users",
  "orders",
  "files",
  "backup",
  "q3",
  "archive",
];

// ---------------------------------------------------------------------------------------
// Personal data generators

function email(r: Rand): string {
  const accented = r.chance(0.1);
  const f = accented ? r.pick(FIRST_ACCENTED) : r.pick(FIRST);
  const l = accented && r.chance(0.5) ? r.pick(LAST_ACCENTED) : r.pick(LAST);
  const local = r.pick([
    () => `${f}.${l}`,
    () => `${f[0]}${l}`,
    () => `${f}_${l}`,
    () => `${f}.${l}+${r.pick(["invoices", "news", "work", "ticket4512"])}`,
    () => `${f}${r.int(1, 99)}`,
    () => `${f}-${l}`,
    () => `${l}.${f}`,
    () => `${f}.${l}`.toUpperCase(),
    () => `${f[0]}.${l}${r.int(70, 99)}`,
    () => r.pick(["info", "support", "no-reply", "billing", "hr-team", "contact"]),
  ])();
  const domain = r.pick(DOMAINS);
  return `${local}@${r.chance(0.08) ? domain.toUpperCase() : domain}`;
}

const US_AREAS = [
  201, 202, 203, 205, 206, 212, 213, 214, 215, 301, 303, 305, 310, 312, 313, 404, 408, 410, 412,
  415, 503, 504, 512, 602, 617, 646, 650, 702, 713, 718, 801, 808, 813, 917, 919, 972,
];

function usPhone(r: Rand): string {
  const fictional = r.chance(0.25);
  const a = String(fictional ? 555 : r.pick(US_AREAS));
  const x = fictional && r.chance(0.4) ? "123" : String(r.int(200, 999));
  const l = r.digits(4);
  const tollFree = r.pick(["800", "888", "877", "866"]);
  return r.pick([
    () => `(${a}) ${x}-${l}`,
    () => `${a}-${x}-${l}`,
    () => `${a}.${x}.${l}`,
    () => `${a} ${x} ${l}`,
    () => `+1-${a}-${x}-${l}`,
    () => `+1 (${a}) ${x}-${l}`,
    () => `+1 ${a} ${x} ${l}`,
    () => `1-${tollFree}-${x}-${l}`,
    () => `+1${a}${x}${l}`,
    () => `(${a})${x}-${l}`,
    () => `+1.${a}.${x}.${l}`,
  ])();
}

function ukPhone(r: Rand): string {
  // [area, local number] as dialled after the trunk 0.
  const [area, local] = r.pick([
    () => ["20", `${r.pick(["7", "8", "3"])}${r.digits(3)} ${r.digits(4)}`],
    () => ["20", `7946 0${r.digits(3)}`],
    () => [
      r.pick(["161", "121", "141", "131", "113"]),
      `${r.int(2, 9)}${r.digits(2)} ${r.digits(4)}`,
    ],
    () => [`7${r.pick(["4", "5", "7", "8", "9"])}${r.digits(2)}`, r.num(6)],
    () => ["7700", `900${r.digits(3)}`],
  ])() as [string, string];
  return r.pick([
    () => `+44 ${area} ${local}`,
    () => `0${area} ${local}`,
    () => `+44 (0)${area} ${local}`,
    () => `0044 ${area} ${local}`,
    () => `+44${area}${local.replace(/ /g, "")}`,
    () => (area === "20" ? `(020) ${local}` : `0${area} ${local}`),
  ])();
}

function dePhone(r: Rand): string {
  const [area, local] = r.pick([
    () => [r.pick(["30", "40", "89", "69"]), r.num(r.pick([6, 7, 8]))],
    () => ["221", r.num(7)],
    () => [String(r.int(170, 179)), r.num(7)],
    () => [r.pick(["151", "152", "157"]), r.num(8)],
  ])() as [string, string];
  return r.pick([
    () => `+49 ${area} ${local}`,
    () => `0${area} ${local}`,
    () => `0${area}/${local}`,
    () => `0${area}-${local}`,
    () => `+49 (0)${area} ${local}`,
    () => `+49-${area}-${local}`,
    () => `+49${area}${local}`,
  ])();
}

function frPhone(r: Rand): string {
  const first = r.pick(["1", "2", "3", "4", "5", "6", "6", "7", "9"]);
  const second = first === "7" ? String(r.int(3, 9)) : String(r.int(0, 9));
  const pairs = [second + r.digits(1), r.digits(2), r.digits(2), r.digits(2)];
  return r.pick([
    () => `0${first} ${pairs.join(" ")}`,
    // French typography groups with no-break spaces.
    () => `0${first}\u00a0${pairs.join("\u00a0")}`,
    () => `0${first}.${pairs.join(".")}`,
    () => `0${first}-${pairs.join("-")}`,
    () => `+33 ${first} ${pairs.join(" ")}`,
    () => `+33 (0)${first} ${pairs.join(" ")}`,
    () => `+33${first}${pairs.join("")}`,
    () => `0033 ${first} ${pairs.join(" ")}`,
  ])();
}

function otherPhone(r: Rand): string {
  return r.pick([
    () => `+81 3-${r.num(4)}-${r.digits(4)}`,
    () => `+81 ${r.pick(["90", "80", "70"])}-${r.num(4)}-${r.digits(4)}`,
    () => `03-${r.num(4)}-${r.digits(4)}`,
    () => `090-${r.num(4)}-${r.digits(4)}`,
    () => `+61 2 ${r.pick(["9", "8"])}${r.digits(3)} ${r.digits(4)}`,
    () => `+61 4${r.digits(2)} ${r.digits(3)} ${r.digits(3)}`,
    () => `(02) ${r.pick(["9", "8"])}${r.digits(3)} ${r.digits(4)}`,
    () => `04${r.digits(2)} ${r.digits(3)} ${r.digits(3)}`,
    () => `+91 ${r.int(7, 9)}${r.digits(4)} ${r.digits(5)}`,
    () => `+34 ${r.pick(["6", "7"])}${r.digits(2)} ${r.digits(3)} ${r.digits(3)}`,
    () => `+34 91 ${r.num(3)} ${r.digits(2)} ${r.digits(2)}`,
    () => `+39 06 ${r.digits(4)} ${r.digits(4)}`,
    () => `+39 3${r.int(2, 4)}${r.digits(1)} ${r.digits(3)} ${r.digits(4)}`,
    () => `+31 20 ${r.num(3)} ${r.digits(4)}`,
    () => `+31 6 ${r.num(8)}`,
    () => `020 ${r.num(3)} ${r.digits(4)}`,
    () => `+55 11 9${r.digits(4)}-${r.digits(4)}`,
    () => `+52 55 ${r.num(4)} ${r.digits(4)}`,
    () => `+41 44 ${r.num(3)} ${r.digits(2)} ${r.digits(2)}`,
    () => `044 ${r.num(3)} ${r.digits(2)} ${r.digits(2)}`,
    () => `+353 1 ${r.num(3)} ${r.digits(4)}`,
    () => `+353 8${r.pick(["3", "5", "6", "7"])} ${r.num(3)} ${r.digits(4)}`,
    () => `+46 8 ${r.num(3)} ${r.digits(3)} ${r.digits(2)}`,
    () => `+48 22 ${r.num(3)} ${r.digits(2)} ${r.digits(2)}`,
    () => `+48 ${r.pick(["5", "6", "7", "8"])}${r.digits(2)} ${r.digits(3)} ${r.digits(3)}`,
    () => `+65 ${r.pick(["6", "8", "9"])}${r.digits(3)} ${r.digits(4)}`,
    () => `+86 10 ${r.num(4)} ${r.digits(4)}`,
    () => `+86 13${r.digits(1)} ${r.digits(4)} ${r.digits(4)}`,
    () => `+82 2-${r.num(3)}-${r.digits(4)}`,
    () => `+82 10-${r.num(4)}-${r.digits(4)}`,
    () => `+27 21 ${r.num(3)} ${r.digits(4)}`,
    () => `+27 8${r.pick(["2", "3", "4"])} ${r.num(3)} ${r.digits(4)}`,
    () => `+32 2 ${r.num(3)} ${r.digits(2)} ${r.digits(2)}`,
    () => `+43 1 ${r.num(3)} ${r.digits(4)}`,
    () => `+7 495 ${r.num(3)}-${r.digits(2)}-${r.digits(2)}`,
    () => `+7 (495) ${r.num(3)}-${r.digits(2)}-${r.digits(2)}`,
    () => `+90 212 ${r.num(3)} ${r.digits(2)} ${r.digits(2)}`,
    () => `+254 7${r.digits(2)} ${r.digits(6)}`,
    () => `+234 80${r.int(2, 9)} ${r.num(3)} ${r.digits(4)}`,
    () => `+62 21 ${r.num(4)} ${r.digits(4)}`,
    () => `+971 4 ${r.num(3)} ${r.digits(4)}`,
    () => `+972 3-${r.num(3)}-${r.digits(4)}`,
    () => `+380 44 ${r.num(3)} ${r.digits(4)}`,
    () => `(+44) 20 7946 0${r.digits(3)}`,
    () => `+49 (0) 30 ${r.num(7)}`,
    () => `1 (800) ${r.int(200, 999)}-${r.digits(4)}`,
  ])();
}

function phone(r: Rand): string {
  const region = r.next();
  if (region < 0.3) return usPhone(r);
  if (region < 0.48) return ukPhone(r);
  if (region < 0.62) return dePhone(r);
  if (region < 0.76) return frPhone(r);
  return otherPhone(r);
}

/** A phone number written with no separators after a word that says what it is. */
function labelledPhone(r: Rand): [string, string] {
  const [label, value] = r.pick([
    () => ["Tel: ", `020${r.pick(["7", "8"])}${r.digits(7)}`],
    () => ["phone ", `${r.pick(US_AREAS)}${r.int(200, 999)}${r.digits(4)}`],
    () => ["Mobile: ", `07${r.pick(["4", "5", "7", "8", "9"])}${r.digits(8)}`],
    () => ["call ", `${r.pick(US_AREAS)}${r.int(200, 999)}${r.digits(4)}`],
    () => [
      "WhatsApp: ",
      r.pick([
        `+447911${r.digits(6)}`,
        `+49151${r.digits(8)}`,
        `+336${r.digits(8)}`,
        `+346${r.digits(8)}`,
      ]),
    ],
    () => ["Fax ", `0${r.pick(["30", "89", "40"])}${r.num(7)}`],
  ])() as [string, string];
  return [label, value];
}

function luhnDigit(body: string): string {
  let sum = 0;
  for (let i = 0; i < body.length; i++) {
    let d = body.charCodeAt(body.length - 1 - i) - 48;
    if (i % 2 === 0) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
  }
  return String((10 - (sum % 10)) % 10);
}

/** A card number of a real issuer range and length; Luhn-valid unless `breakCheck`. */
function cardDigits(r: Rand, breakCheck = false): string {
  const [prefix, length] = r.pick([
    () => ["4", 16],
    () => ["4", 16],
    () => ["4", 16],
    () => ["4", r.pick([13, 19])],
    () => [String(r.int(51, 55)), 16],
    () => [String(r.int(2221, 2720)), 16],
    () => [r.pick(["34", "37"]), 15],
    () => [r.pick(["6011", "65", String(r.int(644, 649))]), 16],
    () => [String(r.int(3528, 3589)), 16],
    () => ["36", 14],
    () => [String(r.int(300, 305)), 14],
    () => [String(r.int(6240, 6259)), r.pick([16, 19])],
    () => [r.pick(["6759", "5018", "5020", "5038"]), 16],
    () => [String(r.int(2200, 2204)), 16],
  ])() as [string, number];
  const body = prefix + r.digits(length - prefix.length - 1);
  const check = luhnDigit(body);
  return body + (breakCheck ? String((Number(check) + r.int(1, 9)) % 10) : check);
}

function formatCard(r: Rand, d: string): string {
  const sep = r.pick([" ", " ", "-"]);
  if (r.chance(0.3)) return d;
  if (d.length === 15) return [d.slice(0, 4), d.slice(4, 10), d.slice(10)].join(sep);
  if (d.length === 14 && r.chance(0.5))
    return [d.slice(0, 4), d.slice(4, 10), d.slice(10)].join(sep);
  return d.match(/.{1,4}/g)?.join(sep) ?? d;
}

const card = (r: Rand) => formatCard(r, cardDigits(r));

/** BBAN layouts from the IBAN registry: n digits, a upper-case letters, c either. */
const IBAN_LAYOUTS: Record<string, string> = {
  DE: "18n",
  GB: "4a14n",
  FR: "10n11c2n",
  ES: "20n",
  IT: "1a10n12c",
  NL: "4a10n",
  BE: "12n",
  CH: "5n12c",
  AT: "16n",
  PL: "24n",
  SE: "20n",
  IE: "4a14n",
  PT: "21n",
  DK: "14n",
  NO: "11n",
  FI: "14n",
  LU: "3n13c",
  GR: "7n16c",
  CZ: "20n",
  HR: "17n",
  RO: "4a16c",
  HU: "24n",
  SA: "2n18c",
  AE: "3n16n",
  SI: "15n",
  SK: "20n",
  LT: "16n",
  EE: "16n",
  BG: "4a4n2n8c",
  CY: "8n16c",
  MT: "4a5n18c",
  IS: "22n",
  LI: "5n12c",
  MC: "10n11c2n",
};

function mod97(s: string): number {
  let rem = 0;
  for (const ch of s) {
    const v = ch >= "A" && ch <= "Z" ? String(ch.charCodeAt(0) - 55) : ch;
    for (const d of v) rem = (rem * 10 + (d.charCodeAt(0) - 48)) % 97;
  }
  return rem;
}

function ibanCompact(r: Rand, breakCheck = false): string {
  const country = r.pick(Object.keys(IBAN_LAYOUTS));
  let bban = "";
  for (const [, n, t] of (IBAN_LAYOUTS[country] as string).matchAll(/(\d+)([nac])/g)) {
    const count = Number(n);
    if (t === "n") bban += r.digits(count);
    else if (t === "a") bban += r.chars(count, UPPER);
    else bban += r.chance(0.7) ? r.digits(count) : r.chars(count, ALNUM_UPPER);
  }
  const check = 98 - mod97(`${bban}${country}00`);
  const digits = breakCheck ? (check + r.int(1, 60)) % 97 || 96 : check;
  return `${country}${pad(digits, 2)}${bban}`;
}

const friendlyIban = (compact: string) => compact.match(/.{1,4}/g)?.join(" ") ?? compact;
const iban = (r: Rand) => {
  const c = ibanCompact(r);
  return r.chance(0.7) ? friendlyIban(c) : c;
};

function ssnParts(r: Rand): [string, string, string] {
  let area = r.int(1, 899);
  if (area === 666) area = 667;
  return [pad(area, 3), pad(r.int(1, 99), 2), pad(r.int(1, 9999), 4)];
}
function ssn(r: Rand): string {
  const [a, g, s] = ssnParts(r);
  return r.chance(0.85) ? `${a}-${g}-${s}` : `${a} ${g} ${s}`;
}

function ipv4(r: Rand): string {
  return r.pick([
    () => `${r.int(1, 223)}.${r.int(0, 255)}.${r.int(0, 255)}.${r.int(1, 254)}`,
    () => `10.${r.int(0, 255)}.${r.int(0, 255)}.${r.int(1, 254)}`,
    () => `192.168.${r.int(0, 255)}.${r.int(1, 254)}`,
    () => `172.${r.int(16, 31)}.${r.int(0, 255)}.${r.int(1, 254)}`,
    () => `203.0.113.${r.int(1, 254)}`,
  ])();
}

function ipv6(r: Rand): string {
  const group = () => {
    const g = r.chars(r.int(1, 4), HEX).replace(/^0+(?=.)/, "");
    return r.chance(0.15) ? g.padStart(4, "0") : g;
  };
  const groups = Array.from({ length: 8 }, group);
  if (r.chance(0.3)) groups[0] = r.pick(["2001", "2001:db8", "fe80", "2a00", "2606"]);
  const flat = groups.join(":").split(":").slice(0, 8);
  const v = r.pick([
    () => flat.join(":"),
    () => {
      const i = r.int(1, 5);
      const j = r.int(i + 1, 7);
      return `${flat.slice(0, i).join(":")}::${flat.slice(j).join(":")}`;
    },
    () => `2001:db8::${group()}`,
    () => `2001:db8:${group()}::${group()}:${group()}`,
    () => `fe80::${group()}:${group()}:${group()}:${group()}%${r.pick(["eth0", "en0", "wlan0"])}`,
    () => `::ffff:${ipv4(r)}`,
    () => `${flat.slice(0, 4).join(":")}::`,
  ])();
  return r.chance(0.15) ? v.toUpperCase().replace(/%(ETH|EN|WLAN)/, (z) => z.toLowerCase()) : v;
}

const ip = (r: Rand) => (r.chance(0.55) ? ipv4(r) : ipv6(r));

function token(r: Rand, n: number, alphabet = TOKEN_CHARS): string {
  return r.chars(n, alphabet);
}

function secretUrl(r: Rand): string {
  const host = r.pick(HOSTS);
  const path = Array.from({ length: r.int(1, 3) }, () => r.pick(PATH_WORDS)).join("/");
  const user = r.pick(["admin", "deploy", "svc_backup", "jsmith", "app", "root", "ci-bot"]);
  const pass = r.pick([
    () => token(r, r.int(8, 20)),
    () => `s3cr3t${r.int(10, 99)}`,
    () => `Winter${r.int(2019, 2025)}!`.replace("!", "%21"),
    () => "hunter2",
  ])();
  const tok = token(r, r.int(16, 40));
  const extra = r.chance(0.4) ? `${r.pick(["page=2", "lang=en", "format=json", "v=3"])}&` : "";
  return r.pick([
    () => `https://${user}:${pass}@${host}/${path}`,
    () => `http://${user}:${pass}@${host}:8080/${path}/`,
    () =>
      `postgres://${user}:${pass}@db.${r.pick(HOSTS)}:5432/${r.pick(["app", "billing", "crm"])}`,
    () => `postgresql://${user}:${pass}@10.0.${r.int(0, 9)}.${r.int(2, 250)}/prod`,
    () => `mysql://${user}:${pass}@mysql.${host}:3306/shop`,
    () =>
      `mongodb+srv://${user}:${pass}@cluster0.${r.chars(5, "abcdefghijklmnopqrstuvwxyz")}.mongodb.net/test`,
    () => `redis://:${pass}@cache.${host}:6379/0`,
    () => `amqp://${user}:${pass}@mq.${host}:5672/vhost`,
    () => `ftp://${user}:${pass}@ftp.${host}/pub/${path}.zip`,
    () => `https://${host}/${path}?${extra}access_token=${tok}`,
    () => `https://${host}/${path}?${extra}api_key=${tok}`,
    () => `https://${host}/${path}?apikey=${tok}`,
    () => `https://maps.${host}/api/js?key=AIza${token(r, 35)}&callback=init`,
    () => `https://${host}/${path}/file.pdf?${extra}token=${tok}`,
    () =>
      `https://${r.chars(8, "abcdefghijklmnopqrstuvwxyz")}.blob.core.windows.net/${path}?sv=2022-11-02&ss=b&srt=sco&sp=rl&se=2025-01-01T00:00:00Z&sig=${token(r, 40)}%3D`,
    () =>
      `https://bucket.s3.amazonaws.com/${path}/report.csv?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA${token(r, 16, ALNUM_UPPER)}%2F20240315%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20240315T101500Z&X-Amz-Expires=3600&X-Amz-Signature=${token(r, 64, HEX)}`,
    () => `https://${host}/login?user=${user}&password=${pass}`,
    () => `https://${host}/${path}?${extra}secret=${tok}`,
    () => `https://${host}/callback?${extra}auth=${tok}`,
    () => `https://${host}/oauth/token?client_id=${token(r, 12)}&client_secret=${tok}`,
    () => `https://${host}/cb#access_token=${tok}&token_type=bearer&expires_in=3600`,
    () => `https://${host}/${path}?signature=${token(r, 32, HEX)}&expires=1718000000`,
    () => `https://${host}/${path}?authToken=${tok}`,
    () => `https://ghp_${token(r, 36)}@github.com/acme/${r.pick(PATH_WORDS)}.git`,
    () => `https://${host}/hooks/${path}?sig=${token(r, 24)}`,
    () => `https://gitlab.${host}/api/v4/projects?private_token=${tok}`,
    () =>
      `https://storage.googleapis.com/bucket/${path}.csv?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Signature=${token(r, 64, HEX)}`,
    () => `https://${host}/${path}?access_key=${tok}&lang=en`,
    () =>
      `https://hooks.slack.com/services/T${token(r, 8, ALNUM_UPPER)}/B${token(r, 10, ALNUM_UPPER)}/${token(r, 24)}`,
    () => `https://discord.com/api/webhooks/${r.num(18)}/${token(r, 68)}`,
    () => `https://api.telegram.org/bot${r.num(10)}:AA${token(r, 33)}/sendMessage`,
  ])();
}

function plainUrl(r: Rand): string {
  const host = r.pick(HOSTS);
  const path = Array.from({ length: r.int(1, 3) }, () => r.pick(PATH_WORDS)).join("/");
  return r.pick([
    () =>
      `https://${host}/search?q=${r.pick(["blender", "refund", "laptop+bag", "invoice"])}&page=${r.int(1, 9)}`,
    () => `https://docs.${host}/v${r.int(1, 4)}/guide#${r.pick(["install", "setup", "faq"])}`,
    () =>
      `http://localhost:${r.pick([3000, 8080, 5173, 8787])}/api/items?limit=${r.int(10, 100)}&offset=${r.int(0, 500)}`,
    () => `https://github.com/acme/${r.pick(PATH_WORDS)}/issues/${r.int(1, 9999)}`,
    () =>
      `https://shop.${host}/product/${r.int(1000, 99999)}?color=${r.pick(["red", "blue"])}&size=${r.pick(["S", "M", "L"])}`,
    () => `ssh://git@github.com/acme/${r.pick(PATH_WORDS)}.git`,
    () => "https://en.wikipedia.org/wiki/Luhn_algorithm",
    () =>
      `https://www.${host}/news/2024/${pad(r.int(1, 12), 2)}/${pad(r.int(1, 28), 2)}/story.html`,
    () => `https://cdn.${host}/img/logo@2x.png`,
    () =>
      `https://maps.${host}/?ll=${r.int(10, 60)}.${r.digits(4)},-${r.int(0, 9)}.${r.digits(4)}&z=${r.int(3, 18)}`,
    () => `https://${host}/${path}?utm_source=newsletter&utm_campaign=spring${r.int(20, 25)}`,
    () => `https://${host}/download/v${r.int(1, 9)}.${r.int(0, 20)}.${r.int(0, 30)}/app.tar.gz`,
    () => `https://api.${host}/v1/users?sort=created_at&order=desc&per_page=${r.int(10, 50)}`,
    () => `https://${host}/docs/api-keys#rotate`,
    () => `https://${host}/${path}?monkey=${r.int(1, 9)}&keyboard=uk`,
    () => `ftp://ftp.${host}/pub/README`,
    () => `https://${host}/${path}/${r.int(100000, 999999)}`,
    () => `https://${host}/tokens/new`,
  ])();
}

/** One realistic value of each kind, in one of its common formats. */
export const PII_GENERATORS: Record<PiiKind, (r: Rand) => string> = {
  email,
  phone,
  card,
  iban,
  ip,
  ssn,
  secret_url: secretUrl,
};

// ---------------------------------------------------------------------------------------
// Sentences

type Piece = string | { kind: PiiKind; value: string };

function assemble(pieces: Piece[]): PositiveSample {
  let text = "";
  const items: Item[] = [];
  for (const p of pieces) {
    if (typeof p === "string") text += p;
    else {
      items.push({
        kind: p.kind,
        value: p.value,
        start: text.length,
        end: text.length + p.value.length,
      });
      text += p.value;
    }
  }
  return { text, items };
}

/** Fills `{a}`, `{b}`, `{c}` in a template with items, and `{name}` with a name. */
function fill(
  frame: string,
  values: Record<string, { kind: PiiKind; value: string }>,
  name = "Maria",
): PositiveSample {
  const template = frame.replaceAll("{name}", name);
  const pieces: Piece[] = [];
  let last = 0;
  for (const m of template.matchAll(/\{([abc])\}/g)) {
    pieces.push(template.slice(last, m.index));
    pieces.push(values[m[1] as string] as { kind: PiiKind; value: string });
    last = (m.index as number) + m[0].length;
  }
  pieces.push(template.slice(last));
  return assemble(pieces);
}

// One item, in varied positions and punctuation. Also carries ordinary numbers nearby.
const ONE_ITEM_FRAMES = [
  "{a}",
  "{a} is the one on file.",
  "Please use {a} from now on.",
  "Contact: {a}",
  "Details ({a}) were updated on 2024-03-15.",
  '"{a}", she wrote, "is the right one."',
  "Updated: [{a}]",
  "{a}; the old one is gone.",
  "Was it {a}?",
  "Confirmed — {a}!",
  "The customer gave {a}, then hung up.",
  "Ticket #48213: {a} again, see order ORD-2024-000123.",
  "«{a}»",
  "→ {a}",
  "Note:\n{a}\nEnd of note.",
  "\t{a}\t(verified)",
  "Grüße aus München, {a} 🙂",
  "Téléphone et coordonnées : {a}.",
  "Контакт: {a}.",
  "联系方式：{a}。",
  "連絡先：{a}、よろしくお願いします。",
  "¿Puedes confirmar {a}?",
  "Ο πελάτης έδωσε {a} χθες.",
  "At 14:30 on 15/03/2024 we received {a} by post.",
  "You can reach {name} at {a}.",
  "{name} wrote: “{a}” — please update the CRM.",
  "HR note: {name} changed to {a} in week 12.",
];

const KIND_FRAMES: Record<PiiKind, string[]> = {
  email: [
    "Please reply to {a} before Friday.",
    "Forwarded from {a} on March 15, 2024.",
    "Send the signed contract to <{a}>.",
    "mailto:{a}",
    "Von: Jörg Keller <{a}> — Betreff: Rechnung 2024/0042",
    "Her address {a} bounced twice.",
    "Login name: {a}",
  ],
  phone: [
    "Call me on {a} after 5pm.",
    "Our hotline {a} is open 9:00-17:00.",
    "Mobile: {a}",
    "Please ring {a} (ask for Sam).",
    "Telefon: {a}, Fax bitte nicht mehr nutzen.",
    "He left a voicemail from {a} at 08:45.",
    "Tel. {a}",
    "Office {a} ext. 204",
    "tel:{a}",
    "Office: {a} (mornings), fax none.",
  ],
  card: [
    "Card number {a}, exp 09/27, CVV withheld.",
    "Charged $1,299.99 to {a} on 2024-03-15.",
    "Please refund card {a}.",
    "PAN: {a}",
    "Visa/MC/Amex accepted; the card on file is {a}.",
    "Zahlung mit Karte {a} fehlgeschlagen.",
  ],
  iban: [
    "Please transfer €450.00 to IBAN {a} by Friday.",
    "IBAN: {a}",
    "Bankverbindung: {a}, BIC DEUTDEFF.",
    "Refund to account {a}, reference INV-000482.",
    "RIB / IBAN {a} (compte courant)",
    "Salary goes to {a} from April.",
  ],
  ip: [
    "Login from {a} at 14:32 UTC.",
    "Blocked {a} after 12 failed attempts.",
    "Server listens on {a}.",
    "X-Forwarded-For: {a}",
    "The request came from IP {a}, user agent Mozilla/5.0.",
    "ping {a} -c 4",
  ],
  ssn: [
    "SSN {a} was verified.",
    "Social Security number: {a}",
    "Employee SSN on file: {a}.",
    "W-2 shows {a} for tax year 2023.",
    "Please do not email your SSN ({a}).",
  ],
  secret_url: [
    "Webhook configured as {a}",
    "Download it from {a} before it expires.",
    "The connection string is {a}.",
    "See ({a}) for the export.",
    "DATABASE_URL={a}",
    "Link: <{a}>",
  ],
};

const MULTI_FRAMES = [
  "Either {a} or {b}, whichever is easier.",
  "{a}, {b} and {c} were all on the form.",
  "From {a} to {b}.",
  "Old: {a} / new: {b}",
  "{a}\n{b}",
  "Primary {a}; backup {b}; emergency {c}.",
  "Contact {a} (or {b}) today.",
];

function ipSample(r: Rand): PositiveSample {
  const v4 = ipv4(r);
  const v6 = ipv6(r).replace(/%.*/, "");
  return r.pick([
    () => fill(`Proxy {a}:${r.int(1024, 65535)} is down.`, { a: { kind: "ip", value: v4 } }),
    () => fill(`Allow {a}/${r.int(8, 32)} in the firewall.`, { a: { kind: "ip", value: v4 } }),
    () => fill(`curl https://[{a}]:${r.int(1024, 9999)}/health`, { a: { kind: "ip", value: v6 } }),
    () => fill(`Route {a}/64 via the gateway.`, { a: { kind: "ip", value: v6 } }),
  ])();
}

function labelledSample(r: Rand, kind: "phone" | "ssn"): PositiveSample {
  if (kind === "phone") {
    const [label, value] = labelledPhone(r);
    return assemble([r.pick(["", "Contact details. ", "Notes: "]), label, { kind, value }, "."]);
  }
  const [a, g, s] = ssnParts(r);
  return assemble([
    r.pick(["SSN: ", "SSN ", "Social security number: ", "SSN #"]),
    { kind, value: `${a}${g}${s}` },
    r.pick(["", ".", " on file."]),
  ]);
}

function positives(r: Rand, perKind: number): PositiveSample[] {
  const out: PositiveSample[] = [];
  const item = (kind: PiiKind) => ({ kind, value: PII_GENERATORS[kind](r) });
  for (const kind of PII_KINDS) {
    for (let i = 0; i < perKind; i++) {
      const roll = r.next();
      if (roll < 0.08 && (kind === "phone" || kind === "ssn")) out.push(labelledSample(r, kind));
      else if (roll < 0.08 && kind === "ip") out.push(ipSample(r));
      else if (roll < 0.4) out.push(fill(r.pick(KIND_FRAMES[kind]), { a: item(kind) }));
      else if (roll < 0.75)
        out.push(fill(r.pick(ONE_ITEM_FRAMES), { a: item(kind) }, r.pick(NAMES)));
      else {
        const other = () => item(r.chance(0.5) ? kind : r.pick(PII_KINDS));
        out.push(fill(r.pick(MULTI_FRAMES), { a: item(kind), b: other(), c: other() }));
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Ordinary numbers

const MONTHS = [
  "January",
  "February",
  "March",
  "April",
  "May",
  "June",
  "July",
  "August",
  "September",
  "October",
  "November",
  "December",
];

function isbn13(r: Rand): string {
  const body = `${r.pick(["978", "979"])}${r.digits(9)}`;
  let sum = 0;
  for (let i = 0; i < 12; i++) sum += (body.charCodeAt(i) - 48) * (i % 2 === 0 ? 1 : 3);
  return body + String((10 - (sum % 10)) % 10);
}
function isbn10(r: Rand): string {
  const body = r.digits(9);
  let sum = 0;
  for (let i = 0; i < 9; i++) sum += (body.charCodeAt(i) - 48) * (10 - i);
  const check = (11 - (sum % 11)) % 11;
  return body + (check === 10 ? "X" : String(check));
}

const NEGATIVE_VALUES: Record<NegativeCategory, (r: Rand) => string> = {
  date: (r) => {
    const y = r.int(1990, 2030);
    const m = r.int(1, 12);
    const d = r.int(1, 28);
    return r.pick([
      () => `${y}-${pad(m, 2)}-${pad(d, 2)}`,
      () => `${pad(d, 2)}/${pad(m, 2)}/${y}`,
      () => `${pad(d, 2)}.${pad(m, 2)}.${y}`,
      () => `${pad(m, 2)}/${pad(d, 2)}/${y}`,
      () => `${MONTHS[m - 1]} ${d}, ${y}`,
      () => `${d} ${MONTHS[m - 1]} ${y}`,
      () => `${y}/${pad(m, 2)}/${pad(d, 2)}`,
      () => `${y}-${pad(m, 2)}-${pad(d, 2)}T${pad(r.int(0, 23), 2)}:${pad(r.int(0, 59), 2)}:00Z`,
      () =>
        `${y}-${pad(m, 2)}-${pad(d, 2)} ${pad(r.int(0, 23), 2)}:${pad(r.int(0, 59), 2)}:${pad(r.int(0, 59), 2)}+01:00`,
      () => `${pad(d, 2)}-${pad(m, 2)}-${y}`,
      () => `${d}/${m}/${String(y).slice(2)}`,
      () => `${pad(d, 2)}.${pad(m, 2)}.${String(y).slice(2)}`,
      () => `${pad(m, 2)}/${y}`,
      () => `${y}-${pad(m, 2)}-${pad(d, 2)} – ${y}-${pad(m, 2)}-${pad(d + 2, 2)}`,
      () => `${pad(d, 2)}/${pad(m, 2)}/${y}-${pad(d + 1, 2)}/${pad(m, 2)}/${y}`,
    ])();
  },
  time: (r) =>
    r.pick([
      () => `${pad(r.int(0, 23), 2)}:${pad(r.int(0, 59), 2)}`,
      () => `${pad(r.int(0, 23), 2)}:${pad(r.int(0, 59), 2)}:${pad(r.int(0, 59), 2)}`,
      () => `${r.int(1, 12)}:${pad(r.int(0, 59), 2)} ${r.pick(["AM", "PM"])}`,
      () => `${r.int(7, 20)}h${pad(r.int(0, 59), 2)}`,
      () => `${pad(r.int(8, 11), 2)}:00–${r.int(12, 18)}:30`,
      () => `00:${pad(r.int(0, 59), 2)}:${pad(r.int(0, 59), 2)}.${r.digits(3)}`,
      () => `${pad(r.int(6, 11), 2)}:00-${r.int(12, 23)}:00`,
      () => `${pad(r.int(0, 23), 2)}.${pad(r.int(0, 59), 2)} Uhr`,
    ])(),
  order_id: (r) =>
    r.pick([
      () => `ORD-${r.int(2019, 2025)}-${r.digits(6)}`,
      () => `#${r.num(6)}`,
      () => `INV-${r.digits(6)}`,
      () => `PO-${r.num(10)}`,
      () => `order no. ${r.num(7)}`,
      () => `ticket #${r.num(5)}`,
      () => `case ${r.digits(8)}`,
      () => `ref ${r.int(2019, 2025)}/${r.digits(4)}`,
      () => `SO-${r.num(2)}-${r.num(4)}`,
      () => `RMA ${r.num(4)}-${r.num(2)}`,
      () => `AWB ${r.num(3)}-${r.num(8)}`,
      () => `booking ${r.chars(6, ALNUM_UPPER)}`,
    ])(),
  version: (r) =>
    r.pick([
      () => `${r.int(0, 9)}.${r.int(0, 30)}.${r.int(0, 99)}`,
      () => `v${r.int(1, 12)}.0.${r.num(5)}`,
      () => `${r.int(1, 5)}.${r.int(0, 20)}.0-beta.${r.int(1, 9)}`,
      () => `Node ${r.int(14, 24)}.${r.int(0, 20)}.${r.int(0, 9)}`,
      () => `Python 3.${r.int(6, 13)}.${r.int(0, 9)}`,
      () => `build 10.0.${r.num(5)}.${r.num(4)}`,
      () => `v${r.int(1, 9)}.${r.int(0, 9)}.${r.int(0, 9)}.${r.int(0, 9)}`,
      () => `version ${r.int(1, 9)}.${r.int(0, 9)}.${r.int(0, 9)}.${r.int(0, 99)}`,
      () => `Chrome ${r.int(100, 140)}.0.${r.num(4)}.${r.int(10, 200)}`,
      () => `release ${r.int(1, 9)}.${r.int(0, 9)}.${r.int(0, 9)}.${r.int(0, 9)}`,
      () => `section ${r.int(1, 9)}.${r.int(1, 9)}.${r.int(1, 9)}.${r.int(1, 9)}`,
      () => `§ ${r.int(1, 9)}.${r.int(1, 9)}.${r.int(1, 9)}.${r.int(1, 9)}`,
    ])(),
  price: (r) =>
    r.pick([
      () => `$${r.int(1, 9)},${r.digits(3)}.${r.digits(2)}`,
      () => `${r.int(1, 999)}.${r.digits(2)} EUR`,
      () => `€${r.int(1, 9)}.${r.digits(3)},${r.digits(2)}`,
      () => `£${r.int(1, 500)}.${r.digits(2)}`,
      () => `¥${r.int(1, 999)},${r.digits(3)}`,
      () => `USD ${r.int(1, 99)},${r.digits(3)},${r.digits(3)}.00`,
      () => `${r.int(1, 9)} ${r.digits(3)},${r.digits(2)} €`,
      () => `CHF ${r.int(10, 999)}.${r.pick(["90", "95", "00"])}`,
      () => `$0.${r.digits(2)}`,
      () => `${r.int(100, 999)},-- DM`,
      () => `₹${r.int(1, 9)},${r.digits(2)},${r.digits(3)}`,
    ])(),
  quantity: (r) =>
    r.pick([
      () => `${r.int(1, 99)},${r.digits(3)} units`,
      () => `${r.int(1, 999)} kg`,
      () => `${r.int(2, 12)} x ${r.int(6, 48)} boxes`,
      () => `${r.int(1, 99)},${r.digits(3)},${r.digits(3)} rows`,
      () => `${r.int(1, 9)} ${r.digits(3)} ${r.digits(3)} visitors`,
      () => `${r.int(1, 9)}.${r.int(1, 9)} L`,
      () => `${r.int(100, 999)} ml`,
      () => `${r.int(1, 9999)} km`,
      () => `${r.num(6)} downloads`,
      () => `${r.int(10, 99)} ${r.digits(3)} ${r.digits(3)} ${r.digits(3)} bytes`,
    ])(),
  year: (r) =>
    r.pick([
      () => String(r.int(1900, 2030)),
      () => `${r.int(1990, 2015)}-${r.int(2016, 2030)}`,
      () => `the ${r.int(190, 202)}0s`,
      () => `FY${r.int(2019, 2030)}`,
      () => `${r.int(1990, 2015)}–${r.int(2016, 2030)}`,
    ])(),
  isbn: (r) =>
    r.pick([
      () => {
        const d = isbn13(r);
        return `${d.slice(0, 3)}-${d[3]}-${d.slice(4, 6)}-${d.slice(6, 12)}-${d[12]}`;
      },
      () => {
        const d = isbn10(r);
        return `ISBN ${d[0]}-${d.slice(1, 4)}-${d.slice(4, 9)}-${d[9]}`;
      },
      () => {
        const d = isbn13(r);
        return `${d.slice(0, 3)} ${d[3]} ${d.slice(4, 7)} ${d.slice(7, 12)} ${d[12]}`;
      },
      () => `ISBN-13: ${isbn13(r)}`,
      () => `ISBN ${isbn10(r)}`,
    ])(),
  postal_code: (r) =>
    r.pick([
      () => pad(r.int(501, 99950), 5),
      () => `${pad(r.int(501, 99950), 5)}-${r.digits(4)}`,
      () => `${pad(r.int(1001, 99998), 5)} Berlin`,
      () => `${pad(r.int(1000, 95999), 5)} Paris`,
      () =>
        `${r.pick(["SW1A", "EC1A", "W1A", "M1", "B33"])} ${r.int(1, 9)}${r.chars(2, "ABDEFGHJLNPQRSTUWXYZ")}`,
      () => `K${r.int(1, 9)}A ${r.int(0, 9)}B${r.int(1, 9)}`,
      () => `${r.int(1000, 9999)} ${r.chars(2, UPPER)}`,
      () => `${r.num(3)}-${r.digits(4)}`,
      () => `〒${r.num(3)}-${r.digits(4)}`,
      () => `CH-${r.int(1000, 9658)}`,
    ])(),
  percentage: (r) =>
    r.pick([
      () => `${r.int(0, 99)}.${r.int(0, 9)}%`,
      () => `${r.int(90, 99)}.${r.digits(2)}%`,
      () => `-${r.int(0, 9)}.${r.int(0, 9)}%`,
      () => `0.${r.digits(2)}%`,
      () => `+${r.int(0, 9)}.${r.int(0, 9)}%`,
      () => `${r.int(1, 100)} %`,
    ])(),
  coordinate: (r) =>
    r.pick([
      () => `${r.int(10, 70)}.${r.digits(4)}, -${r.int(0, 9)}.${r.digits(4)}`,
      () => `${r.int(10, 70)}.${r.digits(4)}° N, ${r.int(10, 120)}.${r.digits(4)}° W`,
      () => `${r.int(10, 70)}.${r.digits(4)},${r.int(1, 30)}.${r.digits(4)}`,
      () => `-${r.int(10, 45)}.${r.digits(4)}, ${r.int(100, 179)}.${r.digits(4)}`,
      () => `lat=${r.int(10, 70)}.${r.digits(4)}&lon=${r.int(100, 179)}.${r.digits(4)}`,
      () => `${r.int(10, 70)}°${r.int(0, 59)}′${r.int(0, 59)}″N`,
    ])(),
  semver_range: (r) =>
    r.pick([
      () => `^${r.int(0, 9)}.${r.int(0, 20)}.${r.int(0, 30)}`,
      () => `~${r.int(0, 9)}.${r.int(0, 20)}.${r.int(0, 30)}`,
      () => `>=${r.int(1, 9)}.0.0 <${r.int(10, 19)}.0.0`,
      () => `${r.int(1, 9)}.x`,
      () =>
        `${r.int(1, 4)}.${r.int(0, 9)}.${r.int(0, 9)} - ${r.int(5, 9)}.${r.int(0, 9)}.${r.int(0, 9)}`,
      () => `^${r.int(1, 9)}.${r.int(0, 30)}.${r.int(0, 30)} || ^${r.int(10, 19)}.0.0`,
      () => `>=${r.int(14, 22)}.0.0`,
    ])(),
  short_number: (r) =>
    r.pick([
      () => String(r.int(0, 999)),
      () => `${r.int(1, 9)} of ${r.int(10, 20)}`,
      () => `page ${r.int(1, 400)}`,
      () => `Room ${r.int(100, 999)}`,
      () => `rank #${r.int(1, 50)}`,
      () => `step ${r.int(1, 12)}`,
      () => `${r.int(1, 99)}th`,
      () => `No. ${r.int(1, 99)}`,
    ])(),
  code: (r) =>
    r.pick([
      () => `const MAX = ${r.pick([65535, 4096, 1024, 2147483647])};`,
      () => `0x${r.chars(8, HEX)}`,
      () => `arr[${r.int(0, 4096)}]`,
      () => `port = ${r.int(1024, 65535)}`,
      () => `sleep(${r.int(100, 5000)})`,
      () => `${r.int(1, 9)}e-${r.int(3, 12)}`,
      () => `return ${r.int(0, 9)}.${r.digits(5)};`,
      () => `#define BUF_SIZE ${r.pick([256, 512, 4096, 8192])}`,
      () => `chmod 0${r.pick(["755", "644", "600", "700"])}`,
      () => "UINT64_MAX is 18446744073709551615",
      () => "Number.MAX_SAFE_INTEGER === 9007199254740991",
      () => `timestamp ${r.int(1600000000, 1800000000)}`,
      () => `Date.now() returned ${r.int(1600000000, 1800000000)}${r.digits(3)}`,
      () => `md5 ${r.chars(32, HEX)}`,
      () =>
        `uuid ${r.chars(8, HEX)}-${r.chars(4, HEX)}-4${r.chars(3, HEX)}-a${r.chars(3, HEX)}-${r.chars(12, HEX)}`,
      () => `localhost:${r.int(1024, 65535)}`,
      () => `http://127.0.0.1:${r.int(1024, 65535)}/status`,
      () => `listen on [::1]:${r.int(1024, 65535)}`,
      () => `bind 0.0.0.0:${r.int(1024, 65535)}`,
      () => `see RFC 5246 section-7.4.${r.int(1, 9)}.${r.int(1, 9)}`,
      () => `id job_x.${r.digits(5)}.${r.digits(5)}`,
      () => "std::vector<int> v; a::b::c();",
      () => `x = y[${r.int(1, 9)}:${r.int(10, 99)}]`,
      () => `SELECT * FROM t LIMIT ${r.int(1, 100)} OFFSET ${r.int(0, 1000)};`,
      () => `git commit ${r.chars(7, HEX)}`,
      () => `rgba(${r.int(0, 255)}, ${r.int(0, 255)}, ${r.int(0, 255)}, 0.${r.int(1, 9)})`,
      () => `matrix 3x3 [[1,2,3],[4,5,6],[7,8,9]]`,
    ])(),
  card_like_luhn_fail: (r) => formatCard(r, cardDigits(r, true)),
  iban_like_bad_check: (r) => {
    const c = ibanCompact(r, true);
    return r.chance(0.7) ? friendlyIban(c) : c;
  },
  ssn_invalid_range: (r) => {
    const [a, g, s] = ssnParts(r);
    return r.pick([
      () => `000-${g}-${s}`,
      () => `666-${g}-${s}`,
      () => `9${r.digits(2)}-${g}-${s}`,
      () => `${a}-00-${s}`,
      () => `${a}-${g}-0000`,
    ])();
  },
  measurement: (r) =>
    r.pick([
      () => `${r.pick([1920, 2560, 3840])}x${r.pick([1080, 1440, 2160])}`,
      () => `${r.int(1, 9)}.${r.int(0, 9)} mm`,
      () => `ratio ${r.pick(["16:9", "4:3", "21:9"])}`,
      () => `1:${r.pick([1000, 25000, 50000])} scale`,
      () => `score ${r.int(0, 5)}-${r.int(0, 5)}`,
      () => `${r.int(20, 40)}-${r.int(41, 60)}°C`,
      () => `pages ${r.int(1, 200)}-${r.int(201, 400)}`,
      () => `${r.int(10, 99)}-${r.int(10, 99)}-${r.int(10, 99)} rule`,
      () => `${r.int(100, 240)} V / ${r.int(50, 60)} Hz`,
    ])(),
  table_row: tableRow,
  identifier: (r) =>
    r.pick([
      () => `MAC ${Array.from({ length: 6 }, () => r.chars(2, "0123456789ABCDEF")).join(":")}`,
      () => `S/N ${r.num(3)}-${r.num(4)}-${r.num(2)}`,
      () => `1Z${r.chars(6, ALNUM_UPPER)}${r.digits(10)}`,
      () => `VIN ${r.chars(17, "ABCDEFGHJKLMNPRSTUVWXYZ0123456789")}`,
      () => `SKU ${r.num(5)}-${r.num(3)}`,
      () => `flight LH${r.int(100, 9999)}`,
      () => `seat ${r.int(1, 40)}${r.pick(["A", "C", "F"])}`,
      () => `last four digits ${r.digits(4)}`,
      () =>
        `batch ${r.int(2019, 2025)}${pad(r.int(1, 12), 2)}${pad(r.int(1, 28), 2)}-${r.digits(3)}`,
      () => `US ${r.int(2019, 2025)}/0${r.digits(6)} A1`,
      () => `EP ${r.int(1, 3)} ${r.num(3)} ${r.digits(3)} B1`,
      () => `${r.int(100, 599)} U.S. ${r.int(1, 999)}`,
      () => `sort code ${r.num(2)}-${r.digits(2)}-${r.digits(2)}`,
      () => `account ${r.num(8)}`,
      () => `#${r.chars(6, HEX)}`,
      () => `cron "0 ${r.int(0, 23)} * * ${r.int(0, 6)}"`,
      () => `PT${r.int(1, 9)}H${r.int(1, 59)}M`,
    ])(),
};

function tableRow(r: Rand): string {
  const date = `${r.int(2019, 2025)}-${pad(r.int(1, 12), 2)}-${pad(r.int(1, 28), 2)}`;
  const cells = [
    String(r.int(1, 99999)),
    date,
    `${r.int(1, 99999)}.${r.digits(2)}`,
    String(r.int(1, 500)),
    `${r.int(0, 100)}%`,
    `ORD-${r.digits(6)}`,
    `${r.int(1, 9)}.${r.int(0, 20)}.${r.int(0, 9)}`,
    r.num(r.int(4, 12)),
  ];
  const picked = cells.filter(() => r.chance(0.6));
  if (picked.length < 2) picked.push(date, String(r.int(1, 999)));
  return r.chance(0.5) ? picked.join(",") : `| ${picked.join(" | ")} |`;
}

const NEGATIVE_FRAMES = [
  "{v}",
  "The value was {v}.",
  "{v} appears in the report.",
  "See {v} for details.",
  "As of {v}, nothing changed.",
  "We noted {v}, then moved on.",
  "(Reference: {v})",
  "The figure ({v}) matches the spreadsheet.",
  "Summary — {v}; approved.",
  "Laut Bericht: {v}.",
  "Selon le rapport : {v}.",
  "数值：{v}。",
  '"{v}" was quoted in the minutes.',
  "Line 3: {v}\nLine 4: done",
];

const CATEGORY_FRAMES: Partial<Record<NegativeCategory, string[]>> = {
  date: [
    "The meeting moved to {v}.",
    "Invoice dated {v}, due in 30 days.",
    "Born on {v}? No, that is the filing date.",
  ],
  time: ["The train leaves at {v}.", "Doors open {v}.", "Elapsed: {v}"],
  order_id: [
    "Your order {v} has shipped.",
    "Please quote {v} in every reply.",
    "Status of {v}: delivered",
  ],
  version: ["Upgrade to {v} to fix the crash.", "Tested on {v}.", "Changelog for {v}"],
  price: ["Total: {v} incl. VAT.", "The blender costs {v}.", "Refund of {v} approved."],
  quantity: ["We shipped {v} last month.", "Capacity: {v}"],
  year: ["Founded in {v}.", "Data covers {v}."],
  isbn: ["The book ({v}) is out of print.", "Cite as {v}."],
  postal_code: ["Ship to 12 High Street, {v}.", "Postcode: {v}"],
  percentage: ["Conversion rose {v} this quarter.", "Battery at {v}"],
  coordinate: ["The site is at {v}.", "GPS: {v}"],
  semver_range: ['"react": "{v}" in package.json', "Requires node {v}."],
  code: ["In the diff: `{v}`", "    {v}"],
  card_like_luhn_fail: ["Reference number {v} is not a card.", "Tracking: {v}"],
  iban_like_bad_check: ["The form had {v}, which the bank rejected."],
  ssn_invalid_range: ["Sample ID {v} from the training manual."],
};

function negatives(r: Rand, perCategory: number): NegativeSample[] {
  const out: NegativeSample[] = [];
  for (const category of NEGATIVE_CATEGORIES) {
    const frames = [...NEGATIVE_FRAMES, ...(CATEGORY_FRAMES[category] ?? [])];
    for (let i = 0; i < perCategory; i++) {
      const value = NEGATIVE_VALUES[category](r);
      out.push({ text: r.pick(frames).replace("{v}", () => value), category, value });
    }
  }
  return out;
}

function plainUrls(r: Rand, count: number): NegativeSample<"plain_url">[] {
  const frames = [
    "See {v} for details.",
    "{v}",
    "Docs: <{v}>",
    "(source: {v})",
    "Open {v}, then log in.",
  ];
  return Array.from({ length: count }, () => {
    const value = plainUrl(r);
    return {
      text: r.pick(frames).replace("{v}", () => value),
      category: "plain_url" as const,
      value,
    };
  });
}

/** The corpus; the same seed gives the same corpus everywhere. */
export function buildPrivacyCorpus(seed = 20260415): PrivacyCorpus {
  const r = new Rand(seed);
  return {
    positives: positives(r, 300),
    negatives: negatives(r, 130),
    plainUrls: plainUrls(r, 300),
  };
}

// ---------------------------------------------------------------------------------------
// Scoring

interface KindScore {
  items: number;
  masked: number;
}

export interface CorpusScore {
  perKind: Record<PiiKind, KindScore>;
  negatives: {
    items: number;
    wrong: number;
    byCategory: Record<string, { items: number; wrong: number }>;
  };
  plainUrls: { items: number; wrong: number };
  /** Positive samples whose surrounding text did not come back intact. */
  damagedContext: number;
  misses: { kind: PiiKind; value: string; text: string; got: string }[];
  wrong: { category: string; value: string; text: string; got: string }[];
}

/**
 * Scores a masking function on the corpus. An item counts as masked when its exact span
 * became its kind's placeholder and the text around it is untouched.
 */
export function scoreCorpus(corpus: PrivacyCorpus, mask: (text: string) => string): CorpusScore {
  const perKind = Object.fromEntries(PII_KINDS.map((k) => [k, { items: 0, masked: 0 }])) as Record<
    PiiKind,
    KindScore
  >;
  const misses: CorpusScore["misses"] = [];
  let damagedContext = 0;
  for (const sample of corpus.positives) {
    const got = mask(sample.text);
    const first = sample.items[0]?.start ?? sample.text.length;
    let aligned = got.startsWith(sample.text.slice(0, first));
    let pos = first;
    for (let i = 0; i < sample.items.length; i++) {
      const item = sample.items[i] as Item;
      const next = sample.items[i + 1];
      const after = sample.text.slice(item.end, next ? next.start : sample.text.length);
      perKind[item.kind].items++;
      let hit = false;
      if (aligned) {
        const placeholder = PLACEHOLDERS[item.kind];
        if (got.startsWith(placeholder + after, pos)) {
          hit = true;
          pos += placeholder.length + after.length;
        } else if (got.startsWith(item.value + after, pos)) pos += item.value.length + after.length;
        else aligned = false;
      }
      if (hit) perKind[item.kind].masked++;
      else misses.push({ kind: item.kind, value: item.value, text: sample.text, got });
    }
    if (!aligned || pos !== got.length) damagedContext++;
  }
  const wrong: CorpusScore["wrong"] = [];
  const byCategory: Record<string, { items: number; wrong: number }> = {};
  let wrongCount = 0;
  for (const n of corpus.negatives) {
    const got = mask(n.text);
    const c = byCategory[n.category] ?? { items: 0, wrong: 0 };
    byCategory[n.category] = c;
    c.items++;
    if (got !== n.text) {
      c.wrong++;
      wrongCount++;
      wrong.push({ category: n.category, value: n.value, text: n.text, got });
    }
  }
  let wrongUrls = 0;
  for (const n of corpus.plainUrls) {
    const got = mask(n.text);
    if (got !== n.text) {
      wrongUrls++;
      wrong.push({ category: n.category, value: n.value, text: n.text, got });
    }
  }
  return {
    perKind,
    negatives: { items: corpus.negatives.length, wrong: wrongCount, byCategory },
    plainUrls: { items: corpus.plainUrls.length, wrong: wrongUrls },
    damagedContext,
    misses,
    wrong,
  };
}

// ---------------------------------------------------------------------------------------
// Long text for throughput

const PROSE = [
  "The committee reviewed the quarterly figures and agreed to postpone the vote until the next session.",
  "Our support team answered most questions within a day, although a few tickets took longer than planned.",
  "The new warehouse opened in the spring, and shipping times dropped by almost a third.",
  "She rewrote the onboarding guide so that new volunteers could set up the worker in minutes.",
  "Heavy rain delayed the bridge repairs, but the crew expects to finish before the end of the month.",
  "The library extended its opening hours after students asked for more quiet space during exams.",
  "A short survey showed that most customers preferred email updates to text messages.",
  "The orchestra rehearsed the second movement twice before the conductor was satisfied.",
  "Version 2.4.1 fixed the memory leak that appeared when large documents were uploaded.",
  "In 2023 the project processed 1,250,000 documents, and the median job finished in 14 minutes.",
  "Prices rose 3.2% year on year, with the largest increase in energy and transport.",
  "The museum's new exhibition of maps runs from 15 March 2024 until the end of September.",
];

/** About `bytes` characters of ordinary prose with a share of corpus sentences mixed in. */
export function mixedText(
  corpus: PrivacyCorpus,
  bytes: number,
  seed = 7,
  corpusShare = 0.2,
): string {
  const r = new Rand(seed);
  const parts: string[] = [];
  let size = 0;
  while (size < bytes) {
    let s: string;
    if (r.chance(corpusShare)) {
      s = r.chance(0.5)
        ? r.pick(corpus.positives).text
        : r.chance(0.8)
          ? r.pick(corpus.negatives).text
          : r.pick(corpus.plainUrls).text;
    } else s = r.pick(PROSE);
    parts.push(s);
    size += s.length + 1;
  }
  return parts.join(r.chance(0.5) ? " " : "\n");
}
