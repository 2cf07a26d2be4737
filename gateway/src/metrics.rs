//! Counters of one gateway, rendered at `GET /metrics` in the Prometheus text format:
//! connections and sessions (gauges), deliveries, client acknowledgements, publishes,
//! pending confirms, the outbound stream's slow and resuming sessions, broker
//! reconnects, and a histogram of the time from accept to `welcome`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use warren_protocol::ErrorCode;

/// The gateway's counters; every field is updated lock-free by connection tasks.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Frames `deliver`/`reply` sent to clients.
    pub deliveries: AtomicU64,
    /// Deliveries acknowledged by clients (and so to RabbitMQ).
    pub client_acks: AtomicU64,
    /// Messages published to RabbitMQ for clients.
    pub publishes: AtomicU64,
    /// Client frames whose broker confirm is awaited.
    pub confirms_pending: AtomicI64,
    /// Direct replies held until their client's delivery window has room.
    pub direct_replies_held: AtomicI64,
    /// Times an AMQP connection was re-established.
    pub broker_reconnects: AtomicU64,
    /// Times RabbitMQ blocked a connection (resource alarm).
    pub broker_blocked: AtomicU64,
    /// WebSockets opened with permessage-deflate (`permessage_deflate`).
    pub deflate_connections: AtomicU64,
    /// Publisher channels taken out of use after a nack or a missing confirm.
    pub publisher_channels_replaced: AtomicU64,
    /// WebSocket upgrades refused for their `Origin` (HTTP 403).
    pub refused_origin: AtomicU64,
    /// Tokens refused (`unauthorized`) at `hello` or `refresh`.
    pub refused_token: AtomicU64,
    /// Frames refused with `forbidden` (the identity may not do this).
    pub refused_forbidden: AtomicU64,
    /// Connections closed because their token expired without a `refresh`.
    pub token_expired: AtomicU64,
    /// Connections or sessions refused by a limit (`max_connections_per_ip`,
    /// `max_new_connections_per_ip_per_s`, `max_connections_per_user`,
    /// `max_pending_requests`).
    pub refused_limit: AtomicU64,
    /// Times a connection's reading was slowed by `max_frames_per_s`.
    pub throttled: AtomicU64,
    /// Connection tasks that panicked (a bug); their cleanup ran all the same.
    pub connection_panics: AtomicU64,
    /// Frames answered `no_service` (nobody answers on their channel).
    pub no_service: AtomicU64,
    /// Messages to users with no session anywhere, reported to their publisher.
    pub undelivered: AtomicU64,
    /// Presence events dropped from a full outbox (RabbitMQ away for long):
    /// `client.subscriptions` first, then the oldest.
    pub presence_dropped: AtomicU64,
    /// Stream outbound: times a session's live backlog filled and it fell back to
    /// catching up from the ring.
    pub stream_lagged: AtomicU64,
    /// Stream outbound: stream readers opened for sessions whose position was older
    /// than the ring.
    pub stream_readers: AtomicU64,
    /// Stream outbound: positions that aged out of retention before a session read them.
    pub stream_missed: AtomicU64,
    /// Stream outbound: readers for sessions behind a ring open now (at most
    /// `max_stream_readers`).
    pub stream_readers_open: AtomicI64,
    /// Stream outbound: times a reader waited for one of the `max_stream_readers` to
    /// close before it could open.
    pub stream_reader_waits: AtomicU64,
    /// Stream outbound: readers behind the ring given up because their session's
    /// client acknowledged nothing for a heartbeat interval.
    pub stream_reader_parks: AtomicU64,
    /// `error` frames sent to clients, by code (in [`ErrorCode::ALL`] order).
    errors: [AtomicU64; ERROR_SLOTS],
    /// Time from a connection's TCP accept to its `welcome` (sessions opened or
    /// resumed): what a client waits for on this gateway's side, queueing included.
    pub session_open: Histogram,
}

/// Upper bounds (seconds) of [`Histogram`]'s buckets; a last one is `+Inf`.
pub const OPEN_BUCKETS_S: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus histogram with the fixed buckets [`OPEN_BUCKETS_S`], updated lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative), the last one above every bound.
    buckets: [AtomicU64; OPEN_BUCKETS_S.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        let i = OPEN_BUCKETS_S
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(OPEN_BUCKETS_S.len());
        add(&self.buckets[i], 1);
        add(
            &self.sum_us,
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
        );
        add(&self.count, 1);
    }

    /// Writes the `_bucket` (cumulative), `_sum` and `_count` lines of `name`.
    fn render(&self, out: &mut String, name: &str, help: &str, node: &str) {
        let _ = writeln!(out, "# HELP warren_gateway_{name} {help}");
        let _ = writeln!(out, "# TYPE warren_gateway_{name} histogram");
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = OPEN_BUCKETS_S
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "warren_gateway_{name}_bucket{{node=\"{node}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "warren_gateway_{name}_sum{{node=\"{node}\"}} {sum}");
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "warren_gateway_{name}_count{{node=\"{node}\"}} {count}"
        );
    }
}

/// One counter per registry code, and one for codes this version does not know.
const ERROR_SLOTS: usize = ErrorCode::ALL.len() + 1;

impl Metrics {
    /// Counts one `error` frame with `code`.
    pub fn count_error(&self, code: ErrorCode) {
        let slot = ErrorCode::ALL
            .iter()
            .position(|c| *c == code)
            .unwrap_or(ERROR_SLOTS - 1);
        add(&self.errors[slot], 1);
    }

    /// `error` frames sent with `code` so far.
    pub fn errors_sent(&self, code: ErrorCode) -> u64 {
        ErrorCode::ALL
            .iter()
            .position(|c| *c == code)
            .map_or(0, |i| self.errors[i].load(Ordering::Relaxed))
    }
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    /// The Prometheus text exposition, with the gauges passed in.
    pub fn render(
        &self,
        node: &str,
        connections: usize,
        sessions: usize,
        broker_up: bool,
    ) -> String {
        let mut out = String::new();
        let label = format!("{{node=\"{node}\"}}");
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP warren_gateway_{name} {help}");
            let _ = writeln!(out, "# TYPE warren_gateway_{name} {kind}");
            let _ = writeln!(out, "warren_gateway_{name}{label} {value}");
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
        metric(
            "connections",
            "gauge",
            "Open WebSocket connections.",
            connections.to_string(),
        );
        metric(
            "sessions",
            "gauge",
            "Sessions served by this gateway.",
            sessions.to_string(),
        );
        metric(
            "broker_up",
            "gauge",
            "1 when both AMQP connections are open.",
            u8::from(broker_up).to_string(),
        );
        metric(
            "deliveries_total",
            "counter",
            "Messages sent to clients (deliver and reply frames).",
            get(&self.deliveries),
        );
        metric(
            "client_acks_total",
            "counter",
            "Deliveries acknowledged by clients.",
            get(&self.client_acks),
        );
        metric(
            "publishes_total",
            "counter",
            "Messages published to RabbitMQ for clients.",
            get(&self.publishes),
        );
        metric(
            "confirms_pending",
            "gauge",
            "Client frames awaiting their broker confirm.",
            self.confirms_pending
                .load(Ordering::Relaxed)
                .max(0)
                .to_string(),
        );
        metric(
            "direct_replies_held",
            "gauge",
            "Direct replies (request_replies = \"direct\") held until their client's delivery window has room.",
            self.direct_replies_held
                .load(Ordering::Relaxed)
                .max(0)
                .to_string(),
        );
        metric(
            "stream_lagged_total",
            "counter",
            "Sessions whose live backlog filled; they caught up from the ring.",
            get(&self.stream_lagged),
        );
        metric(
            "stream_readers_total",
            "counter",
            "Stream readers opened for sessions behind the ring.",
            get(&self.stream_readers),
        );
        metric(
            "stream_readers_open",
            "gauge",
            "Stream readers for sessions behind the ring open now (max_stream_readers).",
            self.stream_readers_open
                .load(Ordering::Relaxed)
                .max(0)
                .to_string(),
        );
        metric(
            "stream_reader_waits_total",
            "counter",
            "Stream readers that waited for one of max_stream_readers to close.",
            get(&self.stream_reader_waits),
        );
        metric(
            "stream_reader_parks_total",
            "counter",
            "Stream readers given up because their client acknowledged nothing for a heartbeat interval.",
            get(&self.stream_reader_parks),
        );
        metric(
            "stream_missed_total",
            "counter",
            "Stream positions that aged out before a session read them.",
            get(&self.stream_missed),
        );
        metric(
            "broker_reconnects_total",
            "counter",
            "AMQP connections re-established.",
            get(&self.broker_reconnects),
        );
        metric(
            "broker_blocked_total",
            "counter",
            "Times RabbitMQ blocked a connection (resource alarm).",
            get(&self.broker_blocked),
        );
        metric(
            "deflate_connections_total",
            "counter",
            "WebSockets opened with permessage-deflate.",
            get(&self.deflate_connections),
        );
        metric(
            "publisher_channels_replaced_total",
            "counter",
            "Publisher channels taken out of use after a nack or a missing confirm.",
            get(&self.publisher_channels_replaced),
        );
        metric(
            "refused_origin_total",
            "counter",
            "WebSocket upgrades refused for their Origin.",
            get(&self.refused_origin),
        );
        metric(
            "refused_token_total",
            "counter",
            "Tokens refused with unauthorized.",
            get(&self.refused_token),
        );
        metric(
            "refused_forbidden_total",
            "counter",
            "Frames refused with forbidden.",
            get(&self.refused_forbidden),
        );
        metric(
            "token_expired_total",
            "counter",
            "Connections closed with token_expired.",
            get(&self.token_expired),
        );
        metric(
            "refused_limit_total",
            "counter",
            "Connections, sessions or requests refused by a limit against abuse.",
            get(&self.refused_limit),
        );
        metric(
            "throttled_total",
            "counter",
            "Times a connection's reading was slowed by max_frames_per_s.",
            get(&self.throttled),
        );
        metric(
            "connection_panics_total",
            "counter",
            "Connection tasks that panicked; their cleanup ran all the same.",
            get(&self.connection_panics),
        );
        metric(
            "no_service_total",
            "counter",
            "Frames answered no_service: no live service and no consumer on the channel.",
            get(&self.no_service),
        );
        metric(
            "undelivered_total",
            "counter",
            "Messages to users with no session anywhere, reported to their publisher's reply_to.",
            get(&self.undelivered),
        );
        metric(
            "presence_events_dropped_total",
            "counter",
            "Presence events dropped from a full outbox while RabbitMQ did not take them.",
            get(&self.presence_dropped),
        );
        let _ = writeln!(
            out,
            "# HELP warren_gateway_errors_total Error frames sent to clients, by registry code."
        );
        let _ = writeln!(out, "# TYPE warren_gateway_errors_total counter");
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "warren_gateway_errors_total{{node=\"{node}\",code=\"{}\"}} {}",
                code.as_str(),
                get(&self.errors[i])
            );
        }
        self.session_open.render(
            &mut out,
            "session_open_seconds",
            "Time from TCP accept to welcome, per session opened or resumed.",
            node,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_counter_with_help_type_and_node_label() {
        let m = Metrics::default();
        add(&m.stream_lagged, 7);
        let text = m.render("gw-1", 2, 1, true);
        assert!(text.contains("warren_gateway_stream_lagged_total{node=\"gw-1\"} 7"));
        assert!(text.contains("# TYPE warren_gateway_sessions gauge"));
        assert!(text.contains("warren_gateway_broker_up{node=\"gw-1\"} 1"));
        assert_eq!(
            text.matches("# HELP").count(),
            text.matches("# TYPE").count()
        );
        m.count_error(ErrorCode::NoRoute);
        m.count_error(ErrorCode::NoRoute);
        let text = m.render("gw-1", 0, 0, true);
        assert!(text.contains("warren_gateway_errors_total{node=\"gw-1\",code=\"no_route\"} 2"));
        assert!(text.contains("warren_gateway_errors_total{node=\"gw-1\",code=\"forbidden\"} 0"));
        assert_eq!(m.errors_sent(ErrorCode::NoRoute), 2);
    }

    #[test]
    fn the_session_open_histogram_is_cumulative_with_sum_and_count() {
        let m = Metrics::default();
        for ms in [0, 3, 3, 40, 700, 60_000] {
            m.session_open.observe(std::time::Duration::from_millis(ms));
        }
        let text = m.render("gw-1", 0, 0, true);
        let line = |le: &str| {
            format!("warren_gateway_session_open_seconds_bucket{{node=\"gw-1\",le=\"{le}\"}} ")
        };
        assert!(text.contains("# TYPE warren_gateway_session_open_seconds histogram"));
        for (le, n) in [
            ("0.001", 1),
            ("0.005", 3),
            ("0.05", 4),
            ("0.5", 4),
            ("1", 5),
            ("10", 5),
            ("+Inf", 6),
        ] {
            assert!(
                text.contains(&format!("{}{n}\n", line(le))),
                "le={le} counts {n}:\n{text}"
            );
        }
        assert!(text.contains("warren_gateway_session_open_seconds_count{node=\"gw-1\"} 6\n"));
        assert!(text.contains("warren_gateway_session_open_seconds_sum{node=\"gw-1\"} 60.746\n"));
    }
}
