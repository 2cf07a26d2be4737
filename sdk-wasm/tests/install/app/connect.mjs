// Opens the fresh app in headless Chromium and waits until the page shows `connected`
// (the app writes the state of warren-sdk/react's useConnectionState into #status), and
// checks the useSubscription statuses (#sub: pending, then active only once connected;
// #refused: error with unknown_channel; #switching: a spec that changes never shows the
// previous spec's status).
// Fails on any HTTP error the page meets (e.g. a 403 for the .wasm from Vite's dev
// server) and prints the page's console. Usage: node connect.mjs URL [TIMEOUT_MS]
// A fresh profile each run. Run from the app's folder (playwright-core is one of its dev dependencies).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [url, timeoutArg] = process.argv.slice(2);
const timeoutMs = Number(timeoutArg ?? 30000);
const profile = mkdtempSync(join(tmpdir(), "warren-install-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
  headless: true,
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
const problems = [];
const consoleLines = [];
let ok = false;
try {
  const page = await context.newPage();
  page.on("console", (m) => consoleLines.push(`[${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("response", (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()} for ${r.url()}`);
  });
  await page.goto(url);
  await page
    .waitForSelector('#status[data-state="connected"]', { timeout: timeoutMs })
    .catch(() => {});
  const state = await page.getAttribute("#status", "data-state").catch(() => null);
  // useSubscription: `pending` until the gateway acknowledged the subscribe, so `active`
  // is only ever seen while connected; a channel the gateway does not serve ends in
  // `error` with its code.
  // (`attached`: the elements have no text, so they are never "visible".)
  for (const selector of ['#sub[data-status="active"]', '#refused[data-status="error"]']) {
    await page.waitForSelector(selector, { state: "attached", timeout: timeoutMs }).catch(() => {});
  }
  // A spec that changes: the first render after each change says `pending` (`idle` for
  // null), never the previous spec's status; with spec null, always `idle`.
  await page
    .waitForSelector('#switching[data-spec="null"]', { state: "attached", timeout: timeoutMs })
    .catch(() => {});
  const renders = ((await page.getAttribute("#switching", "data-renders").catch(() => null)) ?? "")
    .split(",")
    .filter(Boolean);
  if (!renders.some((r) => r.startsWith("null:"))) problems.push(`the switching spec never reached null (${renders})`);
  renders.forEach((r, i) => {
    const [spec, status] = r.split(":");
    const changed = i === 0 || renders[i - 1].split(":")[0] !== spec;
    if (spec === "null" ? status !== "idle" : changed && status !== "pending") {
      problems.push(`useSubscription rendered ${r} (render ${i}: ${renders.join(",")})`);
    }
  });
  console.log(`switching spec renders: ${renders.join(",")}`);
  const history = (await page.getAttribute("#sub", "data-history").catch(() => null)) ?? "";
  const refused = [
    await page.getAttribute("#refused", "data-status").catch(() => null),
    await page.getAttribute("#refused", "data-code").catch(() => null),
  ];
  const entries = history.split(",").filter(Boolean);
  if (!entries[0]?.startsWith("pending@")) problems.push(`subscription history starts with ${entries[0]} (${history})`);
  if (!entries.some((e) => e.startsWith("active@"))) problems.push(`the subscription never became active (${history})`);
  for (const e of entries.filter((e) => e.startsWith("active@"))) {
    if (e !== "active@connected") problems.push(`active while not connected: ${e} (${history})`);
  }
  if (refused[0] !== "error" || refused[1] !== "unknown_channel") {
    problems.push(`the refused subscription is ${refused[0]} / ${refused[1]}, expected error / unknown_channel`);
  }
  ok = state === "connected" && problems.length === 0;
  console.log(`subscription: ${history}; refused: ${refused.join(" / ")}`);
  const gateway = await page.getAttribute("#status", "data-url").catch(() => null);
  console.log(`page state: ${state}${gateway ? ` (${gateway})` : ""}`);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
if (!ok) {
  for (const p of problems) console.error(p);
  for (const l of consoleLines) console.error(`console ${l}`);
  console.error(`FAIL: the page did not reach "connected" cleanly (${url})`);
  process.exit(1);
}
