import { CreateJobOptions, DocumentInput, type IngestRejection } from "@p2pa/shared";
import type { Ingestion, SourceDocument } from "./submit.js";

/**
 * NDJSON ingest: one document per line, read from the request body as it arrives and taken
 * in batches, so an ingest of any size runs in the memory of one batch and its first tasks
 * reach workers while the rest is still uploading. A bad line is reported with its number
 * and the good lines around it are kept.
 */

/** A batch is taken when it holds this many documents or characters. */
const BATCH_DOCUMENTS = 500;
const BATCH_CHARS = 2_000_000;
/** Longest line read: a document at its size limit, escaped, with metadata. */
const MAX_LINE_CHARS = 8_000_000;

export type Line = { line: number; text: string } | { line: number; tooLong: true };

/** The body's lines (1-based numbers), decoded as UTF-8; blank lines are skipped. */
export async function* lines(body: ReadableStream<Uint8Array>): AsyncGenerator<Line> {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let n = 0;
  let skipping = false;
  for (;;) {
    const { done, value } = await reader.read();
    if (value) {
      // Whole lines of what has arrived; the unfinished last one waits for the next read.
      const parts = (buffer + value).split("\n");
      buffer = parts.pop() ?? "";
      for (const part of parts) {
        n++;
        if (skipping) skipping = false;
        else {
          const text = part.endsWith("\r") ? part.slice(0, -1) : part;
          if (text.trim()) yield { line: n, text };
        }
      }
    }
    if (buffer.length > MAX_LINE_CHARS) {
      // Too long to be a document: reported once, then skipped to its end.
      if (!skipping) yield { line: n + 1, tooLong: true };
      skipping = true;
      buffer = "";
    }
    if (done) {
      if (buffer.trim() && !skipping) yield { line: n + 1, text: buffer };
      return;
    }
  }
}

/** The job options an NDJSON body may start with: a first line `{"job": {...}}`. */
export function headerOptions(first: Line | undefined): CreateJobOptions | null {
  if (!first || "tooLong" in first) return null;
  let parsed: unknown;
  try {
    parsed = JSON.parse(first.text);
  } catch {
    return null;
  }
  if (!parsed || typeof parsed !== "object" || !("job" in parsed)) return null;
  return CreateJobOptions.parse((parsed as { job: unknown }).job);
}

/** One line as a document, or why it is not one. */
function parseLine(l: Line): SourceDocument | IngestRejection {
  if ("tooLong" in l)
    return {
      line: l.line,
      code: "line_too_long",
      message: `line over ${MAX_LINE_CHARS} characters`,
    };
  let raw: unknown;
  try {
    raw = JSON.parse(l.text);
  } catch (err) {
    return { line: l.line, code: "invalid_json", message: (err as Error).message };
  }
  const r = DocumentInput.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0];
    const where = issue?.path.length ? `${issue.path.join(".")}: ` : "";
    return {
      line: l.line,
      ...(raw && typeof raw === "object" && typeof (raw as { id?: unknown }).id === "string"
        ? { id: (raw as { id: string }).id }
        : {}),
      code: "validation_failed",
      message: `${where}${issue?.message ?? "not a document"}`,
    };
  }
  return { id: r.data.id, text: r.data.text, metadata: r.data.metadata ?? null };
}

/**
 * Feeds an ingestion from lines (the header line, if any, already taken), batch by batch; the
 * job stays open for the caller to close (or to keep open).
 */
export async function feed(ingestion: Ingestion, source: AsyncIterable<Line>): Promise<void> {
  let batch: SourceDocument[] = [];
  let chars = 0;
  let lineIds = new Map<string, number>();
  const flush = async () => {
    if (batch.length === 0) return;
    const taken = await ingestion.add(batch, true);
    // Rejections from the submit flow name the id; give them their line as well.
    for (const r of taken.rejections) if (r.id && lineIds.has(r.id)) r.line = lineIds.get(r.id);
    batch = [];
    chars = 0;
    lineIds = new Map();
  };
  for await (const l of source) {
    const doc = parseLine(l);
    if (!("text" in doc)) {
      ingestion.reject([doc]);
      continue;
    }
    if (doc.id) lineIds.set(doc.id, l.line);
    batch.push(doc);
    chars += doc.text.length;
    if (batch.length >= BATCH_DOCUMENTS || chars >= BATCH_CHARS) await flush();
  }
  await flush();
}
