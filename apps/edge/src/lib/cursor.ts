/**
 * Opaque list cursors: a position in a listing as base64url of its UTF-8 text, which clients
 * pass back without reading it.
 */

function toBase64Url(bytes: Uint8Array): string {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replaceAll("+", "-").replaceAll("/", "_").replaceAll("=", "");
}

/** The cursor for a position written as text. */
export function encodeCursor(position: string): string {
  return toBase64Url(new TextEncoder().encode(position));
}

/** The text of a cursor from `encodeCursor`, or null when it is not one. */
export function decodeCursor(cursor: string): string | null {
  try {
    const binary = atob(cursor.replaceAll("-", "+").replaceAll("_", "/"));
    return new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(
      Uint8Array.from(binary, (c) => c.charCodeAt(0)),
    );
  } catch {
    return null;
  }
}

/** The cursor for a position of two keys (a sort key and a tie-breaker). */
export function encodePairCursor(at: readonly [string, string]): string {
  return encodeCursor(JSON.stringify(at));
}

/** The two keys of a cursor from `encodePairCursor`, or null when it is not one. */
export function decodePairCursor(cursor: string): [string, string] | null {
  try {
    const v: unknown = JSON.parse(decodeCursor(cursor) ?? "");
    return Array.isArray(v) && v.length === 2 && v.every((x) => typeof x === "string")
      ? [v[0] as string, v[1] as string]
      : null;
  } catch {
    return null;
  }
}
