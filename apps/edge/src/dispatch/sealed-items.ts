import type { Keyring } from "../lib/keyring.js";
import { isCiphertext } from "../lib/keyring.js";
import type { QueuedItem } from "./task-queue.js";

/**
 * Task text waits in the coordinator's storage until a worker takes it, so it is sealed like
 * the text in D1: under the tenant's key, bound to its chunk (a context apart from the
 * chunk's own row, so one ciphertext cannot stand in for the other).
 */
const context = (chunkId: string) => `task:${chunkId}`;

/** Seals each item's text (as the API hands tasks to the coordinator). */
export async function sealItems(keyring: Keyring, tenant: string, items: QueuedItem[]) {
  const sealed = await keyring.encryptAll(
    tenant,
    items.map((i) => ({ plaintext: i.text, context: context(i.chunkId) })),
  );
  return items.map((i, n) => ({ ...i, text: sealed[n] as string }));
}

/** Opens each item's text for the worker that leased it; text queued before sealing passes. */
export async function openItems<T extends { chunkId: string; text: string }>(
  keyring: Keyring,
  tenant: string,
  items: T[],
): Promise<T[]> {
  const sealed = items.filter((i) => isCiphertext(i.text));
  const texts = await keyring.decryptAll(
    tenant,
    sealed.map((i) => ({ ciphertext: i.text, context: context(i.chunkId) })),
  );
  const opened = new Map(sealed.map((i, n) => [i, texts[n] as string]));
  return items.map((i) => {
    const text = opened.get(i);
    return text === undefined ? i : { ...i, text };
  });
}
