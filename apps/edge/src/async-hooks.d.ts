// The part of Node's `node:async_hooks` that workerd provides under nodejs_compat and the edge
// uses (db/pg-client.ts); the Workers types do not declare Node modules.
declare module "node:async_hooks" {
  export class AsyncLocalStorage<T> {
    getStore(): T | undefined;
    run<R>(store: T, fn: () => R): R;
  }
}
