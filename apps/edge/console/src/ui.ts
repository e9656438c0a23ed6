import { html } from "htm/preact";
import type { ComponentChildren } from "preact";
import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { describeError, isUnauthorized } from "./session.js";

/** Raised by any view whose call was refused with 401: the app signs out and says why. */
export const UNAUTHORIZED_EVENT = "p2pa:unauthorized";

function reportUnauthorized(err: unknown): void {
  if (isUnauthorized(err)) window.dispatchEvent(new CustomEvent(UNAUTHORIZED_EVENT));
}

export interface Async<T> {
  data: T | undefined;
  error: unknown;
  loading: boolean;
  reload(): void;
}

/** Runs `load` now and whenever `deps` change or `reload()` is called. */
export function useAsync<T>(load: () => Promise<T>, deps: unknown[]): Async<T> {
  const [state, setState] = useState<{ data?: T; error?: unknown; loading: boolean }>({
    loading: true,
  });
  const [tick, setTick] = useState(0);
  const reload = useCallback(() => setTick((n) => n + 1), []);
  useEffect(() => {
    let live = true;
    setState((s) => ({ ...s, loading: true }));
    load().then(
      (data) => live && setState({ data, loading: false }),
      (error) => {
        reportUnauthorized(error);
        if (live) setState((s) => ({ data: s.data, error, loading: false }));
      },
    );
    return () => {
      live = false;
    };
  }, [...deps, tick]);
  return { data: state.data, error: state.error, loading: state.loading, reload };
}

/** Calls `f` every `ms` while the view is shown. */
export function useInterval(f: () => void, ms: number): void {
  const saved = useRef(f);
  saved.current = f;
  useEffect(() => {
    const id = setInterval(() => saved.current(), ms);
    return () => clearInterval(id);
  }, [ms]);
}

/** An action's state: running, and its last error, shown beside the button. */
export function useAction() {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const run = useCallback(async (f: () => Promise<void>) => {
    setBusy(true);
    setError(null);
    try {
      await f();
    } catch (err) {
      reportUnauthorized(err);
      setError(err);
    } finally {
      setBusy(false);
    }
  }, []);
  return { busy, error, run, clear: () => setError(null) };
}

export function ErrorBox({ error }: { error: unknown }) {
  if (!error) return null;
  const { title, message } = describeError(error);
  return html`<div class="error" role="alert">
    <strong>${title}</strong><span>${message}</span>
  </div>`;
}

export function Page({
  title,
  actions,
  children,
}: {
  title: ComponentChildren;
  actions?: ComponentChildren;
  children?: ComponentChildren;
}) {
  return html`<section class="page">
    <header class="page-head">
      <h1>${title}</h1>
      <div class="actions">${actions}</div>
    </header>
    ${children}
  </section>`;
}

export function Card({
  title,
  children,
}: {
  title?: ComponentChildren;
  children?: ComponentChildren;
}) {
  return html`<div class="card">
    ${title ? html`<h2>${title}</h2>` : null} ${children}
  </div>`;
}

export function Stat({
  label,
  value,
  hint,
}: {
  label: string;
  value: ComponentChildren;
  hint?: string;
}) {
  return html`<div class="stat" title=${hint ?? ""}>
    <div class="stat-label">${label}</div>
    <div class="stat-value">${value}</div>
  </div>`;
}

export function Badge({ status }: { status: string }) {
  return html`<span class=${`badge badge-${status}`}>${status.replaceAll("_", " ")}</span>`;
}

export function Progress({ done, failed, total }: { done: number; failed: number; total: number }) {
  const pct = total > 0 ? ((done + failed) / total) * 100 : 0;
  const ok = total > 0 ? (done / total) * 100 : 0;
  return html`<div class="progress" role="progressbar" aria-valuenow=${Math.floor(pct)} aria-valuemin="0" aria-valuemax="100">
    <div class="progress-track">
      <div class="progress-done" style=${{ width: `${ok}%` }}></div>
      <div class="progress-failed" style=${{ width: `${pct - ok}%` }}></div>
    </div>
    <span class="progress-label">${Math.floor(pct)}%</span>
  </div>`;
}

export function Empty({ children }: { children?: ComponentChildren }) {
  return html`<div class="empty">${children}</div>`;
}

const cssVar = (name: string) =>
  getComputedStyle(document.documentElement).getPropertyValue(name).trim();

/**
 * A line over time with uPlot. `t` is seconds since the epoch; the plot follows its container's
 * width.
 */
export function TimeChart({
  t,
  v,
  label,
  unit,
  height = 220,
}: {
  t: number[];
  v: number[];
  label: string;
  unit: string;
  height?: number;
}) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const accent = cssVar("--accent") || "#7c6cff";
    const axis = {
      stroke: cssVar("--muted") || "#888",
      grid: { stroke: cssVar("--grid") || "#8882", width: 1 },
      ticks: { stroke: cssVar("--grid") || "#8882", width: 1 },
    };
    const u = new uPlot(
      {
        width: el.clientWidth || 600,
        height,
        legend: { show: true },
        cursor: { drag: { x: false, y: false } },
        scales: {
          x: { time: true },
          y: { range: (_u, _min, max) => [0, Math.max(1, max * 1.15)] },
        },
        axes: [axis, { ...axis, size: 56, values: (_u, vals) => vals.map((x) => `${x}`) }],
        series: [
          {},
          {
            label: `${label} (${unit})`,
            stroke: accent,
            width: 2,
            fill: `${accent}22`,
            points: { show: false },
            value: (_u, x) => (x == null ? "–" : x.toFixed(1)),
          },
        ],
      },
      [[], []],
      el,
    );
    plot.current = u;
    const resize = new ResizeObserver(() => u.setSize({ width: el.clientWidth, height }));
    resize.observe(el);
    return () => {
      resize.disconnect();
      u.destroy();
      plot.current = null;
    };
  }, [label, unit, height]);
  useEffect(() => {
    plot.current?.setData([t.slice(), v.slice()]);
  });
  return html`<div class="chart" ref=${box}></div>`;
}

export const fmt = {
  int: (n: number | null | undefined) => (n == null ? "–" : n.toLocaleString("en-US")),
  rate: (n: number | null | undefined) => (n == null ? "–" : `${n.toFixed(1)}/s`),
  time: (iso: string | null | undefined) => (iso ? new Date(iso).toLocaleString() : "–"),
  ago(iso: string | null | undefined) {
    if (!iso) return "–";
    const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
    if (s < 60) return `${Math.max(0, s)} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  },
};
