/**
 * `p2pa`: the command line of a p2pa deployment, for the people who feed it. Every call goes
 * through the typed client generated from the edge's API description.
 */
import { createRequire } from "node:module";
import { Writable } from "node:stream";
import {
  ApiError,
  type components,
  createP2paClient,
  type P2paClient,
  unwrap,
} from "@p2pa/shared/client";
import { Command, InvalidArgumentError, Option } from "commander";
import { UserError } from "../errors.js";
import { batches, collectFiles, formOf } from "./files.js";
import { ago, fields, type Output, printJson, snippet, status, table } from "./output.js";
import { follow } from "./progress.js";

type Schemas = components["schemas"];
type Job = Schemas["Job"];
type SearchFilter = Schemas["SearchFilter"];

const require = createRequire(import.meta.url);
const { version } = require("../package.json") as { version: string };

const DEFAULT_SERVER = "http://127.0.0.1:8787";
const TERMINAL = new Set(["completed", "completed_with_errors", "failed", "cancelled"]);

interface Globals {
  server: string;
  key?: string;
  json: boolean;
}

function context(cmd: Command): { client: P2paClient; out: Output } {
  const g = cmd.optsWithGlobals<Globals>();
  if (!g.key)
    throw new UserError(
      "no API key",
      "Pass --key or set P2PA_API_KEY (npm start prints the local one).",
    );
  return {
    client: createP2paClient({ server: g.server, key: g.key }),
    out: { json: g.json, tty: Boolean(process.stdout.isTTY) },
  };
}

/** `--filter key=value` (also !=, <, <=, >, >=), values read as numbers or booleans when they are. */
function parseFilter(expr: string, acc: SearchFilter = {}): SearchFilter {
  const m = /^([\w.-]+)\s*(!=|<=|>=|=|<|>)\s*(.*)$/.exec(expr);
  if (!m) throw new InvalidArgumentError(`expected key=value (or !=, <, <=, >, >=), not ${expr}`);
  const [, key = "", op, raw = ""] = m;
  const value: string | number | boolean =
    raw === "true"
      ? true
      : raw === "false"
        ? false
        : raw !== "" && Number.isFinite(Number(raw))
          ? Number(raw)
          : raw;
  const ops: Record<string, string> = {
    "!=": "$ne",
    "<": "$lt",
    "<=": "$lte",
    ">": "$gt",
    ">=": "$gte",
  };
  const prev = acc[key];
  if (op === "=") return { ...acc, [key]: value };
  const name = ops[op ?? ""] ?? "$eq";
  const merged = { ...(prev && typeof prev === "object" ? prev : {}), [name]: value };
  return { ...acc, [key]: merged as SearchFilter[string] };
}

function json(what: string) {
  return (raw: string) => {
    try {
      const v = JSON.parse(raw) as unknown;
      if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error("not an object");
      return v as Record<string, unknown>;
    } catch (err) {
      throw new InvalidArgumentError(`${what} must be a JSON object (${(err as Error).message})`);
    }
  };
}

const positive = (raw: string) => {
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError("expected a positive integer");
  return n;
};

const progressOf = (j: Pick<Job, "chunks">) =>
  j.chunks.total === 0
    ? "-"
    : `${Math.floor(((j.chunks.done + j.chunks.failed) * 100) / j.chunks.total)}%`;

function jobTable(out: Output, jobs: Job[]): void {
  table(
    out,
    ["ID", "STATUS", "PROGRESS", "CHUNKS", "FAILED", "DOCS", "COLLECTION", "CREATED"],
    jobs.map((j) => [
      j.id,
      status(out, j.status),
      progressOf(j),
      `${j.chunks.done}/${j.chunks.total}`,
      j.chunks.failed,
      j.documents,
      j.collection,
      ago(j.createdAt),
    ]),
  );
}

/** Exit code for jobs that ended: 0 only when every one completed without errors. */
const exitFor = (statuses: string[]) => (statuses.every((s) => s === "completed") ? 0 : 1);

function program(): Command {
  const prog = new Command("p2pa")
    .description("Submit documents to a p2pa deployment, follow them, search them.")
    .version(version)
    .addOption(
      new Option("-s, --server <url>", "the edge's address")
        .env("P2PA_SERVER")
        .default(DEFAULT_SERVER),
    )
    .addOption(new Option("-k, --key <key>", "an API key").env("P2PA_API_KEY"))
    .option("--json", "print JSON instead of tables", false)
    .showHelpAfterError()
    .configureOutput({ outputError: (s, write) => write(`p2pa: ${s.replace(/^error: /, "")}`) });

  prog
    .command("submit")
    .description("Index files and folders (text, Markdown, HTML, PDF, DOCX) and follow the job")
    .argument("<paths...>", "files or folders; a folder's files are named by their path in it")
    .option("-c, --collection <name>", "the collection to index into")
    .option("--model <id>", "the model to embed with (p2pa models lists them)")
    .option(
      "-m, --metadata <json>",
      "metadata (a JSON object) for every document",
      json("--metadata"),
    )
    .option(
      "--options <json>",
      "more job options, as in POST /v1/jobs (a JSON object)",
      json("--options"),
    )
    .option("--no-wait", "print the job and return without following it")
    .action(async (paths: string[], o, cmd: Command) => {
      const { client, out } = context(cmd);
      const { files, skipped } = await collectFiles(paths);
      for (const s of skipped) process.stderr.write(`skipped ${s.path}: ${s.reason}\n`);
      if (files.length === 0)
        throw new UserError("no files to submit", "Give text, Markdown, HTML, PDF or DOCX files.");
      const options = {
        ...(o.options ?? {}),
        ...(o.collection ? { collection: o.collection } : {}),
        ...(o.model ? { model: o.model } : {}),
      };
      const jobs: (Job & { ingest: Schemas["IngestReport"] })[] = [];
      const uploads = batches(files);
      for (const [i, batch] of uploads.entries()) {
        if (!out.json && uploads.length > 1)
          process.stderr.write(`uploading ${i + 1}/${uploads.length} (${batch.length} files)…\n`);
        const form = await formOf(batch, options, o.metadata);
        const job = await unwrap(
          client.api.POST("/v1/jobs", {
            // The typed body is JSON; an upload sends the same operation as multipart.
            body: form as never,
            bodySerializer: (b: unknown) => b as FormData,
          }),
        );
        jobs.push(job as Job & { ingest: Schemas["IngestReport"] });
        for (const r of job.ingest?.rejections ?? [])
          process.stderr.write(`rejected ${r.file ?? r.id ?? "?"}: ${r.message} (${r.code})\n`);
      }
      const accepted = jobs.reduce((n, j) => n + j.ingest.accepted, 0);
      const unchanged = jobs.reduce((n, j) => n + j.ingest.unchanged, 0);
      if (!out.json)
        process.stderr.write(
          `submitted ${accepted} document${accepted === 1 ? "" : "s"} in ${jobs.length} job${jobs.length === 1 ? "" : "s"} (${unchanged} unchanged): ${jobs.map((j) => j.id).join(" ")}\n`,
        );
      if (!o.wait) {
        if (out.json) printJson(jobs);
        else jobTable(out, jobs);
        return;
      }
      const ended = await follow(client, jobs, { quiet: out.json });
      const final = await Promise.all(
        ended.map((e) =>
          unwrap(client.api.GET("/v1/jobs/{id}", { params: { path: { id: e.id } } })),
        ),
      );
      if (out.json) printJson(final);
      else jobTable(out, final);
      process.exitCode = exitFor(final.map((j) => j.status));
    });

  prog
    .command("watch")
    .description("Follow jobs to their end, with a progress bar (resumes where a cut left off)")
    .argument("<ids...>", "job ids")
    .action(async (ids: string[], _o, cmd: Command) => {
      const { client, out } = context(cmd);
      const jobs = await Promise.all(
        ids.map((id) => unwrap(client.api.GET("/v1/jobs/{id}", { params: { path: { id } } }))),
      );
      const open = jobs.filter((j) => !TERMINAL.has(j.status));
      if (open.length > 0) await follow(client, open, { quiet: out.json });
      const final = await Promise.all(
        ids.map((id) => unwrap(client.api.GET("/v1/jobs/{id}", { params: { path: { id } } }))),
      );
      if (out.json) printJson(final);
      else jobTable(out, final);
      process.exitCode = exitFor(final.map((j) => j.status));
    });

  prog
    .command("search")
    .description("Search what was indexed")
    .argument("<query>", "what to look for, in your words")
    .option("-n, --top-k <n>", "results to show", positive, 5)
    .option("-c, --collection <name...>", "collections to search (default: all)")
    .option("--model <id>", "the model whose index to search (default: use-lite)")
    .option(
      "-f, --filter <key=value>",
      "metadata filter, repeatable (=, !=, <, <=, >, >=)",
      (v: string, acc?: SearchFilter) => parseFilter(v, acc),
    )
    .addOption(new Option("--mode <mode>", "how to rank").choices(["vector", "keyword", "hybrid"]))
    .action(async (query: string, o, cmd: Command) => {
      const { client, out } = context(cmd);
      const res = await unwrap(
        client.api.POST("/v1/search", {
          body: {
            query,
            topK: o.topK,
            ...(o.collection ? { collections: o.collection } : {}),
            ...(o.filter ? { filter: o.filter } : {}),
            ...(o.mode ? { mode: o.mode } : {}),
            ...(o.model ? { model: o.model } : {}),
          },
        }),
      );
      if (out.json) return printJson(res);
      const width = Math.max(40, (process.stdout.columns ?? 120) - 60);
      table(
        out,
        ["#", "SCORE", "DOCUMENT", "WHERE", "TEXT"],
        res.results.map((r, i) => [
          i + 1,
          r.score.toFixed(3),
          r.chunk.documentId,
          r.chunk.page !== undefined
            ? `p. ${r.chunk.page}`
            : snippet(r.chunk.headings?.at(-1), 24) || "-",
          snippet(r.chunk.text, width),
        ]),
      );
    });

  prog
    .command("jobs")
    .description("List jobs, newest first")
    .addOption(
      new Option("--status <status>", "only jobs in this state").choices([
        "queued",
        "running",
        "completed",
        "completed_with_errors",
        "failed",
        "cancelled",
      ]),
    )
    .option("-c, --collection <name>", "only jobs of this collection")
    .option("-n, --limit <n>", "how many", positive, 20)
    .action(async (o, cmd: Command) => {
      const { client, out } = context(cmd);
      const list = await unwrap(
        client.api.GET("/v1/jobs", {
          params: {
            query: {
              limit: o.limit,
              ...(o.status ? { status: o.status } : {}),
              ...(o.collection ? { collection: o.collection } : {}),
            },
          },
        }),
      );
      if (out.json) printJson(list);
      else jobTable(out, list.data);
    });

  prog
    .command("job")
    .description("Show one job, with the documents that failed")
    .argument("<id>", "job id")
    .action(async (id: string, _o, cmd: Command) => {
      const { client, out } = context(cmd);
      const job = await unwrap(client.api.GET("/v1/jobs/{id}", { params: { path: { id } } }));
      const failed =
        job.chunks.failed > 0
          ? (
              await unwrap(
                client.api.GET("/v1/documents", {
                  params: { query: { jobId: id, status: "failed", limit: 100 } },
                }),
              )
            ).data
          : [];
      if (out.json) return printJson({ ...job, failedDocuments: failed });
      fields(out, [
        ["id", job.id],
        ["status", status(out, job.status)],
        ["progress", progressOf(job)],
        [
          "chunks",
          `${job.chunks.done} done, ${job.chunks.failed} failed, ${job.chunks.cached} from cache, ${job.chunks.total} in all`,
        ],
        ["documents", `${job.documents} (${job.documentsUnchanged} unchanged)`],
        ["collection", job.collection],
        ["model", job.model],
        ["verification", job.verification],
        ["created", `${job.createdAt} (${ago(job.createdAt)})`],
        ["completed", job.completedAt ?? "-"],
      ]);
      for (const d of failed)
        process.stdout.write(
          `failed  ${d.id}: ${d.pending?.error ?? d.current?.error ?? "no reason recorded"}\n`,
        );
    });

  prog
    .command("cancel")
    .description("Cancel a job (chunks already stored stay searchable)")
    .argument("<id>", "job id")
    .action(async (id: string, _o, cmd: Command) => {
      const { client, out } = context(cmd);
      const job = await unwrap(
        client.api.POST("/v1/jobs/{id}/cancel", { params: { path: { id } } }),
      );
      if (out.json) printJson(job);
      else process.stdout.write(`${job.id} ${status(out, job.status)}\n`);
    });

  prog
    .command("models")
    .description("The models this deployment serves, with the workers connected for each")
    .action(async (_o, cmd: Command) => {
      const { client, out } = context(cmd);
      const list = await unwrap(client.api.GET("/v1/models"));
      if (out.json) return printJson(list);
      table(
        out,
        ["MODEL", "DIMENSIONS", "TOKENS", "CHUNK CHARS", "WORKERS", "MANIFEST"],
        list.data.map((m) => [
          m.id,
          m.dimension,
          m.maxTokens,
          m.defaultChunkChars,
          m.workers,
          m.manifest?.url ?? "built in",
        ]),
      );
    });

  prog
    .command("workers")
    .description("Connected workers (an operator key lists the whole fleet)")
    .option("--model <id>", "the model whose workers to list (default: use-lite)")
    .action(async (o, cmd: Command) => {
      const { client, out } = context(cmd);
      const list = await unwrap(
        client.api.GET("/v1/workers", { params: { query: o.model ? { model: o.model } : {} } }),
      );
      if (out.json) return printJson(list);
      const workers = list.shards.flatMap((s) => s.workers);
      table(
        out,
        ["WORKER", "MODELS", "DEVICE", "THREADS", "HELD", "CHUNKS", "RATE", "STATE", "CONNECTED"],
        workers.map((w) => [
          w.name ?? w.id.slice(0, 12),
          w.models.join(","),
          w.device ?? "-",
          w.threads ?? "-",
          `${w.held}/${w.limit}`,
          w.chunksDone,
          `${w.chunksPerSecond}/s`,
          w.draining
            ? "draining"
            : w.coolingDown
              ? "cooling down"
              : w.failures > 0
                ? `${w.failures} failures`
                : "ok",
          ago(w.connectedAt),
        ]),
      );
      const rate = workers.reduce((n, w) => n + w.chunksPerSecond, 0);
      process.stdout.write(
        `${workers.length} worker${workers.length === 1 ? "" : "s"}, ${rate.toFixed(1)} chunks/s\n`,
      );
    });

  prog
    .command("export")
    .description(
      "Write a job's chunks with their vectors as NDJSON (to stdout: p2pa export ID > file.ndjson)",
    )
    .argument("<id>", "job id")
    .action(async (id: string, _o, cmd: Command) => {
      const { client } = context(cmd);
      const body = await unwrap(
        client.api.GET("/v1/jobs/{id}/results", { params: { path: { id } }, parseAs: "stream" }),
      );
      if (!body) throw new UserError(`the server sent no results for job ${id}`);
      await body.pipeTo(Writable.toWeb(process.stdout));
    });

  return prog;
}

/** Runs the command line; resolves to the exit code. */
export async function main(argv: string[]): Promise<number> {
  const prog = program().exitOverride();
  try {
    await prog.parseAsync(argv, { from: "user" });
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (err) {
    const e = err as { code?: string; exitCode?: number };
    if (e.code?.startsWith("commander.")) return e.exitCode ?? 2;
    if (err instanceof UserError) {
      process.stderr.write(`p2pa: ${err.message}\n${err.hint ? `  ${err.hint}\n` : ""}`);
      return err.exitCode;
    }
    if (err instanceof ApiError) {
      process.stderr.write(
        `p2pa: ${err.message}${err.status ? ` (${err.code}, HTTP ${err.status})` : ""}\n`,
      );
      if (err.status === 401) process.stderr.write("  Check --key or P2PA_API_KEY.\n");
      if (err.code === "network")
        process.stderr.write("  Check --server or P2PA_SERVER, and that the server is running.\n");
      return err.status === 401 || err.status === 403 ? 4 : 3;
    }
    throw err;
  }
}
