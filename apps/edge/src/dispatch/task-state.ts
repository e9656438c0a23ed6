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
      if (event.type === "store_error" || event.type === "recover") return "pending";
      return null;
    case "done":
    case "failed":
    case "cancelled":
      return null;
  }
}
