// warren-sdk/react as a Node app (or Vitest) uses it, imported by import.test.mjs before
// anything else initialises the wasm:
// - `initWarren(bytes)` initialises the wasm from what it is given, as
//   `init({ module_or_path })` does (before: it took no argument and fetched the .wasm
//   next to the module, which Node cannot, so the bindings were unusable there);
// - react.js starts with the "use client" directive (Next.js server components import it);
// - warren_sdk_bg.wasm.d.ts declares no export the module lacks (the build renames them).
// The package is installed as a link (file:../../pkg), so react.js would look for `react`
// from sdk-wasm/pkg: a resolve hook hands it this folder's `react` instead.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { register } from "node:module";

register(
  "data:text/javascript," +
    encodeURIComponent(`export async function resolve(spec, ctx, next) {
      return next(spec, spec === "react" ? { ...ctx, parentURL: ${JSON.stringify(import.meta.url)} } : ctx);
    }`),
);
const { initWarren } = await import("warren-sdk/react");
const { Client } = await import("warren-sdk");
const wasmUrl = new URL(import.meta.resolve("warren-sdk/warren_sdk_bg.wasm"));
const wasm = await readFile(wasmUrl);

// First, before any other init: what the wasm is initialised with is what is passed here.
const first = initWarren(wasm);
const initError = await first.then(
  () => null,
  (e) => e,
);

test("initWarren(bytes) initialises the wasm in Node, once: later calls share the promise", async () => {
  assert.equal(initError, null, `initWarren(bytes) failed: ${initError}`);
  assert.equal(initWarren(), first);
  assert.equal(initWarren(wasm), first);
  const client = new Client({ urls: ["ws://127.0.0.1:9/ws"] });
  assert.equal(client.state, "disconnected");
  client.close();
});

test('react.js begins with the "use client" directive', async () => {
  const js = await readFile(new URL(import.meta.resolve("warren-sdk/react")), "utf8");
  assert.match(js, /^\s*["']use client["'];/);
});

test("warren_sdk_bg.wasm.d.ts declares only exports the .wasm has", async () => {
  const dts = await readFile(new URL("warren_sdk_bg.wasm.d.ts", wasmUrl), "utf8");
  const exported = new Set(WebAssembly.Module.exports(new WebAssembly.Module(wasm)).map((e) => e.name));
  const declared = [...dts.matchAll(/^export (?:const|function|let|var) ([\w$]+)/gm)].map((m) => m[1]);
  const missing = declared.filter((n) => !exported.has(n));
  assert.deepEqual(missing, [], `declared but not exported: ${missing.join(", ")}`);
});
