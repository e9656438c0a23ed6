/**
 * Who goes next among calls waiting for the model: real-time requests before batch work, each
 * kind in arrival order. Used by a pool's sessions (pool.ts) and by the turns several models
 * take on one machine (inference-gate.ts).
 */
export class UrgentFirst<T> {
  private readonly waiting: { urgent: boolean; item: T }[] = [];

  /** Queues `item`: behind the other urgent ones when `urgent`, else at the back. */
  push(item: T, urgent: boolean): void {
    const at = urgent ? this.waiting.findIndex((w) => !w.urgent) : -1;
    if (at < 0) this.waiting.push({ urgent, item });
    else this.waiting.splice(at, 0, { urgent, item });
  }

  /** The next item, taken off the queue. */
  shift(): T | undefined {
    return this.waiting.shift()?.item;
  }

  /** The next item, left on the queue. */
  peek(): T | undefined {
    return this.waiting[0]?.item;
  }

  /** Takes off every item `pick` selects, keeping the others in their order. */
  take(pick: (item: T) => boolean): T[] {
    const out: T[] = [];
    for (let i = 0; i < this.waiting.length; ) {
      const w = this.waiting[i] as { item: T };
      if (pick(w.item)) {
        out.push(w.item);
        this.waiting.splice(i, 1);
      } else i++;
    }
    return out;
  }

  /** True when some waiting item satisfies `test`. */
  some(test: (item: T) => boolean): boolean {
    return this.waiting.some((w) => test(w.item));
  }

  get length(): number {
    return this.waiting.length;
  }
}
