// Opens the live page in Debian's Chromium (playwright-core) for a while and prints how long
// it took to load and to show its first event, as JSON. Used by bench/page/cost.sh:
//   NODE_PATH=target/node/node_modules node bench/page/watch.cjs <url> <seconds>
"use strict";
const { chromium } = require("playwright-core");

(async () => {
  const [url, seconds] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
  const t0 = Date.now();
  await page.goto(url);
  const load_ms = Date.now() - t0;
  await page.waitForFunction(() => document.getElementById("link").textContent === "live");
  const live_ms = Date.now() - t0;
  await page.waitForTimeout(Number(seconds) * 1000);
  console.log(JSON.stringify({ load_ms, live_ms, caption: await page.textContent("#caption") }));
  await browser.close();
})().catch((e) => { console.error(e); process.exit(1); });
