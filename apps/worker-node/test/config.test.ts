import { describe, expect, it } from "vitest";
import { parseConfig } from "../src/config.js";
import { UserError } from "../src/errors.js";

const run = (argv: string[], env: NodeJS.ProcessEnv = {}) => {
  const a = parseConfig(argv, env);
  if (a.kind !== "run") throw new Error(`expected run, got ${a.kind}`);
  return a.config;
};

const fails = (argv: string[], env: NodeJS.ProcessEnv = {}) => {
  try {
    parseConfig(argv, env);
  } catch (err) {
    expect(err).toBeInstanceOf(UserError);
    return (err as UserError).message;
  }
  throw new Error("expected a UserError");
};

describe("worker configuration", () => {
  it("reads flags, falling back to the environment, with defaults", () => {
    const c = run(["--server", "http://127.0.0.1:8787", "--token", "t", "--threads", "3"], {
      P2PA_BATCH_SIZE: "8",
      P2PA_TOKEN: "ignored",
    });
    expect(c).toMatchObject({
      server: "http://127.0.0.1:8787",
      token: "t",
      threads: 3,
      batchSize: 8,
      model: "use-lite",
    });
    expect(run([], { P2PA_SERVER: "https://x.example", P2PA_TOKEN: "tok" })).toMatchObject({
      server: "https://x.example",
      token: "tok",
    });
  });

  it("explains what is wrong with bad flags", () => {
    expect(fails(["--token", "t"])).toMatch(/--server is required/);
    expect(fails(["--server", "http://x", "--token", "t", "--threads", "0"])).toMatch(
      /--threads must be at least 1/,
    );
    expect(fails(["--server", "http://x", "--token", "t", "--threads", "two"])).toMatch(
      /--threads must be a number/,
    );
    expect(fails(["--server", "http://x", "--token", "t", "--batch-size", "1.5"])).toMatch(
      /whole number/,
    );
    expect(fails(["--server", "ftp://x", "--token", "t"])).toMatch(/must start with http/);
    expect(fails(["--server", "not a url", "--token", "t"])).toMatch(/must be a URL/);
    expect(fails(["--bogus"])).toMatch(/bogus/);
    expect(fails(["--server", "http://x", "--token", "t", "--device", "tpu"])).toMatch(
      /--device must be auto, cpu or cuda/,
    );
    expect(fails(["--server", "http://x"])).toMatch(/--token is required/);
    expect(fails(["--server", "http://x", "--token", "t", "--status-port", "70000"])).toMatch(
      /--status-port must be at most 65535/,
    );
  });

  it("serves status only when asked for a port", () => {
    const base = ["--server", "http://x", "--token", "t"];
    expect(run(base).statusPort).toBeUndefined();
    expect(run([...base, "--status-port", "9100"]).statusPort).toBe(9100);
    expect(run(base, { P2PA_STATUS_PORT: "9101" }).statusPort).toBe(9101);
  });

  it("answers --help and --version without needing a server", () => {
    expect(parseConfig(["--help"], {}).kind).toBe("help");
    expect(parseConfig(["-v"], {}).kind).toBe("version");
  });
});
