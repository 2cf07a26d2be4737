//! The duplicate window: remembers the `message_id`s a consumer handled recently (bounded
//! in time and count), so a redelivered or re-sent message is acknowledged without
//! calling the handler again, and a re-sent request gets the reply it got before.
//!
//! Sans-IO: time is passed in, nothing here touches the network.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::handler::Answer;

/// A reply kept for a handled request, re-sent when the request comes again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RememberedReply {
    /// The `message_id` the reply was first published with (re-used when re-sent).
    pub message_id: String,
    /// The answer (body and headers) that was sent.
    pub answer: Answer,
}

/// What the window knows about a `message_id` when a message carrying it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Not handled yet (or its earlier attempts failed): call the handler. The id is now
    /// marked in flight.
    New {
        /// How many earlier attempts failed in this process.
        failures: u32,
    },
    /// Another delivery with this id is being handled right now.
    InFlight,
    /// Already handled: acknowledge without calling the handler, and re-send the reply
    /// when one is remembered.
    Done(Option<RememberedReply>),
}

#[derive(Debug, Clone)]
enum State {
    InFlight {
        failures: u32,
    },
    Failed {
        failures: u32,
    },
    Done(Option<RememberedReply>),
    /// Handled, but its reply could not be published yet: a copy re-sends it. Never
    /// turned into `Done(None)` over the reply budget (the copy would be acknowledged
    /// unanswered): it is forgotten as `Failed`, so the copy runs the handler again.
    Unsent {
        reply: RememberedReply,
        failures: u32,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    at: Instant,
    state: State,
}

/// Remembers handled `message_id`s for at most `ttl` and at most `capacity` of them,
/// evicting the oldest first; the replies it keeps take at most `reply_budget` bytes
/// (beyond it the oldest replies are forgotten, their ids still remembered: a copy of
/// such a request is acknowledged, not handled again, and gets no reply, as a reply
/// too large to remember). A reply not sent yet ([`DuplicateWindow::finish_unsent`])
/// forgotten that way takes its id's handled mark with it: the next copy is handled
/// again, since nothing else would ever answer it.
#[derive(Debug)]
pub struct DuplicateWindow {
    ttl: Duration,
    capacity: usize,
    entries: HashMap<String, Entry>,
    /// Insertion order, for eviction. May hold stale pairs (an id re-inserted later);
    /// those are skipped by comparing the timestamp with the entry's.
    order: VecDeque<(String, Instant)>,
    /// Most bytes of remembered replies.
    reply_budget: usize,
    /// Bytes of the replies remembered now.
    reply_bytes: usize,
    /// Entries that got a reply, in order, for forgetting replies over the budget
    /// (stale pairs skipped as in `order`).
    replies: VecDeque<(String, Instant)>,
}

/// What a remembered reply costs, roughly: its body, headers and `message_id`.
fn reply_size(state: &State) -> usize {
    match state {
        State::Done(Some(r)) | State::Unsent { reply: r, .. } => {
            let headers: usize = r
                .answer
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum();
            r.message_id.len() + r.answer.body.len() + headers
        }
        _ => 0,
    }
}

impl DuplicateWindow {
    /// A window remembering ids for `ttl`, at most `capacity` of them (at least 1),
    /// and replies without a bound on their bytes ([`DuplicateWindow::with_reply_budget`]).
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        DuplicateWindow {
            ttl,
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
            reply_budget: usize::MAX,
            reply_bytes: 0,
            replies: VecDeque::new(),
        }
    }

    /// Keeps the remembered replies within `bytes` in all.
    pub fn with_reply_budget(mut self, bytes: usize) -> Self {
        self.reply_budget = bytes;
        self
    }

    /// Bytes of the replies remembered now.
    pub fn reply_bytes(&self) -> usize {
        self.reply_bytes
    }

    /// How many ids are remembered now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Looks `id` up as a message carrying it arrives; a new id is marked in flight.
    pub fn begin(&mut self, id: &str, now: Instant) -> Seen {
        self.evict(now);
        match self.entries.get_mut(id) {
            Some(Entry {
                state: State::Done(reply),
                ..
            }) => Seen::Done(reply.clone()),
            Some(Entry {
                state: State::Unsent { reply, .. },
                ..
            }) => Seen::Done(Some(reply.clone())),
            Some(Entry {
                state: State::InFlight { .. },
                ..
            }) => Seen::InFlight,
            Some(entry) => {
                let failures = match entry.state {
                    State::Failed { failures } | State::InFlight { failures } => failures,
                    State::Done(_) | State::Unsent { .. } => 0,
                };
                entry.state = State::InFlight { failures };
                Seen::New { failures }
            }
            None => {
                self.insert(id, State::InFlight { failures: 0 }, now);
                Seen::New { failures: 0 }
            }
        }
    }

    /// Records that `id` was handled, with the reply to re-send for it (if any).
    pub fn finish(&mut self, id: &str, reply: Option<RememberedReply>, now: Instant) {
        self.insert(id, State::Done(reply), now);
        self.evict(now);
    }

    /// Records that `id` was handled but its `reply` could not be published yet (the
    /// delivery is handed back): the next copy re-sends it ([`Seen::Done`]) and then
    /// calls [`DuplicateWindow::sent`]. Pushed out over the reply budget before that, the
    /// id counts as failed (one more failure), not handled: the next copy calls the
    /// handler again. Returns whether the reply is kept: not when it alone, as the
    /// window counts it (body, headers, `message_id`), takes more than the whole
    /// budget; then nothing changes, and the caller counts a failed attempt.
    #[must_use]
    pub fn finish_unsent(&mut self, id: &str, reply: RememberedReply, now: Instant) -> bool {
        let failures = match self.entries.get(id) {
            Some(Entry {
                state: State::InFlight { failures } | State::Failed { failures },
                ..
            }) => *failures,
            _ => 0,
        };
        let unsent = State::Unsent { reply, failures };
        if reply_size(&unsent) > self.reply_budget {
            return false;
        }
        self.insert(id, unsent, now);
        self.evict(now);
        true
    }

    /// Records that the reply kept unsent for `id` ([`DuplicateWindow::finish_unsent`])
    /// was published: `id` is handled, with that reply remembered. Nothing changes for
    /// an id in any other state.
    pub fn sent(&mut self, id: &str) {
        if let Some(entry) = self.entries.get_mut(id) {
            if let State::Unsent { reply, .. } = &entry.state {
                entry.state = State::Done(Some(reply.clone()));
            }
        }
    }

    /// Records that re-sending the reply remembered for `id` failed ([`Seen::Done`]; the
    /// copy is handed back), and returns the failed attempts so far that the window
    /// knows of. A reply kept unsent ([`DuplicateWindow::finish_unsent`]) counts on
    /// from its failures before. A reply that was sent once stays as it is, counted
    /// alone (the message's `x-delivery-count` counts its copies): kept as unsent, it
    /// could be pushed out over the reply budget and its next copy would run the
    /// handler a second time. An id in any other state (forgotten meanwhile) is left as
    /// it is, and this failure counted alone.
    pub fn fail_resend(&mut self, id: &str) -> u32 {
        let Some(entry) = self.entries.get_mut(id) else {
            return 1;
        };
        let State::Unsent { failures, .. } = &mut entry.state else {
            return 1;
        };
        *failures = failures.saturating_add(1);
        *failures
    }

    /// Records that handling `id` failed; the next delivery calls the handler again.
    /// Returns the number of failures so far.
    pub fn fail(&mut self, id: &str, now: Instant) -> u32 {
        let failures = match self.entries.get(id) {
            Some(Entry {
                state: State::InFlight { failures } | State::Failed { failures },
                ..
            }) => failures.saturating_add(1),
            _ => 1,
        };
        self.insert(id, State::Failed { failures }, now);
        self.evict(now);
        failures
    }

    /// Records a failed attempt at `id` while its delivery is still held (it waits out
    /// its backoff, or is being dead-lettered): `id` stays in flight, so a copy keeps
    /// waiting, until [`DuplicateWindow::release`] once the delivery is handed back (or
    /// [`DuplicateWindow::finish`]). Marked failed at once, a copy started meanwhile and
    /// ran beside the redelivered message. Returns the number of failures so far. An id
    /// not in flight (e.g. the key a message without `message_id` is counted under) is
    /// recorded failed, as by [`DuplicateWindow::fail`].
    pub fn fail_held(&mut self, id: &str, now: Instant) -> u32 {
        if let Some(Entry {
            state: State::InFlight { failures },
            ..
        }) = self.entries.get(id)
        {
            // Inserted again, as `fail` does: the ttl counts from the latest failure,
            // not from the first attempt (an id retried for longer than the ttl in all
            // was evicted in flight, its count lost and a copy let in beside it).
            let failures = failures.saturating_add(1);
            self.insert(id, State::InFlight { failures }, now);
            self.evict(now);
            return failures;
        }
        self.fail(id, now)
    }

    /// Records that the handling of `id` ended without an answer and its delivery was
    /// handed back ([`DuplicateWindow::fail_held`]), or was given up before it ended
    /// (its task was aborted: the service was stopped and the handler outlived the grace
    /// period): the next delivery calls the handler again, instead of being handed back
    /// as in flight until the ttl. Nothing changes when the handling finished or failed.
    /// Only the handling that holds `id` in flight may call it.
    pub fn release(&mut self, id: &str) {
        if let Some(entry) = self.entries.get_mut(id) {
            if let State::InFlight { failures } = entry.state {
                entry.state = State::Failed { failures };
            }
        }
    }

    /// Forgets `id` (e.g. a delivery that was handed back without being handled).
    pub fn forget(&mut self, id: &str) {
        self.remove(id);
    }

    fn remove(&mut self, id: &str) {
        if let Some(old) = self.entries.remove(id) {
            self.reply_bytes -= reply_size(&old.state);
        }
    }

    fn insert(&mut self, id: &str, state: State, now: Instant) {
        let size = reply_size(&state);
        if size > 0 {
            self.replies.push_back((id.to_string(), now));
        }
        self.reply_bytes += size;
        if let Some(old) = self
            .entries
            .insert(id.to_string(), Entry { at: now, state })
        {
            self.reply_bytes -= reply_size(&old.state);
        }
        self.order.push_back((id.to_string(), now));
        self.forget_replies_over_budget();
    }

    /// Forgets the oldest replies (not their ids) while they take more than the budget.
    fn forget_replies_over_budget(&mut self) {
        while self.reply_bytes > self.reply_budget {
            let Some((id, at)) = self.replies.pop_front() else {
                break;
            };
            if let Some(entry) = self.entries.get_mut(&id) {
                if entry.at == at {
                    self.reply_bytes -= reply_size(&entry.state);
                    entry.state = match entry.state {
                        // Never sent: acknowledging its copy unanswered would leave the
                        // requester without a reply for good; it is handled again, and
                        // its failed reply counts as a failed attempt (towards
                        // `max_attempts`: a reply that never goes out ends in
                        // `warren.dead`, not in a loop).
                        State::Unsent { failures, .. } => State::Failed {
                            failures: failures.saturating_add(1),
                        },
                        _ => State::Done(None),
                    };
                }
            }
        }
        // Stale pairs are dropped when the queue grows too long.
        if self.replies.len() > self.capacity.saturating_mul(2).saturating_add(16) {
            let entries = &self.entries;
            self.replies.retain(|(id, at)| {
                entries
                    .get(id)
                    .is_some_and(|e| e.at == *at && reply_size(&e.state) > 0)
            });
        }
    }

    fn evict(&mut self, now: Instant) {
        // Ids in flight put back at the end in this call: each once at most; when
        // only those are left over the capacity, the window holds more for now.
        let mut kept = 0;
        while let Some((id, at)) = self.order.front() {
            let current = self.entries.get(id).map(|e| e.at);
            let stale = current != Some(*at);
            let expired = now.saturating_duration_since(*at) > self.ttl;
            let over = self.entries.len() > self.capacity;
            if stale {
                self.order.pop_front();
            } else if expired || over {
                let (id, _) = self.order.pop_front().expect("front exists");
                let len = self.entries.len();
                let in_flight = self
                    .entries
                    .get_mut(&id)
                    .filter(|e| matches!(e.state, State::InFlight { .. }));
                match in_flight {
                    // Never forgotten while its handler runs (longer than the ttl, or
                    // while a hundred thousand other ids went by): a copy would then
                    // run the handler beside it. Counted from now again; as many of
                    // them as handlers run at once (the prefetch).
                    Some(entry) if kept < len => {
                        entry.at = now;
                        self.order.push_back((id, now));
                        kept += 1;
                    }
                    Some(entry) => {
                        self.order.push_front((id, entry.at));
                        break;
                    }
                    None => self.remove(&id),
                }
            } else {
                break;
            }
        }
        // Stale pairs behind the front are dropped when the queue grows too long.
        if self.order.len() > self.capacity.saturating_mul(2).saturating_add(16) {
            let entries = &self.entries;
            self.order
                .retain(|(id, at)| entries.get(id).map(|e| e.at) == Some(*at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> RememberedReply {
        RememberedReply {
            message_id: "r1".into(),
            answer: Answer::raw(text.as_bytes().to_vec()),
        }
    }

    #[test]
    fn an_id_in_flight_is_not_forgotten_past_the_ttl_or_over_the_capacity() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let mut w = DuplicateWindow::new(s(10), 2);
        assert_eq!(w.begin("slow", t), Seen::New { failures: 0 });
        // Its handler runs longer than the ttl: a copy still waits for it.
        assert_eq!(w.begin("slow", t + s(11)), Seen::InFlight);
        // Other ids go by, more than the window holds: still in flight.
        for id in ["a", "b", "c"] {
            assert_eq!(w.begin(id, t + s(12)), Seen::New { failures: 0 });
            w.finish(id, None, t + s(12));
        }
        assert_eq!(w.begin("slow", t + s(13)), Seen::InFlight);
        // Once finished, its copy is a duplicate.
        w.finish("slow", None, t + s(14));
        assert_eq!(w.begin("slow", t + s(15)), Seen::Done(None));
        // More in flight than the window holds: kept all, and evicting ends.
        let mut w = DuplicateWindow::new(s(10), 1);
        for id in ["x", "y", "z"] {
            assert_eq!(w.begin(id, t), Seen::New { failures: 0 });
        }
        assert_eq!(w.len(), 3);
        assert_eq!(w.begin("x", t + s(20)), Seen::InFlight);
    }

    #[test]
    fn a_new_id_is_handled_and_a_seen_one_is_not() {
        let mut w = DuplicateWindow::new(Duration::from_secs(60), 10);
        let t = Instant::now();
        assert_eq!(w.begin("a", t), Seen::New { failures: 0 });
        assert_eq!(w.begin("a", t), Seen::InFlight);
        w.finish("a", None, t);
        assert_eq!(w.begin("a", t), Seen::Done(None));
        assert_eq!(w.begin("b", t), Seen::New { failures: 0 });
    }

    /// `usize::MAX` ("bounded by the ttl only") overflowed `2 * capacity + 16`: a panic
    /// under the window's lock in a debug build, which poisoned it for every later
    /// message.
    #[test]
    fn a_capacity_of_usize_max_works() {
        let mut w = DuplicateWindow::new(Duration::from_secs(60), usize::MAX);
        let t = Instant::now();
        assert_eq!(w.begin("a", t), Seen::New { failures: 0 });
        assert_eq!(w.fail("a", t), 1);
        w.finish("a", Some(reply("{}")), t);
        assert_eq!(w.begin("a", t), Seen::Done(Some(reply("{}"))));
    }

    #[test]
    fn a_handled_request_remembers_its_reply() {
        let mut w = DuplicateWindow::new(Duration::from_secs(60), 10);
        let t = Instant::now();
        w.begin("q", t);
        w.finish("q", Some(reply("{\"id\":1}")), t);
        assert_eq!(w.begin("q", t), Seen::Done(Some(reply("{\"id\":1}"))));
    }

    #[test]
    fn ids_older_than_the_ttl_are_forgotten() {
        let mut w = DuplicateWindow::new(Duration::from_secs(10), 10);
        let t = Instant::now();
        w.begin("a", t);
        w.finish("a", None, t);
        assert_eq!(w.begin("a", t + Duration::from_secs(5)), Seen::Done(None));
        assert_eq!(
            w.begin("a", t + Duration::from_secs(11)),
            Seen::New { failures: 0 }
        );
    }

    #[test]
    fn the_oldest_ids_are_evicted_beyond_the_capacity() {
        let mut w = DuplicateWindow::new(Duration::from_secs(60), 3);
        let t = Instant::now();
        for id in ["a", "b", "c", "d"] {
            w.begin(id, t);
            w.finish(id, None, t);
        }
        assert_eq!(w.len(), 3);
        assert_eq!(w.begin("a", t), Seen::New { failures: 0 });
        assert_eq!(w.begin("d", t), Seen::Done(None));
    }

    #[test]
    fn a_failed_attempt_is_handled_again_and_counted() {
        let mut w = DuplicateWindow::new(Duration::from_secs(60), 10);
        let t = Instant::now();
        w.begin("a", t);
        assert_eq!(w.fail("a", t), 1);
        assert_eq!(w.begin("a", t), Seen::New { failures: 1 });
        assert_eq!(w.fail("a", t), 2);
        assert_eq!(w.begin("a", t), Seen::New { failures: 2 });
        w.finish("a", None, t);
        assert_eq!(w.begin("a", t), Seen::Done(None));
    }

    #[test]
    fn a_released_handling_is_handled_again_and_a_finished_one_is_not() {
        let mut w = DuplicateWindow::new(Duration::from_secs(600), 10);
        let t = Instant::now();
        w.begin("a", t);
        assert_eq!(w.begin("a", t), Seen::InFlight);
        w.release("a");
        assert_eq!(w.begin("a", t), Seen::New { failures: 0 });
        w.finish("a", None, t);
        w.release("a");
        assert_eq!(w.begin("a", t), Seen::Done(None), "finished: unchanged");
        w.release("unknown");
        assert_eq!(w.begin("unknown", t), Seen::New { failures: 0 });
    }

    #[test]
    fn a_failure_counted_while_held_keeps_copies_waiting_until_released() {
        let mut w = DuplicateWindow::new(Duration::from_secs(600), 10);
        let t = Instant::now();
        w.begin("a", t);
        assert_eq!(w.fail_held("a", t), 1);
        assert_eq!(w.begin("a", t), Seen::InFlight, "its backoff: still held");
        w.release("a");
        assert_eq!(w.begin("a", t), Seen::New { failures: 1 });
        assert_eq!(w.fail_held("a", t), 2);
        w.release("a");
        assert_eq!(w.begin("a", t), Seen::New { failures: 2 });
        // The ttl counts from the latest failure: held and failing for longer than
        // the ttl in all, the id is still known.
        let mut w = DuplicateWindow::new(Duration::from_secs(10), 10);
        w.begin("a", t);
        assert_eq!(w.fail_held("a", t + Duration::from_secs(8)), 1);
        assert_eq!(w.fail_held("a", t + Duration::from_secs(16)), 2);
        assert_eq!(w.begin("a", t + Duration::from_secs(17)), Seen::InFlight);
        // A key not in flight (a message without message_id) is counted as failed.
        assert_eq!(w.fail_held("\0anonymous", t), 1);
        assert_eq!(w.fail_held("\0anonymous", t), 2);
    }

    #[test]
    fn remembered_replies_stay_within_their_budget_and_their_ids_are_still_known() {
        // Three replies of 10 bytes each (8 of body, 2 of message_id) in 25 bytes.
        let mut w = DuplicateWindow::new(Duration::from_secs(60), 100).with_reply_budget(25);
        let t = Instant::now();
        for id in ["a", "b", "c"] {
            w.begin(id, t);
            w.finish(id, Some(reply("12345678")), t);
        }
        assert_eq!(w.reply_bytes(), 20, "the oldest reply was forgotten");
        assert_eq!(w.begin("a", t), Seen::Done(None), "its id is still known");
        assert_eq!(w.begin("b", t), Seen::Done(Some(reply("12345678"))));
        assert_eq!(w.begin("c", t), Seen::Done(Some(reply("12345678"))));
        // Replies leave the count with their ids.
        w.forget("b");
        assert_eq!(w.reply_bytes(), 10);
        let later = t + Duration::from_secs(61);
        w.begin("d", later);
        assert_eq!(w.reply_bytes(), 0, "expired with its id");
        // Many requests with large replies: the memory stays bounded.
        let mut big =
            DuplicateWindow::new(Duration::from_secs(600), 100_000).with_reply_budget(1 << 20);
        let body = "x".repeat(60 * 1024);
        for i in 0..1_000 {
            let id = format!("q{i}");
            big.begin(&id, t);
            big.finish(&id, Some(reply(&body)), t);
            assert!(big.reply_bytes() <= 1 << 20);
        }
        assert_eq!(big.len(), 1_000);
        assert!(big.replies.len() <= 2 * 100_000 + 16);
    }

    /// A reply kept unsent was forgotten over the budget as any other, and its id stayed
    /// handled: the copy was acknowledged without a reply and never answered.
    #[test]
    fn an_unsent_reply_pushed_out_over_the_budget_is_handled_again_not_acknowledged() {
        // Replies of 10 bytes each (8 of body, 2 of message_id) in 15 bytes.
        let mut w = DuplicateWindow::new(Duration::from_secs(60), 100).with_reply_budget(15);
        let t = Instant::now();
        w.begin("a", t);
        assert!(w.finish_unsent("a", reply("12345678"), t));
        assert_eq!(w.begin("a", t), Seen::Done(Some(reply("12345678"))));
        w.begin("b", t);
        w.finish("b", Some(reply("12345678")), t);
        assert_eq!(w.reply_bytes(), 10);
        assert_eq!(
            w.begin("a", t),
            Seen::New { failures: 1 },
            "handled again, its failed reply counted"
        );
        // Sent before it was pushed out: remembered as any sent reply.
        w.begin("c", t);
        assert!(w.finish_unsent("c", reply("12345678"), t));
        w.sent("c");
        assert_eq!(w.begin("c", t), Seen::Done(Some(reply("12345678"))));
        w.begin("d", t);
        w.finish("d", Some(reply("12345678")), t);
        assert_eq!(w.begin("c", t), Seen::Done(None), "sent: acknowledged");
        // Failures counted before are kept.
        w.begin("e", t);
        assert_eq!(w.fail_held("e", t), 1);
        assert!(w.finish_unsent("e", reply("12345678"), t));
        w.begin("f", t);
        w.finish("f", Some(reply("12345678")), t);
        assert_eq!(w.begin("e", t), Seen::New { failures: 2 });
        // A reply larger than the whole budget as the window counts it (its 2 bytes of
        // message_id too) is not kept, and nothing changes: the caller counts a
        // failed attempt.
        w.begin("g", t);
        assert!(!w.finish_unsent("g", reply("1234567890123456"), t));
        assert_eq!(w.fail_held("g", t), 1);
        w.release("g");
        assert_eq!(w.begin("g", t), Seen::New { failures: 1 });
    }

    /// A remembered reply whose re-send failed stays for the next copy and counts its
    /// failures (a backoff, `warren.dead` at `max_attempts`): the copy was handed back
    /// at once, uncounted, as fast as RabbitMQ redelivered it.
    #[test]
    fn a_failed_re_send_keeps_the_reply_and_counts_the_failures() {
        let mut w = DuplicateWindow::new(Duration::from_secs(60), 100).with_reply_budget(15);
        let t = Instant::now();
        // Kept unsent after one failed handling: the re-sends count on from it.
        w.begin("a", t);
        assert_eq!(w.fail_held("a", t), 1);
        w.release("a");
        w.begin("a", t);
        assert!(w.finish_unsent("a", reply("12345678"), t));
        assert_eq!(w.fail_resend("a"), 2);
        assert_eq!(w.fail_resend("a"), 3);
        assert_eq!(w.begin("a", t), Seen::Done(Some(reply("12345678"))));
        assert_eq!(w.reply_bytes(), 10, "the same reply, counted once");
        // Sent at last: remembered as any sent reply.
        w.sent("a");
        assert_eq!(w.begin("a", t), Seen::Done(Some(reply("12345678"))));
        // A reply sent before whose re-send failed stays a sent one: pushed out over
        // the budget, its copy is acknowledged unanswered, never handled a second time.
        assert_eq!(w.fail_resend("a"), 1);
        assert_eq!(w.fail_resend("a"), 1, "counted by x-delivery-count instead");
        w.begin("b", t);
        w.finish("b", Some(reply("12345678")), t);
        assert_eq!(w.begin("a", t), Seen::Done(None));
        // Nothing to keep: this failure alone, and nothing changes.
        assert_eq!(w.fail_resend("gone"), 1);
        assert_eq!(w.begin("gone", t), Seen::New { failures: 0 });
    }

    #[test]
    fn re_inserting_an_id_many_times_keeps_the_order_queue_bounded() {
        let mut w = DuplicateWindow::new(Duration::from_secs(60), 4);
        let t = Instant::now();
        for i in 0..1000u64 {
            let now = t + Duration::from_millis(i);
            w.begin("same", now);
            w.finish("same", None, now);
        }
        assert_eq!(w.len(), 1);
        assert!(w.order.len() <= 2 * 4 + 16 + 1, "{}", w.order.len());
    }
}
