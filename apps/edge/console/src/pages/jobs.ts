import { html } from "htm/preact";
import { useEffect, useState } from "preact/hooks";
import { type IngestReport, isActive, type Job, jobHref, type SubmittedJob } from "../jobs.js";
import { followJob, type LiveState } from "../live.js";
import { ModelSelect } from "../models.js";
import { type Session, unwrap } from "../session.js";
import { Badge, Card, Empty, ErrorBox, fmt, Page, Progress, useAction, useAsync } from "../ui.js";

/** The row's job with the live stream's counters over it while the job runs. */
function useLiveJob(session: Session, job: Job, onEnd?: () => void): Job {
  const [live, setLive] = useState<LiveState | null>(null);
  useEffect(() => {
    if (!isActive(job.status)) return;
    return followJob(session.client, job.id, (s) => {
      setLive(s);
      if (s.ended) onEnd?.();
    });
  }, [job.id, job.status]);
  return live && isActive(job.status) ? { ...job, status: live.status, chunks: live.chunks } : job;
}

function JobRow({ session, job, onEnd }: { session: Session; job: Job; onEnd(): void }) {
  const j = useLiveJob(session, job, onEnd);
  return html`<tr>
    <td><a class="mono" href=${jobHref(j.id)}>${j.id}</a></td>
    <td><${Badge} status=${j.status} /></td>
    <td class="wide">
      <${Progress} done=${j.chunks.done} failed=${j.chunks.failed} total=${j.chunks.total} />
    </td>
    <td class="num">${fmt.int(j.chunks.done)} / ${fmt.int(j.chunks.total)}</td>
    <td class="num">${fmt.int(j.documents)}</td>
    <td>${j.collection}</td>
    <td class="muted" title=${fmt.time(j.createdAt)}>${fmt.ago(j.createdAt)}</td>
  </tr>`;
}

/** Splits pasted text into documents: blank-line-separated paragraphs, or lines. */
function splitDocuments(text: string, by: "paragraph" | "line"): string[] {
  return text
    .split(by === "line" ? /\r?\n/ : /\r?\n\s*\r?\n/)
    .map((s) => s.trim())
    .filter(Boolean);
}

function parseMetadata(text: string): Record<string, string | number | boolean | null> | undefined {
  if (!text.trim()) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new Error('Metadata must be a JSON object, e.g. {"lang": "en", "year": 2024}.');
  }
  if (typeof value !== "object" || value === null || Array.isArray(value))
    throw new Error('Metadata must be a JSON object, e.g. {"lang": "en", "year": 2024}.');
  return value as Record<string, string | number | boolean | null>;
}

function IngestResult({ job }: { job: SubmittedJob }) {
  const r: IngestReport | undefined = job.ingest;
  return html`<div class="result" data-testid="submitted">
    <div class="result-head">
      <span>Job <a class="mono" href=${jobHref(job.id)}>${job.id}</a> accepted</span>
      <${Badge} status=${job.status} />
    </div>
    <div class="result-body">
      ${fmt.int(job.documents)} documents, ${fmt.int(job.chunks.total)} chunks
      ${
        r
          ? html` · ingest: ${r.accepted} accepted, ${r.unchanged} unchanged,${" "}<span
              class=${r.rejected ? "bad" : ""}>${r.rejected} rejected</span>`
          : null
      }
    </div>
    ${
      r?.rejections.length
        ? html`<table class="table compact">
          <thead><tr><th>Document</th><th>Code</th><th>Why</th></tr></thead>
          <tbody>
            ${r.rejections.map(
              (x) => html`<tr>
                <td class="mono">${x.file ?? x.id ?? (x.line ? `line ${x.line}` : "–")}</td>
                <td><code>${x.code}</code></td>
                <td>${x.message}</td>
              </tr>`,
            )}
          </tbody>
        </table>`
        : null
    }
    <a class="btn btn-small" href=${jobHref(job.id)}>Open job →</a>
  </div>`;
}

function NewJob({
  session,
  onSubmitted,
}: {
  session: Session;
  onSubmitted(j: SubmittedJob): void;
}) {
  const [mode, setMode] = useState<"text" | "files">("text");
  const [text, setText] = useState("");
  const [by, setBy] = useState<"paragraph" | "line">("paragraph");
  const [collection, setCollection] = useState("");
  const [model, setModel] = useState("");
  const [metadata, setMetadata] = useState("");
  const [files, setFiles] = useState<File[]>([]);
  const [submitted, setSubmitted] = useState<SubmittedJob | null>(null);
  const action = useAction();
  const docs = splitDocuments(text, by);

  const submit = (e: Event) => {
    e.preventDefault();
    action.run(async () => {
      setSubmitted(null);
      const meta = parseMetadata(metadata);
      const idempotency = crypto.randomUUID();
      let job: SubmittedJob;
      if (mode === "text") {
        if (docs.length === 0) throw new Error("Paste at least one document.");
        job = await unwrap(
          session.client.api.POST("/v1/jobs", {
            params: { header: { "idempotency-key": idempotency } },
            body: {
              documents: docs.map((t) => (meta ? { text: t, metadata: meta } : { text: t })),
              ...(collection.trim() ? { collection: collection.trim() } : {}),
              ...(model ? { model } : {}),
            },
          }),
        );
      } else {
        if (files.length === 0) throw new Error("Choose at least one file.");
        const form = new FormData();
        for (const f of files) form.append("file", f, f.name);
        const options = {
          ...(collection.trim() ? { collection: collection.trim() } : {}),
          ...(model ? { model } : {}),
        };
        if (Object.keys(options).length) form.append("options", JSON.stringify(options));
        if (meta) form.append("metadata", JSON.stringify(meta));
        job = await unwrap(
          session.client.api.POST("/v1/jobs", {
            params: { header: { "idempotency-key": idempotency } },
            // openapi-fetch sends a FormData as it is (the browser sets the boundary).
            body: form as unknown as { file: string[] },
            bodySerializer: (b: unknown) => b as FormData,
          }),
        );
      }
      setSubmitted(job);
      if (mode === "text") setText("");
      onSubmitted(job);
    });
  };

  return html`<${Card} title="New job">
    <form class="form" onSubmit=${submit}>
      <div class="tabs" role="tablist">
        <button type="button" role="tab" class=${mode === "text" ? "active" : ""} onClick=${() => setMode("text")}>Text</button>
        <button type="button" role="tab" class=${mode === "files" ? "active" : ""} onClick=${() => setMode("files")}>Files</button>
      </div>
      ${
        mode === "text"
          ? html`<label>
              Documents
              <textarea
                name="documents"
                rows="7"
                placeholder="Paste text. Each paragraph (or line) becomes one document."
                value=${text}
                onInput=${(e: Event) => setText((e.target as HTMLTextAreaElement).value)}
              ></textarea>
            </label>
            <div class="row">
              <label class="inline">
                One document per
                <select value=${by} onChange=${(e: Event) => setBy((e.target as HTMLSelectElement).value as "paragraph" | "line")}>
                  <option value="paragraph">paragraph</option>
                  <option value="line">line</option>
                </select>
              </label>
              <span class="muted small">${docs.length} document${docs.length === 1 ? "" : "s"}</span>
            </div>`
          : html`<label>
            Files (text, Markdown, HTML, PDF, DOCX; each file is one document)
            <input
              type="file"
              name="file"
              multiple
              onChange=${(e: Event) => setFiles([...((e.target as HTMLInputElement).files ?? [])])}
            />
          </label>`
      }
      <div class="row">
        <label>
          Collection <span class="muted">(optional)</span>
          <input name="collection" placeholder="default" value=${collection} onInput=${(e: Event) => setCollection((e.target as HTMLInputElement).value)} />
        </label>
        <${ModelSelect} session=${session} value=${model} onChange=${setModel} />
        <label class="grow">
          Metadata for every document <span class="muted">(optional JSON)</span>
          <input name="metadata" class="mono" placeholder='{"lang": "en"}' value=${metadata} onInput=${(e: Event) => setMetadata((e.target as HTMLInputElement).value)} />
        </label>
      </div>
      <${ErrorBox} error=${action.error} />
      <div class="row">
        <button class="btn btn-primary" type="submit" disabled=${action.busy}>
          ${action.busy ? "Submitting…" : "Submit job"}
        </button>
      </div>
      ${submitted ? html`<${IngestResult} job=${submitted} />` : null}
    </form>
  <//>`;
}

export function JobsPage({ session }: { session: Session }) {
  const [open, setOpen] = useState(false);
  const jobs = useAsync(
    () => unwrap(session.client.api.GET("/v1/jobs", { params: { query: { limit: 50 } } })),
    [],
  );
  const list = jobs.data?.data ?? [];
  return html`<${Page}
    title="Jobs"
    actions=${html`<button class="btn" onClick=${jobs.reload}>Refresh</button>
      <button class="btn btn-primary" onClick=${() => setOpen(!open)}>${open ? "Close form" : "New job"}</button>`}
  >
    ${open ? html`<${NewJob} session=${session} onSubmitted=${jobs.reload} />` : null}
    <${ErrorBox} error=${jobs.error} />
    ${
      jobs.loading && !jobs.data
        ? html`<div class="muted">Loading jobs…</div>`
        : list.length === 0
          ? html`<${Empty}>No jobs yet. Submit documents with <b>New job</b>, or POST /v1/jobs.<//>`
          : html`<div class="card flush">
            <table class="table">
              <thead>
                <tr><th>Job</th><th>Status</th><th>Progress</th><th class="num">Chunks</th><th class="num">Docs</th><th>Collection</th><th>Created</th></tr>
              </thead>
              <tbody>
                ${list.map((j) => html`<${JobRow} key=${j.id} session=${session} job=${j} onEnd=${jobs.reload} />`)}
              </tbody>
            </table>
          </div>`
    }
    ${jobs.data?.nextCursor ? html`<p class="muted small">Showing the 50 newest jobs.</p>` : null}
  <//>`;
}
