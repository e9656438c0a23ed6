import { once } from "node:events";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLIENT_DIR, openapiTypes } from "../src/client/generate.js";
import { ApiError, createP2paClient, unwrap } from "../src/client/index.js";

describe("typed client", () => {
  it("has the types of the committed API description (run `npm run client` after an API change)", async () => {
    const doc = JSON.parse(readFileSync(path.join(CLIENT_DIR, "openapi.json"), "utf8"));
    const committed = readFileSync(path.join(CLIENT_DIR, "schema.ts"), "utf8");
    expect(await openapiTypes(doc)).toBe(committed);
  });

  describe("against an HTTP server", () => {
    const seen: { url: string; auth: string | undefined }[] = [];
    const server = createServer((req, res) => {
      seen.push({ url: req.url ?? "", auth: req.headers.authorization });
      if (req.url?.startsWith("/v1/jobs/missing")) {
        res.writeHead(404, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: { code: "not_found", message: "no job missing" } }));
      } else if (req.url?.startsWith("/v1/jobs/j1/events")) {
        res.writeHead(200, { "content-type": "text/event-stream" });
        res.write(
          'event: progress\nid: 0\ndata: {"status":"running","chunks":{"total":2,"done":1,"failed":0,"cached":0},"chunksPerSecond":3}\n\n',
        );
        res.end(
          'event: completed\nid: 2\ndata: {"id":"j1","status":"completed","chunks":{"total":2,"done":2,"failed":0,"cached":0},"completedAt":"2026-01-01T00:00:00Z"}\n\n',
        );
      } else {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ data: [], nextCursor: null }));
      }
    });
    let origin = "";
    beforeAll(async () => {
      server.listen(0, "127.0.0.1");
      await once(server, "listening");
      origin = `http://127.0.0.1:${(server.address() as { port: number }).port}/`;
    });
    afterAll(() => server.close());

    it("sends the key, builds typed paths and turns error answers into ApiError", async () => {
      const client = createP2paClient({ server: origin, key: "k1" });
      await unwrap(client.api.GET("/v1/jobs", { params: { query: { limit: 5 } } }));
      expect(seen.at(-1)).toEqual({ url: "/v1/jobs?limit=5", auth: "Bearer k1" });
      const err = await unwrap(
        client.api.GET("/v1/jobs/{id}", { params: { path: { id: "missing" } } }),
      ).catch((e) => e);
      expect(err).toBeInstanceOf(ApiError);
      expect(err).toMatchObject({ status: 404, code: "not_found", message: "no job missing" });
    });

    it("follows a job's events to its terminal event", async () => {
      const client = createP2paClient({ server: origin, key: "k1" });
      const progress: number[] = [];
      const end = await client.watch("j1", { onProgress: (p) => progress.push(p.chunks.done) })
        .done;
      expect(progress).toEqual([1]);
      expect(end).toMatchObject({ status: "completed", chunks: { done: 2 } });
      expect(seen.at(-1)?.auth).toBe("Bearer k1");
    });

    it("reports a server it cannot reach as a network error", async () => {
      const client = createP2paClient({ server: "http://127.0.0.1:1", key: "k1" });
      await expect(unwrap(client.api.GET("/v1/jobs"))).rejects.toMatchObject({ code: "network" });
    });
  });
});
