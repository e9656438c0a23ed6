import { connect, createServer, type Server, type Socket } from "node:net";

/**
 * A TCP proxy in front of the edge that can cut connections the way a bad network does:
 * at once, or in the middle of a frame (forwarding only part of a chunk of data first).
 */
export class CuttingProxy {
  private readonly pairs = new Set<{ client: Socket; upstream: Socket; cutMidFrame: boolean }>();
  private server: Server | null = null;
  cuts = 0;
  midFrameCuts = 0;

  constructor(
    private readonly targetPort: number,
    readonly port: number,
  ) {}

  async start(): Promise<void> {
    this.server = createServer((client) => {
      const upstream = connect(this.targetPort, "127.0.0.1");
      const pair = { client, upstream, cutMidFrame: false };
      this.pairs.add(pair);
      const forward = (from: Socket, to: Socket) =>
        from.on("data", (d: Buffer) => {
          if (pair.cutMidFrame && d.length > 1) {
            // Deliver half of this chunk, then drop the line: the peer sees a torn frame.
            to.write(d.subarray(0, Math.floor(d.length / 2)), () => this.drop(pair));
            pair.cutMidFrame = false;
            return;
          }
          to.write(d);
        });
      forward(client, upstream);
      forward(upstream, client);
      const end = () => this.drop(pair);
      client.on("error", end).on("close", end);
      upstream.on("error", end).on("close", end);
    });
    await new Promise<void>((r) => this.server?.listen(this.port, "127.0.0.1", r));
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get open(): number {
    return this.pairs.size;
  }

  /** Cuts one random connection, mid-frame on its next data when `midFrame`. */
  cutOne(midFrame: boolean, random: () => number = Math.random): boolean {
    const all = [...this.pairs];
    const pair = all[Math.floor(random() * all.length)];
    if (!pair) return false;
    this.cuts++;
    if (midFrame) {
      this.midFrameCuts++;
      pair.cutMidFrame = true;
      // A quiet connection is cut anyway after a moment.
      setTimeout(() => this.drop(pair), 500).unref();
    } else {
      this.drop(pair);
    }
    return true;
  }

  private drop(pair: { client: Socket; upstream: Socket }): void {
    pair.client.destroy();
    pair.upstream.destroy();
    for (const p of this.pairs) if (p.client === pair.client) this.pairs.delete(p);
  }

  async stop(): Promise<void> {
    for (const p of [...this.pairs]) this.drop(p);
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }
}
