//! Duplicate suppression for deliveries: remembers the last `capacity` message ids (as
//! 64-bit FNV-1a hashes, so nothing is allocated per id), so a message redelivered
//! after a reconnect (same `message_id`) reaches the app once. The window is a ring
//! over a `Vec` (smaller wasm than a `VecDeque`).

/// A bounded window of recently seen message ids; the oldest is forgotten first.
#[derive(Debug)]
pub struct DuplicateFilter {
    capacity: usize,
    seen: Vec<u64>,
    /// The slot the next id goes to once the window is full (the oldest id).
    next: usize,
}

fn fnv1a(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl DuplicateFilter {
    /// A filter remembering at most `capacity` ids (at least one).
    pub fn new(capacity: usize) -> Self {
        DuplicateFilter {
            capacity: capacity.max(1),
            seen: Vec::new(),
            next: 0,
        }
    }

    /// Records `id`; returns `true` the first time it is seen within the window.
    pub fn first_time(&mut self, id: &str) -> bool {
        let h = fnv1a(id);
        if self.seen.contains(&h) {
            return false;
        }
        match self.seen.get_mut(self.next) {
            Some(oldest) => *oldest = h,
            None => self.seen.push(h),
        }
        self.next = (self.next + 1) % self.capacity;
        true
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_id_seen_twice_is_reported_once() {
        let mut f = DuplicateFilter::new(10);
        assert!(f.first_time("a"));
        assert!(!f.first_time("a"));
        assert!(f.first_time("b"));
    }

    #[test]
    fn the_filter_forgets_the_oldest_id_beyond_its_capacity() {
        let mut f = DuplicateFilter::new(2);
        assert!(f.first_time("a"));
        assert!(f.first_time("b"));
        assert!(f.first_time("c"));
        assert_eq!(f.len(), 2);
        assert!(f.first_time("a"), "a was forgotten");
        assert!(!f.first_time("c"));
    }
}
