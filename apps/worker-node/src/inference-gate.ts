/**
 * Lets one model run at a time in a worker that serves several. Each model's session is given
 * every inference thread, so two running at once would only take cores from each other; taking
 * turns keeps each call as fast as it is alone. Real-time requests go before batch work,
 * whichever model they are for; otherwise first come, first served.
 */
export class InferenceGate {
  private running = false;
  private readonly waiting: { urgent: boolean; go: () => void }[] = [];

  /** Runs `work` when no other model is running; `urgent` for a real-time request. */
  async run<T>(urgent: boolean, work: () => Promise<T>): Promise<T> {
    if (this.running) await new Promise<void>((go) => this.enqueue(urgent, go));
    else this.running = true;
    try {
      return await work();
    } finally {
      this.next();
    }
  }

  private enqueue(urgent: boolean, go: () => void): void {
    // Behind the other urgent calls, ahead of every batch.
    const at = urgent ? this.waiting.findIndex((w) => !w.urgent) : -1;
    if (at < 0) this.waiting.push({ urgent, go });
    else this.waiting.splice(at, 0, { urgent, go });
  }

  private next(): void {
    const turn = this.waiting.shift();
    // The turn passes straight on: `running` stays true, so no newcomer slips in between.
    if (turn) turn.go();
    else this.running = false;
  }
}
