//! A session's outbound flow: where its messages come from and the position it has
//! reached. A session is **live** (the hub pushes what it wants), pulls from the hub's
//! **ring** (a resume, or its live backlog filled up), reads with a stream reader
//! **shared** with other sessions behind the ring ([`crate::replay`]), or with a reader
//! of **its own** when it fell out of the shared one's window; and back to the ring,
//! then live, once it catches up ([`crate::hub`] explains why nothing is lost or sent
//! twice on the way).
//!
//! The connection's loop races [`Outbound::next`] against its socket and timers, hands
//! what it got to [`Outbound::take`], and frames and writes the [`Step::Send`] it gets
//! back. Every wait on RabbitMQ — the next message of a reader, and opening a reader of
//! its own — happens in [`Outbound::next`], so the loop keeps reading the client's
//! frames and answering its pings meanwhile. What the positions mean (stale, missed,
//! back to the ring) is [`crate::session_core`]'s, pure and unit-tested there.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use warren_protocol::ServerFrame;

use crate::error::GatewayError;
use crate::hub::{CatchUp, Membership, Message, Reader};
use crate::metrics;
use crate::replay::{Handle, Share, Taken};
use crate::server::Shared;
use crate::session_core::{self as core_, Positions};
use crate::streams::Source;

/// A session's own reader being opened.
type Opening = Pin<Box<dyn Future<Output = Result<Box<Reader>, GatewayError>> + Send>>;
/// A session waiting for one of its user's shares of the readers behind the ring.
type Sharing = Pin<Box<dyn Future<Output = Share> + Send>>;

/// A session's outbound state in one stream: its hub membership, where it reads from,
/// and the position it has reached.
pub(crate) struct Outbound {
    /// The stream (the outbound stream, or a channel's own).
    source: Arc<Source>,
    member: Membership,
    read: Read,
    positions: Positions,
    /// Whose share of the readers behind the ring the session takes
    /// (`max_stream_readers_per_user`).
    user: Arc<str>,
    /// That share, held while the session reads behind the ring.
    share: Option<Share>,
}

/// Where a session's messages come from.
enum Read {
    /// Pushed by the hub.
    Live,
    /// Pulled from the hub's ring (a resume, or the live backlog filled up).
    Ring,
    /// Behind the ring, waiting for one of its user's shares
    /// (`max_stream_readers_per_user`) before it joins a shared reader at this
    /// position (the hub's: past what it served the session live).
    Waiting(u64, Sharing),
    /// A stream reader shared with other sessions behind the ring (crate::replay).
    Replay(Handle),
    /// Its own stream reader, being opened at this position; the notice that the
    /// session left before it had a reader slot ([`Outbound::close`]).
    Opening(u64, Opening, Arc<tokio::sync::Notify>),
    /// Its own stream reader: it fell behind its shared reader's window.
    Stream(Box<Reader>),
}

/// The next outbound event of a session.
pub(crate) enum Event {
    /// A live message from the hub.
    Live(Arc<Message>),
    /// The hub stopped pushing: the live backlog filled up.
    Lagged,
    /// Catching up from the ring: pull the next batch.
    Pull,
    /// A message from the session's own stream reader (`None`: it failed).
    Read(Option<Arc<Message>>),
    /// What the session's shared stream reader gave.
    Replayed(Taken),
    /// One of its user's shares: the session may read behind the ring, from this
    /// position.
    Shared(u64, Share),
    /// The session's own reader, opened at this position (or why it could not be).
    Opened(u64, Result<Box<Reader>, GatewayError>),
    /// The hub found the stream deleted and declared again while the session read
    /// behind its ring: its positions name the old stream.
    Replaced,
}

/// What the connection does with an [`Event`].
pub(crate) enum Step {
    /// Sends `notice` (a `session_expired`: positions aged out before they were
    /// read), then `messages` in order; the position then moves to `cursor`, or after
    /// the last message when `None` (a batch from the ring may be empty and still move
    /// it past messages that were not this session's).
    Send {
        notice: Option<Box<ServerFrame>>,
        messages: Vec<Arc<Message>>,
        cursor: Option<u64>,
    },
    /// Nothing to send yet.
    Nothing,
    /// The stream cannot be read: the connection closes with `broker_unavailable`.
    Failed(String),
}

impl Outbound {
    /// A session that joined the hub: live when it is new, catching up from the ring
    /// when it resumes after `position` (the newest the client had; the ring's `head`
    /// when it joined tells what the client may have had already).
    /// `user` names whose share of the readers behind the ring it takes.
    pub(crate) fn new(
        source: Arc<Source>,
        member: Membership,
        resumed: bool,
        position: Option<u64>,
        head: Option<u64>,
        user: Arc<str>,
    ) -> Outbound {
        Outbound {
            source,
            member,
            user,
            share: None,
            read: if resumed { Read::Ring } else { Read::Live },
            positions: if resumed {
                Positions::resumed(position, head)
            } else {
                Positions::fresh()
            },
        }
    }

    /// The channel of the stream followed, `None` for the outbound stream.
    pub(crate) fn channel(&self) -> Option<&str> {
        self.source.channel.as_deref()
    }

    /// Where the session has reached.
    pub(crate) fn positions(&self) -> Positions {
        self.positions
    }

    /// The session's next event. Cancel-safe: it is raced against the socket, and an
    /// opening reader or a pending read goes on at the next call.
    pub(crate) async fn next(&mut self) -> Event {
        match &mut self.read {
            Read::Live => {
                tokio::select! {
                    biased;
                    m = self.member.inbox.recv() => Event::Live(m),
                    () = self.member.inbox.lagged() => Event::Lagged,
                }
            }
            Read::Ring => Event::Pull,
            // Behind the ring, the hub pushes nothing: a stream replaced meanwhile is
            // heard of here.
            Read::Waiting(from, sharing) => tokio::select! {
                share = sharing.as_mut() => Event::Shared(*from, share),
                () = self.member.replaced() => Event::Replaced,
            },
            Read::Replay(h) => tokio::select! {
                taken = h.next() => Event::Replayed(taken),
                () = self.member.replaced() => Event::Replaced,
            },
            Read::Opening(from, opening, _) => tokio::select! {
                opened = opening.as_mut() => Event::Opened(*from, opened),
                () = self.member.replaced() => Event::Replaced,
            },
            Read::Stream(r) => tokio::select! {
                m = r.next() => Event::Read(m.map(Arc::new)),
                () = self.member.replaced() => Event::Replaced,
            },
        }
    }

    /// What to send for `event`, at most `room` messages: those this session may
    /// receive, in order. `conn` is the connection's id (the hub's key for it).
    pub(crate) async fn take(
        &mut self,
        event: Event,
        shared: &Shared,
        conn: u64,
        room: usize,
    ) -> Step {
        let source = self.source.clone();
        let hub = &source.hub;
        let mut messages: Vec<Arc<Message>> = Vec::new();
        let mut cursor = None;
        let mut notice = None;
        match event {
            Event::Live(m) => {
                messages.push(m);
                self.pushed(&mut messages, room);
            }
            Event::Lagged => {
                metrics::add(&shared.metrics.stream_lagged, 1);
                tracing::debug!(conn, "live backlog full; catching up from the ring");
                self.read = Read::Ring;
            }
            Event::Pull => {
                // What the hub pushed before it stopped comes first.
                self.pushed(&mut messages, room);
                if messages.is_empty() {
                    let from = self.positions.next();
                    match hub.catch_up(conn, from, room) {
                        CatchUp::Batch(ms, next) => {
                            messages = ms;
                            cursor = Some(next);
                        }
                        CatchUp::Live => self.read = Read::Live,
                        CatchUp::Missed { from, to } => {
                            // The hub never read these (retention dropped them while
                            // its reader was away): told, as a reader tells it.
                            let missed = to - from;
                            tracing::warn!(conn, stream = %self.source.name, from, missed, "positions the hub never read: the session is told");
                            metrics::add(&shared.metrics.stream_missed, missed);
                            notice =
                                Some(Box::new(core_::missed_notice(missed, from, self.channel())));
                            cursor = Some(to);
                        }
                        CatchUp::Replaced => return self.replaced(),
                        CatchUp::Behind { from } => {
                            // One of the user's shares first: one user's sessions
                            // cannot hold every reader.
                            let slots = source.replays.slots();
                            match self.share.take().or_else(|| slots.try_share(&self.user)) {
                                Some(share) => self.behind(share, conn, from),
                                None => {
                                    tracing::debug!(conn, stream = %self.source.name, "behind the ring: waits for one of its user's shares");
                                    self.read = Read::Waiting(
                                        from,
                                        Box::pin(slots.share(self.user.clone())),
                                    );
                                }
                            }
                        }
                    }
                }
            }
            Event::Read(None) | Event::Replayed(Taken::Failed | Taken::Wait) => {
                tracing::warn!(conn, stream = %self.source.name, "outbound stream reader failed");
                return Step::Failed(String::new());
            }
            Event::Replayed(Taken::Behind(_)) => {
                // The shared reader's window moved past this session (it read too
                // slowly): read on with a reader of its own, opened while the loop
                // goes on serving the socket.
                let from = self.positions.next();
                let broker = shared.broker.clone();
                let stream = self.source.name.clone();
                let tag = format!("{}.{}.replay", shared.config.node, conn);
                let prefetch = shared.config.delivery_window;
                let slots = self.source.replays.slots();
                let left = Arc::new(tokio::sync::Notify::new());
                let leaving = left.clone();
                let opening = async move {
                    // One of max_stream_readers: waits (the loop serving the socket
                    // meanwhile) while they are all open, unless the session leaves
                    // meanwhile: then it leaves the queue, opening nothing.
                    let slot = tokio::select! {
                        slot = slots.take() => slot,
                        () = leaving.notified() => return Err(GatewayError::Closed),
                    };
                    Reader::open(&broker, &stream, tag, from, prefetch)
                        .await
                        .map(|r| Box::new(r.holding(slot)))
                };
                self.read = Read::Opening(from, Box::pin(opening), left);
            }
            Event::Replaced => return self.replaced(),
            Event::Shared(from, share) => {
                // Nothing was sent while it waited: it reads on from where the hub
                // said, as with a share at once. Not from its own cursor, which lies
                // before what the hub served it live when a gap raised its start (or
                // is 0 for a session that was sent nothing): a reader opened there read
                // for nothing, and told the session more positions missed than were.
                self.behind(share, conn, from);
            }
            Event::Opened(from, Ok(r)) => {
                metrics::add(&shared.metrics.stream_readers, 1);
                self.read = Read::Stream(r);
                self.positions.reader_opened(from);
            }
            Event::Opened(_, Err(e)) => {
                tracing::warn!(conn, stream = %self.source.name, error = %e, "cannot read the outbound stream");
                return Step::Failed(e.to_string());
            }
            Event::Read(Some(m)) | Event::Replayed(Taken::Message(m)) => {
                if let Read::Stream(r) = &mut self.read {
                    r.settle().await;
                }
                let from = self.positions.next();
                let core_::Read::Next {
                    mut missed,
                    to_ring,
                } = self.positions.read(m.offset, hub.holds(m.offset))
                else {
                    return Step::Nothing;
                };
                // Positions that hold no message (stored offsets) are no loss.
                if missed > 0 && !hub.retention_took(&shared.broker, &source.name, from).await {
                    missed = 0;
                }
                if to_ring {
                    // The ring has everything from here on: the reader is done (a
                    // shared one is left when its handle drops).
                    if let Read::Stream(r) = std::mem::replace(&mut self.read, Read::Ring) {
                        tokio::spawn(r.close());
                    }
                }
                if missed > 0 {
                    metrics::add(&shared.metrics.stream_missed, missed);
                    notice = Some(Box::new(core_::missed_notice(missed, from, self.channel())));
                }
                if !to_ring && hub.wants(conn, &m) {
                    messages.push(m);
                }
            }
        }
        if matches!(self.read, Read::Live | Read::Ring) {
            // At the ring (or live): no longer behind it.
            self.share = None;
        }
        if notice.is_none() && messages.is_empty() && cursor.is_none() {
            return Step::Nothing;
        }
        Step::Send {
            notice,
            messages,
            cursor,
        }
    }

    /// The stream was deleted and declared again: the session ends (4002).
    fn replaced(&self) -> Step {
        Step::Failed(format!(
            "stream {} was deleted and declared again",
            self.source.name
        ))
    }

    /// Behind the ring with `share`: joins a shared reader at `from`.
    fn behind(&mut self, share: Share, conn: u64, from: u64) {
        self.share = Some(share);
        self.read = Read::Replay(self.source.replays.join(conn, from));
        self.positions.reader_opened(from);
    }

    /// The session's position moves to `next` (everything before it was sent).
    pub(crate) fn advance(&mut self, next: u64) {
        self.positions.advance(next);
    }

    /// Up to `room` messages the hub pushed, after those in `messages`.
    fn pushed(&mut self, messages: &mut Vec<Arc<Message>>, room: usize) {
        while messages.len() < room {
            match self.member.inbox.try_recv() {
                Some(m) => messages.push(m),
                None => break,
            }
        }
    }

    /// Gives up the stream reader this session reads through behind the ring, if any
    /// (its own, one still opening or waiting for a slot, or its place in a shared
    /// replay), because its client acknowledges nothing ([`core_::stalled`]). Its
    /// position stays: once the client acknowledges, the next read finds it behind
    /// the ring and reads on from there as any resume would. Returns whether it had
    /// one.
    pub(crate) fn park(&mut self) -> bool {
        match std::mem::replace(&mut self.read, Read::Ring) {
            held @ (Read::Stream(_) | Read::Opening(..) | Read::Replay(_)) => {
                let_go(held);
                self.share = None;
                true
            }
            other => {
                self.read = other;
                false
            }
        }
    }

    /// Leaves the hub and closes the session's own reader, if it has one (one still
    /// opening is closed once open; one still waiting for a reader slot leaves the
    /// queue, so an abandoned session does not open a reader only to close it).
    pub(crate) fn close(self) {
        let_go(self.read);
        drop(self.member);
    }
}

/// Closes the session's own reader, if `read` is one (one still opening is closed
/// once open; one still waiting for a reader slot leaves the queue). A shared
/// replay's handle, dropped, leaves the replay; one left with nobody stops.
fn let_go(read: Read) {
    match read {
        Read::Stream(r) => {
            tokio::spawn(r.close());
        }
        Read::Opening(_, opening, left) => {
            left.notify_one();
            tokio::spawn(async move {
                if let Ok(r) = opening.await {
                    r.close().await;
                }
            });
        }
        Read::Live | Read::Ring | Read::Waiting(..) | Read::Replay(_) => {}
    }
}
