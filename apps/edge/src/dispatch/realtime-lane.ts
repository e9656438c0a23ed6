/** What a real-time request came to. */
export type EmbedOutcome =
  | { ok: true; vectors: string[]; tokens: number; workerId: string }
  | { ok: false; code: "no_capacity" | "timeout" | "failed"; message: string };

/** What the answer to a request must be: vectors of this model, one per text. */
export interface Expected {
  model: string;
  count: number;
}

interface Pending extends Expected {
  workerId: string;
  resolve: (o: EmbedOutcome) => void;
  timer: ReturnType<typeof setTimeout>;
}

/**
 * The priority lane: real-time embedding requests (search queries, `/v1/embeddings`) sent
 * straight to a connected worker, ahead of its batch work, and answered to their HTTP caller.
 * Kept in memory: the callers are in memory too, and a caller outlives no restart.
 */
export class RealtimeLane {
  private readonly pending = new Map<string, Pending>();

  /** Requests in flight on a worker: the least busy worker gets the next one. */
  inFlight(workerId: string): number {
    let n = 0;
    for (const p of this.pending.values()) if (p.workerId === workerId) n++;
    return n;
  }

  /** Sends a request with `send(requestId)` and waits for its answer or the timeout. */
  request(
    workerId: string,
    expected: Expected,
    timeoutMs: number,
    send: (requestId: string) => void,
  ): Promise<EmbedOutcome> {
    const requestId = crypto.randomUUID();
    return new Promise<EmbedOutcome>((resolve) => {
      const timer = setTimeout(() => {
        this.pending.delete(requestId);
        resolve({
          ok: false,
          code: "timeout",
          message: `worker did not answer within ${timeoutMs} ms`,
        });
      }, timeoutMs);
      this.pending.set(requestId, { workerId, ...expected, resolve, timer });
      send(requestId);
    });
  }

  /** What a pending request expects, and from which worker; null when none is pending. */
  expected(requestId: string): (Expected & { workerId: string }) | null {
    const p = this.pending.get(requestId);
    return p ? { workerId: p.workerId, model: p.model, count: p.count } : null;
  }

  /**
   * Delivers an answer; ignored unless it comes from the worker the request went to. True
   * when it settled a pending request.
   */
  settle(requestId: string, workerId: string, outcome: EmbedOutcome): boolean {
    const p = this.pending.get(requestId);
    if (!p || p.workerId !== workerId) return false;
    this.pending.delete(requestId);
    clearTimeout(p.timer);
    p.resolve(outcome);
    return true;
  }

  /** Fails every request a worker held: it disconnected. */
  dropWorker(workerId: string): void {
    for (const [id, p] of this.pending) {
      if (p.workerId !== workerId) continue;
      this.pending.delete(id);
      clearTimeout(p.timer);
      p.resolve({ ok: false, code: "failed", message: "worker disconnected" });
    }
  }
}
