/**
 * A task's life as an explicit state machine. A task is a batch of chunks of one job.
 *
 *   pending --lease--> leased --result ok--> storing --stored--> done
 *      ^                 |  \                   |
 *      |   expire/release/ \--fail--> (pending, or failed when attempts are spent)
 *      +-------------------+            storing --store error / recover--> pending
 *
 * A lease that misses its deadline puts the task back (reassign), but its worker's result is
 * still taken until the give-up deadline, from `pending` or while another worker holds it:
 * the first valid result is stored, any later one is a duplicate.
 *
 * Any task not yet stored can be cancelled (its job was cancelled or deleted).
 *
 * Verification: a result being judged is in `storing`; when it must wait for another donor's
 * confirmation (or disagreed with the others held) the task goes back to `pending` for a
 * donor that has not answered it (`await_confirmation`), and when its donors never agree it
 * fails (`give_up`). A stored task whose unconfirmed result came from a donor caught lying
 * is run again (`recompute`).
 *
 * A task found in `storing` when the object starts was cut off mid-write (crash, deploy):
 * `recover` puts it back; every write of the store path is idempotent, so that is safe.
 *
 * `storing` exists so that a duplicate result arriving while the first is being written is
 * answered "duplicate" instead of being written twice, and so that a lease expiring mid-write
 * does not hand the task to another worker.
 */
export type TaskState = "pending" | "leased" | "storing" | "done" | "failed" | "cancelled";

export type TaskEvent =
  | { type: "lease" }
  | { type: "result" }
  /** A result on a lease that expired but has not reached its give-up deadline. */
  | { type: "late_result" }
  | { type: "stored" }
  | { type: "store_error" }
  /** The object started and found the task mid-write. */
  | { type: "recover" }
  /** The result is held until another donor confirms it. */
  | { type: "await_confirmation" }
  /** The donors' results never agreed. */
  | { type: "give_up" }
  /** The stored result's donor was quarantined before anyone confirmed it. */
  | { type: "recompute" }
  | { type: "expire" }
  | { type: "release" }
  /** `exhausted`: the task has failed on enough different workers to give up on it. */
  | { type: "fail"; exhausted: boolean }
  | { type: "cancel" };

/** The state after an event, or null when the event does not apply in that state. */
export function transition(state: TaskState, event: TaskEvent): TaskState | null {
  if (event.type === "cancel")
    return state === "pending" || state === "leased" ? "cancelled" : null;
  switch (state) {
    case "pending":
      if (event.type === "lease") return "leased";
      return event.type === "late_result" ? "storing" : null;
    case "leased":
      switch (event.type) {
        case "result":
        case "late_result":
          return "storing";
        case "expire":
        case "release":
          return "pending";
        case "fail":
          return event.exhausted ? "failed" : "pending";
        default:
          return null;
      }
    case "storing":
      if (event.type === "stored") return "done";
      if (
        event.type === "store_error" ||
        event.type === "recover" ||
        event.type === "await_confirmation"
      )
        return "pending";
      return event.type === "give_up" ? "failed" : null;
    case "done":
      return event.type === "recompute" ? "pending" : null;
    case "failed":
    case "cancelled":
      return null;
  }
}
