//! The external HTTP API (`[http_api]`, off by default), for backends that do not speak
//! AMQP, as the source system's port-4000 API was:
//!
//! - `POST /external/{channel}`: publishes to the channel's services as a client's
//!   `publish` does (the same checks and headers, [`inbound::prepare`]); `202` once
//!   RabbitMQ confirmed it.
//! - `POST /publish`: a message to clients (broadcast, groups, users, events) on
//!   `warren.out`, as a service publishes; `202` once confirmed, `503` when no confirm
//!   came within [`PUBLISH_CONFIRM_WAIT`] (the message may still arrive).
//! - `POST /request/{channel}`: a request to the channel's services; `200` with the
//!   service's reply, which comes back over RabbitMQ's direct reply-to.
//!
//! Callers authenticate with `Authorization: Bearer <key>` (an API key, or with
//! `accept_jwt` a token the gateway's verifier accepts). Every refusal is a JSON body
//! `{"code": "<registry code>", "message": "..."}` with the status of [`status_of`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use lapin::options::BasicPublishOptions;
use lapin::types::{FieldTable, ShortString};
use lapin::BasicProperties;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use warren_protocol::amqp::{self, cc_header, keys, validate_client_headers, HeaderError};
use warren_protocol::{Distribution, ErrorCode, Headers, Raw, ServerFrame};

use crate::auth::{AuthError, Identity};
use crate::delivery::{self, Incoming};
use crate::direct_reply::DIRECT_REPLY_TO;
use crate::inbound::{self, now_ms_epoch, short, text, text_array, Outcome, Refusal};
use crate::listener::PeerAddr;
use crate::metrics;
use crate::server::Shared;

/// The user an API key acts as (`x-warren-user`).
pub const API_USER: &str = "http-api";

/// How long `POST /publish` and `POST /external` wait for RabbitMQ's confirm before
/// answering `503 broker_unavailable` and taking the channel out of the pool
/// ([`crate::broker::Broker::retire_publisher`]); the service library's default
/// `publish_timeout` too.
pub const PUBLISH_CONFIRM_WAIT: Duration = inbound::CONFIRM_WAIT;

/// The HTTP status of a refusal with `code`.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Malformed | ErrorCode::Invalid | ErrorCode::UnknownType => {
            StatusCode::BAD_REQUEST
        }
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::UnknownChannel => StatusCode::NOT_FOUND,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        // Well-formed, but nothing would receive it / the service said no.
        ErrorCode::NoRoute | ErrorCode::Rejected => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unsupported => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::NoService
        | ErrorCode::BrokerUnavailable
        | ErrorCode::AuthUnavailable
        | ErrorCode::Nacked => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code.as_str(), "message": self.message });
        let mut response = (status_of(self.code), Json(body)).into_response();
        if self.code == ErrorCode::Unauthorized {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, "Bearer".parse().expect("a header value"));
        }
        response
    }
}

/// The API's routes and their methods ([`router`]).
pub(crate) const ROUTES: &[crate::routes::Route] = &[
    ("/external/{channel}", "POST"),
    ("/publish", "POST"),
    ("/request/{channel}", "POST"),
];

/// The router of the API's listener of its own: [`router`], and JSON for a request
/// none of its routes takes.
pub(crate) fn own_router(shared: Arc<Shared>) -> Router {
    crate::routes::answer_the_rest(router(shared), ROUTES.to_vec())
}

/// The API's routes ([`ROUTES`]), merged into a WebSocket listener's router or served
/// on a listener of their own ([`own_router`]).
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/external/{channel}", post(external))
        .route("/publish", post(publish))
        .route("/request/{channel}", post(request))
        .with_state(shared)
}

/// Who called: an API key holder, or the user of a verified token.
struct Caller {
    identity: Identity,
    by_key: bool,
    /// A token caller's place among its user's calls in progress, for the call.
    _slot: Option<crate::limits::CallSlot>,
}

/// Whether `a` and `b` are equal, in time that does not depend on where they differ
/// (or on their lengths: both are hashed first).
fn same_key(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Whether `token` is one of the API keys (with the API on). Every key is compared,
/// matching or not.
pub(crate) fn is_api_key(shared: &Shared, token: &str) -> bool {
    let api = &shared.config.http_api;
    api.enabled
        && api
            .api_keys
            .iter()
            .fold(false, |found, key| same_key(key, token) | found)
}

/// Authenticates a call by its `Authorization: Bearer` header.
///
/// A credential refused costs the peer's address one of its
/// `max_new_connections_per_ip_per_s` (as a new connection would); once they are
/// spent, its calls are refused `429 overloaded` before their credential is looked at,
/// so keys cannot be guessed faster than that. An accepted credential costs nothing.
async fn caller(shared: &Shared, headers: &HeaderMap, peer: SocketAddr) -> Result<Caller, Refusal> {
    if *shared.shutdown.borrow() {
        return Err(Refusal::new(
            ErrorCode::BrokerUnavailable,
            "the gateway is shutting down",
        ));
    }
    let address = crate::server::limited_address(&shared.config, &peer);
    if let Some(ip) = address {
        if let Err(refused) = shared.limiter.may_present_credential(ip, Instant::now()) {
            metrics::add(&shared.metrics.refused_limit, 1);
            let limit = shared.config.max_new_connections_per_ip_per_s;
            return Err(Refusal::new(
                ErrorCode::Overloaded,
                format!(
                    "too many refused credentials from this address: {}",
                    refused.message(limit)
                ),
            ));
        }
    }
    let unauthorized = |m: &str| {
        if let Some(ip) = address {
            shared.limiter.credential_refused(ip, Instant::now());
        }
        Refusal::new(ErrorCode::Unauthorized, m)
    };
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::server::bearer)
        .ok_or_else(|| unauthorized("an API key is required: Authorization: Bearer <key>"))?;
    let api = &shared.config.http_api;
    if is_api_key(shared, token) {
        return Ok(Caller {
            identity: Identity::unrestricted(API_USER),
            by_key: true,
            _slot: None,
        });
    }
    if !api.accept_jwt {
        metrics::add(&shared.metrics.refused_token, 1);
        return Err(unauthorized("the API key is not valid"));
    }
    match shared.verifier.verify_fetching(Some(token), "").await {
        Ok(identity) => {
            // As much as one more session of the user may do: the HTTP API is no way
            // around the WebSocket limits.
            let owner = crate::session::owner_of(
                &identity.user,
                inbound::tenant_of(&shared.config, &identity),
            );
            let slot = shared
                .http_calls
                .admit(&owner, std::time::Instant::now())
                .map_err(|refused| {
                    metrics::add(&shared.metrics.refused_limit, 1);
                    Refusal::new(ErrorCode::Overloaded, refused.message())
                })?;
            Ok(Caller {
                identity,
                by_key: false,
                _slot: Some(slot),
            })
        }
        // The issuer's keys could not be fetched: not a refused token (503, retryable).
        Err(e @ AuthError::Unavailable(_)) => {
            Err(Refusal::new(ErrorCode::AuthUnavailable, e.to_string()))
        }
        Err(e) => {
            metrics::add(&shared.metrics.refused_token, 1);
            Err(unauthorized(&format!(
                "neither an API key nor a valid token: {e}"
            )))
        }
    }
}

/// Reads the body (at most `max_body_bytes`) and decodes it.
///
/// The body has `header_read_timeout_ms` to arrive, as the headers had: a caller that
/// trickles it would hold its connection and a task for ever.
async fn read_json<T: DeserializeOwned>(shared: &Shared, body: Body) -> Result<T, Refusal> {
    let max = shared.config.http_api.max_body_bytes;
    let wait = shared.config.header_read_timeout_ms;
    let read =
        tokio::time::timeout(Duration::from_millis(wait), axum::body::to_bytes(body, max)).await;
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) if is_over_limit(&e) => {
            return Err(Refusal::new(
                ErrorCode::TooLarge,
                format!("the body is larger than {max} bytes (http_api.max_body_bytes)"),
            ))
        }
        Ok(Err(e)) => {
            return Err(Refusal::new(
                ErrorCode::Malformed,
                format!("the body could not be read: {e}"),
            ))
        }
        Err(_) => {
            return Err(Refusal::new(
                ErrorCode::Timeout,
                format!("the body did not arrive within {wait} ms (header_read_timeout_ms)"),
            ))
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        let code = match e.classify() {
            serde_json::error::Category::Data => ErrorCode::Invalid,
            _ => ErrorCode::Malformed,
        };
        Refusal::new(code, e.to_string())
    })
}

/// Whether reading a body failed because it passed `to_bytes`' limit.
fn is_over_limit(e: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The body of `POST /external/{channel}` and `POST /request/{channel}`.
#[derive(Deserialize)]
struct ToServices {
    /// Makes `message_id` = `<user>:<id>` stable across retries; a fresh one when
    /// absent.
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    /// `/external` only.
    #[serde(default)]
    distribution: Option<Distribution>,
    #[serde(default)]
    headers: Headers,
    /// `/request` only.
    #[serde(default)]
    timeout_ms: Option<u64>,
    message: Raw,
}

impl ToServices {
    /// The inbound message this body describes: a publish, or with `request` a
    /// request (which has no `distribution`).
    fn inbound<'a>(
        &'a self,
        id: &'a str,
        channel: &'a str,
        request: Option<inbound::ReplyTo>,
    ) -> inbound::Message<'a> {
        inbound::Message {
            id,
            channel,
            subject: self.subject.as_deref(),
            distribution: self.distribution.as_ref().filter(|_| request.is_none()),
            headers: &self.headers,
            publish_target: None,
            request,
        }
    }
}

/// The `200` body of `POST /request/{channel}`.
#[derive(Serialize)]
struct Answer<'a> {
    id: &'a str,
    headers: &'a Headers,
    message: &'a RawValue,
}

/// The body of `POST /publish`.
#[derive(Deserialize)]
struct ToClients {
    channel: String,
    #[serde(default)]
    broadcast: bool,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    events: Vec<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    headers: Headers,
    /// In tenant mode, the tenant whose sessions receive it (`x-warren-tenant`);
    /// without it, only sessions without a tenant do.
    #[serde(default)]
    tenant: Option<String>,
    message: Raw,
}

fn fresh_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The caller and the body of a call to a channel's services (`/external`,
/// `/request`).
async fn to_services(
    shared: &Shared,
    channel: &str,
    headers: &HeaderMap,
    peer: SocketAddr,
    body: Body,
) -> Result<(Caller, ToServices), Refusal> {
    let caller = caller(shared, headers, peer).await?;
    inbound::check_channel(&shared.config, None, channel)?;
    Ok((caller, read_json(shared, body).await?))
}

/// A refusal unless RabbitMQ took the message.
fn taken(shared: &Shared, outcome: Outcome) -> Result<(), Refusal> {
    metrics::add(&shared.metrics.publishes, 1);
    match outcome.refusal() {
        Some(r) => Err(r),
        None => Ok(()),
    }
}

/// [`taken`] for a publish, once its confirm came: at most [`PUBLISH_CONFIRM_WAIT`];
/// without a confirm by then, or with a nack, the channel is taken out of use
/// ([`inbound::Pending::outcome_within`]).
async fn confirmed(shared: &Shared, pending: inbound::Pending) -> Result<(), Refusal> {
    let outcome = pending
        .outcome_within(&shared.broker, PUBLISH_CONFIRM_WAIT)
        .await;
    taken(shared, outcome)
}

/// `202` naming the call's id and the `message_id` it was published with.
fn accepted(id: &str, message_id: &str) -> Response {
    let body = serde_json::json!({ "id": id, "message_id": message_id });
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// The `{channel}` of a path; a path axum cannot decode (`%FF`) is refused `invalid`
/// in a JSON body like every other refusal.
fn channel_of(path: Result<Path<String>, PathRejection>) -> Result<String, Refusal> {
    path.map(|Path(channel)| channel)
        .map_err(|e| Refusal::new(ErrorCode::Invalid, e.body_text()))
}

/// `POST /external/{channel}`: a `publish` from outside.
async fn external(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(PeerAddr(peer, _)): ConnectInfo<PeerAddr>,
    channel: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    // Counted before the shutdown check in `caller`: a call that passed it is waited
    // for by a shutdown (`Gateway::shutdown`).
    let _call = shared.api_calls.enter();
    let channel = channel_of(channel)?;
    let (caller, m) = to_services(&shared, &channel, &headers, peer, body).await?;
    let id = m.id.clone().unwrap_or_else(fresh_id);
    let session = format!("http-{}", fresh_id());
    let sender = inbound::Sender {
        identity: &caller.identity,
        session: &session,
    };
    let message = m.inbound(&id, &channel, None);
    let sent = async {
        let pending =
            inbound::send(&shared, None, &sender, &message, m.message.get().as_bytes()).await?;
        confirmed(&shared, pending).await
    };
    match sent.await {
        Ok(()) => {}
        Err(refusal) if refusal.code.retry() => return Ok(refused_naming(refusal, &id)),
        Err(refusal) => return Err(refusal),
    }
    Ok(accepted(
        &id,
        &inbound::message_id(&shared.config, &caller.identity, &id),
    ))
}

/// `POST /request/{channel}`: a `request` from outside, answered with the reply.
async fn request(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(PeerAddr(peer, _)): ConnectInfo<PeerAddr>,
    channel: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    // Counted before the shutdown check in `caller`: a call that passed it is waited
    // for by a shutdown (`Gateway::shutdown`).
    let _call = shared.api_calls.enter();
    let channel = channel_of(channel)?;
    let (caller, m) = to_services(&shared, &channel, &headers, peer, body).await?;
    let timeout = inbound::request_timeout(&shared.config, m.timeout_ms)?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout);
    let id = m.id.clone().unwrap_or_else(fresh_id);
    let call_id = fresh_id();
    let session = format!("http-{call_id}");
    let sender = inbound::Sender {
        identity: &caller.identity,
        session: &session,
    };
    let reply_to = inbound::ReplyTo {
        reply_to: DIRECT_REPLY_TO.to_string(),
        correlation_id: call_id.clone(),
        timeout_ms: timeout,
    };
    let message = m.inbound(&id, &channel, Some(reply_to));
    let sent = async {
        // Sized against one frame like every other publish: RabbitMQ would close the
        // connection the request goes out on (every publish of the gateway with it).
        let prepared = inbound::checked(&shared, None, &sender, &message).await?;
        let call = shared
            .http_replies
            .begin(call_id)
            .await
            .map_err(|e| Refusal::new(ErrorCode::BrokerUnavailable, e))?;
        let pending = prepared
            .publish(&call.channel, m.message.get().as_bytes())
            .await?;
        Ok::<_, Refusal>((call, pending.verdict().await))
    };
    // The request's timeout bounds the whole call: its checks (a look at the queue's
    // consumers), the channel it goes out on, its confirm and its reply. A half-opened
    // channel given up here is closed by lapin when dropped.
    let Ok(sent) = tokio::time::timeout_at(deadline, sent).await else {
        // What it waited for, when the gateway knows: RabbitMQ away, or blocking
        // publishes (a resource alarm), is `broker_unavailable` as for any publish.
        return Err(match shared.broker.known_obstacle() {
            Some(e) => Refusal::new(
                ErrorCode::BrokerUnavailable,
                format!("{e} (the request was not sent within its {timeout} ms)"),
            ),
            None => Refusal::new(
                ErrorCode::Timeout,
                format!("RabbitMQ did not take the request within {timeout} ms"),
            ),
        });
    };
    let (call, outcome) = sent?;
    if matches!(outcome, Outcome::Nacked) {
        shared
            .http_replies
            .retire(
                call.channel.channel(),
                Duration::from_millis(shared.config.max_request_timeout_ms),
            )
            .await;
    }
    taken(&shared, outcome)?;
    let answer = match tokio::time::timeout_at(deadline, call.answer()).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(Refusal::new(ErrorCode::BrokerUnavailable, e)),
        Err(_) => {
            return Err(Refusal::new(
                ErrorCode::Timeout,
                format!("no reply within {timeout} ms"),
            ))
        }
    };
    let frame = delivery::to_frame(
        Incoming {
            exchange: "",
            routing_key: answer.routing_key.as_str(),
            redelivered: false,
            properties: &answer.properties,
            body: &answer.data,
            position: None,
            stream: None,
            also: &[],
        },
        0,
    );
    let (headers, message) = match frame {
        ServerFrame::Reply(r) => (r.headers, r.message),
        ServerFrame::Error(e) => return Err(Refusal::new(e.code, e.message)),
        ServerFrame::Deliver(d) => (d.headers, d.message),
        _ => return Err(Refusal::new(ErrorCode::Internal, "an unexpected answer")),
    };
    // Serialised from the raw value: the service's bytes pass through unchanged.
    let reply = Answer {
        id: &id,
        headers: &headers,
        message: &message,
    };
    Ok((StatusCode::OK, Json(reply)).into_response())
}

/// `POST /publish`: a message to clients, as a service publishes it (API keys only: a
/// token's user may not speak for a service).
async fn publish(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(PeerAddr(peer, _)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    // Counted before the shutdown check in `caller`: a call that passed it is waited
    // for by a shutdown (`Gateway::shutdown`).
    let _call = shared.api_calls.enter();
    let caller = caller(&shared, &headers, peer).await?;
    if !caller.by_key {
        return Err(Refusal::new(
            ErrorCode::Forbidden,
            "POST /publish needs an API key; a user token may not publish to clients",
        ));
    }
    let m: ToClients = read_json(&shared, body).await?;
    inbound::check_channel(&shared.config, None, &m.channel)?;
    let invalid = |e: String| Refusal::new(ErrorCode::Invalid, e);
    let mut targets = keys::outbound(&m.channel, m.broadcast, &m.groups, &m.users, &m.events)
        .map_err(|e| invalid(e.to_string()))?;
    if targets.is_empty() {
        return Err(invalid(
            "no target: name broadcast, groups, users or events".into(),
        ));
    }
    validate_client_headers(m.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()))).map_err(
        |e| match e {
            HeaderError::Reserved(_) => Refusal::new(ErrorCode::Forbidden, e.to_string()),
            _ => invalid(e.to_string()),
        },
    )?;
    let routing_key = short("routing key", targets.remove(0))?;
    let id = m.id.clone().unwrap_or_else(fresh_id);
    inbound::check_id(&id)?;
    let message_id = format!("{API_USER}:{id}");
    let mut table = FieldTable::default();
    for (k, v) in &m.headers {
        table.insert(ShortString::from(k.as_str()), text(v));
    }
    table.insert(amqp::H_USER.into(), text(API_USER));
    if let Some(tenant) = &m.tenant {
        let tenants = &shared.config.tenants;
        if !tenants.enabled {
            return Err(invalid(
                "`tenant` needs tenant mode ([tenants] enabled)".into(),
            ));
        }
        if !tenants.tenant.contains_key(tenant) {
            return Err(Refusal::new(
                ErrorCode::NoRoute,
                format!(
                    "tenant `{}` is not configured",
                    crate::inbound::truncate(tenant, 64)
                ),
            ));
        }
        table.insert(amqp::H_TENANT.into(), text(tenant));
    }
    if !targets.is_empty() {
        // `CC` for queue bindings, the same keys as a string for the outbound stream.
        table.insert(ShortString::from("CC"), text_array(&targets));
        table.insert(amqp::H_CC.into(), text(&cc_header(&targets)));
    }
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_app_id("warren-gateway".into())
        .with_message_id(short("message id", message_id.clone())?)
        .with_timestamp(now_ms_epoch() / 1000)
        .with_headers(table);
    inbound::fits_one_frame(&properties, shared.broker.frame_max())?;
    let sent = async {
        let channel = shared
            .broker
            .stream_publisher(&m.channel)
            .await
            .map_err(|e| Refusal::new(ErrorCode::BrokerUnavailable, e.to_string()))?;
        // Not mandatory: a message no client is subscribed to is dropped, as a
        // broadcast nobody listens to should be.
        let pending = inbound::Pending::publish(
            &channel,
            ShortString::from(shared.names.outbound_exchange()),
            routing_key,
            BasicPublishOptions::default(),
            m.message.get().as_bytes().to_vec(),
            properties,
        )
        .await?;
        confirmed(&shared, pending).await
    };
    match sent.await {
        Ok(()) => Ok(accepted(&id, &message_id)),
        Err(refusal) => Ok(refused_naming(refusal, &id)),
    }
}

/// A refusal worth trying again (`broker_unavailable`, `nacked`, ...) of a call that
/// has an id, which the body names: a caller that sent none learns the one it was
/// given, so that trying again with it keeps the `message_id`, and a message that
/// did reach RabbitMQ is dropped as a copy by its receivers.
fn refused_naming(refusal: Refusal, id: &str) -> Response {
    let body = serde_json::json!({
        "code": refusal.code.as_str(),
        "message": refusal.message,
        "id": id,
    });
    (status_of(refusal.code), Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_compared_whole() {
        assert!(same_key("warren-demo-key", "warren-demo-key"));
        assert!(!same_key("warren-demo-key", "warren-demo-ke"));
        assert!(!same_key("warren-demo-key", "warren-demo-kez"));
        assert!(!same_key("", "x"));
    }

    #[test]
    fn refusals_map_to_the_documented_statuses() {
        let table = [
            (ErrorCode::Malformed, 400),
            (ErrorCode::Invalid, 400),
            (ErrorCode::Unauthorized, 401),
            (ErrorCode::Forbidden, 403),
            (ErrorCode::UnknownChannel, 404),
            (ErrorCode::TooLarge, 413),
            (ErrorCode::NoRoute, 422),
            (ErrorCode::Rejected, 422),
            (ErrorCode::Overloaded, 429),
            (ErrorCode::BrokerUnavailable, 503),
            (ErrorCode::NoService, 503),
            (ErrorCode::Timeout, 504),
            (ErrorCode::Internal, 500),
        ];
        for (code, status) in table {
            assert_eq!(status_of(code).as_u16(), status, "{code}");
        }
    }
}
