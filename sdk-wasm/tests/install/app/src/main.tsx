// A fresh app's use of warren-sdk: the React bindings connect to the gateways named in
// the query string (?urls=ws://…,ws://…) and the page shows the connection state.
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { WarrenError, type Client } from "warren-sdk";
import { WarrenProvider, useClient, useConnectionState } from "warren-sdk/react";

function Status() {
  const client: Client = useClient();
  const { state, url, lastError } = useConnectionState();
  return (
    <p id="status" data-state={state} data-url={url ?? ""}>
      {state} {client.session ?? ""} {lastError?.code ?? ""}
    </p>
  );
}

// Both entry points' runtime exports resolve (the class the SDK throws is exported).
if (typeof WarrenError !== "function") throw new Error("warren-sdk exports no WarrenError");
const urls = (new URLSearchParams(location.search).get("urls") ?? "").split(",").filter(Boolean);
createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <WarrenProvider options={{ urls }} fallback={(s) => <p id="status" data-state={s.state}>{s.state}</p>}>
      <Status />
    </WarrenProvider>
  </StrictMode>,
);
