// Imports the built package the way an app does (`import init, { Client } from "warren-sdk"`)
// and calls it. Node has no `fetch` for file URLs, so the wasm bytes are read from disk,
// exactly as the README's Node instructions say (ESM: no `require`).
// With WARREN_STACK_STATE (the warren-stack state file) it also talks to real gateways;
// Node 20 needs `--experimental-websocket` for the global WebSocket.
// warren-sdk/react's tests, first: they initialise the wasm with initWarren.
import "./react.test.mjs";
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import init, { Client, WarrenError, isWarrenError } from "warren-sdk";

const wasm = await readFile(new URL(import.meta.resolve("warren-sdk/warren_sdk_bg.wasm")));
await init({ module_or_path: wasm });

const statePath = process.env.WARREN_STACK_STATE;
const stack = statePath ? JSON.parse(await readFile(statePath, "utf8")) : null;
const live = { skip: stack ? false : "WARREN_STACK_STATE is not set" };

test("the package exports a Client class that validates its options", () => {
  assert.equal(typeof Client, "function");
  assert.throws(
    () => new Client({ urls: [] }),
    (e) => e instanceof Error && e.name === "WarrenError" && e.code === "invalid" && e.retry === false,
  );
  for (const bad of ["not a url", "http://127.0.0.1/ws"]) {
    assert.throws(() => new Client({ urls: [bad] }), (e) => e instanceof WarrenError && e.code === "invalid");
  }
  const client = new Client({ urls: ["ws://127.0.0.1:9/ws"] });
  assert.equal(client.state, "disconnected");
  client.close();
});

test("a write after close rejects with the closed code", async () => {
  const client = new Client({ urls: ["ws://127.0.0.1:9/ws"] });
  client.close();
  await assert.rejects(
    client.write({ channel: "chat", message: 1 }),
    (e) => isWarrenError(e) && e instanceof WarrenError && e.code === "closed" && typeof e.id === "string",
  );
  await assert.rejects(client.write({ message: 1 }), (e) => e.code === "invalid");
});

test("disposing a client closes it: what waits is rejected with closed", async () => {
  const client = new Client({ urls: ["ws://127.0.0.1:9/ws"] });
  const pending = client.write({ channel: "chat", message: "queued" });
  if (typeof Symbol.dispose === "symbol") client[Symbol.dispose]();
  else client.free();
  await assert.rejects(pending, (e) => e instanceof WarrenError && e.code === "closed");
});

test("a client connects to a real gateway, writes, and gets the echo reply", live, async () => {
  const client = new Client({ urls: [stack.gateways[0].urls.all, stack.gateways[1].urls.all] });
  const states = [];
  client.on("state", (e) => states.push(e.newState));
  await client.connect();
  assert.equal(client.state, "connected");
  assert.ok(client.session);
  await client.write({ channel: "echo", message: { hello: "node" } });
  const reply = await client.writeAndWait({ channel: "echo", message: { n: 42 } }, { timeoutMs: 5000 });
  assert.deepEqual(reply, { n: 42 });
  client.close();
  assert.deepEqual(states, ["connecting", "connected", "disconnected"]);
});
