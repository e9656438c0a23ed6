import type { components } from "@p2pa/shared/client";
import { html } from "htm/preact";
import { useState } from "preact/hooks";
import { jobHref } from "../jobs.js";
import { type Session, unwrap } from "../session.js";
import {
  Badge,
  Card,
  Empty,
  ErrorBox,
  fmt,
  Page,
  useAction,
  useAsync,
  useInterval,
} from "../ui.js";

type Endpoint = components["schemas"]["WebhookEndpoint"];
type Delivery = components["schemas"]["WebhookDelivery"];
type EventType = components["schemas"]["WebhookEventType"];

const EVENTS: EventType[] = [
  "job.completed",
  "job.completed_with_errors",
  "job.failed",
  "job.cancelled",
  "job.progress",
];

const webhookHref = (id: string) => `#/webhooks/${encodeURIComponent(id)}`;

function NewEndpoint({ session, onCreated }: { session: Session; onCreated(e: Endpoint): void }) {
  const [url, setUrl] = useState("");
  const [events, setEvents] = useState<EventType[]>(EVENTS.slice(0, 4));
  const action = useAction();
  const create = (e: Event) => {
    e.preventDefault();
    action.run(async () => {
      const ep = await unwrap(
        session.client.api.POST("/v1/webhooks", { body: { url: url.trim(), events } }),
      );
      setUrl("");
      onCreated(ep);
    });
  };
  return html`<${Card} title="New endpoint">
    <form class="form" onSubmit=${create}>
      <label>
        URL
        <input name="url" type="url" class="mono" placeholder="https://example.com/hooks/p2pa" value=${url}
          onInput=${(e: Event) => setUrl((e.target as HTMLInputElement).value)} />
      </label>
      <div class="row checks">
        ${EVENTS.map(
          (ev) => html`<label class="inline">
            <input type="checkbox" checked=${events.includes(ev)}
              onChange=${(e: Event) =>
                setEvents(
                  (e.target as HTMLInputElement).checked
                    ? [...events, ev]
                    : events.filter((x) => x !== ev),
                )} />
            ${ev}
          </label>`,
        )}
      </div>
      <${ErrorBox} error=${action.error} />
      <div class="row">
        <button class="btn btn-primary" type="submit" disabled=${action.busy || !url.trim() || events.length === 0}>
          Create endpoint
        </button>
      </div>
    </form>
  <//>`;
}

export function WebhooksPage({ session }: { session: Session }) {
  const list = useAsync(() => unwrap(session.client.api.GET("/v1/webhooks")), []);
  const [created, setCreated] = useState<Endpoint | null>(null);
  const action = useAction();
  const remove = (ep: Endpoint) =>
    confirm(`Delete the endpoint ${ep.url}? Pending deliveries to it stop.`) &&
    action.run(async () => {
      await unwrap(
        session.client.api.DELETE("/v1/webhooks/{id}", { params: { path: { id: ep.id } } }),
      );
      list.reload();
    });
  const endpoints = list.data?.data ?? [];
  return html`<${Page} title="Webhooks">
    <${NewEndpoint}
      session=${session}
      onCreated=${(ep: Endpoint) => {
        setCreated(ep);
        list.reload();
      }}
    />
    ${
      created?.secret
        ? html`<div class="notice" data-testid="secret">
          Endpoint <span class="mono">${created.id}</span> created. Its signing secret, shown only now:
          <code class="secret">${created.secret}</code>
        </div>`
        : null
    }
    <${ErrorBox} error=${action.error ?? list.error} />
    ${
      endpoints.length
        ? html`<div class="card flush">
          <table class="table">
            <thead><tr><th>Endpoint</th><th>Events</th><th>Job</th><th>Created</th><th></th></tr></thead>
            <tbody>
              ${endpoints.map(
                (ep) => html`<tr>
                  <td><a class="mono" href=${webhookHref(ep.id)}>${ep.url}</a><div class="mono muted small">${ep.id}</div></td>
                  <td>${ep.events.map((e) => html`<span class="tag">${e}</span>`)}</td>
                  <td>${ep.jobId ? html`<a class="mono" href=${jobHref(ep.jobId)}>${ep.jobId}</a>` : html`<span class="muted">all jobs</span>`}</td>
                  <td class="muted">${fmt.ago(ep.createdAt)}</td>
                  <td class="right">
                    <a class="btn btn-small" href=${webhookHref(ep.id)}>Deliveries</a>
                    <button class="btn btn-small btn-danger" disabled=${action.busy} onClick=${() => remove(ep)}>Delete</button>
                  </td>
                </tr>`,
              )}
            </tbody>
          </table>
        </div>`
        : list.loading
          ? null
          : html`<${Empty}>No webhook endpoints yet.<//>`
    }
  <//>`;
}

function DeliveryCard({
  d,
  onRedeliver,
  busy,
}: {
  d: Delivery;
  onRedeliver(): void;
  busy: boolean;
}) {
  return html`<div class="card delivery">
    <div class="delivery-head">
      <${Badge} status=${d.status} />
      <b>${d.eventType}</b>
      ${d.jobId ? html`<a class="mono" href=${jobHref(d.jobId)}>${d.jobId}</a>` : null}
      <span class="mono muted small">${d.id}</span>
      <span class="muted small" title="Attempts logged (a redelivery starts a new round)">${d.attemptLog.length} attempt${d.attemptLog.length === 1 ? "" : "s"}</span>
      ${d.nextAttemptAt ? html`<span class="muted small">next ${fmt.time(d.nextAttemptAt)}</span>` : null}
      <span class="grow"></span>
      <button class="btn btn-small" disabled=${busy} onClick=${onRedeliver}>Redeliver</button>
    </div>
    ${
      d.attemptLog.length
        ? html`<table class="table compact">
          <thead><tr><th class="num">#</th><th>At</th><th class="num">Response</th><th class="num">Latency</th><th>Error</th></tr></thead>
          <tbody>
            ${d.attemptLog.map(
              (a, i) => html`<tr>
                <td class="num">${i + 1}</td>
                <td>${fmt.time(a.at)}</td>
                <td class=${`num ${a.responseCode && a.responseCode < 300 ? "good" : "bad"}`}>${a.responseCode ?? "none"}</td>
                <td class="num">${a.latencyMs == null ? "–" : `${a.latencyMs} ms`}</td>
                <td class="bad">${a.error?.replaceAll("_", " ") ?? ""}</td>
              </tr>`,
            )}
          </tbody>
        </table>`
        : html`<div class="muted small">Not attempted yet.</div>`
    }
  </div>`;
}

export function WebhookPage({ session, id }: { session: Session; id: string }) {
  const deliveries = useAsync(
    () =>
      unwrap(session.client.api.GET("/v1/webhooks/{id}/deliveries", { params: { path: { id } } })),
    [id],
  );
  const action = useAction();
  useInterval(deliveries.reload, 5000);
  const redeliver = (d: Delivery) =>
    action.run(async () => {
      await unwrap(
        session.client.api.POST("/v1/webhooks/{id}/deliveries/{deliveryId}/redeliver", {
          params: { path: { id, deliveryId: d.id } },
        }),
      );
      deliveries.reload();
    });
  const list = deliveries.data?.data ?? [];
  return html`<${Page}
    title=${html`<a class="crumb" href="#/webhooks">Webhooks</a> / <span class="mono">${id}</span>`}
    actions=${html`<button class="btn" onClick=${deliveries.reload}>Refresh</button>`}
  >
    <${ErrorBox} error=${action.error ?? deliveries.error} />
    ${
      list.length
        ? list.map(
            (d) =>
              html`<${DeliveryCard} key=${d.id} d=${d} busy=${action.busy} onRedeliver=${() => redeliver(d)} />`,
          )
        : deliveries.loading
          ? html`<div class="muted">Loading…</div>`
          : html`<${Empty}>No deliveries yet. They appear when a job sends an event this endpoint takes.<//>`
    }
  <//>`;
}
