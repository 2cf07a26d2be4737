// The baseline page plus warren-sdk with its React bindings, in the least an app does
// with them (a provider, the connection state, one subscription): run.sh builds it to
// measure what warren-sdk and warren-sdk/react add to an app.
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { WarrenProvider, useConnectionState, useSubscription } from "warren-sdk/react";

function Status() {
  const { state } = useConnectionState();
  const { status } = useSubscription({ channel: "chat" }, console.log);
  return <p id="status" data-state={state}>{state} {status}</p>;
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <WarrenProvider options={{ urls: [location.href.replace(/^http/, "ws")] }}>
      <Status />
    </WarrenProvider>
  </StrictMode>,
);
