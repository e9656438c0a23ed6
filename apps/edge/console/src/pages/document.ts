import { html } from "htm/preact";
import { jobHref } from "../jobs.js";
import { type Session, unwrap } from "../session.js";
import { Badge, Card, ErrorBox, fmt, Page, useAsync } from "../ui.js";

/** One document: its status, metadata and every version with the job that made it. */
export function DocumentPage({
  session,
  id,
  collection,
}: {
  session: Session;
  id: string;
  collection?: string;
}) {
  const doc = useAsync(
    () =>
      unwrap(
        session.client.api.GET("/v1/documents/{id}", {
          params: { path: { id }, query: collection ? { collection } : {} },
        }),
      ),
    [id, collection],
  );
  const d = doc.data;
  return html`<${Page}
    title=${html`<a class="crumb" href="#/jobs">Documents</a> / <span class="mono">${id}</span> ${d ? html`<${Badge} status=${d.status} />` : null}`}
  >
    <${ErrorBox} error=${doc.error} />
    ${
      d
        ? html`<div class="grid2">
            <${Card} title="Document">
              <dl class="kv">
                <dt>Collection</dt><dd>${d.collection}</dd>
                <dt>Current version</dt><dd>${d.current ? `v${d.current.version}` : "none"}</dd>
                <dt>Pending version</dt><dd>${d.pending ? `v${d.pending.version}` : "none"}</dd>
              </dl>
            <//>
            <${Card} title="Metadata">
              ${
                Object.keys(d.metadata).length
                  ? html`<dl class="kv">
                    ${Object.entries(d.metadata).map(
                      ([k, v]) => html`<dt>${k}</dt><dd class="mono">${JSON.stringify(v)}</dd>`,
                    )}
                  </dl>`
                  : html`<div class="muted">No metadata.</div>`
              }
            <//>
          </div>
          <${Card} title="Versions">
            <table class="table compact">
              <thead><tr><th>Version</th><th>State</th><th>Job</th><th class="num">Chunks</th><th class="num">Characters</th><th>Original kept</th><th>Created</th><th>Error</th></tr></thead>
              <tbody>
                ${d.versions.map(
                  (v) => html`<tr>
                    <td>v${v?.version}</td>
                    <td><${Badge} status=${v?.state ?? "unknown"} /></td>
                    <td>${v ? html`<a class="mono" href=${jobHref(v.jobId)}>${v.jobId}</a>` : null}</td>
                    <td class="num">${fmt.int(v?.chunks)}</td>
                    <td class="num">${fmt.int(v?.chars)}</td>
                    <td>${v?.original ? "yes" : "no"}</td>
                    <td class="muted">${fmt.time(v?.createdAt)}</td>
                    <td class="bad">${v?.error ?? ""}</td>
                  </tr>`,
                )}
              </tbody>
            </table>
          <//>`
        : doc.loading
          ? html`<div class="muted">Loading…</div>`
          : null
    }
  <//>`;
}
