import { neonConfig } from "@neondatabase/serverless";

/**
 * Makes connections of Neon's serverless driver (1.2.0) end cleanly. Its WebSocket-backed socket
 * takes `write(data, encoding, callback)` only, while the Postgres client it carries ends a
 * connection with `write(Terminate, callback)` and closes the socket in that callback: the
 * callback never ran, so `client.end()` and `pool.end()` left every WebSocket open (a Durable
 * Object kept awake, the server's connection held until it timed out, a Node process kept
 * alive). Its writes also wait for the next tick (coalesced), while its `end` closed the socket
 * at once, so the Terminate went after the close (an uncaught "send() after close()" in
 * workerd). Here `write` takes Node's `write(data, callback)` form too, and `end` runs after
 * the writes queued before it.
 *
 * `neonConfig` is the driver's socket class; this patches its prototype once per isolate.
 */
export function endNeonSocketsCleanly(): void {
  const proto = (neonConfig as unknown as { prototype: NeonSocket }).prototype;
  if (proto[PATCHED]) return;
  const { write, end } = proto;
  proto.write = function (this: NeonSocket, data, encoding, callback) {
    return typeof encoding === "function"
      ? write.call(this, data, "utf8", encoding)
      : write.call(this, data, encoding, callback);
  };
  proto.end = function (this: NeonSocket, ...args) {
    setTimeout(() => end.apply(this, args), 0);
    return this;
  };
  proto[PATCHED] = true;
}

const PATCHED = Symbol.for("p2pa.neonSocketEndsCleanly");

type Callback = (err?: unknown) => void;

interface NeonSocket {
  write(data: unknown, encoding?: string | Callback, callback?: Callback): boolean;
  end(...args: unknown[]): NeonSocket;
  [PATCHED]?: boolean;
}
