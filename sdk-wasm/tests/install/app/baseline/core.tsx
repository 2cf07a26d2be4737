// The baseline page plus warren-sdk without its React bindings (`warren-sdk` only, the
// least an app does with it): run.sh builds it to measure what the package itself (wasm
// + JS glue) adds to an app, which the 30 KB budget covers.
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import init, { Client } from "warren-sdk";

init().then(() => new Client({ urls: [location.href.replace(/^http/, "ws")] }).connect());
createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <p id="status" data-state="idle">idle</p>
  </StrictMode>,
);
