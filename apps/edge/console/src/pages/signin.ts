import { html } from "htm/preact";
import { useState } from "preact/hooks";
import { ApiError, type Session, signIn } from "../session.js";
import { ErrorBox } from "../ui.js";

/** Paste an API key; it is checked against the API and kept only for this tab. */
export function SignIn({
  notice,
  onSignedIn,
}: {
  notice: string | null;
  onSignedIn(s: Session): void;
}) {
  const [key, setKey] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);

  async function submit(e: Event) {
    e.preventDefault();
    if (!key.trim()) return;
    setBusy(true);
    setError(null);
    try {
      onSignedIn(await signIn(key));
    } catch (err) {
      setError(
        err instanceof ApiError && err.status === 401
          ? new ApiError(401, "unauthorized", `This key was not accepted: ${err.message}.`)
          : err,
      );
    } finally {
      setBusy(false);
    }
  }

  return html`<div class="signin">
    <form class="signin-card" onSubmit=${submit}>
      <div class="brand big"><span class="logo"></span>p2pa</div>
      <p class="muted">Documents to searchable vectors, on donated compute.</p>
      ${notice ? html`<div class="notice">${notice}</div>` : null}
      <label>
        API key
        <input
          type="password"
          name="key"
          autocomplete="off"
          spellcheck="false"
          placeholder="p2pa_…"
          value=${key}
          onInput=${(e: Event) => setKey((e.target as HTMLInputElement).value)}
          autofocus
        />
      </label>
      <${ErrorBox} error=${error} />
      <button class="btn btn-primary" type="submit" disabled=${busy || !key.trim()}>
        ${busy ? "Checking…" : "Sign in"}
      </button>
      <p class="muted small">
        The key stays in this tab only (session storage) and is sent only to this server's API.
      </p>
    </form>
  </div>`;
}
