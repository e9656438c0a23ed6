import { CreateJobOptions, type IngestRejection } from "@p2pa/shared";
import { AppError } from "../lib/errors.js";
import { ExtractError, extract, formatOf } from "./extract/index.js";
import type { SourceDocument } from "./submit.js";

/**
 * File uploads (multipart/form-data): each file is identified by its bytes, its text extracted
 * at the edge with its structure (title, headings, PDF pages), and becomes one document named
 * by its file name. Fields: `file` (repeatable; `files` also read), `options` (JSON, the job's
 * options), `metadata` (JSON, given to every file's document).
 */

const UPLOAD_LIMITS = {
  /** Largest file read. */
  maxFileBytes: 10 * 1024 * 1024,
  /** Most files in one upload. */
  maxFiles: 100,
} as const;

export interface Upload {
  options: CreateJobOptions;
  documents: SourceDocument[];
  rejections: IngestRejection[];
}

/** A file name as a document id: its characters outside the id alphabet become `_`. */
function documentIdOf(filename: string): string {
  const base = filename.replaceAll("\\", "/").replace(/^\/+/, "");
  return base.replace(/[^\w.:@/-]/g, "_").slice(0, 128) || "file";
}

function jsonField(form: FormData, name: string): unknown {
  const v = form.get(name);
  if (v === null) return undefined;
  if (typeof v !== "string")
    throw new AppError(
      422,
      "validation_failed",
      `form field ${name} must be JSON text, not a file`,
    );
  try {
    return JSON.parse(v);
  } catch {
    throw new AppError(422, "validation_failed", `form field ${name} is not valid JSON`);
  }
}

/** Reads an upload's form: files extracted, options and metadata checked. */
export async function readUpload(request: Request): Promise<Upload> {
  let form: FormData;
  try {
    form = await request.formData();
  } catch {
    throw new AppError(400, "bad_request", "the body is not a valid multipart/form-data upload");
  }
  const parsed = CreateJobOptions.safeParse(jsonField(form, "options") ?? {});
  if (!parsed.success)
    throw new AppError(
      422,
      "validation_failed",
      `invalid options: ${parsed.error.issues[0]?.path.join(".") ?? ""} ${parsed.error.issues[0]?.message ?? ""}`.trim(),
    );
  const metadata = jsonField(form, "metadata");
  if (
    metadata !== undefined &&
    (metadata === null || typeof metadata !== "object" || Array.isArray(metadata))
  )
    throw new AppError(422, "validation_failed", "form field metadata must be a JSON object");
  const files = [...form.getAll("file"), ...form.getAll("files")].filter(
    (f): f is File => typeof f !== "string",
  );
  if (files.length === 0)
    throw new AppError(422, "validation_failed", "an upload needs at least one `file` field");
  if (files.length > UPLOAD_LIMITS.maxFiles)
    throw new AppError(
      413,
      "payload_too_large",
      `an upload holds at most ${UPLOAD_LIMITS.maxFiles} files (this one has ${files.length})`,
    );
  const big = files.find((f) => f.size > UPLOAD_LIMITS.maxFileBytes);
  if (big)
    throw new AppError(
      413,
      "payload_too_large",
      `file ${big.name} is ${big.size} bytes; files may be at most ${UPLOAD_LIMITS.maxFileBytes} bytes`,
    );

  const documents: SourceDocument[] = [];
  const rejections: IngestRejection[] = [];
  for (const file of files) {
    const bytes = new Uint8Array(await file.arrayBuffer());
    const format = formatOf(file.name, file.type || undefined, bytes);
    if (!format) {
      rejections.push({
        file: file.name,
        code: "unsupported_format",
        message: `${file.name}: not a supported file (plain text, Markdown, HTML or PDF), judged by its name, type and bytes`,
      });
      continue;
    }
    try {
      const got = await extract(bytes, format);
      documents.push({
        id: documentIdOf(file.name),
        text: got.text,
        sections: got.sections,
        metadata: {
          ...(metadata as Record<string, unknown> | undefined),
          source: file.name,
          format,
          ...(got.title ? { title: got.title } : {}),
          ...(got.pages ? { pages: got.pages } : {}),
        },
        original: {
          bytes,
          mediaType: file.type || (FORMAT_NAMES[format] ?? "application/octet-stream"),
        },
      });
    } catch (err) {
      if (!(err instanceof ExtractError)) throw err;
      rejections.push({ file: file.name, code: err.code, message: `${file.name}: ${err.message}` });
    }
  }
  return { options: parsed.data, documents, rejections };
}

/** Media types of the formats, for originals uploaded without one. */
const FORMAT_NAMES: Record<string, string> = {
  text: "text/plain; charset=utf-8",
  markdown: "text/markdown; charset=utf-8",
  html: "text/html; charset=utf-8",
  pdf: "application/pdf",
  docx: "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
};
