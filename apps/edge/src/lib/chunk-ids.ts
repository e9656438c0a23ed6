/**
 * How chunks are named: `<jobId>.<seq>.<index>`, the document's position in its job and the
 * chunk's in its document, zero-padded so that ids sort in document order. A chunk id is also
 * its vector's id; all but its index names the document version it belongs to.
 */
const pad = (n: number) => String(n).padStart(5, "0");

/** The name of a job's document version `seq` (the prefix of its chunk ids). */
export function versionName(jobId: string, seq: number): string {
  return `${jobId}.${pad(seq)}`;
}

/** The id of chunk `index` of a job's document `seq`. */
export function chunkIdOf(jobId: string, seq: number, index: number): string {
  return `${versionName(jobId, seq)}.${pad(index)}`;
}

/** The version a chunk id belongs to. */
export function versionOf(chunkId: string): string {
  return chunkId.slice(0, chunkId.lastIndexOf("."));
}
