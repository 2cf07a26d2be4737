//! Demo `tickets`: a ticket desk by request/response, kept in memory.
//!
//! Requests (`message`):
//! - `{"op":"create","title":"..."}` → the new ticket `{"id":1,"title":"...","status":"open","created_by":"alice"}`
//! - `{"op":"list"}` → `{"tickets":[...]}` (by id)
//! - `{"op":"get","id":1}` → the ticket
//! - `{"op":"close","id":1}` → the ticket, `"status":"closed"` (closing twice is fine)
//!
//! An unknown op or a malformed message is refused with `invalid`; a missing ticket
//! with `rejected`. A plain publish (not a request) is applied all the same, without
//! an answer.
//!
//! In tenant mode each tenant has a desk of its own (the request's `x-warren-tenant`):
//! one tenant's users never see, get or close another's tickets.
//!
//! Every change is also announced to clients as a topic event whose message is the
//! ticket: `tickets.event.ticket.created` and `tickets.event.ticket.closed`
//! ([`EVENT_CREATED`], [`EVENT_CLOSED`]), so a page subscribed with `ticket.*` updates
//! its list without asking.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use warren_protocol::ErrorCode;

use crate::handler::{BoxFuture, Context, Handler, HandlerError, Outcome};
use crate::incoming::Incoming;
use crate::publisher::Outgoing;
use crate::target::Targets;

use super::DemoChannel;

/// The event announcing a new ticket (`tickets.event.ticket.created`).
pub const EVENT_CREATED: &str = "ticket.created";
/// The event announcing a closed ticket (`tickets.event.ticket.closed`).
pub const EVENT_CLOSED: &str = "ticket.closed";

/// Whether a ticket is open or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketStatus {
    /// Open.
    Open,
    /// Closed.
    Closed,
}

/// A ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// Number, from 1.
    pub id: u64,
    /// Title given at creation.
    pub title: String,
    /// Open or closed.
    pub status: TicketStatus,
    /// The user who created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

/// A ticket id as clients send it: a number or a numeric string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TicketId {
    Number(u64),
    Text(String),
}

impl TicketId {
    fn value(&self) -> Option<u64> {
        match self {
            TicketId::Number(n) => Some(*n),
            TicketId::Text(s) => s.trim().parse().ok(),
        }
    }
}

/// A request to the desk.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Op {
    Create { title: String },
    List,
    Get { id: TicketId },
    Close { id: TicketId },
}

/// Why the desk refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `invalid` or `rejected`.
    pub code: ErrorCode,
    /// Why.
    pub message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

/// What applying a request gave: the answer, and the event announcing the change
/// (`None` for a read).
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The JSON answer (for a change: the ticket, which is also the event's message).
    pub answer: serde_json::Value,
    /// The event name to publish, e.g. [`EVENT_CREATED`].
    pub event: Option<&'static str>,
}

impl Applied {
    fn read(answer: serde_json::Value) -> Self {
        Applied {
            answer,
            event: None,
        }
    }

    fn changed(answer: serde_json::Value, event: &'static str) -> Self {
        Applied {
            answer,
            event: Some(event),
        }
    }
}

/// The tickets, in memory. Sans-IO: takes a message, returns the answer and the event.
#[derive(Debug, Default)]
pub struct TicketBook {
    tickets: BTreeMap<u64, Ticket>,
    next_id: u64,
}

impl TicketBook {
    /// Applies one request (raw JSON) sent by `user`; returns the JSON answer and, for
    /// a change, the event to announce it with.
    ///
    /// # Errors
    /// A [`Refusal`]: `invalid` for malformed JSON, an unknown op or a missing field;
    /// `rejected` for a ticket that does not exist.
    pub fn apply(&mut self, message: &[u8], user: Option<&str>) -> Result<Applied, Refusal> {
        let op: Op = serde_json::from_slice(message).map_err(|e| {
            Refusal::new(
                ErrorCode::Invalid,
                format!("expected {{\"op\": \"create\"|\"list\"|\"get\"|\"close\", ...}}: {e}"),
            )
        })?;
        let to_json = |t: &Ticket| serde_json::to_value(t).expect("a ticket serialises");
        match op {
            Op::Create { title } => {
                if title.trim().is_empty() {
                    return Err(Refusal::new(ErrorCode::Invalid, "a ticket needs a title"));
                }
                self.next_id += 1;
                let ticket = Ticket {
                    id: self.next_id,
                    title,
                    status: TicketStatus::Open,
                    created_by: user.map(str::to_string),
                };
                info!(ticket = ticket.id, "ticket created");
                let out = to_json(&ticket);
                self.tickets.insert(ticket.id, ticket);
                Ok(Applied::changed(out, EVENT_CREATED))
            }
            Op::List => {
                let list: Vec<&Ticket> = self.tickets.values().collect();
                Ok(Applied::read(serde_json::json!({ "tickets": list })))
            }
            Op::Get { id } => self.find(&id).map(to_json).map(Applied::read),
            Op::Close { id } => {
                let n = self.find(&id)?.id;
                let ticket = self.tickets.get_mut(&n).expect("found above");
                ticket.status = TicketStatus::Closed;
                info!(ticket = n, "ticket closed");
                Ok(Applied::changed(to_json(ticket), EVENT_CLOSED))
            }
        }
    }

    fn find(&self, id: &TicketId) -> Result<&Ticket, Refusal> {
        let n = id
            .value()
            .ok_or_else(|| Refusal::new(ErrorCode::Invalid, "a ticket id is a number"))?;
        self.tickets
            .get(&n)
            .ok_or_else(|| Refusal::new(ErrorCode::Rejected, format!("ticket {n} not found")))
    }
}

/// The tickets handler: a [`TicketBook`] per tenant (one for messages without a
/// tenant), shared by all deliveries. After a change it publishes the change's event
/// (best effort: the change stands when the event cannot be published, and clients
/// reload the list when they reconnect); the service library gives the event the
/// request's tenant.
#[derive(Debug, Clone, Default)]
pub struct Desk {
    books: Arc<Mutex<BTreeMap<Option<String>, TicketBook>>>,
}

impl Desk {
    /// Applies one request (raw JSON) sent by `user` of `tenant` to that tenant's book.
    ///
    /// # Errors
    /// As [`TicketBook::apply`].
    pub fn apply(
        &self,
        tenant: Option<&str>,
        message: &[u8],
        user: Option<&str>,
    ) -> Result<Applied, Refusal> {
        let mut books = self
            .books
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        books
            .entry(tenant.map(str::to_string))
            .or_default()
            .apply(message, user)
    }
}

impl Handler for Desk {
    fn handle(
        &self,
        ctx: Context,
        message: Incoming,
    ) -> BoxFuture<'static, Result<Outcome, HandlerError>> {
        let desk = self.clone();
        Box::pin(async move {
            let result = desk.apply(message.tenant(), &message.body, message.user.as_deref());
            match result {
                Ok(applied) => {
                    if let Some(event) = applied.event {
                        announce(&ctx, event, &applied.answer, message.message_id.as_deref()).await;
                    }
                    Outcome::json(&applied.answer).map_err(|e| HandlerError::Failed(e.to_string()))
                }
                Err(refusal) => {
                    if !message.is_request() {
                        warn!(reason = %refusal.message, "tickets publish refused");
                    }
                    Ok(Outcome::refuse(refusal.code, refusal.message))
                }
            }
        })
    }
}

/// Publishes `event` with the ticket as its message. Its `message_id` derives from the
/// request's, so a redelivered request announces with the same id (clients drop the
/// copy). A failure is logged, not retried: retrying the handler would apply the
/// change twice.
async fn announce(
    ctx: &Context,
    event: &str,
    ticket: &serde_json::Value,
    request_id: Option<&str>,
) {
    let mut out = Outgoing::new(
        Targets::event(DemoChannel::Tickets.name(), event),
        ticket.to_string(),
    );
    if let Some(id) = request_id {
        out = out.with_message_id(format!("{id}:{event}"));
    }
    if let Err(e) = ctx.send(&out).await {
        warn!(event, error = %e, "tickets event not published");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(book: &mut TicketBook, msg: &str) -> Result<serde_json::Value, Refusal> {
        book.apply(msg.as_bytes(), Some("alice")).map(|a| a.answer)
    }

    #[test]
    fn changes_name_their_event_and_reads_name_none() {
        let mut book = TicketBook::default();
        let event =
            |book: &mut TicketBook, msg: &str| book.apply(msg.as_bytes(), None).unwrap().event;
        assert_eq!(
            event(&mut book, r#"{"op":"create","title":"x"}"#),
            Some(EVENT_CREATED)
        );
        assert_eq!(
            event(&mut book, r#"{"op":"close","id":1}"#),
            Some(EVENT_CLOSED)
        );
        assert_eq!(event(&mut book, r#"{"op":"list"}"#), None);
        assert_eq!(event(&mut book, r#"{"op":"get","id":1}"#), None);
    }

    #[test]
    fn tickets_are_created_listed_fetched_and_closed() {
        let mut book = TicketBook::default();
        let t = apply(&mut book, r#"{"op":"create","title":"printer"}"#).unwrap();
        assert_eq!(t["id"], 1);
        assert_eq!(t["status"], "open");
        assert_eq!(t["created_by"], "alice");
        apply(&mut book, r#"{"op":"create","title":"coffee"}"#).unwrap();
        let list = apply(&mut book, r#"{"op":"list"}"#).unwrap();
        assert_eq!(list["tickets"].as_array().unwrap().len(), 2);
        let got = apply(&mut book, r#"{"op":"get","id":"2"}"#).unwrap();
        assert_eq!(got["title"], "coffee");
        let closed = apply(&mut book, r#"{"op":"close","id":1}"#).unwrap();
        assert_eq!(closed["status"], "closed");
        assert_eq!(
            apply(&mut book, r#"{"op":"close","id":1}"#).unwrap()["status"],
            "closed"
        );
    }

    #[test]
    fn an_unknown_op_or_a_bad_message_is_invalid() {
        let mut book = TicketBook::default();
        for bad in [
            r#"{"op":"delete","id":1}"#,
            r#"{"title":"x"}"#,
            "not json",
            r#"{"op":"create"}"#,
            r#"{"op":"create","title":"  "}"#,
            r#"{"op":"get","id":"x"}"#,
        ] {
            let r = apply(&mut book, bad).unwrap_err();
            assert_eq!(r.code, ErrorCode::Invalid, "{bad}");
        }
    }

    #[test]
    fn each_tenant_has_a_desk_of_its_own() {
        let desk = Desk::default();
        let create = br#"{"op":"create","title":"acme's printer"}"#;
        let made = desk.apply(Some("acme"), create, Some("ada")).unwrap();
        assert_eq!(made.answer["id"], 1);
        let list = |tenant| {
            desk.apply(tenant, br#"{"op":"list"}"#, None)
                .unwrap()
                .answer
        };
        assert_eq!(list(Some("globex"))["tickets"], serde_json::json!([]));
        assert_eq!(list(None)["tickets"], serde_json::json!([]));
        let r = desk.apply(Some("globex"), br#"{"op":"close","id":1}"#, None);
        assert_eq!(r.unwrap_err().code, ErrorCode::Rejected);
        assert_eq!(list(Some("acme"))["tickets"][0]["status"], "open");
        // globex numbers its own tickets from 1.
        let theirs = desk.apply(Some("globex"), create, None).unwrap();
        assert_eq!(theirs.answer["id"], 1);
        // Clones share the desks.
        assert_eq!(
            desk.clone()
                .apply(Some("acme"), br#"{"op":"get","id":1}"#, None)
                .unwrap()
                .answer["created_by"],
            "ada"
        );
    }

    #[test]
    fn a_missing_ticket_is_rejected() {
        let mut book = TicketBook::default();
        let r = apply(&mut book, r#"{"op":"get","id":7}"#).unwrap_err();
        assert_eq!(r.code, ErrorCode::Rejected);
        assert!(r.message.contains("7"));
        let r = apply(&mut book, r#"{"op":"close","id":7}"#).unwrap_err();
        assert_eq!(r.code, ErrorCode::Rejected);
    }
}
