import { env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import app from "../src/index.js";
import { SettingsInvalid, settings } from "../src/lib/settings.js";
import { KEYS } from "./helpers.js";

/** The deployment's variables, read once with their defaults (lib/settings.ts). */
const read = (vars: Record<string, string>) => settings(vars as unknown as Env);

describe("deployment settings", () => {
  it("takes each variable's default when it is missing or empty", () => {
    const s = read({ LEASE_MS: "", VERIFICATION: "" });
    expect(s).toMatchObject({
      DISPATCH_SHARDS: 1,
      LEASE_MS: 60_000,
      LEASE_MAX_MS: 300_000,
      TASK_WORK_MS: 2_000,
      VERIFICATION: "auto",
      VERIFY_MIN_COSINE: 0.99999,
      VERIFY_SPOT_RATE: 0.05,
      VERIFY_CANARY_RATE: 0.1,
      MAX_BACKLOG_TASKS: 200_000,
      EMBEDDING_CACHE: "on",
      WEBHOOK_PROGRESS_SECONDS: 10,
    });
  });

  it("reads what is set, zero rates included, and never lets a lease's cap undercut it", () => {
    const s = read({
      DISPATCH_SHARDS: "4",
      LEASE_MS: "120000",
      LEASE_MAX_MS: "60000",
      VERIFY_SPOT_RATE: "0",
      VERIFICATION: "always",
      EMBEDDING_CACHE: "off",
    });
    expect(s).toMatchObject({
      DISPATCH_SHARDS: 4,
      LEASE_MS: 120_000,
      LEASE_MAX_MS: 120_000,
      VERIFY_SPOT_RATE: 0,
      VERIFICATION: "always",
      EMBEDDING_CACHE: "off",
    });
  });

  it("refuses values it cannot mean, naming each variable, instead of using a default", () => {
    const bad = () =>
      read({ LEASE_MS: "soon", DISPATCH_SHARDS: "0", VERIFY_SPOT_RATE: "2", VERIFICATION: "some" });
    expect(bad).toThrow(SettingsInvalid);
    const message = (() => {
      try {
        bad();
      } catch (err) {
        return (err as Error).message;
      }
      return "";
    })();
    for (const name of ["LEASE_MS", "DISPATCH_SHARDS", "VERIFY_SPOT_RATE", "VERIFICATION"])
      expect(message).toContain(name);
    expect(message).toContain('"soon"');
  });

  it("answers every API call of a deployment with a bad variable with 503, saying which", async () => {
    const res = await app.request(
      "/v1/jobs",
      { headers: { Authorization: `Bearer ${KEYS.api}` } },
      { ...env, MAX_BACKLOG_TASKS: "lots" },
    );
    expect(res.status).toBe(503);
    const body = (await res.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe("not_configured");
    expect(body.error.message).toContain('MAX_BACKLOG_TASKS="lots"');
  });
});
