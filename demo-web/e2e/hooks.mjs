// Browser tests of warren-sdk/react's useSubscription on a tiny page of its own
// (e2e/hooks/), built with Vite from the package as an app uses it, against the real
// stack of run.mjs (jwt mode). run.mjs runs them after the demo page's tests
// (E2E_ONLY=useSubscription runs only these).
//
// - after the client stopped (the gateway refused the token: close code 4501), the
//   app's `connect()` with a good token makes the subscription `active` again (before:
//   `error` for ever, the status followed the one-time `ready`);
// - a subscription the gateway refuses after a reconnect (the new token no longer
//   grants the room) shows `error` / `forbidden` (before: `active` for ever);
// - a delivery handed to the SDK right after a commit, before passive effects ran,
//   reaches that render's handler (before: the previous render's);
// - new provider options (another user's token) keep the children mounted, with their
//   state, until the new client exists, and the fallback does not come back (before: one
//   commit rendered the fallback, the tree unmounted and a counter went back to 0);
// - a provider given a client renders its children from the first render (before: the
//   fallback until an effect had run).
import { createHmac } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { build, preview } from "vite";
import react from "@vitejs/plugin-react";
import { WEB_DIR, assert, control, freePort, log, screenshot, waitFor } from "./harness.mjs";

const PAGE_DIR = join(WEB_DIR, "e2e", "hooks");
// warren-stack's published DEVELOPMENT secret (`--auth jwt` without `--jwt-secret`):
// these tests sign tokens the stack's endpoint does not (no `room-1`).
const DEV_SECRET = "warren-development-secret-change-me!";

const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");

/** An HS256 development token for `user` granting `groups`, valid for 5 minutes. */
function devToken(user, groups) {
  const now = Math.floor(Date.now() / 1000);
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub: user, iat: now, exp: now + 300, groups, topics: [] })}`;
  return `${head}.${createHmac("sha256", DEV_SECRET).update(head).digest("base64url")}`;
}

/** A token from the stack's endpoint (grants room-1 and room-2). */
async function stackToken(w, user) {
  const res = await fetch(`${w.control}/token`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user, lifetime_s: 300 }),
  });
  assert(res.ok, `the stack's token endpoint answered ${res.status}`);
  return (await res.json()).token;
}

/** Builds the page once per run and serves it (vite preview); its URL. */
async function pageUrl(w) {
  if (w.hooksPage) return w.hooksPage;
  const outDir = mkdtempSync(join(tmpdir(), "warren-hooks-page-"));
  const config = {
    configFile: false,
    root: PAGE_DIR,
    logLevel: "warn",
    plugins: [react()],
    // As demo-web/vite.config.ts: the linked package's `react` is the page's.
    resolve: { dedupe: ["react", "react-dom"] },
    build: { outDir, emptyOutDir: true, target: "es2022" },
  };
  log("building the useSubscription test page (e2e/hooks)");
  await build(config);
  const port = await freePort();
  const server = await preview({ ...config, preview: { host: "127.0.0.1", port, strictPort: true } });
  w.cleanups.push(async () => {
    await server.close();
    rmSync(outDir, { recursive: true, force: true });
  });
  w.hooksPage = `http://127.0.0.1:${port}`;
  return w.hooksPage;
}

/**
 * A page of its own (a fresh browser context) at the hooks page with the query `params`,
 * `token` in `window.__token`; the errors it throws are collected in `errors`.
 */
async function openPage(w, name, token, params) {
  const url = await pageUrl(w);
  const context = await w.browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  const errors = [];
  page.on("pageerror", (err) => errors.push(`pageerror: ${err.message}`));
  await page.addInitScript((t) => {
    window.__token = t;
  }, token);
  await page.goto(`${url}/?${new URLSearchParams(params)}`);
  return {
    page,
    close: () => context.close(),
    checkErrors: () => assert(errors.length === 0, `${name}'s page threw: ${errors.join("; ")}`),
  };
}

/** A page of its own subscribed to `spec`, with `token` in `window.__token`. */
async function open(w, name, spec, token) {
  const opened = await openPage(w, name, token, { urls: w.urls.join(","), spec: JSON.stringify(spec) });
  const { page } = opened;
  await page.getByTestId("sub").waitFor();
  const sub = page.getByTestId("sub");
  const status = async () => `${await sub.getAttribute("data-status")}:${await sub.getAttribute("data-code")}`;
  const waitStatus = (want, timeoutMs = 20_000) =>
    waitFor(`${name}'s subscription to be ${want}`, async () => (await status()) === want || null, timeoutMs).catch(async (err) => {
      const seen = await page.evaluate(() => window.__statuses.join(" → "));
      throw new Error(`${err.message}; it showed ${seen}`);
    });
  return { ...opened, status, waitStatus };
}

/** The `mode=keep` page (a counter under a provider whose options carry `token`), or another mode's. */
async function openKeep(w, name, token, mode = "keep") {
  const opened = await openPage(w, name, token, { urls: w.urls.join(","), mode });
  await opened.page.getByTestId("counter").waitFor();
  return opened;
}

export const hooksTests = [
  {
    name: "WarrenProvider: given a client, the children render from the first render, never the fallback",
    timeoutMs: 30_000,
    async fn(w) {
      const p = await openKeep(w, "hooks-external", await stackToken(w, "hooks-external"), "external");
      await p.page.getByTestId("counter").click();
      const fallbacks = await p.page.evaluate(() => window.__fallbacks);
      assert(fallbacks === 0, `the fallback was mounted ${fallbacks} times with a client given`);
      await waitFor("the given client to connect", () => p.page.evaluate(() => window.__client?.state === "connected"));
      p.checkErrors();
      await p.close();
    },
  },
  {
    name: "WarrenProvider: new options (another token) keep the children and their state; the fallback does not come back",
    timeoutMs: 60_000,
    async fn(w) {
      const p = await openKeep(w, "hooks-keep", await stackToken(w, "hooks-keep"));
      const counter = p.page.getByTestId("counter");
      for (let i = 0; i < 3; i++) await counter.click();
      assert((await counter.getAttribute("data-count")) === "3", "the counter was clicked to 3");
      await waitFor("the first client to connect", () =>
        p.page.evaluate(() => window.__clients.length === 1 && window.__clients[0].state === "connected"),
      );
      // The counter's element, marked: a remount would render a new one.
      await p.page.evaluate(() => {
        document.querySelector('[data-testid="counter"]').__kept = true;
      });
      const fallbacksBefore = await p.page.evaluate(() => window.__fallbacks);
      const other = await stackToken(w, "hooks-keep-2");
      await p.page.evaluate((t) => window.__setToken(t), other);
      await waitFor("the counter to be rendered with a second client, connected", () =>
        p.page.evaluate(() => window.__clients.length === 2 && window.__clients[1].state === "connected"),
      );
      const after = await p.page.evaluate(() => {
        const el = document.querySelector('[data-testid="counter"]');
        return { count: el?.getAttribute("data-count"), kept: el?.__kept === true, fallbacks: window.__fallbacks };
      });
      await screenshot(p.page, "hooks-options-change-keeps-state");
      assert(after.fallbacks === fallbacksBefore, `the fallback was mounted again (${after.fallbacks - fallbacksBefore} times) on the options change`);
      assert(after.count === "3", `the counter kept its state (shows ${after.count})`);
      assert(after.kept, "the counter's element is the one from before the options change (no remount)");
      // The previous client is closed once the children moved to the new one.
      await waitFor("the first client to be closed", () =>
        p.page.evaluate(() => window.__clients[0].state === "disconnected"),
      );
      p.checkErrors();
      await p.close();
    },
  },
  {
    name: "useSubscription: after the client stopped (4501), connect() with a good token makes the subscription active again",
    timeoutMs: 60_000,
    async fn(w) {
      const user = "hooks-stop";
      const p = await open(w, user, { channel: "chat" }, "not-a-valid-token");
      // The gateway refuses the token and closes with 4501: the client stops.
      await p.waitStatus("error:unauthorized");
      const token = await stackToken(w, user);
      await p.page.evaluate((t) => {
        window.__token = t;
        void window.__client.connect();
      }, token);
      await p.waitStatus("active:");
      const seen = await p.page.evaluate(() => window.__statuses);
      assert(seen.lastIndexOf("active") > seen.indexOf("error:unauthorized"), `active after the error (saw ${seen.join(" → ")})`);
      await screenshot(p.page, "hooks-active-after-connect");
      p.checkErrors();
      await p.close();
    },
  },
  {
    name: "useSubscription: a room the new token no longer grants is refused on the reconnect and shows error forbidden",
    timeoutMs: 90_000,
    async fn(w) {
      const user = "hooks-revoked";
      const p = await open(w, user, { channel: "chat", groups: ["room-1"] }, await stackToken(w, user));
      await p.waitStatus("active:");
      // The next connection's token no longer grants room-1; the gateway in use dies.
      await p.page.evaluate((t) => {
        window.__token = t;
      }, devToken(user, ["room-2"]));
      const url = await p.page.evaluate(() => window.__client.url);
      const index = w.urls.indexOf(url);
      assert(index >= 0, `the page is on one of the stack's gateways (${url})`);
      const name = w.gatewayNames[index];
      log(`killing gateway ${name} (${url})`);
      await control(w.control, `/gateways/${name}/kill`);
      try {
        await p.waitStatus("error:forbidden", 30_000);
        const state = await p.page.evaluate(() => window.__client.state);
        assert(state === "connected", `the client reconnected to the other gateway (state ${state})`);
        await screenshot(p.page, "hooks-refused-after-reconnect");
      } finally {
        await control(w.control, `/gateways/${name}/start`);
      }
      p.checkErrors();
      await p.close();
    },
  },
  {
    name: "useSubscription: a delivery right after a commit, before passive effects ran, reaches that render's handler",
    timeoutMs: 60_000,
    async fn(w) {
      const user = "hooks-latest";
      const p = await open(w, user, { channel: "chat" }, await stackToken(w, user));
      await p.waitStatus("active:");
      const marker = `latest-handler-${Date.now()}`;
      // Hold what the gateway sends, write a broadcast, and wait for its delivery.
      await p.page.evaluate((text) => {
        window.__gate.hold = true;
        void window.__client.write({ channel: "chat", distribution: { broadcast: true }, message: { text } }).catch(() => {});
      }, marker);
      await waitFor(
        "the broadcast's delivery to be held",
        () => p.page.evaluate((text) => window.__gate.frames.some((f) => f.includes('"deliver"') && f.includes(text)), marker),
        15_000,
      );
      // Render 1 commits; a layout effect after the subscriber releases the delivery.
      await p.page.evaluate(() => window.__bump());
      const got = await waitFor("the delivery to reach a handler", () =>
        p.page.evaluate((text) => window.__received.find((r) => r.message?.text === text), marker),
      );
      assert(got.render === 1, `the handler of the render just committed got the delivery (got render ${got.render}'s)`);
      p.checkErrors();
      await p.close();
    },
  },
];
