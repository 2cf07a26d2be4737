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
    InFlight { failures: u32 },
    Failed { failures: u32 },
    Done(Option<RememberedReply>),
}

#[derive(Debug, Clone)]
struct Entry {
    at: Instant,
    state: State,
}

/// Remembers handled `message_id`s for at most `ttl` and at most `capacity` of them,
/// evicting the oldest first.
#[derive(Debug)]
pub struct DuplicateWindow {
    ttl: Duration,
    capacity: usize,
    entries: HashMap<String, Entry>,
    /// Insertion order, for eviction. May hold stale pairs (an id re-inserted later);
    /// those are skipped by comparing the timestamp with the entry's.
    order: VecDeque<(String, Instant)>,
}

impl DuplicateWindow {
    /// A window remembering ids for `ttl`, at most `capacity` of them (at least 1).
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        DuplicateWindow {
            ttl,
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
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
                state: State::InFlight { .. },
                ..
            }) => Seen::InFlight,
            Some(entry) => {
                let failures = match entry.state {
                    State::Failed { failures } | State::InFlight { failures } => failures,
                    State::Done(_) => 0,
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

    /// Forgets `id` (e.g. a delivery that was handed back without being handled).
    pub fn forget(&mut self, id: &str) {
        self.entries.remove(id);
    }

    fn insert(&mut self, id: &str, state: State, now: Instant) {
        self.entries
            .insert(id.to_string(), Entry { at: now, state });
        self.order.push_back((id.to_string(), now));
    }

    fn evict(&mut self, now: Instant) {
        while let Some((id, at)) = self.order.front() {
            let current = self.entries.get(id).map(|e| e.at);
            let stale = current != Some(*at);
            let expired = now.saturating_duration_since(*at) > self.ttl;
            let over = self.entries.len() > self.capacity;
            if stale {
                self.order.pop_front();
            } else if expired || over {
                let (id, _) = self.order.pop_front().expect("front exists");
                self.entries.remove(&id);
            } else {
                break;
            }
        }
        // Stale pairs behind the front are dropped when the queue grows too long.
        if self.order.len() > 2 * self.capacity + 16 {
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
    fn a_new_id_is_handled_and_a_seen_one_is_not() {
        let mut w = DuplicateWindow::new(Duration::from_secs(60), 10);
        let t = Instant::now();
        assert_eq!(w.begin("a", t), Seen::New { failures: 0 });
        assert_eq!(w.begin("a", t), Seen::InFlight);
        w.finish("a", None, t);
        assert_eq!(w.begin("a", t), Seen::Done(None));
        assert_eq!(w.begin("b", t), Seen::New { failures: 0 });
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
