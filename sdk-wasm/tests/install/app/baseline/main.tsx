// The same page without warren-sdk: run.sh builds it to measure what the SDK adds.
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <p id="status" data-state="idle">idle</p>
  </StrictMode>,
);
