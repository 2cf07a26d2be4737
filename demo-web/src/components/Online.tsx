// Who is online in a chat room, from the gateways' presence view (GET /presence).
import { usePolledAnswer } from "../lib/gateway";

interface PresenceAnswer {
  users: string[];
}

/**
 * The users online in `group` of `channel` (or the whole channel), refreshed every 2 s.
 * A group the user's token does not grant is refused (403 `forbidden`): that is shown,
 * and not asked again.
 */
export function OnlineList({ user, channel, group }: { user: string; channel: string; group?: string }) {
  const query = `/presence?channel=${encodeURIComponent(channel)}${group ? `&group=${encodeURIComponent(group)}` : ""}`;
  const { value: answer, refused } = usePolledAnswer<PresenceAnswer>(query, user, 2000);
  const users = answer?.users ?? [];
  return (
    <div
      className="online"
      data-testid="online-list"
      data-count={answer ? users.length : ""}
      data-refused={refused?.code ?? ""}
    >
      <span className="muted small">online:</span>{" "}
      {refused ? (
        <span className="error-text small" data-testid="online-refused" data-code={refused.code}>
          not shown: {refused.code}: {refused.message}
        </span>
      ) : answer === null ? (
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
