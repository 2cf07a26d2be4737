//! The sans-IO core of priority consumption: which of an ordered list of queues to
//! consume, which delivery to handle next, which consumers to cancel. It takes events
//! (a delivery arrived, a message was handled, the queues' ready counts) and returns
//! [`Action`]s; the IO loop in [`priority`](crate::priority) carries them out.
//!
//! Levels are indexes in the list, 0 the highest priority. The ladder keeps consumers
//! (prefetch 1 each) on a prefix of the list, levels `0..=lowest`: standing consumers
//! on every queue above the one being worked on, so that a message arriving there is
//! pushed at once, and one lower queue at a time. A delivery from level `l` above the
//! lowest consumed level cuts the ladder to `0..=l`: consumers below are cancelled and
//! what they hold unhandled is handed back. When the handler is idle, nothing is held
//! and not every queue is consumed, the ladder asks for the queues' ready counts
//! ([`Action::Probe`]) and extends down to the first non-empty queue (or to the
//! bottom when all are empty, so that a message anywhere is delivered at once).
//! The handler runs one message at a time, always the highest-priority one held.

/// The state of the consumer on one level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rung {
    /// No consumer.
    Off,
    /// Consuming, prefetch 1.
    On,
    /// Cancelled while its message is being handled: closed once that is done.
    Draining,
}

/// What the IO loop must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a channel with prefetch 1 and consume the queue of this level.
    Consume(usize),
    /// Cancel the consumer of this level (`basic.cancel`) but keep its channel: the
    /// message being handled from it is acknowledged there; [`Action::Close`] follows.
    Cancel(usize),
    /// Close the channel of this level: any delivery it holds that was not handed to
    /// the handler goes back to its queue, unacknowledged.
    Close(usize),
    /// Count the ready messages of every queue and report with [`Ladder::probed`].
    Probe,
    /// Probe again after a short pause ([`Ladder::probe_due`]): the counts said a
    /// consumed queue has ready messages, yet none was delivered to this worker yet.
    ProbeLater,
}

/// Which queues of an ordered list to consume and which message to handle next.
#[derive(Debug, Clone)]
pub struct Ladder {
    rungs: Vec<Rung>,
    held: Vec<bool>,
    busy: Option<usize>,
    /// Consumers run on `0..=lowest`; `None` before the first probe.
    lowest: Option<usize>,
    probing: bool,
}

impl Ladder {
    /// A ladder over `levels` queues (at least one), nothing consumed yet.
    ///
    /// # Panics
    /// When `levels` is zero.
    pub fn new(levels: usize) -> Self {
        assert!(levels > 0, "a priority list names at least one queue");
        Ladder {
            rungs: vec![Rung::Off; levels],
            held: vec![false; levels],
            busy: None,
            lowest: None,
            probing: false,
        }
    }

    /// The number of levels.
    pub fn levels(&self) -> usize {
        self.rungs.len()
    }

    /// The lowest level consumed (consumers run on every level above it too).
    pub fn lowest(&self) -> Option<usize> {
        self.lowest
    }

    /// The level whose message is being handled.
    pub fn busy(&self) -> Option<usize> {
        self.busy
    }

    /// Whether a delivery from `level` is held, not handed to the handler yet.
    pub fn holds(&self, level: usize) -> bool {
        self.held[level]
    }

    /// Whether a delivery from `level` is expected: its consumer runs. Deliveries
    /// from another level come from a channel being closed; the IO loop drops them
    /// (RabbitMQ requeues them with the channel).
    pub fn accepts(&self, level: usize) -> bool {
        self.rungs.get(level) == Some(&Rung::On)
    }

    /// Starts (or starts again, after a reconnect: call [`Ladder::reset`] first): the
    /// ready counts decide where to begin.
    pub fn start(&mut self) -> Vec<Action> {
        self.probing = true;
        vec![Action::Probe]
    }

    /// Forgets every consumer, held delivery and handler run: the connection is gone
    /// and RabbitMQ requeued everything that was not acknowledged.
    pub fn reset(&mut self) {
        let levels = self.levels();
        *self = Ladder::new(levels);
    }

    /// A delivery arrived from `level`. Returns the consumers to cancel or close when
    /// it is above the lowest consumed level. Call [`Ladder::next_handle`] once every
    /// delivery available now was reported, so the highest is handled first.
    pub fn delivered(&mut self, level: usize) -> Vec<Action> {
        if !self.accepts(level) {
            return Vec::new();
        }
        self.held[level] = true;
        let mut actions = Vec::new();
        if let Some(lowest) = self.lowest {
            if level < lowest {
                for below in level + 1..=lowest {
                    self.stop(below, &mut actions);
                }
                self.lowest = Some(level);
            }
        }
        actions
    }

    /// The level whose held delivery the handler takes now, if it is idle and holds
    /// one: always the highest.
    pub fn next_handle(&mut self) -> Option<usize> {
        if self.busy.is_some() {
            return None;
        }
        let level = self.held.iter().position(|&h| h)?;
        self.held[level] = false;
        self.busy = Some(level);
        Some(level)
    }

    /// The handler is done with the message from `level` (acknowledged, handed back
    /// or dead-lettered). Returns the channel to close if that level was cancelled
    /// meanwhile, and a probe when nothing is held and the ladder does not reach the
    /// bottom (the current queue may be empty now).
    pub fn handled(&mut self, level: usize) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.busy == Some(level) {
            self.busy = None;
        }
        if self.rungs[level] == Rung::Draining {
            self.rungs[level] = Rung::Off;
            actions.push(Action::Close(level));
        }
        if self.idle() && !self.at_bottom() && !self.probing {
            self.probing = true;
            actions.push(Action::Probe);
        }
        actions
    }

    /// The ready counts of the queues, in order (answer to [`Action::Probe`]).
    /// Ignored when a delivery arrived meanwhile. Extends the consumers down to the
    /// first non-empty queue, or to the bottom when all are empty.
    pub fn probed(&mut self, ready: &[u32]) -> Vec<Action> {
        self.probing = false;
        if !self.idle() {
            return Vec::new();
        }
        let bottom = self.levels() - 1;
        let target = ready
            .iter()
            .take(self.levels())
            .position(|&n| n > 0)
            .unwrap_or(bottom);
        let mut actions = Vec::new();
        let first_new = self.lowest.map_or(0, |l| l + 1);
        if first_new <= target {
            for level in first_new..=target {
                self.rungs[level] = Rung::On;
                actions.push(Action::Consume(level));
            }
            self.lowest = Some(target);
        }
        if !self.at_bottom() {
            // A consumed queue has ready messages (or is about to deliver): if they
            // do not arrive (another worker took them), look again.
            actions.push(Action::ProbeLater);
        }
        actions
    }

    /// The pause after [`Action::ProbeLater`] is over: a probe if still idle.
    pub fn probe_due(&mut self) -> Vec<Action> {
        if self.idle() && !self.at_bottom() && !self.probing {
            self.probing = true;
            vec![Action::Probe]
        } else {
            Vec::new()
        }
    }

    fn idle(&self) -> bool {
        self.busy.is_none() && !self.held.iter().any(|&h| h)
    }

    fn at_bottom(&self) -> bool {
        self.lowest == Some(self.levels() - 1)
    }

    fn stop(&mut self, level: usize, actions: &mut Vec<Action>) {
        match self.rungs[level] {
            Rung::On if self.busy == Some(level) => {
                self.rungs[level] = Rung::Draining;
                actions.push(Action::Cancel(level));
            }
            Rung::On => {
                self.rungs[level] = Rung::Off;
                self.held[level] = false;
                actions.push(Action::Close(level));
            }
            Rung::Off | Rung::Draining => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    #[test]
    fn it_starts_with_a_probe_and_consumes_down_to_the_first_non_empty_queue() {
        let mut ladder = Ladder::new(3);
        assert_eq!(ladder.start(), vec![Probe]);
        assert_eq!(
            ladder.probed(&[0, 4, 2]),
            vec![Consume(0), Consume(1), ProbeLater]
        );
        assert_eq!(ladder.lowest(), Some(1));
        assert!(!ladder.accepts(2));
    }

    #[test]
    fn all_queues_empty_means_consuming_every_queue_without_probing_again() {
        let mut ladder = Ladder::new(3);
        ladder.start();
        assert_eq!(
            ladder.probed(&[0, 0, 0]),
            vec![Consume(0), Consume(1), Consume(2)]
        );
        assert_eq!(ladder.probe_due(), Vec::new());
        assert!(ladder.delivered(2).is_empty());
        assert_eq!(ladder.next_handle(), Some(2));
        assert_eq!(ladder.handled(2), Vec::new(), "at the bottom: no probe");
    }

    #[test]
    fn a_delivery_from_a_higher_queue_closes_the_lower_consumers_and_goes_first() {
        let mut ladder = Ladder::new(3);
        ladder.start();
        ladder.probed(&[0, 0, 0]);
        // Both arrive at once: the higher is handled, the lower handed back.
        assert!(ladder.delivered(2).is_empty());
        assert_eq!(ladder.delivered(1), vec![Close(2)]);
        assert!(!ladder.holds(2));
        assert_eq!(ladder.next_handle(), Some(1));
        assert_eq!(ladder.lowest(), Some(1));
    }

    #[test]
    fn a_higher_message_during_a_lower_one_waits_for_it_then_goes_next() {
        let mut ladder = Ladder::new(3);
        ladder.start();
        ladder.probed(&[0, 0, 5]);
        ladder.delivered(2);
        assert_eq!(ladder.next_handle(), Some(2));
        // A message arrives in the top queue while the bottom one is handled.
        assert_eq!(ladder.delivered(0), vec![Close(1), Cancel(2)]);
        assert_eq!(ladder.next_handle(), None, "one message at a time");
        assert_eq!(ladder.handled(2), vec![Close(2)]);
        assert_eq!(ladder.next_handle(), Some(0));
        assert_eq!(ladder.handled(0), vec![Probe]);
        assert_eq!(ladder.probed(&[0, 0, 4]), vec![Consume(1), Consume(2)]);
    }

    #[test]
    fn a_probe_answered_after_a_delivery_is_ignored() {
        let mut ladder = Ladder::new(2);
        ladder.start();
        ladder.probed(&[1, 3]);
        assert_eq!(ladder.lowest(), Some(0));
        ladder.delivered(0);
        assert_eq!(ladder.next_handle(), Some(0));
        assert_eq!(ladder.handled(0), vec![Probe]);
        ladder.delivered(0);
        assert_eq!(ladder.probed(&[0, 3]), Vec::new(), "a delivery is held");
        assert_eq!(ladder.next_handle(), Some(0));
    }

    #[test]
    fn a_consumed_queue_with_ready_messages_that_do_not_come_is_probed_again() {
        let mut ladder = Ladder::new(2);
        ladder.start();
        assert_eq!(ladder.probed(&[2, 0]), vec![Consume(0), ProbeLater]);
        assert_eq!(ladder.probe_due(), vec![Probe]);
        assert_eq!(ladder.probe_due(), Vec::new(), "one probe at a time");
        assert_eq!(ladder.probed(&[0, 0]), vec![Consume(1)]);
    }

    #[test]
    fn deliveries_from_a_closed_consumer_are_not_taken() {
        let mut ladder = Ladder::new(2);
        ladder.start();
        ladder.probed(&[0, 0]);
        ladder.delivered(0);
        ladder.delivered(1);
        assert_eq!(ladder.next_handle(), Some(0));
        assert!(!ladder.accepts(1));
        assert!(ladder.delivered(1).is_empty());
        assert!(!ladder.holds(1));
    }

    #[test]
    fn reset_forgets_everything_and_start_probes_again() {
        let mut ladder = Ladder::new(2);
        ladder.start();
        ladder.probed(&[0, 0]);
        ladder.delivered(1);
        ladder.next_handle();
        ladder.reset();
        assert_eq!(ladder.busy(), None);
        assert_eq!(ladder.lowest(), None);
        assert_eq!(ladder.start(), vec![Probe]);
    }
}
