/** Something that may need the coordinator at a time: returns that time (epoch ms) or null. */
export type WakeSource = (now: number) => number | null;

/** The earliest an alarm is set ahead of now, so a wake that is already due cannot spin. */
const MIN_AHEAD_MS = 50;

/**
 * The one owner of a Durable Object's single alarm. Every component that needs a wake (lease
 * deadlines, retry backoff, a benched worker's cool-down end, a webhook hand-over retry, the
 * stall watchdog) registers a source; `arm` sets the alarm to the earliest of them, or clears
 * it when none wants one. No other code calls `setAlarm`, so one component can never
 * overwrite another's wake.
 */
export class AlarmClock {
  /** The alarm as last set by this instance; undefined until read from storage once. */
  private armedAt: number | null | undefined;

  constructor(
    private readonly storage: DurableObjectStorage,
    private readonly sources: Record<string, WakeSource>,
  ) {}

  /** The earliest wake wanted now, with the name of the source that wants it. */
  next(now = Date.now()): { at: number; source: string } | null {
    let best: { at: number; source: string } | null = null;
    for (const [source, wake] of Object.entries(this.sources)) {
      const at = wake(now);
      if (at !== null && (best === null || at < best.at)) best = { at, source };
    }
    return best;
  }

  /** Sets (or clears) the alarm for the earliest wake; cheap when nothing changed. */
  async arm(now = Date.now()): Promise<void> {
    const next = this.next(now);
    const at = next === null ? null : Math.max(next.at, now + MIN_AHEAD_MS);
    if (this.armedAt === undefined) this.armedAt = await this.storage.getAlarm();
    if (at === this.armedAt) return;
    // An alarm already set a little earlier than needed only wakes us once for nothing.
    if (at !== null && this.armedAt !== null && this.armedAt > now && this.armedAt <= at) return;
    this.armedAt = at;
    if (at === null) await this.storage.deleteAlarm();
    else await this.storage.setAlarm(at);
  }

  /** Call first thing in `alarm()`: the alarm that fired is no longer set. */
  fired(): void {
    this.armedAt = null;
  }
}
