import { readdir, readFile, stat } from "node:fs/promises";
import path from "node:path";
import { UserError } from "../errors.js";

/** File types the edge extracts text from (by extension), with the type they are sent as. */
const TYPES: Record<string, string> = {
  ".txt": "text/plain",
  ".text": "text/plain",
  ".md": "text/markdown",
  ".markdown": "text/markdown",
  ".html": "text/html",
  ".htm": "text/html",
  ".pdf": "application/pdf",
  ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
};

/** What one upload may hold (the edge's limits: 100 files, a 32 MiB body, 10 MiB a file). */
const UPLOAD_LIMITS = { files: 100, bytes: 30 * 1024 * 1024, fileBytes: 10 * 1024 * 1024 };

export interface LocalFile {
  /** The document id: its path under the folder given, or its name for a file given. */
  id: string;
  path: string;
  bytes: number;
  type: string;
}

export interface Collected {
  files: LocalFile[];
  /** Files left out, with why. */
  skipped: { path: string; reason: string }[];
}

/**
 * The documents under the paths given: files as they are, folders walked (hidden entries and
 * node_modules left out), in a stable order so a re-run sends the same ids.
 */
export async function collectFiles(paths: string[]): Promise<Collected> {
  const files: LocalFile[] = [];
  const skipped: Collected["skipped"] = [];
  const take = async (file: string, id: string, size: number) => {
    const type = TYPES[path.extname(file).toLowerCase()];
    if (!type) skipped.push({ path: file, reason: "not a text, Markdown, HTML, PDF or DOCX file" });
    else if (size > UPLOAD_LIMITS.fileBytes)
      skipped.push({ path: file, reason: `over ${UPLOAD_LIMITS.fileBytes / 1024 / 1024} MiB` });
    else files.push({ id: id.split(path.sep).join("/"), path: file, bytes: size, type });
  };
  const walk = async (dir: string, root: string): Promise<void> => {
    const entries = (await readdir(dir, { withFileTypes: true })).sort((a, b) =>
      a.name.localeCompare(b.name),
    );
    for (const e of entries) {
      if (e.name.startsWith(".") || e.name === "node_modules") continue;
      const full = path.join(dir, e.name);
      if (e.isDirectory()) await walk(full, root);
      else if (e.isFile()) await take(full, path.relative(root, full), (await stat(full)).size);
    }
  };
  for (const p of paths) {
    const info = await stat(p).catch(() => null);
    if (!info) throw new UserError(`no such file or folder: ${p}`);
    if (info.isDirectory()) await walk(p, p);
    else await take(p, path.basename(p), info.size);
  }
  const seen = new Set<string>();
  for (const f of files) {
    if (seen.has(f.id))
      throw new UserError(
        `two files would be the same document ${f.id}`,
        "Submit them separately or from their common folder.",
      );
    seen.add(f.id);
  }
  return { files, skipped };
}

/** Splits files into uploads within the edge's limits, in order. */
export function batches(files: LocalFile[]): LocalFile[][] {
  const out: LocalFile[][] = [];
  let cur: LocalFile[] = [];
  let bytes = 0;
  for (const f of files) {
    if (
      cur.length > 0 &&
      (cur.length >= UPLOAD_LIMITS.files || bytes + f.bytes > UPLOAD_LIMITS.bytes)
    ) {
      out.push(cur);
      cur = [];
      bytes = 0;
    }
    cur.push(f);
    bytes += f.bytes;
  }
  if (cur.length > 0) out.push(cur);
  return out;
}

/** The multipart body of one upload. */
export async function formOf(
  files: LocalFile[],
  options: Record<string, unknown>,
  metadata: Record<string, unknown> | undefined,
): Promise<FormData> {
  const form = new FormData();
  for (const f of files)
    form.append("file", new Blob([await readFile(f.path)], { type: f.type }), f.id);
  form.append("options", JSON.stringify(options));
  if (metadata) form.append("metadata", JSON.stringify(metadata));
  return form;
}
