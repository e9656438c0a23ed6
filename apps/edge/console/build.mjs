/**
 * Bundles the web console (src/main.ts with its CSS, uPlot's included) into dist/, which the
 * Worker serves as static assets (wrangler.toml [assets]). `node build.mjs --watch` rebuilds on
 * every change.
 */
import { copyFile, mkdir, rm } from "node:fs/promises";
import path from "node:path";
import * as esbuild from "esbuild";

const here = import.meta.dirname;
const out = path.join(here, "dist");

await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
await Promise.all(
  ["index.html", "_headers", "favicon.svg"].map((f) =>
    copyFile(path.join(here, f), path.join(out, f)),
  ),
);

const options = {
  entryPoints: { main: path.join(here, "src/main.ts") },
  outdir: out,
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  minify: true,
  sourcemap: "linked",
  legalComments: "linked",
  logLevel: "warning",
};

if (process.argv.includes("--watch")) {
  const ctx = await esbuild.context(options);
  await ctx.watch();
  console.log(`watching ${path.relative(process.cwd(), here)}/src`);
} else {
  await esbuild.build(options);
}
