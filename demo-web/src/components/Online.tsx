// Who is online in a chat room, from the gateways' presence view (GET /presence).
import { usePolled } from "../lib/gateway";

interface PresenceAnswer {
  users: string[];
}

/** The users online in `group` of `channel` (or the whole channel), refreshed every 2 s. */
export function OnlineList({ user, channel, group }: { user: string; channel: string; group?: string }) {
  const query = `/presence?channel=${encodeURIComponent(channel)}${group ? `&group=${encodeURIComponent(group)}` : ""}`;
  const answer = usePolled<PresenceAnswer>(query, user, 2000);
  const users = answer?.users ?? [];
  return (
    <div className="online" data-testid="online-list" data-count={answer ? users.length : ""}>
      <span className="muted small">online:</span>{" "}
      {answer === null ? (
        <span className="muted small">…</span>
      ) : (
        users.map((u) => (
          <span key={u} className={`pill ${u === user ? "pill-muted" : ""}`} data-testid="online-user" data-user={u}>
            {u}
          </span>
        ))
      )}
    </div>
  );
}
