// The e2e harness: starts and stops processes (warren-stack, vite preview), opens
// browser users, runs tests in order with time limits and screenshots, prints a summary.
import { spawn } from "node:child_process";
import { createWriteStream, existsSync, mkdirSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const WEB_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const ROOT = resolve(WEB_DIR, "..");
export const SHOTS_DIR = join(ROOT, "artifacts", "screenshots");
export const LOGS_DIR = join(ROOT, "artifacts", "e2e-logs");

export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function log(...args) {
  const t = new Date().toISOString().slice(11, 23);
  console.log(`[e2e ${t}]`, ...args);
}

/** Fails with `message` unless `cond`. */
export function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

/** Polls `fn` until it returns a truthy value; fails with `what` after `timeoutMs`. */
export async function waitFor(what, fn, timeoutMs = 15_000, everyMs = 100) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      const detail = last instanceof Error ? `: ${last.message}` : last !== undefined ? ` (last: ${JSON.stringify(last)})` : "";
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`);
    }
    await sleep(everyMs);
  }
}

/** A free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

/**
 * A child process in its own process group, output to a log file; `stop()` sends
 * SIGTERM to the group, then SIGKILL after `graceMs`.
 */
export class Proc {
  constructor(name, command, args, options = {}) {
    mkdirSync(LOGS_DIR, { recursive: true });
    this.name = name;
    this.logPath = join(LOGS_DIR, `${name}.log`);
    const out = createWriteStream(this.logPath);
    this.output = "";
    this.child = spawn(command, args, {
      cwd: options.cwd ?? WEB_DIR,
      env: { ...process.env, ...(options.env ?? {}) },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    this.exited = new Promise((res) => {
      this.child.on("exit", (code, signal) => {
        this.exitCode = code;
        this.exitSignal = signal;
        res();
      });
      this.child.on("error", (err) => {
        this.spawnError = err;
        res();
      });
    });
    const keep = (chunk) => {
      out.write(chunk);
      this.output = (this.output + chunk.toString()).slice(-20_000);
    };
    this.child.stdout.on("data", keep);
    this.child.stderr.on("data", keep);
  }

  get running() {
    return this.exitCode === undefined && this.exitSignal === undefined && !this.spawnError;
  }

  tail(lines = 25) {
    return this.output.split("\n").slice(-lines).join("\n");
  }

  async stop(graceMs = 8_000) {
    if (!this.running || this.child.pid === undefined) return;
    const group = -this.child.pid;
    try {
      process.kill(group, "SIGTERM");
    } catch {
      return;
    }
    await Promise.race([this.exited, sleep(graceMs)]);
    try {
      // Whatever of the group is still there (e.g. children of a stuck leader).
      process.kill(group, "SIGKILL");
    } catch {
      // The whole group is gone.
    }
    await Promise.race([this.exited, sleep(2_000)]);
  }
}

/** Starts warren-stack with the ephemeral layout (and `args`) and returns its state. */
export async function startStack(bin, args = []) {
  if (!existsSync(bin)) {
    throw new Error(
      `warren-stack not found at ${bin}: build it with \`cargo build -p warren-e2e --bin warren-stack\` (and the gateway and demo service), or set WARREN_STACK_BIN`,
    );
  }
  const stateFile = join(LOGS_DIR, `stack-state-${process.pid}.json`);
  mkdirSync(LOGS_DIR, { recursive: true });
  rmSync(stateFile, { force: true });
  const proc = new Proc("warren-stack", bin, ["--layout", "ephemeral", "--state-file", stateFile, ...args]);
  const state = await waitFor(
    "warren-stack to write its state file",
    async () => {
      if (!proc.running) {
        throw new Error(`warren-stack exited (${proc.exitCode ?? proc.exitSignal ?? proc.spawnError}):\n${proc.tail()}`);
      }
      if (!existsSync(stateFile)) return null;
      try {
        return JSON.parse(readFileSync(stateFile, "utf8"));
      } catch {
        return null; // half-written
      }
    },
    90_000,
    200,
  ).catch(async (err) => {
    await proc.stop();
    throw err;
  });
  const control = /^https?:\/\//.test(state.control) ? state.control : `http://${state.control}`;
  return { proc, state: { ...state, control: control.replace(/\/+$/, "") }, stateFile };
}

/** POSTs to the stack's control API and returns the new state. */
export async function control(base, path) {
  const res = await fetch(`${base}${path}`, { method: path === "/state" ? "GET" : "POST" });
  if (!res.ok) throw new Error(`control ${path}: HTTP ${res.status} ${await res.text()}`);
  return res.json();
}

/** Runs `npm run build`'s bundling step (not the type check) so dist/ matches the SDK. */
export async function buildPage() {
  const proc = new Proc("vite-build", process.execPath, [join(WEB_DIR, "node_modules/vite/bin/vite.js"), "build"]);
  await Promise.race([proc.exited, sleep(120_000)]);
  if (proc.exitCode !== 0) {
    await proc.stop();
    throw new Error(`vite build failed:\n${proc.tail()}`);
  }
}

/** Starts a Vite server (`preview` for dist/, or `dev`) on a free port. */
export async function startVite(mode) {
  const port = await freePort();
  const args = [join(WEB_DIR, "node_modules/vite/bin/vite.js")];
  if (mode === "preview") args.push("preview");
  args.push("--port", String(port), "--strictPort", "--host", "127.0.0.1");
  const proc = new Proc(`vite-${mode}`, process.execPath, args);
  const url = `http://127.0.0.1:${port}`;
  await waitFor(
    `vite ${mode} on ${url}`,
    async () => {
      if (!proc.running) throw new Error(`vite ${mode} exited:\n${proc.tail()}`);
      const res = await fetch(url).catch(() => null);
      return res !== null && res.ok;
    },
    60_000,
    200,
  ).catch(async (err) => {
    await proc.stop();
    throw err;
  });
  return { proc, url };
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
    args: CHROMIUM_ARGS,
    timeout: 30_000,
  });
}

/** Empties the screenshot folder of a previous run. */
export function resetScreenshots() {
  mkdirSync(SHOTS_DIR, { recursive: true });
  for (const f of readdirSync(SHOTS_DIR)) if (f.endsWith(".png")) rmSync(join(SHOTS_DIR, f));
}

let shotCounter = 0;

/** Saves a screenshot of `page` as `NN-name.png`; returns the path. */
export async function screenshot(page, name) {
  shotCounter += 1;
  const file = join(SHOTS_DIR, `${String(shotCounter).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file, fullPage: false, timeout: 10_000 });
  return file;
}

/**
 * Runs `tests` ([{ name, timeoutMs, fn }]) in order; each gets `ctx`. `afterEach(ctx)`
 * may return what went wrong besides the test's own assertions (a page's uncaught
 * error), which fails the test too. Returns { passed, failed, results }.
 */
export async function runTests(tests, ctx, { onFailure, afterEach } = {}) {
  const results = [];
  for (const test of tests) {
    const started = Date.now();
    log(`▶ ${test.name}`);
    let error = null;
    let timer;
    try {
      await Promise.race([
        test.fn(ctx),
        new Promise((_, rej) => {
          timer = setTimeout(() => rej(new Error(`test timed out after ${test.timeoutMs} ms`)), test.timeoutMs);
        }),
      ]);
    } catch (err) {
      error = err;
    } finally {
      clearTimeout(timer);
    }
    const also = afterEach ? afterEach(ctx) : null;
    if (also && !error) error = new Error(also);
    const ms = Date.now() - started;
    if (error) {
      log(`✗ ${test.name} (${ms} ms)\n    ${String(error.stack ?? error).split("\n").join("\n    ")}`);
      if (onFailure) await onFailure(test, error).catch((e) => log(`  (failure hook failed: ${e.message})`));
    } else {
      log(`✓ ${test.name} (${ms} ms)`);
    }
    results.push({ name: test.name, ok: !error, ms, error });
  }
  return {
    passed: results.filter((r) => r.ok).length,
    failed: results.filter((r) => !r.ok).length,
    results,
  };
}
