// The refusal example: the development tokens grant the groups room-1 and room-2, not
// the private group `staff`; joining it shows the gateway's `forbidden` answer.
import { useEffect, useRef, useState } from "react";
import { useClient } from "warren-sdk/react";
import type { Subscription } from "warren-sdk";
import { toShownError, type ShownError } from "../lib/errors";

const GROUP = "staff";

type Outcome = { kind: "waiting" } | { kind: "refused"; error: ShownError } | { kind: "accepted" };

export function PrivateGroup() {
  const client = useClient();
  const [outcome, setOutcome] = useState<Outcome | null>(null);
  const cleanup = useRef<(() => void) | null>(null);
  useEffect(() => () => cleanup.current?.(), []);

  const tryJoin = () => {
    cleanup.current?.();
    setOutcome({ kind: "waiting" });
    let asking = true;
    let sub: Subscription | null = null;
    const done = () => {
      asking = false;
      sub?.unsubscribe();
      cleanup.current = null;
    };
    const settle = (o: Outcome) => {
      if (!asking) return;
      setOutcome(o);
      done();
    };
    // The gateway's answer comes through `onStatus`: `active` once the subscription is
    // in force, `error` with the refusal. Not `ready` alone: a refusal that may pass
    // (`overloaded`, `broker_unavailable`, `internal`) leaves `ready` pending until the
    // next reconnect, and the page said "asking the gateway…" with the button disabled.
    sub = client.subscribe(
      { channel: "chat", groups: [GROUP] },
      () => {},
      (status, err) => {
        if (status === "active") settle({ kind: "accepted" });
        else if (status === "error") settle({ kind: "refused", error: toShownError(err) });
      },
    );
    // Its outcome comes through onStatus; a rejected `ready` is not left unhandled.
    sub.ready.catch(() => {});
    if (asking) cleanup.current = done;
    else sub.unsubscribe(); // answered while subscribe() ran, before `sub` was set
  };

  return (
    <div className="private-group" data-testid="private-group">
      <button
        className="btn btn-small"
        onClick={tryJoin}
        disabled={outcome?.kind === "waiting"}
        data-testid="staff-join"
        title="Your token does not grant this group: the gateway refuses it"
      >
        Join # {GROUP} (not granted)
      </button>
      {outcome?.kind === "waiting" && <p className="muted fineprint">asking the gateway…</p>}
      {outcome?.kind === "refused" && (
        <p className="error-text fineprint" role="alert" data-testid="refusal" data-code={outcome.error.code}>
          {outcome.error.code}: {outcome.error.message}
        </p>
      )}
      {outcome?.kind === "accepted" && (
        <p className="muted fineprint" data-testid="refusal" data-code="none">
          Accepted: the gateway subscribed it (a gateway in auth mode none checks no token).
        </p>
      )}
    </div>
  );
}
