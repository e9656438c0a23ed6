import type { components } from "@p2pa/shared/client";
import { html } from "htm/preact";
import { useState } from "preact/hooks";
import { documentHref, jobHref } from "../jobs.js";
import { ModelSelect } from "../models.js";
import { type Session, unwrap } from "../session.js";
import { Card, Empty, ErrorBox, Page, useAction, useAsync } from "../ui.js";

type SearchRequest = components["schemas"]["SearchRequest"];
type SearchResponse = components["schemas"]["SearchResponse"];
type Mode = components["schemas"]["SearchMode"];
type Scalar = string | number | boolean | null;

interface FilterRow {
  key: string;
  op: "$eq" | "$ne" | "$lt" | "$lte" | "$gt" | "$gte" | "$in";
  value: string;
}

/** A typed value from what was typed: numbers and booleans compare as themselves. */
function scalar(s: string): Scalar {
  const t = s.trim();
  if (t === "true") return true;
  if (t === "false") return false;
  if (t === "null") return null;
  if (t !== "" && Number.isFinite(Number(t))) return Number(t);
  return t;
}

function buildFilter(rows: FilterRow[]): SearchRequest["filter"] {
  const filter: Record<string, unknown> = {};
  for (const r of rows) {
    if (!r.key.trim()) continue;
    const key = r.key.trim();
    const value =
      r.op === "$in"
        ? r.value
            .split(",")
            .map(scalar)
            .filter((x) => x !== null)
        : scalar(r.value);
    const prev = filter[key];
    const ops = typeof prev === "object" && prev !== null && !Array.isArray(prev) ? prev : {};
    filter[key] = { ...ops, [r.op]: value };
  }
  return Object.keys(filter).length ? (filter as SearchRequest["filter"]) : undefined;
}

function Result({ r, rank }: { r: SearchResponse["results"][number]; rank: number }) {
  const c = r.chunk;
  return html`<li class="hit">
    <div class="hit-head">
      <span class="rank">${rank}</span>
      <span class="score" title="score">${r.score.toFixed(4)}</span>
      ${r.scores.vector != null ? html`<span class="muted small">vector ${r.scores.vector.toFixed(3)}</span>` : null}
      ${r.scores.keyword != null ? html`<span class="muted small">keyword ${r.scores.keyword.toFixed(3)}</span>` : null}
      <a class="mono" href=${documentHref(c.documentId, c.collection)}>${c.documentId}</a>
      <span class="muted small">${c.collection} · chunk ${c.index}${c.page != null ? ` · page ${c.page}` : ""}</span>
      <a class="muted small mono" href=${jobHref(c.jobId)}>${c.jobId}</a>
    </div>
    ${c.headings?.length ? html`<div class="muted small">${c.headings.join(" › ")}</div>` : null}
    <p class="hit-text">${c.text ?? html`<i class="muted">text no longer kept (retention)</i>`}</p>
    ${
      c.metadata && Object.keys(c.metadata).length
        ? html`<div class="tags">
          ${Object.entries(c.metadata).map(([k, v]) => html`<span class="tag">${k}: ${String(v)}</span>`)}
        </div>`
        : null
    }
  </li>`;
}

export function SearchPage({ session }: { session: Session }) {
  const [query, setQuery] = useState("");
  const [topK, setTopK] = useState(10);
  const [mode, setMode] = useState<Mode>("vector");
  const [model, setModel] = useState("");
  const [collections, setCollections] = useState<string[]>([]);
  const [rows, setRows] = useState<FilterRow[]>([]);
  const [answer, setAnswer] = useState<SearchResponse | null>(null);
  const action = useAction();
  const meta = useAsync(() => unwrap(session.client.api.GET("/v1/collections")), []);
  const keys = ["jobId", "documentId", ...(meta.data?.filterable ?? [])];

  const search = (e: Event) => {
    e.preventDefault();
    if (!query.trim()) return;
    action.run(async () => {
      const filter = buildFilter(rows);
      const body: SearchRequest = {
        query: query.trim(),
        topK,
        mode,
        ...(model ? { model } : {}),
        ...(collections.length ? { collections } : {}),
        ...(filter ? { filter } : {}),
      };
      setAnswer(await unwrap(session.client.api.POST("/v1/search", { body })));
    });
  };
  const setRow = (i: number, patch: Partial<FilterRow>) =>
    setRows(rows.map((r, j) => (i === j ? { ...r, ...patch } : r)));

  return html`<${Page} title="Search">
    <${Card}>
      <form class="form" onSubmit=${search}>
        <div class="row">
          <input
            class="grow big"
            name="query"
            type="search"
            placeholder="Search by meaning, e.g. a kitten napping in the sun"
            value=${query}
            onInput=${(e: Event) => setQuery((e.target as HTMLInputElement).value)}
          />
          <button class="btn btn-primary" type="submit" disabled=${action.busy || !query.trim()}>
            ${action.busy ? "Searching…" : "Search"}
          </button>
        </div>
        <div class="row">
          <label class="inline">
            Top
            <input type="number" name="topK" min="1" max="100" class="narrow" value=${topK}
              onInput=${(e: Event) => setTopK(Math.min(100, Math.max(1, Number((e.target as HTMLInputElement).value) || 10)))} />
          </label>
          <label class="inline">
            Mode
            <select value=${mode} onChange=${(e: Event) => setMode((e.target as HTMLSelectElement).value as Mode)}>
              <option value="vector">meaning (vector)</option>
              <option value="keyword">words (keyword)</option>
              <option value="hybrid">both (hybrid)</option>
            </select>
          </label>
          <${ModelSelect} session=${session} value=${model} onChange=${setModel} />
          <label class="inline">
            Collections
            <select
              multiple
              name="collections"
              size=${Math.min(4, Math.max(2, meta.data?.data.length ?? 2))}
              onChange=${(e: Event) =>
                setCollections(
                  [...(e.target as HTMLSelectElement).selectedOptions].map((o) => o.value),
                )}
            >
              ${(meta.data?.data ?? []).map(
                (c) =>
                  html`<option value=${c.name} selected=${collections.includes(c.name)}>${c.name} (${c.chunks})</option>`,
              )}
            </select>
          </label>
          <button type="button" class="btn btn-small" onClick=${() => setRows([...rows, { key: keys[2] ?? "jobId", op: "$eq", value: "" }])}>
            + Filter
          </button>
        </div>
        ${rows.map(
          (r, i) => html`<div class="row filter">
            <select value=${r.key} onChange=${(e: Event) => setRow(i, { key: (e.target as HTMLSelectElement).value })}>
              ${keys.map((k) => html`<option value=${k}>${k}</option>`)}
            </select>
            <select value=${r.op} onChange=${(e: Event) => setRow(i, { op: (e.target as HTMLSelectElement).value as FilterRow["op"] })}>
              ${(["$eq", "$ne", "$lt", "$lte", "$gt", "$gte", "$in"] as const).map(
                (o) =>
                  html`<option value=${o}>${{ $eq: "=", $ne: "≠", $lt: "<", $lte: "≤", $gt: ">", $gte: "≥", $in: "in (a, b)" }[o]}</option>`,
              )}
            </select>
            <input class="grow" placeholder="value" value=${r.value} onInput=${(e: Event) => setRow(i, { value: (e.target as HTMLInputElement).value })} />
            <button type="button" class="btn btn-ghost" title="Remove" onClick=${() => setRows(rows.filter((_, j) => j !== i))}>×</button>
          </div>`,
        )}
        <${ErrorBox} error=${action.error ?? meta.error} />
      </form>
    <//>
    ${
      answer
        ? answer.results.length
          ? html`<ol class="hits" data-testid="results">
            ${answer.results.map((r, i) => html`<${Result} key=${r.chunk.id} r=${r} rank=${i + 1} />`)}
          </ol>`
          : html`<${Empty}>Nothing found. Try other words, another mode, or fewer filters.<//>`
        : null
    }
  <//>`;
}
