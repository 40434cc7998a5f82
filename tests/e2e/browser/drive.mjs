// Opens a page in Debian's headless Chromium (playwright-core, no browser download) and prints
// one JSON line: what the page left in `window.x402Result`, its console messages, and the
// requests it made with their answers (so a test can say why a payment did not happen).
//
//   node tests/e2e/browser/drive.mjs PAGE_URL USER_DATA_DIR [TIMEOUT_MS]
import { chromium } from "playwright-core";

const [pageUrl, userDataDir, timeoutMs = "30000"] = process.argv.slice(2);
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const log = { console: [], requests: [] };
let result = null;
try {
  const page = await context.newPage();
  page.on("console", (m) => log.console.push(`${m.type()}: ${m.text()}`));
  page.on("requestfinished", async (r) => {
    const response = await r.response();
    log.requests.push(`${r.method()} ${r.url()} -> ${response ? response.status() : "?"}`);
  });
  page.on("requestfailed", (r) =>
    log.requests.push(`${r.method()} ${r.url()} failed: ${r.failure()?.errorText}`),
  );
  await page.goto(pageUrl);
  await page.waitForFunction(() => window.x402Result !== undefined, null, {
    timeout: Number(timeoutMs),
  });
  result = await page.evaluate(() => window.x402Result);
} catch (error) {
  result = { ok: false, error: `driver: ${error.message.split("\n")[0]}` };
} finally {
  await context.close();
}
console.log(JSON.stringify({ result, ...log }));
