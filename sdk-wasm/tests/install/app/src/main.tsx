// A fresh app's use of warren-sdk: the React bindings connect to the gateways named in
// the query string (?urls=ws://…,ws://…) and the page shows the connection state, and
// the status of two subscriptions with the connection state at each change (one the
// gateway accepts, one on a channel it does not serve).
import { StrictMode, useEffect, useRef, useState } from "react";
import { createRoot } from "react-dom/client";
import { WarrenError, type Client } from "warren-sdk";
import { WarrenProvider, useClient, useConnectionState, useSubscription } from "warren-sdk/react";

function Status() {
  const client: Client = useClient();
  const { state, url, lastError } = useConnectionState();
  return (
    <p id="status" data-state={state} data-url={url ?? ""}>
      {state} {client.session ?? ""} {lastError?.code ?? ""}
    </p>
  );
}

function Sub({ id, channel }: { id: string; channel: string }) {
  const { state } = useConnectionState();
  const { status, error } = useSubscription<{ text: string }>({ channel }, (d) => d.message.text);
  const history = useRef<string[]>([]);
  const [shown, setShown] = useState("");
  useEffect(() => {
    history.current.push(`${status}@${state}`);
    setShown(history.current.join(","));
  }, [status]); // eslint-disable-line react-hooks/exhaustive-deps
  return <p id={id} data-status={status} data-code={error?.code ?? ""} data-history={shown} />;
}

// useSubscription with a spec that changes (chat, then tickets, then null) each time the
// last one became active: every render's `spec:status` goes into data-renders. The
// first render after a change must say `pending` (`idle` for null), not the previous
// spec's status.
const renders: string[] = [];
const SPECS = [{ channel: "chat" }, { channel: "tickets", topic: "ticket.*" }, null];
function Switching() {
  const [step, setStep] = useState(0);
  const spec = SPECS[step];
  const { status } = useSubscription(spec, () => {});
  renders.push(`${spec?.channel ?? "null"}:${status}`);
  useEffect(() => {
    if (status === "active" && step < SPECS.length - 1) setStep(step + 1);
  }, [status, step]);
  return <p id="switching" data-spec={spec?.channel ?? "null"} data-renders={renders.join(",")} />;
}

// Both entry points' runtime exports resolve (the class the SDK throws is exported).
if (typeof WarrenError !== "function") throw new Error("warren-sdk exports no WarrenError");
const urls = (new URLSearchParams(location.search).get("urls") ?? "").split(",").filter(Boolean);
createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <WarrenProvider options={{ urls }} fallback={(s) => <p id="status" data-state={s.state}>{s.state}</p>}>
      <Status />
      <Sub id="sub" channel="chat" />
      <Sub id="refused" channel="not_served_here" />
      <Switching />
    </WarrenProvider>
  </StrictMode>,
);
