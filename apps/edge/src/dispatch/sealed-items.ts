import { TASK_SIZE } from "@p2pa/shared";
import type { Keyring } from "../lib/keyring.js";
import { DecryptError, isCiphertext } from "../lib/keyring.js";
import type { QueuedItem, StoredItem, TaskTexts } from "./task-queue.js";

/**
 * Task text waits in the coordinator's storage until a worker takes it, so it is sealed like
 * the text in D1, under the tenant's key. A task's texts are sealed in blocks of TASK_SIZE
 * chunks, one AES-GCM operation a block rather than one a chunk (some 5 µs of the
 * coordinator's thread each, sealed and opened): a block holds its chunks' ids beside their
 * texts, so a text opens only for the chunk it was sealed for. The queue keeps a row a block
 * (task-queue.ts) and cuts tasks for each worker's pace in whole blocks, so a block is opened
 * for one lease.
 */
const BLOCK_CONTEXT = "task-texts";

/** The context of text sealed one item at a time (tasks queued before blocks). */
const itemContext = (chunkId: string) => `task:${chunkId}`;

/** Seals a task's texts in blocks; its items keep their block's number instead of their text. */
export async function sealTask(
  keyring: Keyring,
  tenant: string,
  items: readonly QueuedItem[],
): Promise<{ items: StoredItem[]; texts: TaskTexts }> {
  const blocks: [string, string][][] = [];
  const stored = items.map(({ text, ...rest }, i) => {
    const b = Math.floor(i / TASK_SIZE);
    blocks[b] ??= [];
    blocks[b].push([rest.chunkId, text]);
    return { ...rest, b };
  });
  const sealed = await keyring.encryptAll(
    tenant,
    blocks.map((pairs) => ({ plaintext: JSON.stringify(pairs), context: BLOCK_CONTEXT })),
  );
  return { items: stored, texts: sealed.map((s, b) => [b, s]) };
}

/**
 * Each item's text in the clear for the worker that leased the task: from the task's blocks,
 * or sealed on the item itself (queued before blocks), or as queued (before sealing). Throws
 * DecryptError when a text does not open or is missing.
 */
export async function openTask(
  keyring: Keyring,
  tenant: string,
  items: readonly StoredItem[],
  texts: TaskTexts | null,
): Promise<{ chunkId: string; text: string }[]> {
  const wanted = new Set(items.flatMap((i) => (i.b === undefined ? [] : [i.b])));
  const blocks = (texts ?? []).filter(([b]) => wanted.has(b));
  const legacy = items.filter((i) => i.text !== undefined && isCiphertext(i.text));
  const [opened, singles] = await Promise.all([
    keyring.decryptAll(
      tenant,
      blocks.map(([, ciphertext]) => ({ ciphertext, context: BLOCK_CONTEXT })),
    ),
    keyring.decryptAll(
      tenant,
      legacy.map((i) => ({ ciphertext: i.text as string, context: itemContext(i.chunkId) })),
    ),
  ]);
  const byChunk = new Map<string, string>();
  for (const plain of opened)
    for (const [chunkId, text] of JSON.parse(plain) as [string, string][])
      byChunk.set(chunkId, text);
  legacy.forEach((i, n) => {
    byChunk.set(i.chunkId, singles[n] as string);
  });
  return items.map((i) => {
    const text = byChunk.get(i.chunkId) ?? (i.b === undefined ? i.text : undefined);
    if (text === undefined) throw new DecryptError(`no text for chunk ${i.chunkId}`);
    return { chunkId: i.chunkId, text };
  });
}
