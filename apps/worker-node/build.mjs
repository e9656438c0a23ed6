// Bundles each program into one ESM file. Workspace code (@p2pa/shared) is bundled in;
// published dependencies stay external and are installed with the package.
import { readFileSync } from "node:fs";
import { build } from "esbuild";

const pkg = JSON.parse(readFileSync(new URL("./package.json", import.meta.url), "utf8"));

// Two programs: the donor's worker (p2pa-worker) and the submitter's command line (p2pa); and
// the worker's inference thread, which src/model/threaded.ts starts from beside dist/cli.js.
await build({
  entryPoints: {
    cli: "src/cli.ts",
    p2pa: "src/p2pa.ts",
    "inference-thread": "src/model/inference-thread.ts",
  },
  outdir: "dist",
  bundle: true,
  platform: "node",
  target: "node20",
  format: "esm",
  sourcemap: true,
  external: Object.keys(pkg.dependencies ?? {}),
  logLevel: "warning",
});
