import Table from "cli-table3";
import pc from "picocolors";

/** Where results go: a table for people, JSON for programs (`--json`). */
export interface Output {
  json: boolean;
  /** stdout is a terminal (colors, progress bars). */
  tty: boolean;
}

/** Prints rows as an aligned table without borders, like kubectl or gh. */
export function table(out: Output, head: string[], rows: (string | number)[][]): void {
  const t = new Table({
    head: head.map((h) => (out.tty ? pc.bold(h) : h)),
    chars: {
      top: "",
      "top-mid": "",
      "top-left": "",
      "top-right": "",
      bottom: "",
      "bottom-mid": "",
      "bottom-left": "",
      "bottom-right": "",
      left: "",
      "left-mid": "",
      mid: "",
      "mid-mid": "",
      right: "",
      "right-mid": "",
      middle: "  ",
    },
    style: { head: [], border: [], "padding-left": 0, "padding-right": 0 },
  });
  for (const r of rows) t.push(r.map(String));
  process.stdout.write(`${rows.length === 0 ? head.join("  ") : t.toString()}\n`);
}

/** Key and value lines, for one record. */
export function fields(out: Output, pairs: [string, string | number][]): void {
  const width = Math.max(...pairs.map(([k]) => k.length));
  for (const [k, v] of pairs)
    process.stdout.write(`${(out.tty ? pc.dim : String)(k.padEnd(width))}  ${v}\n`);
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

const STATUS_COLORS: Record<string, (s: string) => string> = {
  completed: pc.green,
  completed_with_errors: pc.yellow,
  failed: pc.red,
  cancelled: pc.dim,
  running: pc.cyan,
  queued: pc.cyan,
};

export function status(out: Output, s: string): string {
  return out.tty ? (STATUS_COLORS[s] ?? String)(s) : s;
}

/** A short relative time: 4s, 3m, 2h, 5d ago. */
export function ago(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return "-";
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86_400)}d ago`;
}

/** A text cut to one line of at most `n` characters. */
export function snippet(text: string | null | undefined, n: number): string {
  const one = (text ?? "").replace(/\s+/g, " ").trim();
  return one.length > n ? `${one.slice(0, n - 1)}…` : one;
}
