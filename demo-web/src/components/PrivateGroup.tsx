// The refusal example: the development tokens grant the groups room-1 and room-2, not
// the private group `staff`; joining it shows the gateway's `forbidden` answer.
import { useEffect, useRef, useState } from "react";
import { useClient } from "warren-sdk/react";
import { toShownError, type ShownError } from "../lib/errors";

const GROUP = "staff";
/** How long to wait for a refusal before calling the join accepted. */
const WAIT_MS = 5000;

type Outcome = { kind: "waiting" } | { kind: "refused"; error: ShownError } | { kind: "accepted" };

export function PrivateGroup() {
  const client = useClient();
  const [outcome, setOutcome] = useState<Outcome | null>(null);
  const cleanup = useRef<(() => void) | null>(null);
  useEffect(() => () => cleanup.current?.(), []);

  const tryJoin = () => {
    cleanup.current?.();
    setOutcome({ kind: "waiting" });
    // A refused subscription is reported as an `error` event (not tied to a promise).
    const onError = (err: unknown) => {
      const shown = toShownError(err);
      if (shown.code !== "forbidden" && shown.code !== "unauthorized") return;
      setOutcome({ kind: "refused", error: shown });
      done();
    };
    client.on("error", onError);
    const sub = client.subscribe({ channel: "chat", groups: [GROUP] }, () => {});
    const timer = setTimeout(() => {
      setOutcome({ kind: "accepted" });
      done();
    }, WAIT_MS);
    const done = () => {
      clearTimeout(timer);
      client.off("error", onError);
      sub.unsubscribe();
      cleanup.current = null;
    };
    cleanup.current = done;
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
          Not refused: this gateway does not check tokens (auth mode none).
        </p>
      )}
    </div>
  );
}
