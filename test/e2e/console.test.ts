import { existsSync, mkdirSync } from "node:fs";
import { createServer, type Server } from "node:http";
import path from "node:path";
import { type Browser, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, beforeEach, describe, expect, it, onTestFailed } from "vitest";
import { generatedPassages } from "../../scripts/lib/corpus.js";
import { ROOT } from "../../scripts/lib/local-edge.js";
import { DEV_CREDENTIALS, freePort, type System, startSystem, waitForJob } from "./harness.js";

/*
 * The web console in a real headless Chromium against the real system (wrangler dev serving
 * the console's assets and the API, one p2pa-worker): a user signs in, submits documents,
 * watches them finish, searches them, looks at the workers and sets up a webhook. Every check
 * reads what the page shows. Screenshots go to test-results/console/; with P2PA_SCREENSHOTS=1
 * the README's picture is written to docs/console.png.
 */

const CHROMIUM = process.env.P2PA_CHROMIUM ?? "/usr/bin/chromium";
const HAVE_CHROMIUM = existsSync(CHROMIUM);
const SHOTS = path.join(ROOT, "test-results", "console");
/** Where the console keeps the key (the tab's session storage). */
const KEY_ITEM = "p2pa.console.key";
/** A job page waits this long for the worker to finish (two shared cores). */
const JOB_WAIT_MS = 120_000;

const NEEDLE =
  "The lighthouse keeper climbed the spiral stairs every evening to polish the great lamp before the storm rolled in.";
const NEEDLE_QUERY = "a lighthouse keeper polishing the lamp before a storm";

let sys: System;
let browser: Browser;
let page: Page;
const pageErrors: string[] = [];

async function shot(name: string): Promise<void> {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`) });
}

/** The text of the element matching `selector`, once it has some. */
const text = (selector: string) => page.locator(selector).first().innerText();

describe.skipIf(!HAVE_CHROMIUM)(
  `the web console in Chromium${HAVE_CHROMIUM ? "" : ` (skipped: no Chromium at ${CHROMIUM}; apt-get install chromium, or set P2PA_CHROMIUM)`}`,
  () => {
    beforeAll(async () => {
      mkdirSync(SHOTS, { recursive: true });
      sys = await startSystem();
      await sys.addWorker(["--threads", "1", "--name", "console-test-donor"]);
      browser = await chromium.launch({
        executablePath: CHROMIUM,
        args: [
          "--headless",
          "--no-sandbox",
          "--disable-gpu",
          "--disable-quic",
          "--no-first-run",
          "--disable-background-networking",
          "--disable-component-update",
          "--disable-sync",
        ],
      });
      const context = await browser.newContext({
        viewport: { width: 1280, height: 800 },
        colorScheme: "dark",
      });
      page = await context.newPage();
      page.setDefaultTimeout(30_000);
      page.on("pageerror", (err) => pageErrors.push(String(err)));
      // Deleting a job or an endpoint asks first; the user says yes.
      page.on("dialog", (d) => void d.accept());
    }, 180_000);

    // Browser checks read innerText: the text as rendered, which is what a person reads.
    // A failing step leaves a picture of what the page showed at that moment.
    beforeEach((ctx) => {
      onTestFailed(async () => {
        const name = ctx.task.name.replace(/[^a-z0-9]+/gi, "-").slice(0, 60);
        await page?.screenshot({ path: path.join(SHOTS, `failed-${name}.png`) }).catch(() => {});
      });
    });

    afterAll(async () => {
      await browser?.close();
      await sys?.stop();
    });

    it("refuses a wrong key with a clear message, then signs in with the right one", async () => {
      await page.goto(sys.edge.url);
      await expect(text("h1, .signin-card")).resolves.toContain("API key");
      // Nothing but the sign-in form is shown without a key.
      expect(await page.locator("nav").count()).toBe(0);

      await page.fill('input[name="key"]', "p2pa_not_a_key");
      await page.click('button[type="submit"]');
      const error = await text('[role="alert"]');
      expect(error).toContain("401");
      expect(error).toContain("This key was not accepted");
      await shot("01-sign-in-refused");

      await page.fill('input[name="key"]', DEV_CREDENTIALS.apiKey);
      await page.click('button[type="submit"]');
      await page.waitForSelector("nav");
      await expect(text("h1")).resolves.toBe("Jobs");
      // The list loads after the page: wait for what it says, not for the first text.
      await page.locator(".content .empty", { hasText: "No jobs yet" }).waitFor();
      // The key is kept for this tab only.
      const stored = await page.evaluate(
        `[sessionStorage.getItem("${KEY_ITEM}"), localStorage.length]`,
      );
      expect(stored).toEqual([DEV_CREDENTIALS.apiKey, 0]);
      // A reload keeps the session (same tab).
      await page.reload();
      await page.waitForSelector("nav");
      await expect(text("h1")).resolves.toBe("Jobs");
    });

    let jobId = "";

    it("submits documents from the page and follows the job to 100% and completed", async () => {
      const docs = [NEEDLE, ...generatedPassages(400, 200, 800, 31)];
      await page.click("text=New job");
      await page.fill('textarea[name="documents"]', docs.join("\n\n"));
      await expect(text(".form .row .muted")).resolves.toBe(`${docs.length} documents`);
      await page.fill('input[name="collection"]', "console");
      await page.fill('input[name="metadata"]', '{"source": "console-test"}');
      await page.click("text=Submit job");

      const submitted = await text('[data-testid="submitted"]');
      expect(submitted).toContain("accepted");
      expect(submitted).toContain(`ingest: ${docs.length} accepted, 0 unchanged, 0 rejected`);
      jobId = (await page.locator('[data-testid="submitted"] a.mono').first().innerText()).trim();
      expect(jobId).toMatch(/^job_/);

      // The list shows it with a live progress bar.
      // The job's own row (a job page's document rows hold the id too, as a prefix).
      const row = page.locator("tbody tr", { has: page.locator(`a:text-is("${jobId}")`) });
      await row.waitFor();
      await shot("02-jobs-running");

      // The job page follows it to the end.
      await page.click('[data-testid="submitted"] a.btn');
      await page.waitForSelector(`h1:has-text("${jobId}")`);
      await page
        .locator(".page-head .badge", { hasText: "completed" })
        .waitFor({ timeout: JOB_WAIT_MS });
      await expect(text(".progress-label")).resolves.toBe("100%");
      const stats = await text(".stats");
      expect(stats).toMatch(/Failed\s+0/);
      const total = Number(/Total chunks\s+([\d,]+)/.exec(stats)?.[1]?.replaceAll(",", ""));
      expect(total).toBeGreaterThanOrEqual(docs.length);
      expect(stats).toContain(`Done\n${total.toLocaleString("en-US")}`);
      // The throughput plot has points from the live progress it saw.
      await page.locator(".chart canvas").waitFor();
      // The job's documents are listed with their state.
      await page.locator(".card", { hasText: "Documents" }).locator("tbody tr").first().waitFor();
      await shot("03-job-completed");
      if (process.env.P2PA_SCREENSHOTS === "1") {
        mkdirSync(path.join(ROOT, "docs"), { recursive: true });
        await page.screenshot({ path: path.join(ROOT, "docs", "console.png") });
      }

      // Back on the list, the row says completed at 100%.
      await page.click('nav a:has-text("Jobs")');
      await page.waitForSelector('h1:text-is("Jobs")');
      await expect(row.locator(".badge").textContent()).resolves.toBe("completed");
      await expect(row.locator(".progress-label").innerText()).resolves.toBe("100%");
      await shot("04-jobs");
    }, 180_000);

    it("shows an API error as its code and message, never a blank page", async () => {
      await page.goto(`${sys.edge.url}/#/jobs/job_doesnotexist`);
      const error = await text('[role="alert"]');
      expect(error).toContain("404 not_found");
      await page.goto(`${sys.edge.url}/#/jobs`);
    });

    it("finds the submitted text as the top hit, and opens its document", async () => {
      await page.click('nav a:has-text("Search")');
      await page.fill('input[name="query"]', NEEDLE_QUERY);
      await page.click('button:has-text("Search")');
      const top = page.locator('[data-testid="results"] .hit').first();
      await expect(top.locator(".hit-text").innerText()).resolves.toBe(NEEDLE);
      await expect(top.innerText()).resolves.toContain("source: console-test");
      await shot("05-search");

      // The same search, filtered to metadata no document has, finds nothing.
      await page.click("text=+ Filter");
      await page.selectOption(".row.filter select >> nth=0", "source");
      await page.fill('.row.filter input[placeholder="value"]', "elsewhere");
      await page.click('button:has-text("Search")');
      await page.locator(".empty", { hasText: "Nothing found" }).waitFor();

      await page.fill('.row.filter input[placeholder="value"]', "console-test");
      await page.click('button:has-text("Search")');
      await expect(top.locator(".hit-text").innerText()).resolves.toBe(NEEDLE);
      await top.locator(".hit-head a.mono").first().click();
      await page.locator("h2", { hasText: "Versions" }).waitFor();
      const doc = await text(".content");
      expect(doc).toContain(jobId);
      expect(doc).toContain('"console-test"');
      await shot("06-document");
    });

    it("shows the connected worker and the fleet's throughput", async () => {
      await page.click('nav a:has-text("Workers")');
      const row = page.locator("tbody tr", { hasText: "console-test-donor" });
      await row.waitFor();
      const cells = await row.innerText();
      expect(cells).toContain("cpu");
      expect(cells).toContain("use-lite");
      expect(cells).toMatch(/0 \/ 5/);
      const stats = await text(".stats");
      expect(stats).toMatch(/Workers\s+1/);
      const done = Number(/Chunks done\s+([\d,]+)/.exec(stats)?.[1]?.replaceAll(",", ""));
      expect(done).toBeGreaterThan(0);
      // Two polls make a line.
      await page.locator(".chart canvas").waitFor({ timeout: 20_000 });
      await shot("07-workers");

      // An operator's key sees the whole fleet and the index.
      await page.click("text=Sign out");
      await page.fill('input[name="key"]', DEV_CREDENTIALS.adminKey);
      await page.click('button[type="submit"]');
      await page.click('nav a:has-text("Workers")');
      await page.locator(".stat", { hasText: "Vectors stored" }).waitFor();
      await expect(text("h1")).resolves.toContain("whole fleet");
      await page.locator("tbody tr", { hasText: "console-test-donor" }).waitFor();
      await shot("08-workers-operator");
    });

    it("creates a webhook endpoint, shows each delivery attempt, redelivers and deletes", async () => {
      const got: string[] = [];
      const receiver: Server = createServer((req, res) => {
        req.resume();
        req.on("end", () => {
          got.push(req.headers["webhook-id"] as string);
          res.writeHead(204).end();
        });
      });
      const port = await freePort();
      await new Promise<void>((r) => receiver.listen(port, "127.0.0.1", r));
      try {
        await page.click('nav a:has-text("Webhooks")');
        await page.locator(".empty", { hasText: "No webhook endpoints" }).waitFor();
        await page.fill('input[name="url"]', `http://127.0.0.1:${port}/hook`);
        await page.click('button:has-text("Create endpoint")');
        await expect(text('[data-testid="secret"]')).resolves.toMatch(/whsec_/);
        const row = page.locator("tbody tr", { hasText: `127.0.0.1:${port}` });
        await row.waitFor();
        await shot("09-webhooks");

        // A job from the page: its completion is delivered to the endpoint.
        await page.click('nav a:has-text("Jobs")');
        await page.click("text=New job");
        await page.fill('textarea[name="documents"]', "A short note for the webhook.");
        await page.click("text=Submit job");
        const id = (
          await page.locator('[data-testid="submitted"] a.mono').first().innerText()
        ).trim();
        await waitForJob(sys, id, JOB_WAIT_MS);

        await page.click('nav a:has-text("Webhooks")');
        await row.locator("text=Deliveries").click();
        const delivery = page.locator(".delivery", { hasText: id });
        await delivery.locator(".badge", { hasText: "delivered" }).waitFor({ timeout: 30_000 });
        await expect(delivery.innerText()).resolves.toContain("job.completed");
        await expect(delivery.locator("tbody tr").first().innerText()).resolves.toMatch(/204/);
        await delivery.locator("text=Redeliver").click();
        await delivery.locator("text=2 attempts").waitFor({ timeout: 30_000 });
        await expect(delivery.locator("tbody tr").count()).resolves.toBe(2);
        expect(got.length).toBe(2);
        expect(new Set(got).size).toBe(1);
        await shot("10-webhook-deliveries");

        // Delete the job from its page (after a confirm), then the endpoint.
        await delivery.locator(`a:has-text("${id}")`).click();
        await page.locator(".page-head .badge", { hasText: "completed" }).waitFor();
        await page.click('button:has-text("Delete")');
        await page.waitForSelector('h1:text-is("Jobs")');
        await page.locator("tbody tr", { hasText: jobId }).waitFor();
        expect(await page.locator("tbody tr", { hasText: id }).count()).toBe(0);

        await page.click('nav a:has-text("Webhooks")');
        await row.locator('button:has-text("Delete")').click();
        await page.locator(".empty", { hasText: "No webhook endpoints" }).waitFor();
      } finally {
        receiver.close();
      }
    }, 180_000);

    it("signs out, and shows nothing until a key is given again", async () => {
      await page.click("text=Sign out");
      await page.waitForSelector('input[name="key"]');
      expect(await page.evaluate(`sessionStorage.getItem("${KEY_ITEM}")`)).toBeNull();
      await page.goto(`${sys.edge.url}/#/workers`);
      await page.waitForSelector('input[name="key"]');
      expect(await page.locator("nav").count()).toBe(0);
      expect(pageErrors).toEqual([]);
    });
  },
);

// CI has Chromium (.ci/run installs it): there, a missing browser is a failure, not a skip.
describe.runIf(!HAVE_CHROMIUM && process.env.CI === "true")("the web console in CI", () => {
  it("has Chromium", () => {
    throw new Error(
      `no Chromium at ${CHROMIUM}: install it (apt-get install chromium) or set P2PA_CHROMIUM`,
    );
  });
});
