// The Node route: imports the installed package as an ES module app does (README,
// "Initialise"), connects to the first gateway of the stack and checks the state.
// Usage: node node-connect.mjs STACK_STATE_JSON_FILE
import { readFile } from "node:fs/promises";
import init, { Client } from "warren-sdk";

const stack = JSON.parse(await readFile(process.argv[2], "utf8"));
const wasm = await readFile(new URL(import.meta.resolve("warren-sdk/warren_sdk_bg.wasm")));
await init({ module_or_path: wasm });
const client = new Client({ urls: stack.gateways.map((g) => g.urls.all), connectTimeoutMs: 10000 });
await client.connect();
if (client.state !== "connected") throw new Error(`state is ${client.state}, not connected`);
console.log(`node: connected to ${client.url}`);
client.close();
