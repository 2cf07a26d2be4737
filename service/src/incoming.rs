//! A message a service received from `IN_<channel>`: who sent it (from the `x-warren-*`
//! headers the gateway sets), whom it is addressed to, whether it is a request, and
//! the raw JSON bytes of the application message, never parsed on the way.

use std::collections::BTreeMap;

use bytes::Bytes;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use warren_protocol::amqp::{
    keys, H_BROADCAST, H_CHANNEL, H_DIRECT, H_GATEWAY, H_GROUPS, H_REQUEST_ID, H_SESSION,
    H_SUBJECT, H_TENANT, H_TYPE, H_USER,
};
use warren_protocol::Distribution;

/// The AMQP header quorum queues set on a redelivered message: how many times it was
/// delivered before.
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// A message received by a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The queue it was consumed from, e.g. `IN_CHAT`.
    pub queue: String,
    /// The channel (header `x-warren-channel`, else the first routing-key segment).
    pub channel: String,
    /// The AMQP routing key, e.g. `chat` or `chat.room`.
    pub routing_key: String,
    /// The subject (header `x-warren-subject`, else what follows the channel in the
    /// routing key).
    pub subject: Option<String>,
    /// The session that sent it.
    pub session: Option<String>,
    /// The user that sent it.
    pub user: Option<String>,
    /// The gateway node that published it.
    pub gateway: Option<String>,
    /// Whom the client addressed (broadcast, groups, direct).
    pub distribution: Distribution,
    /// The AMQP `message_id` (`<user>:<frame id>` from a gateway).
    pub message_id: Option<String>,
    /// Where to send the reply, for a request.
    pub reply_to: Option<String>,
    /// Copied onto the reply, for a request.
    pub correlation_id: Option<String>,
    /// Other headers, rendered as strings (the client's own headers among them).
    pub headers: BTreeMap<String, String>,
    /// True when RabbitMQ delivered this message before.
    pub redelivered: bool,
    /// Deliveries before this one, as counted by a quorum queue (`x-delivery-count`).
    pub delivery_count: u32,
    /// The application message: raw JSON bytes, exactly as the client sent them.
    pub body: Bytes,
}

impl Incoming {
    /// Builds an `Incoming` from the parts of an AMQP delivery.
    pub fn from_parts(
        queue: &str,
        routing_key: &str,
        redelivered: bool,
        properties: &BasicProperties,
        body: impl Into<Bytes>,
    ) -> Self {
        let empty = FieldTable::default();
        let table = properties.headers().as_ref().unwrap_or(&empty);
        let get = |name: &str| table.inner().get(name);
        let text = |name: &str| get(name).and_then(header_text);

        let channel = text(H_CHANNEL).unwrap_or_else(|| keys::channel_of(routing_key).to_string());
        let subject = text(H_SUBJECT).or_else(|| {
            routing_key
                .strip_prefix(channel.as_str())
                .and_then(|rest| rest.strip_prefix('.'))
                .filter(|rest| !rest.is_empty())
                .map(str::to_string)
        });
        let distribution = Distribution {
            broadcast: get(H_BROADCAST).is_some_and(header_bool),
            groups: get(H_GROUPS).map(header_list).unwrap_or_default(),
            direct: get(H_DIRECT).map(header_list).unwrap_or_default(),
        };
        let internal = [
            H_CHANNEL,
            H_SUBJECT,
            H_SESSION,
            H_USER,
            H_GATEWAY,
            H_BROADCAST,
            H_GROUPS,
            H_DIRECT,
            DELIVERY_COUNT_HEADER,
        ];
        let headers = table
            .inner()
            .iter()
            .filter(|(k, _)| !internal.contains(&k.as_str()))
            .filter_map(|(k, v)| header_text(v).map(|v| (k.to_string(), v)))
            .collect();

        Incoming {
            queue: queue.to_string(),
            channel,
            routing_key: routing_key.to_string(),
            subject,
            session: text(H_SESSION),
            user: text(H_USER),
            gateway: text(H_GATEWAY),
            distribution,
            message_id: properties.message_id().as_ref().map(|s| s.to_string()),
            reply_to: properties
                .reply_to()
                .as_ref()
                .map(|s| s.to_string())
                .filter(|s| !s.is_empty()),
            correlation_id: properties
                .correlation_id()
                .as_ref()
                .map(|s| s.to_string())
                .or_else(|| text(H_REQUEST_ID)),
            headers,
            redelivered,
            delivery_count: get(DELIVERY_COUNT_HEADER)
                .and_then(header_u64)
                .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
            body: body.into(),
        }
    }

    /// The sender's tenant (tenant mode: header `x-warren-tenant`, set by the gateway
    /// from the verified identity), if any. [`Outgoing::relay`](crate::Outgoing::relay)
    /// keeps it, so a relay reaches only that tenant's clients.
    pub fn tenant(&self) -> Option<&str> {
        self.headers.get(H_TENANT).map(String::as_str)
    }

    /// The message type that routed it (tenant mode: header `x-warren-type`; `""` for
    /// a tenant's general queue), if any.
    pub fn message_type(&self) -> Option<&str> {
        self.headers.get(H_TYPE).map(String::as_str)
    }

    /// True for a request: it names a `reply_to` queue (and normally a
    /// `correlation_id`) and expects exactly one reply.
    pub fn is_request(&self) -> bool {
        self.reply_to.is_some()
    }

    /// The message as raw JSON, borrowed from the body (checked, not re-serialised).
    ///
    /// # Errors
    /// When the body is not valid JSON.
    pub fn raw(&self) -> Result<&RawValue, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The message parsed into `T`, for services that look into it.
    ///
    /// # Errors
    /// When the body is not JSON of that shape.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// A header value as text: strings as they are, numbers and booleans printed.
pub fn header_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        AMQPValue::Boolean(b) => Some(b.to_string()),
        AMQPValue::ShortShortInt(n) => Some(n.to_string()),
        AMQPValue::ShortShortUInt(n) => Some(n.to_string()),
        AMQPValue::ShortInt(n) => Some(n.to_string()),
        AMQPValue::ShortUInt(n) => Some(n.to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        AMQPValue::LongUInt(n) => Some(n.to_string()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        AMQPValue::Float(n) => Some(n.to_string()),
        AMQPValue::Double(n) => Some(n.to_string()),
        AMQPValue::Timestamp(n) => Some(n.to_string()),
        _ => None,
    }
}

fn header_bool(value: &AMQPValue) -> bool {
    match value {
        AMQPValue::Boolean(b) => *b,
        other => header_text(other).is_some_and(|s| s == "true" || s == "1"),
    }
}

fn header_u64(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::Timestamp(n) => Some(*n),
        other => header_text(other).and_then(|s| s.parse().ok()),
    }
}

/// A list header: an AMQP array of strings, or (from other clients) a JSON array or
/// a comma-separated string.
fn header_list(value: &AMQPValue) -> Vec<String> {
    match value {
        AMQPValue::FieldArray(a) => a.as_slice().iter().filter_map(header_text).collect(),
        other => match header_text(other) {
            Some(s) if s.trim_start().starts_with('[') => {
                serde_json::from_str(&s).unwrap_or_default()
            }
            Some(s) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            None => Vec::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldArray, LongString, ShortString};

    use super::*;

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(v))
    }

    fn props(headers: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert(ShortString::from(*k), v.clone());
        }
        BasicProperties::default().with_headers(table)
    }

    #[test]
    fn gateway_headers_become_sender_and_distribution() {
        let p = props(&[
            (H_SESSION, s("s1")),
            (H_USER, s("alice")),
            (H_GATEWAY, s("gw-1")),
            (H_CHANNEL, s("chat")),
            (H_SUBJECT, s("room")),
            (H_BROADCAST, AMQPValue::Boolean(true)),
            (
                H_GROUPS,
                AMQPValue::FieldArray(FieldArray::from(vec![s("g1"), s("g2")])),
            ),
            (
                H_DIRECT,
                AMQPValue::FieldArray(FieldArray::from(vec![s("bob")])),
            ),
            ("trace", s("abc")),
        ])
        .with_message_id("alice:1".into());
        let m = Incoming::from_parts("IN_CHAT", "chat.room", false, &p, b"{\"t\":1}".to_vec());
        assert_eq!(m.channel, "chat");
        assert_eq!(m.subject.as_deref(), Some("room"));
        assert_eq!(m.session.as_deref(), Some("s1"));
        assert_eq!(m.user.as_deref(), Some("alice"));
        assert_eq!(m.gateway.as_deref(), Some("gw-1"));
        assert!(m.distribution.broadcast);
        assert_eq!(m.distribution.groups, vec!["g1", "g2"]);
        assert_eq!(m.distribution.direct, vec!["bob"]);
        assert_eq!(m.message_id.as_deref(), Some("alice:1"));
        assert_eq!(m.headers.get("trace").map(String::as_str), Some("abc"));
        assert!(!m.headers.contains_key(H_USER));
        assert!(!m.is_request());
        assert_eq!(m.raw().unwrap().get(), "{\"t\":1}");
    }

    #[test]
    fn reply_to_and_correlation_id_make_a_request() {
        let p = BasicProperties::default()
            .with_reply_to("warren.session.s1".into())
            .with_correlation_id("r1".into());
        let m = Incoming::from_parts("IN_TICKETS", "tickets", false, &p, b"{}".to_vec());
        assert!(m.is_request());
        assert_eq!(m.correlation_id.as_deref(), Some("r1"));
        assert_eq!(m.channel, "tickets");
        assert_eq!(m.subject, None);
    }

    #[test]
    fn without_gateway_headers_the_channel_and_subject_come_from_the_routing_key() {
        let m = Incoming::from_parts(
            "IN_CHAT",
            "chat.a.b",
            true,
            &BasicProperties::default(),
            b"1".to_vec(),
        );
        assert_eq!(m.channel, "chat");
        assert_eq!(m.subject.as_deref(), Some("a.b"));
        assert!(m.redelivered);
        assert!(m.distribution.is_empty());
    }

    #[test]
    fn list_headers_from_other_clients_may_be_json_or_comma_separated() {
        let p = props(&[
            (H_GROUPS, s("[\"a\",\"b\"]")),
            (H_DIRECT, s("x, y")),
            (H_BROADCAST, s("true")),
            (DELIVERY_COUNT_HEADER, AMQPValue::LongLongInt(2)),
        ]);
        let m = Incoming::from_parts("IN_CHAT", "chat", false, &p, b"1".to_vec());
        assert_eq!(m.distribution.groups, vec!["a", "b"]);
        assert_eq!(m.distribution.direct, vec!["x", "y"]);
        assert!(m.distribution.broadcast);
        assert_eq!(m.delivery_count, 2);
    }

    #[test]
    fn the_body_is_kept_byte_for_byte() {
        let body = b"{ \"b\" : 2,\n  \"a\":1 }".to_vec();
        let m = Incoming::from_parts(
            "Q",
            "chat",
            false,
            &BasicProperties::default(),
            body.clone(),
        );
        assert_eq!(&m.body[..], &body[..]);
        assert_eq!(m.raw().unwrap().get(), std::str::from_utf8(&body).unwrap());
    }
}
