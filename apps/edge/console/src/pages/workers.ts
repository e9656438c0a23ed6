import type { components } from "@p2pa/shared/client";
import { html } from "htm/preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { type Session, unwrap } from "../session.js";
import {
  Badge,
  Card,
  Empty,
  ErrorBox,
  fmt,
  Page,
  Stat,
  TimeChart,
  useAsync,
  useInterval,
} from "../ui.js";

type WorkerList = components["schemas"]["WorkerList"];
type WorkerInfo = components["schemas"]["WorkerInfo"];
type Donor = components["schemas"]["DonorReputation"];

const POLL_MS = 3000;
/** Failures that cool a worker down (its error budget; see WorkerInfo.failures). */
const ERROR_BUDGET = 5;

function state(w: WorkerInfo): string {
  if (w.draining) return "draining";
  if (w.coolingDown) return "cooling_down";
  if (w.failures >= 2) return "throttled";
  return w.held > 0 ? "busy" : "idle";
}

function WorkerTable({ workers }: { workers: WorkerInfo[] }) {
  return html`<table class="table">
    <thead>
      <tr>
        <th>Worker</th><th>State</th><th>Model</th><th>Device</th><th class="num">Threads</th>
        <th class="num">Tasks held</th><th class="num">Chunks done</th><th class="num">Rate</th>
        <th class="num" title="Failures since its last good result: 2 throttle it to one task, 5 cool it down">Error budget</th>
        <th>Version</th><th>Connected</th>
      </tr>
    </thead>
    <tbody>
      ${workers.map(
        (w) => html`<tr>
          <td>
            <div>${w.name ?? html`<span class="muted">unnamed</span>`}</div>
            <div class="mono muted small">${w.id.slice(0, 12)}</div>
          </td>
          <td><${Badge} status=${state(w)} /></td>
          <td>${w.models.join(", ")}</td>
          <td>${w.device ?? "–"}</td>
          <td class="num">${w.threads ?? "–"}</td>
          <td class="num" title=${`capacity ${w.capacity}, limit now ${w.limit}`}>${w.held} / ${w.limit}</td>
          <td class="num">${fmt.int(w.chunksDone)}</td>
          <td class="num">${fmt.rate(w.chunksPerSecond)}</td>
          <td class="num">
            <span class=${w.failures >= 2 ? "bad" : ""}>${w.failures} / ${ERROR_BUDGET}</span>
          </td>
          <td class="mono small">${w.version ?? "–"}</td>
          <td class="muted" title=${fmt.time(w.connectedAt)}>${fmt.ago(w.connectedAt)}</td>
        </tr>`,
      )}
    </tbody>
  </table>`;
}

function Donors({ donors }: { donors: Donor[] }) {
  return html`<table class="table compact">
    <thead><tr><th>Donor</th><th>Standing</th><th class="num">Agreed</th><th class="num">Disagreed</th><th class="num">Streak</th><th>Quarantine</th></tr></thead>
    <tbody>
      ${donors.map(
        (d) => html`<tr>
          <td class="mono">${d.donor}</td>
          <td><${Badge} status=${d.quarantinedAt ? "quarantined" : d.trusted ? "trusted" : "new"} /></td>
          <td class="num">${fmt.int(d.agreed)}</td>
          <td class="num">${fmt.int(d.disagreed)}</td>
          <td class="num">${fmt.int(d.streak)}</td>
          <td class="bad">${d.quarantinedAt ? `${new Date(d.quarantinedAt).toLocaleString()}: ${d.reason ?? ""}` : ""}</td>
        </tr>`,
      )}
    </tbody>
  </table>`;
}

export function WorkersPage({ session }: { session: Session }) {
  const fleet = useAsync<WorkerList>(() => unwrap(session.client.api.GET("/v1/workers")), []);
  // Fleet throughput, one sample per poll, kept while the page is open.
  const series = useRef<{ t: number[]; v: number[] }>({ t: [], v: [] });
  const [, setSamples] = useState(0);

  useInterval(fleet.reload, POLL_MS);
  useEffect(() => {
    if (!fleet.data) return;
    const rate = fleet.data.shards
      .flatMap((s) => s.workers)
      .reduce((sum, w) => sum + w.chunksPerSecond, 0);
    const s = series.current;
    s.t.push(Date.now() / 1000);
    s.v.push(rate);
    if (s.t.length > 1200) {
      s.t.shift();
      s.v.shift();
    }
    setSamples(s.t.length);
  }, [fleet.data]);

  const data = fleet.data;
  const workers = data?.shards.flatMap((s) => s.workers) ?? [];
  const tasks: Record<string, number> = {};
  for (const s of data?.shards ?? [])
    for (const [k, v] of Object.entries(s.tasks ?? {})) tasks[k] = (tasks[k] ?? 0) + v;
  const donors = data?.shards.flatMap((s) => s.donors ?? []) ?? [];
  const stalled = data?.shards.some((s) => s.health?.stalled);
  const totalRate = workers.reduce((sum, w) => sum + w.chunksPerSecond, 0);

  return html`<${Page}
    title=${html`Workers <span class="muted small">${session.operator ? "whole fleet" : "joined with your tokens"}</span>`}
    actions=${html`<span class="muted small">updates every ${POLL_MS / 1000} s</span>`}
  >
    <${ErrorBox} error=${fleet.error} />
    ${
      data
        ? html`<div class="card">
            <div class="stats">
              <${Stat} label="Model" value=${data.model} />
              <${Stat} label="Workers" value=${fmt.int(workers.length)} />
              <${Stat} label="Threads" value=${fmt.int(workers.reduce((n, w) => n + (w.threads ?? 0), 0))} />
              <${Stat} label="Chunks done" value=${fmt.int(workers.reduce((n, w) => n + w.chunksDone, 0))} hint="Credited on the current connections" />
              <${Stat} label="Rate now" value=${fmt.rate(totalRate)} hint="Sum of every worker's chunks per second over the last minute" />
              ${data.vectors != null ? html`<${Stat} label="Vectors stored" value=${fmt.int(data.vectors)} />` : null}
              ${data.shards.length > 1 ? html`<${Stat} label="Shards" value=${data.shards.length} />` : null}
            </div>
            ${stalled ? html`<div class="error"><strong>Stalled</strong><span>A shard has work waiting while a worker has room.</span></div>` : null}
          </div>
          <${Card} title="Fleet throughput (chunks per second)">
            ${
              series.current.t.length > 1
                ? html`<${TimeChart} t=${series.current.t} v=${series.current.v} label="fleet" unit="chunks/s" />`
                : html`<${Empty}>Sampling every ${POLL_MS / 1000} s…<//>`
            }
          <//>
          <div class="card flush">
            ${
              workers.length
                ? html`<${WorkerTable} workers=${workers} />`
                : html`<${Empty}>No worker connected. Start one with <code>npx p2pa-worker --server ${location.origin} --token …</code><//>`
            }
          </div>
          ${
            Object.keys(tasks).length
              ? html`<${Card} title="Tasks by state">
                <div class="stats">
                  ${Object.entries(tasks).map(([k, v]) => html`<${Stat} label=${k} value=${fmt.int(v)} />`)}
                </div>
              <//>`
              : null
          }
          ${donors.length ? html`<${Card} title="Donor reputation"><${Donors} donors=${donors} /><//>` : null}`
        : fleet.loading
          ? html`<div class="muted">Loading…</div>`
          : null
    }
  <//>`;
}
