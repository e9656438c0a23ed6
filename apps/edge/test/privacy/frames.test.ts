import { PII_KINDS } from "@p2pa/shared";
import { describe, expect, it } from "vitest";
import { call, TestWorker } from "../helpers.js";

// Personal data of every kind, as a submitter would send it.
const PERSONAL = [
  "maria.lopez@example.org",
  "+44 20 7946 0958",
  "(555) 123-4567",
  "4111 1111 1111 1111",
  "GB82 WEST 1234 5698 7654 32",
  "192.168.10.44",
  "2001:db8::8a2e:370:7334",
  "123-45-6789",
  "https://files.example.com/report.pdf?token=9f8e7d6c5b4a",
];
const documents = [
  {
    text: `Ticket from ${PERSONAL[0]}: please call me on ${PERSONAL[1]} or ${PERSONAL[2]} about the refund.`,
  },
  { text: `Card ${PERSONAL[3]} was charged twice; pay back to ${PERSONAL[4]}.` },
  { text: `Logins came from ${PERSONAL[5]} and ${PERSONAL[6]}; SSN on file ${PERSONAL[7]}.` },
  { text: `The invoice is at ${PERSONAL[8]} and order ORD-2024-000123 ships on 2024-03-15.` },
];

async function framesFor(privacy?: unknown) {
  const w = await TestWorker.connect();
  const res = await call("/v1/jobs", {
    method: "POST",
    json: { documents, verification: "off", ...(privacy ? { privacy } : {}) },
  });
  expect(res.status).toBe(202);
  const job = (await res.json()) as { id: string; privacy: { mask: string[] } };
  w.ready(4);
  const task = await w.next("task");
  w.send(w.resultFor(task));
  await w.next("ack");
  const seen = JSON.stringify([task, ...w.frames]);
  w.ws.close();
  return { job, seen };
}

describe("personal data masked before it leaves the edge", () => {
  it("sends a volunteer no personal data, only typed placeholders, and keeps the original for the owner", async () => {
    const { job, seen } = await framesFor({ mask: "all" });
    expect(job.privacy.mask).toEqual([...PII_KINDS]);
    for (const item of PERSONAL) expect(seen).not.toContain(item);
    for (const p of ["<EMAIL>", "<PHONE>", "<CARD>", "<IBAN>", "<IP>", "<SSN>", "<URL>"])
      expect(seen).toContain(p);
    // Ordinary numbers go as they are.
    expect(seen).toContain("ORD-2024-000123");
    expect(seen).toContain("2024-03-15");
    const chunks = (await (await call(`/v1/jobs/${job.id}/chunks`)).json()) as {
      data: { text: string }[];
    };
    const owner = chunks.data.map((c) => c.text).join("\n");
    for (const item of PERSONAL) expect(owner).toContain(item);
  });

  it("masks only the kinds a job asks for, and nothing by default", async () => {
    const some = await framesFor({ mask: ["email", "card"] });
    expect(some.seen).not.toContain(PERSONAL[0]);
    expect(some.seen).not.toContain(PERSONAL[3]);
    expect(some.seen).toContain(PERSONAL[1]);
    const none = await framesFor();
    expect(none.job.privacy.mask).toEqual([]);
    expect(none.seen).toContain(PERSONAL[0]);
  });

  it("refuses an unknown kind with a clear 422", async () => {
    const res = await call("/v1/jobs", {
      method: "POST",
      json: { documents, privacy: { mask: ["email", "passport"] } },
    });
    expect(res.status).toBe(422);
  });
});
