import { describe, expect, it } from "vitest";
import { HELP, isLoopbackHost, parseConfig, TOKEN_FLAG_WARNING } from "../src/config.js";
import { UserError } from "../src/errors.js";

const run = (argv: string[], env: NodeJS.ProcessEnv = {}) => {
  const a = parseConfig(argv, env);
  if (a.kind !== "run") throw new Error(`expected run, got ${a.kind}`);
  return a.config;
};

const warningsOf = (argv: string[], env: NodeJS.ProcessEnv = {}) => {
  const a = parseConfig(argv, env);
  if (a.kind !== "run") throw new Error(`expected run, got ${a.kind}`);
  return a.warnings;
};

const failure = (argv: string[], env: NodeJS.ProcessEnv = {}) => {
  try {
    parseConfig(argv, env);
  } catch (err) {
    expect(err).toBeInstanceOf(UserError);
    return err as UserError;
  }
  throw new Error("expected a UserError");
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
      models: ["use-lite"],
      // The model yields the cores to other programs unless told otherwise; sessions are the
      // model layer's choice unless given.
      priority: "low",
    });
    expect(c.sessions).toBeUndefined();
    expect(
      run(["--server", "https://x", "--token", "t", "--sessions", "2", "--priority", "normal"]),
    ).toMatchObject({ sessions: 2, priority: "normal" });
    expect(run(["--server", "https://x", "--token", "t"], { P2PA_SESSIONS: "3" }).sessions).toBe(3);
    expect(run([], { P2PA_SERVER: "https://x.example", P2PA_TOKEN: "tok" })).toMatchObject({
      server: "https://x.example",
      token: "tok",
    });
  });

  it("explains what is wrong with bad flags", () => {
    expect(fails(["--token", "t"])).toMatch(/--server is required/);
    expect(fails(["--server", "https://x", "--token", "t", "--threads", "0"])).toMatch(
      /--threads must be at least 1/,
    );
    expect(fails(["--server", "https://x", "--token", "t", "--threads", "two"])).toMatch(
      /--threads must be a number/,
    );
    expect(fails(["--server", "https://x", "--token", "t", "--batch-size", "1.5"])).toMatch(
      /whole number/,
    );
    expect(fails(["--server", "ftp://x", "--token", "t"])).toMatch(/must start with http/);
    expect(fails(["--server", "not a url", "--token", "t"])).toMatch(/must be a URL/);
    expect(fails(["--bogus"])).toMatch(/bogus/);
    expect(fails(["--server", "https://x", "--token", "t", "--sessions", "0"])).toMatch(
      /--sessions must be at least 1/,
    );
    expect(fails(["--server", "https://x", "--token", "t", "--priority", "idle"])).toMatch(
      /--priority must be low or normal/,
    );
    expect(fails(["--server", "https://x", "--token", "t", "--device", "tpu"])).toMatch(
      /--device must be auto, cpu or cuda/,
    );
    expect(fails(["--server", "https://x"])).toMatch(/--token is required/);
    expect(fails(["--server", "https://x", "--token", "t", "--status-port", "70000"])).toMatch(
      /--status-port must be at most 65535/,
    );
  });

  it("takes several models: --model again, comma-separated, or P2PA_MODEL, each once", () => {
    const base = ["--server", "https://x", "--token", "t"];
    expect(run(base).models).toEqual(["use-lite"]);
    expect(run([...base, "--model", "use-lite", "--model", "./models/minilm"]).models).toEqual([
      "use-lite",
      "./models/minilm",
    ]);
    expect(
      run([...base, "--model", "use-lite, minilm", "--model", "https://m.example/p2pa-model.json"])
        .models,
    ).toEqual(["use-lite", "minilm", "https://m.example/p2pa-model.json"]);
    expect(run(base, { P2PA_MODEL: "minilm,use-lite" }).models).toEqual(["minilm", "use-lite"]);
    // Flags win over the environment, as for every option; a model named twice is served once.
    expect(run([...base, "--model", "minilm"], { P2PA_MODEL: "use-lite" }).models).toEqual([
      "minilm",
    ]);
    expect(run([...base, "--model", "minilm,minilm", "--model", "minilm"]).models).toEqual([
      "minilm",
    ]);
    const empty = failure([...base, "--model", "use-lite,,minilm"]);
    expect(empty.message).toBe('--model "use-lite,,minilm" has an empty model name');
    expect(empty.hint).toMatch(/separated by commas/);
    expect(fails(base, { P2PA_MODEL: "" })).toMatch(/has an empty model name/);
    expect(HELP).toMatch(
      /Repeat --model, or separate with\s+commas \(P2PA_MODEL=use-lite,minilm\)/,
    );
  });

  it("serves status only when asked for a port", () => {
    const base = ["--server", "https://x", "--token", "t"];
    expect(run(base).statusPort).toBeUndefined();
    expect(run([...base, "--status-port", "9100"]).statusPort).toBe(9100);
    expect(run(base, { P2PA_STATUS_PORT: "9101" }).statusPort).toBe(9101);
  });

  it("waits 60 s for a server it cannot reach unless told otherwise, 0 asking once", () => {
    const base = ["--server", "https://x", "--token", "t"];
    expect(run(base).waitForServer).toBe(60);
    expect(run([...base, "--wait-for-server", "0"]).waitForServer).toBe(0);
    expect(run(base, { P2PA_WAIT_FOR_SERVER: "600" }).waitForServer).toBe(600);
    expect(fails([...base, "--wait-for-server=-1"])).toBe("--wait-for-server must be 0 or more");
    expect(fails([...base, "--wait-for-server", "soon"])).toMatch(/must be a number of seconds/);
    expect(fails([...base, "--wait-for-server", "1.5"])).toMatch(/whole number of seconds/);
  });

  it("warns that a --token flag shows in the process list, and recommends P2PA_TOKEN", () => {
    const local = ["--server", "http://127.0.0.1:8787"];
    expect(warningsOf([...local, "--token", "t"])).toEqual([TOKEN_FLAG_WARNING]);
    expect(TOKEN_FLAG_WARNING).toMatch(/other users of this machine.*process list.*P2PA_TOKEN/);
    expect(warningsOf(local, { P2PA_TOKEN: "t" })).toEqual([]);
    expect(warningsOf([...local, "--token", "t"], { P2PA_TOKEN: "u" })).toEqual([
      TOKEN_FLAG_WARNING,
    ]);
    expect(HELP).toMatch(/^Usage: P2PA_TOKEN=TOKEN p2pa-worker --server URL \[options\]$/m);
    expect(HELP.indexOf("P2PA_TOKEN")).toBeLessThan(HELP.indexOf("--token"));
  });

  it("refuses an unencrypted server that is not on this machine unless told --insecure", () => {
    const env = { P2PA_TOKEN: "t" };
    for (const server of [
      "http://p2pa.example.com",
      "ws://10.0.0.5:8787",
      "http://[2001:db8::1]",
    ]) {
      const e = failure(["--server", server], env);
      expect(e.message).toMatch(/is not encrypted: the worker token and every text would travel/);
      expect(e.hint).toMatch(/Use https:\/\/ or wss:\/\/, or pass --insecure \(P2PA_INSECURE=1\)/);
      expect(e.exitCode).toBe(2);
      expect(run(["--server", server, "--insecure"], env).server).toBe(server);
      expect(run(["--server", server], { ...env, P2PA_INSECURE: "1" }).server).toBe(server);
      expect(warningsOf(["--server", server, "--insecure"], env)).toEqual([
        expect.stringMatching(/unencrypted to /),
      ]);
      expect(() => parseConfig(["--server", server], { ...env, P2PA_INSECURE: "0" })).toThrow(
        /not encrypted/,
      );
    }
    expect(failure(["--server", "http://x"], { ...env, P2PA_INSECURE: "maybe" }).message).toMatch(
      /P2PA_INSECURE must be 1 or 0/,
    );
    for (const server of [
      "https://p2pa.example.com",
      "wss://p2pa.example.com",
      "http://127.0.0.1:8787",
      "ws://127.3.2.1",
      "http://localhost:8787",
      "http://[::1]:8787",
    ]) {
      expect(run(["--server", server], env).server).toBe(server);
      expect(warningsOf(["--server", server], env)).toEqual([]);
    }
    expect(HELP).toMatch(/^ {2}--insecure {10}allow http:\/\/ or ws:\/\/ to another machine/m);
  });

  it("counts only loopback addresses as this machine", () => {
    for (const h of ["localhost", "LOCALHOST", "localhost.", "127.0.0.1", "127.255.0.9", "[::1]"])
      expect(isLoopbackHost(h)).toBe(true);
    for (const h of ["localhost.example.com", "127.0.0.1.nip.io", "128.0.0.1", "[::2]", "10.0.0.1"])
      expect(isLoopbackHost(h)).toBe(false);
  });

  it("takes doctor as a command, with the same settings and rules, and --json only there", () => {
    const env = { P2PA_SERVER: "http://127.0.0.1:8787", P2PA_TOKEN: "t" };
    const a = parseConfig(["doctor", "--device", "cuda", "--json"], env);
    expect(a).toMatchObject({ kind: "doctor", json: true, warnings: [] });
    if (a.kind !== "doctor") throw new Error("expected doctor");
    expect(a.config).toMatchObject({ server: "http://127.0.0.1:8787", token: "t", device: "cuda" });
    expect(parseConfig(["doctor"], env)).toMatchObject({ kind: "doctor", json: false });
    // The same address rules as a normal start: no plain text to another machine.
    expect(fails(["doctor", "--server", "http://p2pa.example.com", "--token", "t"])).toMatch(
      /not encrypted/,
    );
    expect(fails(["doctor", "--token", "t"])).toMatch(/--server is required/);
    expect(fails(["--json"], env)).toMatch(/--json is for p2pa-worker doctor/);
    expect(fails(["docter"], env)).toMatch(/unknown command "docter"/);
    expect(fails(["doctor", "now"], env)).toMatch(/unexpected argument "now"/);
    expect(HELP).toMatch(/^ {7}P2PA_TOKEN=TOKEN p2pa-worker doctor --server URL/m);
    expect(HELP).toMatch(/^ {2}--json {14}print one JSON object/m);
  });

  it("answers --help and --version without needing a server", () => {
    expect(parseConfig(["--help"], {}).kind).toBe("help");
    expect(parseConfig(["-v"], {}).kind).toBe("version");
  });
});
