//! The outbox: every write and request not answered yet, as encoded frames in the order
//! they were made. On reconnect all of them are sent again, in order and with the same
//! ids (the gateway's `message_id` is `<user>:<id>`, so receivers can drop a repeat).

use crate::id_map::IdMap;

/// Unanswered writes keyed by operation number (creation order), bounded while offline.
#[derive(Debug)]
pub struct Outbox {
    limit: usize,
    frames: IdMap<String>,
}

impl Outbox {
    /// An outbox that admits at most `limit` waiting frames while disconnected.
    pub fn new(limit: usize) -> Self {
        Outbox {
            limit,
            frames: IdMap::default(),
        }
    }

    /// Whether one more frame may wait for a connection.
    pub fn has_room(&self) -> bool {
        self.frames.len() < self.limit
    }

    /// Keeps the encoded frame of operation `op` until it is answered.
    pub fn push(&mut self, op: u64, frame: String) {
        self.frames.insert(op, frame);
    }

    /// Forgets operation `op` (answered, timed out or rejected).
    pub fn remove(&mut self, op: u64) -> Option<String> {
        self.frames.remove(op)
    }

    /// Every waiting frame, oldest first.
    pub fn frames(&self) -> impl Iterator<Item = &str> {
        self.frames.iter().map(|(_, f)| f.as_str())
    }

    /// Every waiting frame with its operation number, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = (u64, &str)> {
        self.frames.iter().map(|(op, f)| (op, f.as_str()))
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.frames.clear();
    }

    /// How many frames wait.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_out_in_creation_order_and_the_bound_is_reported() {
        let mut o = Outbox::new(2);
        o.push(2, "b".into());
        assert!(o.has_room());
        o.push(1, "a".into());
        assert!(!o.has_room());
        assert_eq!(o.frames().collect::<Vec<_>>(), vec!["a", "b"]);
        o.remove(1);
        assert!(o.has_room());
    }
}
