/** What a real-time request came to. */
export type EmbedOutcome =
  | { ok: true; vectors: string[]; tokens: number; workerId: string }
  | { ok: false; code: "no_capacity" | "timeout" | "failed"; message: string };

interface Pending {
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
      this.pending.set(requestId, { workerId, resolve, timer });
      send(requestId);
    });
  }

  /** Delivers an answer; ignored unless it comes from the worker the request went to. */
  settle(requestId: string, workerId: string, outcome: EmbedOutcome): void {
    const p = this.pending.get(requestId);
    if (!p || p.workerId !== workerId) return;
    this.pending.delete(requestId);
    clearTimeout(p.timer);
    p.resolve(outcome);
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
