import type { components } from "@p2pa/shared/client";
import { html } from "htm/preact";
import { useEffect, useState } from "preact/hooks";
import { documentHref, isActive, type Job } from "../jobs.js";
import { followJob, type LiveState, samplesOf } from "../live.js";
import { type Session, unwrap } from "../session.js";
import {
  Badge,
  Card,
  Empty,
  ErrorBox,
  fmt,
  Page,
  Progress,
  Stat,
  TimeChart,
  useAction,
  useAsync,
} from "../ui.js";

type Chunk = components["schemas"]["Chunk"];
type DocumentSummary = components["schemas"]["DocumentSummary"];

/** Chunk pages read to find failures (1000 chunks each). */
const FAILURE_PAGES = 5;

interface Failures {
  chunks: Chunk[];
  /** Not every chunk was read. */
  partial: boolean;
}

async function failedChunks(session: Session, id: string): Promise<Failures> {
  const chunks: Chunk[] = [];
  let cursor: string | null = null;
  for (let page = 0; page < FAILURE_PAGES; page++) {
    const res: components["schemas"]["ChunkPage"] = await unwrap(
      session.client.api.GET("/v1/jobs/{id}/chunks", {
        params: { path: { id }, query: { limit: 1000, ...(cursor ? { cursor } : {}) } },
      }),
    );
    chunks.push(...res.data.filter((c) => c.status === "failed"));
    cursor = res.nextCursor;
    if (!cursor) return { chunks, partial: false };
  }
  return { chunks, partial: true };
}

function FailureList({ session, job }: { session: Session; job: Job }) {
  const failures = useAsync(
    () => (job.chunks.failed > 0 ? failedChunks(session, job.id) : Promise.resolve(null)),
    [job.id, job.chunks.failed > 0, job.status],
  );
  if (job.chunks.failed === 0) return null;
  return html`<${Card} title=${`Failures (${fmt.int(job.chunks.failed)} chunks)`}>
    <${ErrorBox} error=${failures.error} />
    ${
      failures.data
        ? html`<table class="table compact">
            <thead><tr><th>Document</th><th class="num">Chunk</th><th>Reason</th></tr></thead>
            <tbody>
              ${failures.data.chunks.slice(0, 200).map(
                (c) => html`<tr>
                  <td><a class="mono" href=${documentHref(c.documentId, c.collection)}>${c.documentId}</a></td>
                  <td class="num">${c.index}</td>
                  <td class="bad">${c.error ?? "no reason recorded"}</td>
                </tr>`,
              )}
            </tbody>
          </table>
          ${
            failures.data.partial || failures.data.chunks.length > 200
              ? html`<p class="muted small">Showing the first failures only.</p>`
              : null
          }`
        : html`<div class="muted">Reading the failed chunks…</div>`
    }
  <//>`;
}

function Documents({ session, job }: { session: Session; job: Job }) {
  const docs = useAsync(
    () =>
      unwrap(
        session.client.api.GET("/v1/documents", {
          params: { query: { jobId: job.id, limit: 100 } },
        }),
      ),
    [job.id, job.status],
  );
  const list: DocumentSummary[] = docs.data?.data ?? [];
  return html`<${Card} title="Documents">
    <${ErrorBox} error=${docs.error} />
    ${
      list.length === 0
        ? html`<div class="muted">${docs.loading ? "Loading…" : "No documents in this job."}</div>`
        : html`<table class="table compact">
          <thead><tr><th>Document</th><th>Status</th><th class="num">Chunks</th><th class="num">Characters</th><th>Note</th></tr></thead>
          <tbody>
            ${list.map((d) => {
              const v = d.pending ?? d.current;
              return html`<tr>
                <td><a class="mono" href=${documentHref(d.id, d.collection)}>${d.id}</a></td>
                <td><${Badge} status=${d.status} /></td>
                <td class="num">${fmt.int(v?.chunks)}</td>
                <td class="num">${fmt.int(v?.chars)}</td>
                <td class=${v?.error ? "bad" : "muted"}>${v?.error ?? ""}</td>
              </tr>`;
            })}
          </tbody>
        </table>
        ${docs.data?.nextCursor ? html`<p class="muted small">The first 100 documents.</p>` : null}`
    }
  <//>`;
}

function Throughput({ jobId, live }: { jobId: string; live: LiveState | null }) {
  const s = samplesOf(jobId);
  return html`<${Card} title="Throughput">
    ${
      s.t.length > 1
        ? html`<${TimeChart} t=${s.t} v=${s.v} label="chunks" unit="per second" />`
        : html`<${Empty}>
          ${
            live && !live.ended
              ? "Waiting for progress…"
              : "Throughput is sampled from the live progress while this console is open; this job ran while it was not."
          }
        <//>`
    }
  <//>`;
}

export function JobPage({ session, id }: { session: Session; id: string }) {
  const job = useAsync(
    () => unwrap(session.client.api.GET("/v1/jobs/{id}", { params: { path: { id } } })),
    [id],
  );
  const [live, setLive] = useState<LiveState | null>(null);
  const action = useAction();
  const active = job.data ? isActive(job.data.status) : false;

  useEffect(() => {
    if (!active) return;
    return followJob(session.client, id, (s) => {
      setLive(s);
      // The stream's last event says how it ended; the record says the rest.
      if (s.ended) job.reload();
    });
  }, [id, active]);

  const base = job.data;
  if (!base)
    return html`<${Page} title=${html`Job <span class="mono">${id}</span>`}>
      <${ErrorBox} error=${job.error} />
      ${job.loading ? html`<div class="muted">Loading…</div>` : null}
    <//>`;
  const j: Job = live && active ? { ...base, status: live.status, chunks: live.chunks } : base;
  const c = j.chunks;
  const pending = Math.max(0, c.total - c.done - c.failed);

  const cancel = () =>
    confirm(`Cancel job ${id}? Chunks not yet computed are dropped.`) &&
    action.run(async () => {
      await unwrap(session.client.api.POST("/v1/jobs/{id}/cancel", { params: { path: { id } } }));
      job.reload();
    });
  const remove = () =>
    confirm(`Delete job ${id} with its chunks and vectors? This cannot be undone.`) &&
    action.run(async () => {
      await unwrap(session.client.api.DELETE("/v1/jobs/{id}", { params: { path: { id } } }));
      location.hash = "#/jobs";
    });

  return html`<${Page}
    title=${html`<a class="crumb" href="#/jobs">Jobs</a> / <span class="mono">${id}</span> <${Badge} status=${j.status} />`}
    actions=${html`
      <button class="btn" disabled=${!isActive(j.status) || action.busy} onClick=${cancel}>Cancel</button>
      <button class="btn btn-danger" disabled=${action.busy} onClick=${remove}>Delete</button>`}
  >
    <${ErrorBox} error=${action.error ?? job.error} />
    ${live?.error ? html`<${ErrorBox} error=${live.error} />` : null}
    <div class="card">
      <${Progress} done=${c.done} failed=${c.failed} total=${c.total} />
      <div class="stats">
        <${Stat} label="Total chunks" value=${fmt.int(c.total)} />
        <${Stat} label="Done" value=${fmt.int(c.done)} />
        <${Stat} label="Failed" value=${fmt.int(c.failed)} />
        <${Stat} label="Cached" value=${fmt.int(c.cached)} hint="Vectors taken from the embedding cache (counted in done)" />
        <${Stat} label="Pending" value=${fmt.int(pending)} />
        <${Stat} label="Rate" value=${live && !live.ended ? fmt.rate(live.chunksPerSecond) : "–"} />
      </div>
    </div>
    <${Throughput} jobId=${id} live=${live} />
    <${FailureList} session=${session} job=${j} />
    <div class="grid2">
      <${Card} title="Details">
        <dl class="kv">
          <dt>Model</dt><dd>${j.model}</dd>
          <dt>Collection</dt><dd>${j.collection}</dd>
          <dt>Documents</dt><dd>${fmt.int(j.documents)}${j.documentsUnchanged ? ` (${j.documentsUnchanged} unchanged)` : ""}</dd>
          <dt>Chunking</dt><dd>${j.chunking.maxChars} chars, ${j.chunking.overlap} overlap</dd>
          <dt>Verification</dt><dd>${j.verification}</dd>
          <dt>Workers</dt><dd>${j.pool === "own" ? "own workers only" : "any"}</dd>
          <dt>Masking</dt><dd>${j.privacy.mask.length ? j.privacy.mask.join(", ") : "none"}</dd>
          <dt>Text kept</dt><dd>${j.retention.textDays == null ? "until deleted" : `${j.retention.textDays} days`}</dd>
          <dt>Created</dt><dd>${fmt.time(j.createdAt)}</dd>
          <dt>Completed</dt><dd>${fmt.time(j.completedAt)}</dd>
          ${j.webhook ? html`<dt>Webhook</dt><dd class="mono">${j.webhook.url}</dd>` : null}
        </dl>
      <//>
      <${Documents} session=${session} job=${j} />
    </div>
  <//>`;
}
