import { UrgentFirst } from "./model/turns.js";

interface Waiter {
  model: unknown;
  go: () => void;
}

/**
 * Lets one model run at a time in a worker that serves several. Each model's sessions share
 * every inference thread, so two models running at once would only take cores from each other.
 * The model whose turn it is may have several calls running (one per session of its pool);
 * once another model's call waits, it takes no new ones, and the turn passes when its last
 * call ends. Real-time requests go before batch work, whichever model they are for; otherwise
 * first come, first served.
 */
export class InferenceGate {
  /** The model whose turn it is, while `running` > 0. */
  private model: unknown = null;
  private running = 0;
  private readonly waiting = new UrgentFirst<Waiter>();

  /** Runs `work` for `model` in its turn; `urgent` for a real-time request. */
  async run<T>(model: unknown, urgent: boolean, work: () => Promise<T>): Promise<T> {
    const joins =
      this.running === 0
        ? this.waiting.length === 0
        : this.model === model && !this.waiting.some((w) => w.model !== model);
    if (joins) {
      this.model = model;
      this.running++;
    } else {
      await new Promise<void>((go) => this.waiting.push({ model, go }, urgent));
    }
    try {
      return await work();
    } finally {
      this.leave();
    }
  }

  private leave(): void {
    if (--this.running > 0) return;
    const next = this.waiting.peek();
    if (!next) return;
    // The turn passes to the first waiter's model, with every call of that model waiting: the
    // count is taken here, so no newcomer slips in between.
    const turn = this.waiting.take((w) => w.model === next.model);
    this.model = next.model;
    this.running = turn.length;
    for (const w of turn) w.go();
  }
}
