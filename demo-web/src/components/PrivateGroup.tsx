// The refusal example: the development tokens grant the groups room-1 and room-2, not
// the private group `staff`; joining it shows the gateway's `forbidden` answer.
import { useEffect, useRef, useState } from "react";
import { useClient } from "warren-sdk/react";
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
    const sub = client.subscribe({ channel: "chat", groups: [GROUP] }, () => {});
    let asking = true;
    const done = () => {
      asking = false;
      sub.unsubscribe();
      cleanup.current = null;
    };
    cleanup.current = done;
    // `ready` settles with the gateway's answer (also after a reconnect): resolved once
    // the subscription is in force, rejected with the refusal.
    sub.ready.then(
      () => {
        if (!asking) return;
        setOutcome({ kind: "accepted" });
        done();
      },
      (err: unknown) => {
        if (!asking) return;
        setOutcome({ kind: "refused", error: toShownError(err) });
        done();
      },
    );
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
