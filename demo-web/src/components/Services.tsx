// The live services, from the gateways' service registry (GET /services).
import { usePolled } from "../lib/gateway";

interface Instance {
  instance: string;
  channels: string[];
  version: string;
}

interface ServicesAnswer {
  services: Record<string, Instance[]>;
}

/** A status-bar item: how many services are live, and a list of them with their channels. */
export function ServicesStatus({ user }: { user: string }) {
  const answer = usePolled<ServicesAnswer>("/services", user, 3000);
  const names = Object.keys(answer?.services ?? {});
  return (
    <details className="status-item controls-menu" data-testid="status-services" data-count={answer ? names.length : ""}>
      <summary>
        <span className="muted">services</span> <strong>{answer ? names.length : "…"}</strong>
      </summary>
      <div className="controls-popover">
        {names.length === 0 && <p className="small muted">No service is announced: requests get no_service.</p>}
        {names.map((name) => {
          const instances = answer?.services[name] ?? [];
          const channels = [...new Set(instances.flatMap((i) => i.channels))];
          return (
            <div key={name} className="control-row" data-testid="service-row" data-name={name} data-channels={channels.join(",")}>
              <span className="dot dot-connected" /> {name}{" "}
              <span className="muted small">
                ×{instances.length} · {channels.join(", ") || "no channel"} · v{instances[0]?.version}
              </span>
            </div>
          );
        })}
      </div>
    </details>
  );
}
