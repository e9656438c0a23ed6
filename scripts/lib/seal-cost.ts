import { webcrypto } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { DEV_CREDENTIALS, prepareLocalDatabase, startEdge } from "./local-edge.js";

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

/**
 * What sealing text at rest costs: AES-256-GCM over every chunk, measured in-process (the
 * same primitive, key size, IV and bound data the edge's keyring uses), beside the edge's
 * own submit and read times for the same corpus in the same run. The share is the sealing
 * time over the request's time: what the job pays for encryption.
 */
export async function encryptionCost(
  passages: string[],
  chunking: { maxChars: number; overlap: number },
  runs: number,
) {
  const auth = { Authorization: `Bearer ${DEV_CREDENTIALS.apiKey}` };
  const dir = mkdtempSync(path.join(os.tmpdir(), "p2pa-bench-seal-"));
  await prepareLocalDatabase(dir);
  const edge = await startEdge({ port: 8791, persistTo: dir });
  const submitMs: number[] = [];
  const readMs: number[] = [];
  let chunkTexts: string[] = [];
  try {
    for (let r = 0; r < runs; r++) {
      const t0 = performance.now();
      const res = await fetch(`${edge.url}/v1/jobs`, {
        method: "POST",
        headers: { ...auth, "Content-Type": "application/json" },
        body: JSON.stringify({ documents: passages.map((text) => ({ text })), chunking }),
      });
      if (res.status !== 202) throw new Error(`submit failed: ${res.status} ${await res.text()}`);
      submitMs.push(performance.now() - t0);
      const { id } = (await res.json()) as { id: string };
      const t1 = performance.now();
      const texts: string[] = [];
      for (let cursor: string | null = ""; cursor !== null; ) {
        const page = (await (
          await fetch(
            `${edge.url}/v1/jobs/${id}/chunks?limit=1000${cursor ? `&cursor=${cursor}` : ""}`,
            { headers: auth },
          )
        ).json()) as { data: { text: string }[]; nextCursor: string | null };
        texts.push(...page.data.map((c) => c.text));
        cursor = page.nextCursor;
      }
      readMs.push(performance.now() - t1);
      chunkTexts = texts;
    }
  } finally {
    await edge.stop();
    rmSync(dir, { recursive: true, force: true });
  }

  const subtle = webcrypto.subtle;
  const key = await subtle.importKey(
    "raw",
    webcrypto.getRandomValues(new Uint8Array(32)),
    "AES-GCM",
    false,
    ["encrypt", "decrypt"],
  );
  const enc = new TextEncoder();
  const sealMs: number[] = [];
  const openMs: number[] = [];
  for (let r = 0; r < runs; r++) {
    const t0 = performance.now();
    const sealed = await Promise.all(
      chunkTexts.map(async (t, i) => {
        const iv = webcrypto.getRandomValues(new Uint8Array(12));
        const additionalData = enc.encode(`dev\u0000job.${i}`);
        const ct = await subtle.encrypt(
          { name: "AES-GCM", iv, additionalData },
          key,
          enc.encode(t),
        );
        return { iv, ct, additionalData, b64: Buffer.from(ct).toString("base64url") };
      }),
    );
    sealMs.push(performance.now() - t0);
    const t1 = performance.now();
    await Promise.all(
      sealed.map((s) =>
        subtle.decrypt(
          { name: "AES-GCM", iv: s.iv, additionalData: s.additionalData },
          key,
          Buffer.from(s.b64, "base64url"),
        ),
      ),
    );
    openMs.push(performance.now() - t1);
  }
  const n = chunkTexts.length;
  const seal = median(sealMs);
  const open = median(openMs);
  return {
    chunks: n,
    sealMicrosPerChunk: (seal * 1000) / n,
    openMicrosPerChunk: (open * 1000) / n,
    submitMs: median(submitMs),
    readAllChunksMs: median(readMs),
    shareOfSubmit: seal / median(submitMs),
    shareOfRead: open / median(readMs),
  };
}
