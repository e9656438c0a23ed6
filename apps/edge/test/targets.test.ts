import { env } from "cloudflare:test";
import { afterEach, describe, expect, it } from "vitest";
import { checkTarget, classifyHost } from "../src/webhooks/targets.js";
import { call, errorOf } from "./helpers.js";

const vars = env as unknown as Record<string, string>;
const policyBefore = vars.WEBHOOK_ALLOW_PRIVATE;
afterEach(() => {
  vars.WEBHOOK_ALLOW_PRIVATE = policyBefore as string;
});

/** Other spellings of this host's loopback: allowed under `loopback`, refused under `none`. */
const LOOPBACK = [
  "http://[::ffff:127.0.0.1]:9/x",
  "http://[::ffff:7f00:1]/x",
  "http://[0:0:0:0:0:ffff:7f00:1]/x",
  "http://2130706433/x",
  "http://0x7f000001/x",
  "http://017700000001/x",
  "http://0177.0.0.1/x",
  "http://127.1/x",
  "http://0x7f.1/x",
  "http://127.0.0.1./x",
  "http://127.255.255.254/x",
  "http://localhost./x",
  "http://foo.localhost./x",
  "http://LOCALHOST/x",
  "http://%6c%6fcalhost/x",
  "http://[::1]/x",
];

/** Private, reserved or otherwise special-purpose: refused under `none` and `loopback`. */
const PRIVATE = [
  // IPv4-mapped, written the way the URL parser rewrites it
  "http://[::ffff:10.0.0.1]/x",
  "http://[::ffff:a00:1]/x",
  "http://[::ffff:169.254.169.254]/x",
  "http://[::ffff:c0a8:101]/x",
  // NAT64 (RFC 6052, 8215): the well-known prefix with a non-public v4, and local-use
  "http://[64:ff9b::7f00:1]/x",
  "http://[64:ff9b::10.0.0.1]/x",
  "http://[64:ff9b::a9fe:a9fe]/x",
  "http://[64:ff9b:1::808:808]/x",
  // 6to4 embedding loopback / private v4
  "http://[2002:7f00:1::1]/x",
  "http://[2002:a00:1::]/x",
  "http://[2002:c0a8:101::1]/x",
  // Teredo
  "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/x",
  "http://[2001::a00:1]/x",
  // IPv4-compatible, IPv4-translated (SIIT), unspecified
  "http://[::127.0.0.1]/x",
  "http://[::7f00:1]/x",
  "http://[::10.0.0.1]/x",
  "http://[::8.8.8.8]/x",
  "http://[::ffff:0:7f00:1]/x",
  "http://[::]/x",
  // site-local (deprecated), ULA, link-local, multicast, documentation, discard, benchmarking,
  // ORCHIDv2, SRv6 SIDs, AWS's IPv6 metadata endpoint
  "http://[fec0::1]/x",
  "http://[feff::1]/x",
  "http://[fc00::1]/x",
  "http://[fd00:ec2::254]/x",
  "http://[fe80::1]/x",
  "http://[ff02::1]/x",
  "http://[2001:db8::1]/x",
  "http://[3fff::1]/x",
  "http://[100::1]/x",
  "http://[2001:2::1]/x",
  "http://[2001:20::1]/x",
  "http://[5f00::1]/x",
  // reserved IPv4 (IANA special-purpose registry, plus multicast and 240/4)
  "http://0.0.0.0/x",
  "http://0/x",
  "http://0.1.2.3/x",
  "http://10.0.0.1/x",
  "http://012.0.0.1/x",
  "http://167772161/x",
  "http://100.64.0.1/x",
  "http://100.100.100.200/x",
  "http://100.127.255.254/x",
  "http://169.254.169.254/x",
  "http://0xa9fea9fe/x",
  "http://172.16.0.1/x",
  "http://172.31.255.254/x",
  "http://192.0.0.1/x",
  "http://192.0.0.192/x",
  "http://192.0.2.1/x",
  "http://192.88.99.1/x",
  "http://192.168.1.1/x",
  "http://198.18.0.1/x",
  "http://198.19.255.254/x",
  "http://198.51.100.1/x",
  "http://203.0.113.1/x",
  "http://224.0.0.1/x",
  "http://239.255.255.250/x",
  "http://240.0.0.1/x",
  "http://255.255.255.255/x",
  // names only a local resolver answers, cloud metadata names, trailing-dot forms
  "http://metadata/x",
  "http://metadata./x",
  "http://metadata.google.internal/x",
  "http://metadata.google.internal./x",
  "http://metadata.goog/x",
  "http://instance-data/x",
  "http://instance-data.ec2.internal/x",
  "http://metadata.azure.com/x",
  "http://metadata.tencentyun.com/x",
  "http://metadata.packet.net/x",
  "http://rancher-metadata/x",
  "http://kubernetes.default.svc/x",
  "http://host.docker.internal/x",
  "http://printer.local./x",
  "http://router.home.arpa/x",
  "http://nas.lan/x",
  "http://intranet/x",
  "http://db.internal/x",
  "http://app.test/x",
];

/** Ordinary global addresses and names: allowed over https under every policy. */
const PUBLIC = [
  "https://example.com/x",
  "https://hooks.example.com./x",
  "https://8.8.8.8/x",
  "https://134744072/x",
  "https://1.1.1.1/x",
  "https://172.32.0.1/x",
  "https://100.128.0.1/x",
  "https://192.0.3.1/x",
  "https://[2606:4700::1111]/x",
  "https://[::ffff:8.8.8.8]/x",
  "https://[64:ff9b::8.8.8.8]/x",
  "https://[2002:808:808::1]/x",
  "https://metadata.example.com/x",
  "https://localhost.example.com/x",
];

describe("webhook target spellings", () => {
  it.each(LOOPBACK)("%s is loopback: allowed under `loopback` only", (url) => {
    expect(classifyHost(new URL(url).hostname)).toBe("loopback");
    expect(checkTarget(url, "none")).toMatch(/loopback/);
    expect(checkTarget(url, "loopback")).toBeNull();
    expect(checkTarget(url, "all")).toBeNull();
  });

  it.each(PRIVATE)("%s is private: refused unless the policy is `all`", (url) => {
    expect(classifyHost(new URL(url).hostname)).toBe("private");
    expect(checkTarget(url, "none")).toMatch(/private/);
    expect(checkTarget(url, "loopback")).toMatch(/private/);
    expect(checkTarget(url, "all")).toBeNull();
  });

  it.each(PUBLIC)("%s is public", (url) => {
    expect(classifyHost(new URL(url).hostname)).toBe("public");
    expect(checkTarget(url, "none")).toBeNull();
    expect(checkTarget(url.replace("https:", "http:"), "none")).toMatch(/https/);
  });

  it("classifies raw host strings the way the URL parser reads them, and fails closed", () => {
    expect(classifyHost("::ffff:127.0.0.1")).toBe("loopback");
    expect(classifyHost("[::ffff:127.0.0.1]")).toBe("loopback");
    expect(classifyHost("2130706433")).toBe("loopback");
    expect(classifyHost("evil.example.com@127.0.0.1")).toBe("private");
    expect(classifyHost("example.com:443")).toBe("private");
    expect(classifyHost("exa mple.com")).toBe("private");
    expect(classifyHost("")).toBe("private");
  });
});

describe("webhook targets through the API", () => {
  it("refuses an IPv4-mapped loopback URL under the default policy", async () => {
    vars.WEBHOOK_ALLOW_PRIVATE = "none";
    for (const url of ["http://[::ffff:127.0.0.1]:9/x", "https://[::ffff:7f00:1]:9/x"]) {
      expect(
        await errorOf(await call("/v1/webhooks", { method: "POST", json: { url } })),
        url,
      ).toMatchObject({ status: 422, code: "unprocessable" });
    }
    const job = await call("/v1/jobs", {
      method: "POST",
      json: { documents: [{ text: "x" }], webhook: { url: "http://[::ffff:127.0.0.1]:9/x" } },
    });
    expect(job.status).toBe(422);
  });

  it("refuses mapped private and metadata targets even where loopback is allowed", async () => {
    vars.WEBHOOK_ALLOW_PRIVATE = "loopback";
    for (const url of [
      "http://[::ffff:a9fe:a9fe]/latest/meta-data",
      "http://metadata.google.internal./computeMetadata/v1/",
      "http://[64:ff9b::a00:1]/x",
    ]) {
      const res = await call("/v1/webhooks", { method: "POST", json: { url } });
      expect(res.status, url).toBe(422);
    }
    const ok = await call("/v1/webhooks", {
      method: "POST",
      json: { url: "http://[::ffff:127.0.0.1]:9/x" },
    });
    expect(ok.status).toBe(201);
    const { id } = (await ok.json()) as { id: string };
    expect((await call(`/v1/webhooks/${id}`, { method: "DELETE" })).status).toBe(204);
  });
});
