//! Sans-IO request correlation: pending requests keyed by id, each with a deadline.
//! Time is passed in (milliseconds on any monotonic clock), so the same code runs in
//! the gateway, in the browser and in unit tests.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

/// Pending requests with deadlines.
#[derive(Debug)]
pub struct Correlator<K, V> {
    pending: HashMap<K, (u64, V)>,
    deadlines: BTreeSet<(u64, K)>,
}

impl<K: Eq + Hash + Ord + Clone, V> Default for Correlator<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash + Ord + Clone, V> Correlator<K, V> {
    /// An empty correlator.
    pub fn new() -> Self {
        Correlator {
            pending: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }

    /// Registers a pending request that expires at `deadline`.
    ///
    /// # Errors
    /// Gives the value back when `id` is already pending.
    pub fn insert(&mut self, id: K, deadline: u64, value: V) -> Result<(), V> {
        if self.pending.contains_key(&id) {
            return Err(value);
        }
        self.deadlines.insert((deadline, id.clone()));
        self.pending.insert(id, (deadline, value));
        Ok(())
    }

    /// Takes the pending request `id` out, when its answer arrived.
    pub fn resolve(&mut self, id: &K) -> Option<V> {
        let (deadline, value) = self.pending.remove(id)?;
        self.deadlines.remove(&(deadline, id.clone()));
        Some(value)
    }

    /// The value of pending request `id`.
    pub fn get(&self, id: &K) -> Option<&V> {
        self.pending.get(id).map(|(_, v)| v)
    }

    /// Whether `id` is pending.
    pub fn contains(&self, id: &K) -> bool {
        self.pending.contains_key(id)
    }

    /// Takes out every request whose deadline is at or before `now`, earliest first.
    pub fn expire(&mut self, now: u64) -> Vec<(K, V)> {
        let mut out = Vec::new();
        while let Some((deadline, _)) = self.deadlines.first() {
            if *deadline > now {
                break;
            }
            let (_, id) = self.deadlines.pop_first().expect("first exists");
            if let Some((_, value)) = self.pending.remove(&id) {
                out.push((id, value));
            }
        }
        out
    }

    /// The earliest deadline, to arm a timer.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Takes out every pending request (on close), in deadline order.
    pub fn drain_all(&mut self) -> Vec<(K, V)> {
        self.deadlines.clear();
        let mut all: Vec<_> = self.pending.drain().map(|(k, (d, v))| (d, k, v)).collect();
        all.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        all.into_iter().map(|(_, k, v)| (k, v)).collect()
    }

    /// How many requests are pending.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_request_no_longer_expires() {
        let mut c = Correlator::new();
        c.insert("a".to_string(), 100, 1).unwrap();
        assert_eq!(c.get(&"a".to_string()), Some(&1));
        assert_eq!(c.resolve(&"a".to_string()), Some(1));
        assert_eq!(c.get(&"a".to_string()), None);
        assert!(c.expire(1_000).is_empty());
        assert!(c.is_empty());
    }

    #[test]
    fn expire_takes_only_due_requests_in_deadline_order() {
        let mut c = Correlator::new();
        c.insert(1u32, 300, "c").unwrap();
        c.insert(2, 100, "a").unwrap();
        c.insert(3, 200, "b").unwrap();
        assert_eq!(c.next_deadline(), Some(100));
        assert_eq!(c.expire(200), vec![(2, "a"), (3, "b")]);
        assert_eq!(c.next_deadline(), Some(300));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn duplicate_id_is_refused_and_value_returned() {
        let mut c = Correlator::new();
        c.insert(1u8, 10, "x").unwrap();
        assert_eq!(c.insert(1, 20, "y"), Err("y"));
        assert_eq!(c.next_deadline(), Some(10));
    }

    #[test]
    fn drain_all_empties_everything() {
        let mut c = Correlator::new();
        c.insert(1u8, 10, ()).unwrap();
        c.insert(2u8, 5, ()).unwrap();
        assert_eq!(c.drain_all().len(), 2);
        assert_eq!(c.next_deadline(), None);
    }
}
