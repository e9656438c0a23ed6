import { html } from "htm/preact";
import { type Session, unwrap } from "./session.js";
import { useAsync } from "./ui.js";

/**
 * A choice of the deployment's models (GET /v1/models), for the forms that name one. With a
 * single model there is nothing to choose and nothing is shown; "" means the default model.
 */
export function ModelSelect({
  session,
  value,
  onChange,
}: {
  session: Session;
  value: string;
  onChange(model: string): void;
}) {
  const models = useAsync(() => unwrap(session.client.api.GET("/v1/models")), []);
  const list = models.data?.data ?? [];
  if (list.length < 2) return null;
  return html`<label class="inline">
    Model
    <select name="model" value=${value} onChange=${(e: Event) => onChange((e.target as HTMLSelectElement).value)}>
      ${list.map(
        (m, i) =>
          html`<option value=${i === 0 ? "" : m.id}>${m.id} (${m.dimension} dims, ${m.workers} worker${m.workers === 1 ? "" : "s"})</option>`,
      )}
    </select>
  </label>`;
}
