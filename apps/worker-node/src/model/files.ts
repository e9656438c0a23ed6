// File plumbing for the model cache: hashing, atomic writes and verified downloads.
// Every file lands under its final name only after it is complete (temp file + rename), so a
// crash or a bad download never leaves a truncated model that a later run would trust.
import { createHash, randomUUID } from "node:crypto";
import { createReadStream } from "node:fs";
import { open, readFile, rename, rm, stat, writeFile } from "node:fs/promises";

/** Thrown when a file's SHA-256 differs from the manifest's. Nothing is left on disk. */
export class ModelIntegrityError extends Error {
  constructor(
    readonly file: string,
    readonly expected: string,
    readonly actual: string,
    readonly source: string,
  ) {
    super(
      `SHA-256 mismatch for model file ${file} from ${source}: expected ${expected}, got ${actual}. ` +
        "The file was discarded; the manifest or the file on the server is wrong.",
    );
    this.name = "ModelIntegrityError";
  }
}

/** Lower-case hex SHA-256 of bytes. */
export function sha256Hex(data: Uint8Array | string): string {
  return createHash("sha256").update(data).digest("hex");
}

/** Lower-case hex SHA-256 of a file, streamed (model files can be hundreds of MB). */
export async function sha256File(file: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) {
    hash.update(chunk as Buffer);
  }
  return hash.digest("hex");
}

/** True if `file` exists and hashes to `sha256`. */
export async function fileVerifies(file: string, sha256: string): Promise<boolean> {
  try {
    if (!(await stat(file)).isFile()) return false;
  } catch {
    return false;
  }
  return (await sha256File(file)) === sha256;
}

/** A temp name next to `file` (same folder, so rename is atomic), unique per process and call. */
function tempName(file: string): string {
  return `${file}.${process.pid}.${randomUUID().slice(0, 8)}.part`;
}

/** Writes `data` to `file` atomically: a temp file in the same folder, then rename. */
export async function writeFileAtomic(file: string, data: Uint8Array | string): Promise<void> {
  const tmp = tempName(file);
  try {
    await writeFile(tmp, data);
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/** Parses a JSON file, or returns undefined when it is missing or unreadable. */
export async function readJsonIfPresent(file: string): Promise<unknown> {
  try {
    return JSON.parse(await readFile(file, "utf8")) as unknown;
  } catch {
    return undefined;
  }
}

/**
 * Downloads `url` to `dest`, hashing as it streams; keeps it only if the SHA-256 matches.
 * On any failure the partial file is deleted and the error rethrown.
 */
export async function downloadVerified(
  url: string,
  dest: string,
  sha256: string,
  fetchImpl: typeof fetch,
): Promise<void> {
  const tmp = tempName(dest);
  try {
    const res = await fetchImpl(url);
    if (!res.ok || !res.body) throw new Error(`Download of ${url} failed: HTTP ${res.status}`);
    const hash = createHash("sha256");
    const fh = await open(tmp, "w");
    try {
      const reader = res.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        hash.update(value);
        await fh.write(value);
      }
    } finally {
      await fh.close();
    }
    const actual = hash.digest("hex");
    if (actual !== sha256) throw new ModelIntegrityError(dest, sha256, actual, url);
    await rename(tmp, dest);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}
