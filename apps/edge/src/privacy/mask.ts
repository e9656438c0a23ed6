/**
 * Replaces personal data in chunk text with typed placeholders before the text goes to an
 * untrusted volunteer.
 *
 * Each kind is found by a cheap candidate scan (a regular expression with strict boundaries,
 * or `indexOf` on a marker character) and then confirmed by a check made for that kind:
 * libphonenumber-js for phone numbers, card-validator (issuer ranges, lengths, Luhn) for
 * cards, ibantools' registry (country length and BBAN layout) plus mod-97 for IBANs,
 * ipaddr.js for IP addresses, the published SSA ranges for SSNs. Candidates are scanned in
 * priority order and a span taken by one kind cannot be taken by another, so the digits of
 * an IBAN never come out as a card or a phone number.
 */

import { PII_KINDS, type PiiKind } from "@p2pa/shared";
import cardValidator from "card-validator";
import { countrySpecs, ValidationErrorsIBAN, validateIBAN } from "ibantools";
import ipaddr from "ipaddr.js";
import { type CountryCode, parsePhoneNumberFromString } from "libphonenumber-js/min";

// The kinds are part of the API (a job's privacy option), so they are defined with it.
export { PII_KINDS, type PiiKind };

/** What each kind of item becomes in the text a worker gets. */
export const PLACEHOLDERS: Record<PiiKind, string> = {
  email: "<EMAIL>",
  phone: "<PHONE>",
  card: "<CARD>",
  iban: "<IBAN>",
  ip: "<IP>",
  ssn: "<SSN>",
  secret_url: "<URL>",
};

export interface MaskResult {
  text: string;
  found: Partial<Record<PiiKind, number>>;
}

const KIND_CODE = new Map<PiiKind, number>(PII_KINDS.map((k, i) => [k, i + 1]));

/** Spans already taken; a character belongs to at most one span. */
class Spans {
  private owner: Uint8Array | undefined;
  readonly list: { start: number; end: number; kind: PiiKind }[] = [];

  constructor(private readonly length: number) {}

  free(start: number, end: number): boolean {
    const owner = this.owner;
    if (!owner) return true;
    for (let i = start; i < end; i++) if (owner[i] !== 0) return false;
    return true;
  }

  claim(start: number, end: number, kind: PiiKind): boolean {
    if (!this.free(start, end)) return false;
    this.owner ??= new Uint8Array(this.length);
    this.owner.fill(KIND_CODE.get(kind) as number, start, end);
    this.list.push({ start, end, kind });
    return true;
  }

  /** Keeps a span that has the shape of one kind but fails its check from every other kind. */
  block(start: number, end: number): void {
    if (!this.free(start, end)) return;
    this.owner ??= new Uint8Array(this.length);
    this.owner.fill(255, start, end);
  }
}

// ---------------------------------------------------------------------------------------
// Character classes, by code unit, for the hand-expanded scans.

const isDigit = (c: number) => c >= 48 && c <= 57;
const isAsciiLetter = (c: number) => (c >= 65 && c <= 90) || (c >= 97 && c <= 122);
const isAsciiAlnum = (c: number) => isDigit(c) || isAsciiLetter(c);
const isHex = (c: number) => isDigit(c) || (c >= 65 && c <= 70) || (c >= 97 && c <= 102);
/** Latin letters with diacritics (À..ɏ), allowed in internationalised addresses. */
const isLatinExtended = (c: number) => c >= 0xc0 && c <= 0x24f && c !== 0xd7 && c !== 0xf7;
/** A character that would make a match the middle of a longer word or identifier. */
function isWordChar(c: number): boolean {
  return isAsciiAlnum(c) || c === 95 || isLatinExtended(c);
}

// ---------------------------------------------------------------------------------------
// secret_url

// Parameter names that carry credentials: exact names, or a suffix after `_`, `-` or `.`.
const SECRET_PARAM =
  /^(?:x-(?:amz|goog)-)?(?:[\w.-]*[_.-])?(?:token|key|apikey|sig|signature|password|passwd|pwd|pass|secret|auth|credentials?|jwt|awsaccesskeyid)$/;
// Same, written in camelCase (authToken, clientSecret).
const SECRET_PARAM_CAMEL = /[a-z0-9](?:Token|Key|Secret|Signature|Password|Sig)$/;
// Webhook URLs whose path is the credential.
const SECRET_PATH =
  /^(?:hooks\.slack\.com\/services\/|(?:discord|discordapp)\.com\/api\/webhooks\/|api\.telegram\.org\/bot\d+:)/i;
const TOKEN_LIKE_USER = /^(?=[\w.~-]*\d)(?=[\w.~-]*[A-Za-z])[\w.~-]{20,}$/;

/** Where a URL that starts at `start` ends (exclusive), before trailing punctuation. */
function urlEnd(text: string, start: number): number {
  let i = start;
  const n = text.length;
  while (i < n) {
    const c = text.charCodeAt(i);
    if (
      c <= 32 ||
      c === 34 || // "
      c === 39 || // '
      c === 60 || // <
      c === 62 || // >
      c === 92 || // \
      c === 94 || // ^
      c === 96 || // `
      c === 123 || // {
      c === 124 || // |
      c === 125 || // }
      c === 127 ||
      (c >= 0xa0 && c <= 0xbf) || // Latin-1 punctuation: « » ¡ ¿
      (c >= 0x2000 && c <= 0x206f) || // general punctuation: dashes, curly quotes
      (c >= 0x3000 && c <= 0x303f) || // CJK punctuation
      (c >= 0xff00 && c <= 0xffef) // full-width forms
    )
      break;
    i++;
  }
  // Sentence punctuation after a URL is not part of it; a closing bracket is, when balanced.
  let parens = 0;
  let brackets = 0;
  for (let j = start; j < i; j++) {
    const c = text.charCodeAt(j);
    if (c === 40) parens++;
    else if (c === 41) parens--;
    else if (c === 91) brackets++;
    else if (c === 93) brackets--;
  }
  while (i > start) {
    const c = text.charCodeAt(i - 1);
    if (c === 46 || c === 44 || c === 59 || c === 58 || c === 33 || c === 63) i--;
    else if (c === 41 && parens < 0) {
      parens++;
      i--;
    } else if (c === 93 && brackets < 0) {
      brackets++;
      i--;
    } else break;
  }
  return i;
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

function carriesSecret(url: string, schemeEnd: number): boolean {
  const rest = url.slice(schemeEnd + 3);
  if (SECRET_PATH.test(rest)) return true;
  const authEnd = rest.search(/[/?#]/);
  const authority = authEnd === -1 ? rest : rest.slice(0, authEnd);
  const at = authority.lastIndexOf("@");
  if (at > 0) {
    const userinfo = authority.slice(0, at);
    const colon = userinfo.indexOf(":");
    if (colon !== -1 && colon < userinfo.length - 1) return true;
    if (colon === -1 && TOKEN_LIKE_USER.test(userinfo)) return true;
  }
  if (authEnd === -1) return false;
  const tail = rest.slice(authEnd);
  const q = tail.search(/[?#]/);
  if (q === -1) return false;
  for (const pair of tail.slice(q + 1).split(/[&;?#]/)) {
    const eq = pair.indexOf("=");
    if (eq <= 0 || eq === pair.length - 1) continue;
    const name = safeDecode(pair.slice(0, eq));
    if (SECRET_PARAM.test(name.toLowerCase()) || SECRET_PARAM_CAMEL.test(name)) return true;
  }
  return false;
}

function findSecretUrls(text: string, spans: Spans): void {
  let from = 0;
  for (;;) {
    const mark = text.indexOf("://", from);
    if (mark === -1) return;
    from = mark + 3;
    let s = mark;
    while (s > 0) {
      const c = text.charCodeAt(s - 1);
      if (isAsciiAlnum(c) || c === 43 || c === 45 || c === 46) s--;
      else break;
    }
    while (s < mark && !isAsciiLetter(text.charCodeAt(s))) s++;
    if (mark - s < 2) continue;
    const e = urlEnd(text, mark + 3);
    if (e <= mark + 3) continue;
    from = e;
    if (carriesSecret(text.slice(s, e), mark - s)) spans.claim(s, e, "secret_url");
  }
}

// ---------------------------------------------------------------------------------------
// email

const isLocalChar = (c: number) =>
  isAsciiAlnum(c) || c === 46 || c === 95 || c === 37 || c === 43 || c === 45 || isLatinExtended(c);
const isDomainChar = (c: number) => isAsciiAlnum(c) || c === 45 || c === 46 || isLatinExtended(c);
// An image name with a density suffix (icon@2x.png) is not an address.
const NOT_A_DOMAIN = /^\d+(?:\.\d+)?x\.|\.(?:png|jpe?g|gif|svg|webp|avif|ico)$/i;
const TLD = /\.(?:[A-Za-z\u00c0-\u024f]{2,63}|xn--[a-z0-9-]{2,59})$/;

function findEmails(text: string, spans: Spans): void {
  let from = 0;
  for (;;) {
    const at = text.indexOf("@", from);
    if (at === -1) return;
    from = at + 1;
    let s = at;
    while (s > 0 && isLocalChar(text.charCodeAt(s - 1))) s--;
    while (s < at && text.charCodeAt(s) === 46) s++;
    if (s === at || text.charCodeAt(at - 1) === 46) continue;
    // `scheme://user@host` names an account on that host, not a mailbox.
    if (s >= 3 && text.startsWith("://", s - 3)) continue;
    let e = at + 1;
    while (e < text.length && isDomainChar(text.charCodeAt(e))) e++;
    while (e > at + 1) {
      const c = text.charCodeAt(e - 1);
      if (c === 46 || c === 45) e--;
      else break;
    }
    const domain = text.slice(at + 1, e);
    if (!domain.includes(".") || domain.includes("..") || !TLD.test(domain)) continue;
    if (NOT_A_DOMAIN.test(domain)) continue;
    from = e;
    spans.claim(s, e, "email");
  }
}

// ---------------------------------------------------------------------------------------
// iban

// The boundary is tested after the first letter: a leading class lets V8 skip ahead faster.
const IBAN_CANDIDATE = /[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]){10,32}/g;
// ibantools also checks some countries' own bank/account check digits. A number with the
// registry's layout and a right mod-97 is an IBAN to mask even when those fail (a made-up
// or test account), and mod-97 alone already lets through only 1 in 97 random strings.
const IBAN_OK = new Set([ValidationErrorsIBAN.WrongAccountBankBranchChecksum]);

function findIbans(text: string, spans: Spans): void {
  IBAN_CANDIDATE.lastIndex = 0;
  for (let m = IBAN_CANDIDATE.exec(text); m; m = IBAN_CANDIDATE.exec(text)) {
    const s = m.index;
    const spec = countrySpecs[m[0].slice(0, 2)];
    const length = spec?.chars;
    let end = -1;
    if (length) {
      // Take exactly the registry's length for that country; it must end a group.
      let count = 0;
      let i = s;
      let compact = "";
      while (i < text.length && count < length) {
        const c = text.charCodeAt(i);
        if (c === 32) {
          i++;
          continue;
        }
        if (!isAsciiAlnum(c)) break;
        compact += text[i];
        count++;
        i++;
      }
      if (count === length && (i >= text.length || !isWordChar(text.charCodeAt(i)))) {
        const { errorCodes } = validateIBAN(compact);
        if (errorCodes.every((code) => IBAN_OK.has(code))) end = i;
        // The right shape with a wrong check: a mistyped IBAN, whose digits are no card.
        else if (!errorCodes.includes(ValidationErrorsIBAN.WrongBBANFormat)) spans.block(s, i);
      }
    }
    if (end !== -1 && spans.claim(s, end, "iban")) IBAN_CANDIDATE.lastIndex = end;
    else IBAN_CANDIDATE.lastIndex = s + 4;
  }
}

// ---------------------------------------------------------------------------------------
// card

// A run of digits joined by single spaces or dashes, not inside a word or a decimal.
const DIGIT_RUN = /(?<![\w+/-]|\d\.)\d(?:[ -]?\d){11,}/g;

function luhn(digits: string): boolean {
  let sum = 0;
  let double = false;
  for (let i = digits.length - 1; i >= 0; i--) {
    let d = digits.charCodeAt(i) - 48;
    if (double) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
    double = !double;
  }
  return sum % 10 === 0;
}

function isCardNumber(digits: string): boolean {
  if (digits.length < 13 || digits.length > 19 || !luhn(digits)) return false;
  if (cardValidator.number(digits, { luhnValidateUnionPay: true }).isValid) return true;
  // Older 13-digit Visa numbers, which card-validator's table no longer lists.
  return digits.length === 13 && digits[0] === "4";
}

/** Groupings printed on cards: 4-4-4-4(-3), shorter last group, 4-6-5 (Amex), 4-6-4. */
function isCardGrouping(groups: readonly string[]): boolean {
  if (groups.length === 1) return true;
  if (groups.length === 3 && groups[0]?.length === 4 && groups[1]?.length === 6) {
    const last = groups[2]?.length;
    return last === 4 || last === 5;
  }
  for (let i = 0; i < groups.length - 1; i++) if (groups[i]?.length !== 4) return false;
  const last = groups[groups.length - 1]?.length ?? 0;
  return last >= 1 && last <= 4;
}

function findCards(text: string, spans: Spans): void {
  DIGIT_RUN.lastIndex = 0;
  for (let m = DIGIT_RUN.exec(text); m; m = DIGIT_RUN.exec(text)) {
    const run = m[0];
    const s = m.index;
    const after = text.charCodeAt(s + run.length);
    if (isWordChar(after)) continue;
    if (after === 46 && isDigit(text.charCodeAt(s + run.length + 1))) continue;
    const hasSpace = run.includes(" ");
    const hasDash = run.includes("-");
    if (hasSpace && hasDash) continue;
    const groups = hasSpace || hasDash ? run.split(hasSpace ? " " : "-") : [run];
    // Offsets of each group in the text, so a card inside a longer run can be cut out.
    const offsets: number[] = [];
    let o = s;
    for (const g of groups) {
      offsets.push(o);
      o += g.length + 1;
    }
    // A run printed like one card number (or joined with dashes) is judged whole; only a
    // longer, space-separated run may hold a card next to other numbers.
    const whole = !hasSpace || (run.length - groups.length + 1 <= 19 && isCardGrouping(groups));
    if (whole) {
      const digits = groups.join("");
      if (spans.free(s, s + run.length) && isCardGrouping(groups) && isCardNumber(digits))
        spans.claim(s, s + run.length, "card");
      continue;
    }
    for (let i = 0; i < groups.length; ) {
      let matched = -1;
      let digits = "";
      for (let j = i; j < groups.length; j++) {
        digits += groups[j];
        if (digits.length > 19) break;
        if (
          digits.length >= 13 &&
          isCardGrouping(groups.slice(i, j + 1)) &&
          spans.free(offsets[i] as number, (offsets[j] as number) + (groups[j] as string).length) &&
          isCardNumber(digits)
        )
          matched = j;
      }
      if (matched === -1) {
        i++;
        continue;
      }
      const start = offsets[i] as number;
      const end = (offsets[matched] as number) + (groups[matched] as string).length;
      spans.claim(start, end, "card");
      i = matched + 1;
    }
  }
}

// ---------------------------------------------------------------------------------------
// ssn

const SSN_DASHED = /(?<![\w/-]|\d[ .-])(\d{3})([- ])(\d{2})\2(\d{4})(?![\w/-]|\.\d)/g;
/** The SSA never issues area 000, 666 or 900-999, group 00 or serial 0000. */
function isSsn(area: string, group: string, serial: string): boolean {
  return (
    area !== "000" &&
    area !== "666" &&
    area[0] !== "9" &&
    group !== "00" &&
    serial !== "0000" &&
    area.length === 3 &&
    group.length === 2 &&
    serial.length === 4
  );
}

function findSsns(text: string, spans: Spans): void {
  SSN_DASHED.lastIndex = 0;
  for (let m = SSN_DASHED.exec(text); m; m = SSN_DASHED.exec(text)) {
    // Space-separated, it must not be the start of a longer spaced number.
    const next = m.index + m[0].length;
    if (m[2] === " " && text[next] === " " && isDigit(text.charCodeAt(next + 1))) continue;
    if (isSsn(m[1] as string, m[3] as string, m[4] as string))
      spans.claim(m.index, m.index + m[0].length, "ssn");
    // AAA-GG-SSSS outside the issued ranges is still no phone number.
    else if (m[2] === "-") spans.block(m.index, m.index + m[0].length);
  }
}

// ---------------------------------------------------------------------------------------
// ip

const IPV4_CANDIDATE = /\d(?<![\w.]\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?![\w]|\.\d)/g;
// Four dotted numbers after these words are version, build or section numbers.
const NOT_AN_ADDRESS =
  /(?:\bv|\bversion|\bver\.?|\brelease|\bbuild|\bfirmware|\bsection|\bclause|\brev\.?|§)[\s#:_-]*$/i;
// Loopback and unspecified addresses (127.0.0.1, ::1, 0.0.0.0) name no one's machine.
const NOT_PERSONAL = new Set(["loopback", "unspecified"]);

function findIpv4(text: string, spans: Spans): void {
  IPV4_CANDIDATE.lastIndex = 0;
  for (let m = IPV4_CANDIDATE.exec(text); m; m = IPV4_CANDIDATE.exec(text)) {
    const s = m.index;
    const e = s + m[0].length;
    if (!spans.free(s, e) || !ipaddr.IPv4.isValidFourPartDecimal(m[0])) continue;
    if (NOT_AN_ADDRESS.test(text.slice(Math.max(0, s - 12), s))) continue;
    if (NOT_PERSONAL.has(ipaddr.IPv4.parse(m[0]).range())) spans.block(s, e);
    else spans.claim(s, e, "ip");
  }
}

function findIpv6(text: string, spans: Spans): void {
  let from = 0;
  const n = text.length;
  for (;;) {
    const colon = text.indexOf(":", from);
    if (colon === -1) return;
    let s = colon;
    while (s > 0 && (isHex(text.charCodeAt(s - 1)) || text.charCodeAt(s - 1) === 58)) s--;
    let e = colon + 1;
    let colons = 1;
    let dots = 0;
    while (e < n) {
      const c = text.charCodeAt(e);
      if (c === 58) colons++;
      else if (c === 46) dots++;
      else if (!isHex(c)) break;
      e++;
    }
    from = e;
    // The longest address with an embedded IPv4 part is 45 characters.
    if (e - s > 45) continue;
    for (let i = s; i < colon; i++) if (text.charCodeAt(i) === 58) colons++;
    if (colons < 2) continue;
    // Sentence punctuation after an address.
    while (e > colon && text.charCodeAt(e - 1) === 46) {
      e--;
      dots--;
    }
    if (text.charCodeAt(e - 1) === 58 && text.charCodeAt(e - 2) !== 58) e--;
    if (dots !== 0 && dots !== 3) continue;
    if (s > 0 && isWordChar(text.charCodeAt(s - 1))) continue;
    let zoneEnd = e;
    if (text.charCodeAt(e) === 37) {
      zoneEnd = e + 1;
      while (zoneEnd < n && (isWordChar(text.charCodeAt(zoneEnd)) || text[zoneEnd] === "."))
        zoneEnd++;
      while (text[zoneEnd - 1] === ".") zoneEnd--;
      if (zoneEnd === e + 1) zoneEnd = e;
    }
    if (zoneEnd < n && isWordChar(text.charCodeAt(zoneEnd))) continue;
    const address = text.slice(s, e);
    // `a::b` in code is a path, not an address: ask for a digit or three groups.
    const groups = address.split(":").filter((g) => g !== "").length;
    if (!/\d/.test(address) && groups < 3) continue;
    if (groups === 0 || !ipaddr.IPv6.isValid(address)) continue;
    if (NOT_PERSONAL.has(ipaddr.IPv6.parse(address).range())) spans.block(s, zoneEnd);
    else spans.claim(s, zoneEnd, "ip");
  }
}

// ---------------------------------------------------------------------------------------
// phone

// +CC or 00CC, then up to seven groups; parentheses for an area code or a dropped trunk (0).
const PHONE_INTERNATIONAL =
  /(?<![\w+]|\d[ ./-])(?:\((?:\+|00)[1-9]\d{0,3}\)|(?:\+|00)[1-9]\d{0,13})(?:(?:[ ./-]|[ ./-]?\(\d{1,4}\)[ ./-]?)\d{1,14}){0,7}(?![\w]|[./-]\d)/g;
// North American: (555) 123-4567, 555-123-4567, 555.123.4567, 1-800-555-0199.
const PHONE_NANP =
  /(?<![\w+/-]|\d[ .-])(?:1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[ .-]?)\d{3}[ .-]\d{4}(?![\w]|[./-]\d)/g;
// National format behind a trunk 0: 020 7946 0958, 06 12 34 56 78, 030/1234567, (02) 9876 5432.
const PHONE_NATIONAL =
  /(?<![\w+./-]|\d[ .-])(?:\(0\d{1,5}\)|0\d{1,5})(?:[ ./-]\d{2,8}){1,5}(?![\w]|[./-]\d)/g;
// Dates, and US ZIP+4 codes (08317-6902), which a trunk-0 region would read as a number.
const NOT_A_PHONE = /^(?:\d{1,2}([./-])\d{1,2}\1\d{2,4}|\d{4}([./-])\d{1,2}\2\d{1,2}|\d{5}-\d{4})$/;

/** Countries that write national numbers behind a trunk 0, tried in this order. */
const TRUNK_ZERO_REGIONS: readonly CountryCode[] = [
  "GB",
  "FR",
  "DE",
  "NL",
  "BE",
  "CH",
  "AT",
  "IT",
  "IE",
  "AU",
  "NZ",
  "JP",
  "IN",
  "ZA",
  "BR",
  "TR",
  "SE",
];

function countDigits(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) if (isDigit(s.charCodeAt(i))) n++;
  return n;
}

function validInternational(candidate: string): boolean {
  const digits = countDigits(candidate);
  if (digits < 8 || digits > 15) return false;
  const bare = candidate.replace(/^\(([^)]*)\)/, "$1").replace("(0)", "");
  const plus = bare.startsWith("00") ? `+${bare.slice(2)}` : bare;
  const number = parsePhoneNumberFromString(plus);
  if (!number) return false;
  if (number.isValid()) return true;
  // Behind a +, a grouped or full-length number is a phone number even in a range the
  // metadata calls unused (the UK's 07700 900xxx drama range, the US 555 range).
  return (digits >= 10 || /[ ./()-]/.test(candidate.slice(2))) && number.isPossible();
}

function validNational(candidate: string): boolean {
  const digits = countDigits(candidate);
  if (digits < 9 || digits > 12 || NOT_A_PHONE.test(candidate)) return false;
  for (const region of TRUNK_ZERO_REGIONS) {
    if (parsePhoneNumberFromString(candidate, region)?.isValid()) return true;
  }
  return false;
}

function validNanp(candidate: string): boolean {
  const digits = candidate.replace(/\D/g, "");
  const national = digits.length === 11 ? digits.slice(1) : digits;
  // The area code never starts with 0 or 1; 555 stays in, as documentation numbers use it.
  return national.length === 10 && national[0] !== "0" && national[0] !== "1";
}

/**
 * Longest prefix of the candidate that passes `valid`, cut only at a space: a number run on
 * with `-`, `.` or `/` (a date range, a part number) is one thing and is judged whole.
 */
function longestValid(candidate: string, valid: (s: string) => boolean): number {
  let end = candidate.length;
  for (;;) {
    if (valid(candidate.slice(0, end))) return end;
    const cut = candidate.lastIndexOf(" ", end - 1);
    if (cut <= 0) return -1;
    end = cut;
  }
}

function scanPhones(
  text: string,
  spans: Spans,
  re: RegExp,
  valid: (s: string) => boolean,
  needsSeparator: boolean,
): void {
  re.lastIndex = 0;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    const s = m.index;
    if (!spans.free(s, s + m[0].length)) continue;
    if (needsSeparator && !/[ ./()-]/.test(m[0])) continue;
    const end = longestValid(m[0], valid);
    if (end > 0) spans.claim(s, s + end, "phone");
  }
}

function findPhones(text: string, spans: Spans): void {
  scanPhones(text, spans, PHONE_INTERNATIONAL, validInternational, false);
  scanPhones(text, spans, PHONE_NANP, validNanp, true);
  scanPhones(text, spans, PHONE_NATIONAL, validNational, true);
}

// ---------------------------------------------------------------------------------------
// labelled numbers

// A bare run of digits, which is a phone number or an SSN only after a word that says so.
const BARE_DIGITS = /(?<![\w+/-]|\d\.)\+?\d{7,15}(?![\w]|[./-]\d)/g;
const SSN_LABEL =
  /\b(?:SSN|SS#|social security(?: number| no\.?)?)\s*(?:#|no\.?|number)?\s*[:=]?\s*$/i;
const PHONE_LABEL =
  /\b(?:tel|telephone|phone|call|mobile|mob|cell|fax|whatsapp|ph)\b\.?(?: ?(?:no|number|nr|#))?\.?\s*[:=]?\s*$/i;

function findLabelled(text: string, spans: Spans): void {
  BARE_DIGITS.lastIndex = 0;
  for (let m = BARE_DIGITS.exec(text); m; m = BARE_DIGITS.exec(text)) {
    const value = m[0];
    const s = m.index;
    const e = s + value.length;
    if (!spans.free(s, e)) continue;
    const before = text.slice(Math.max(0, s - 32), s);
    if (value.length === 9 && SSN_LABEL.test(before)) {
      if (isSsn(value.slice(0, 3), value.slice(3, 5), value.slice(5))) spans.claim(s, e, "ssn");
      continue;
    }
    if (!PHONE_LABEL.test(before)) continue;
    const ok = value.startsWith("+")
      ? validInternational(value)
      : value.startsWith("0")
        ? validNational(value)
        : validNanp(value);
    if (ok) spans.claim(s, e, "phone");
  }
}

// ---------------------------------------------------------------------------------------

const HAS_DIGIT = /\d/;
// No-break spaces group digits in French and other typography (06 12 34 56 78).
const NBSP = /[\u00a0\u2007\u202f]/g;
const hasNbsp = (s: string) =>
  s.indexOf("\u00a0") !== -1 || s.indexOf("\u202f") !== -1 || s.indexOf("\u2007") !== -1;

/**
 * Replaces each item of the requested kinds with its placeholder (`<EMAIL>`, `<PHONE>`,
 * `<CARD>`, `<IBAN>`, `<IP>`, `<SSN>`, `<URL>`) and counts what it replaced.
 *
 * Kinds that were not requested are still scanned (except secret URLs, which would hide
 * requested items inside them), so that their spans are not mistaken for another kind,
 * but they are left as they are.
 */
export function maskPersonalData(text: string, kinds: readonly PiiKind[]): MaskResult {
  if (kinds.length === 0 || text.length === 0) return { text, found: {} };
  const wanted = new Set(kinds);
  const spans = new Spans(text.length);
  // Scanned with plain spaces; one character for one, so spans hold for the original.
  const scan = hasNbsp(text) ? text.replace(NBSP, " ") : text;
  if (wanted.has("secret_url")) findSecretUrls(scan, spans);
  if (scan.includes("@")) findEmails(scan, spans);
  if (HAS_DIGIT.test(scan)) {
    findIbans(scan, spans);
    findCards(scan, spans);
    findSsns(scan, spans);
    if (scan.includes(":")) findIpv6(scan, spans);
    findIpv4(scan, spans);
    findPhones(scan, spans);
    findLabelled(scan, spans);
  }

  const found: Partial<Record<PiiKind, number>> = {};
  const out: string[] = [];
  let last = 0;
  const taken = spans.list.filter((span) => wanted.has(span.kind));
  taken.sort((a, b) => a.start - b.start);
  for (const { start, end, kind } of taken) {
    out.push(text.slice(last, start), PLACEHOLDERS[kind]);
    last = end;
    found[kind] = (found[kind] ?? 0) + 1;
  }
  if (last === 0) return { text, found };
  out.push(text.slice(last));
  return { text: out.join(""), found };
}
