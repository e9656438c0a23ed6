/**
 * `npm run client`: regenerates the typed client's API description from the edge itself.
 * Starts a local edge, saves the /openapi.json it serves as packages/shared/src/client/openapi.json
 * and writes the TypeScript types of every path and schema (openapi-typescript) beside it.
 * Tests fail when either file no longer matches what the edge serves.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { CLIENT_DIR, openapiTypes } from "../packages/shared/src/client/generate.js";
import { freePort, prepareLocalDatabase, startEdge } from "./lib/local-edge.js";

const persistTo = mkdtempSync(path.join(os.tmpdir(), "p2pa-openapi-"));
try {
  await prepareLocalDatabase(persistTo);
  const edge = await startEdge({ port: await freePort(), persistTo });
  try {
    const res = await fetch(`${edge.url}/openapi.json`);
    if (!res.ok) throw new Error(`GET /openapi.json answered ${res.status}`);
    const doc = await res.json();
    writeFileSync(path.join(CLIENT_DIR, "openapi.json"), `${JSON.stringify(doc, null, 2)}\n`);
    writeFileSync(path.join(CLIENT_DIR, "schema.ts"), await openapiTypes(doc));
    console.log(`wrote ${path.relative(process.cwd(), CLIENT_DIR)}/openapi.json and schema.ts`);
  } finally {
    await edge.stop();
  }
} finally {
  rmSync(persistTo, { recursive: true, force: true });
}
