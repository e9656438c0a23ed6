import { html } from "htm/preact";
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import "../style.css";
import { closeAll } from "./live.js";
import { DocumentPage } from "./pages/document.js";
import { JobPage } from "./pages/job.js";
import { JobsPage } from "./pages/jobs.js";
import { SearchPage } from "./pages/search.js";
import { SignIn } from "./pages/signin.js";
import { WebhookPage, WebhooksPage } from "./pages/webhooks.js";
import { WorkersPage } from "./pages/workers.js";
import { type Session, signIn, signOut, storedKey } from "./session.js";
import { ErrorBox, UNAUTHORIZED_EVENT } from "./ui.js";

/** The hash route, split: #/jobs/job_1 -> ["jobs", "job_1"]. */
function useRoute(): string[] {
  const read = () =>
    location.hash
      .replace(/^#\/?/, "")
      .split("?")[0]
      ?.split("/")
      .filter(Boolean)
      .map(decodeURIComponent) ?? [];
  const [route, setRoute] = useState(read);
  useEffect(() => {
    const on = () => setRoute(read());
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return route;
}

const NAV = [
  ["jobs", "Jobs"],
  ["search", "Search"],
  ["workers", "Workers"],
  ["webhooks", "Webhooks"],
] as const;

function Routed({ session, route }: { session: Session; route: string[] }) {
  const [section, id] = route;
  switch (section) {
    case undefined:
    case "jobs":
      return id
        ? html`<${JobPage} key=${id} session=${session} id=${id} />`
        : html`<${JobsPage} session=${session} />`;
    case "documents":
      return id
        ? html`<${DocumentPage} key=${id} session=${session} id=${id} collection=${route[2]} />`
        : null;
    case "search":
      return html`<${SearchPage} session=${session} />`;
    case "workers":
      return html`<${WorkersPage} session=${session} />`;
    case "webhooks":
      return id
        ? html`<${WebhookPage} key=${id} session=${session} id=${id} />`
        : html`<${WebhooksPage} session=${session} />`;
    default:
      return html`<${ErrorBox}
        error=${new Error(`There is no page "${route.join("/")}". Pick one from the menu.`)}
      />`;
  }
}

function App() {
  const route = useRoute();
  const [session, setSession] = useState<Session | null>(null);
  const [restoring, setRestoring] = useState(() => storedKey() !== null);
  const [notice, setNotice] = useState<string | null>(null);

  // A key kept from earlier in this tab is checked again before anything is shown.
  useEffect(() => {
    const key = storedKey();
    if (!key) return;
    signIn(key).then(
      (s) => {
        setSession(s);
        setRestoring(false);
      },
      (err) => {
        signOut();
        setNotice(`Signed out: ${err instanceof Error ? err.message : String(err)}`);
        setRestoring(false);
      },
    );
  }, []);

  useEffect(() => {
    const on = () => {
      closeAll();
      signOut();
      setSession(null);
      setNotice("Your key is no longer accepted (401). Sign in again.");
    };
    window.addEventListener(UNAUTHORIZED_EVENT, on);
    return () => window.removeEventListener(UNAUTHORIZED_EVENT, on);
  }, []);

  if (restoring) return html`<div class="splash">Checking your key…</div>`;
  if (!session)
    return html`<${SignIn}
      notice=${notice}
      onSignedIn=${(s: Session) => {
        setNotice(null);
        setSession(s);
      }}
    />`;

  const section = route[0] ?? "jobs";
  return html`<div class="shell">
    <aside class="sidebar">
      <a class="brand" href="#/jobs"><span class="logo"></span>p2pa</a>
      <nav>
        ${NAV.map(
          ([path, label]) =>
            html`<a href=${`#/${path}`} class=${section === path || (path === "jobs" && section === "documents") ? "active" : ""}>${label}</a>`,
        )}
      </nav>
      <div class="sidebar-foot">
        <div class="who">${session.operator ? "Operator key" : "API key"}</div>
        <button
          class="btn btn-ghost"
          onClick=${() => {
            closeAll();
            signOut();
            setSession(null);
            location.hash = "#/jobs";
          }}
        >
          Sign out
        </button>
        <a class="muted small" href="/openapi.json" target="_blank" rel="noreferrer">API reference</a>
      </div>
    </aside>
    <main class="content"><${Routed} session=${session} route=${route} /></main>
  </div>`;
}

const root = document.getElementById("app");
if (root) {
  root.textContent = "";
  render(html`<${App} />`, root);
}
