//! Pending operations with deadlines: the contract of `warren_protocol::Correlator`
//! (insert, resolve, expire at `now`, next deadline, drain), specialised to the
//! client's increasing `u64` ids over an [`IdMap`]. The protocol's correlator keeps a
//! `HashMap` and a `BTreeSet`, whose code alone would take a third of the SDK's wasm
//! size budget; a client has at most its outbox limit pending, so linear scans at
//! timer ticks are cheap.

use crate::id_map::IdMap;

/// Pending operations by id, each with a deadline (ms).
#[derive(Debug)]
pub struct Deadlines<V> {
    pending: IdMap<(u64, V)>,
}

impl<V> Default for Deadlines<V> {
    fn default() -> Self {
        Deadlines {
            pending: IdMap::default(),
        }
    }
}

impl<V> Deadlines<V> {
    /// Registers operation `id`, due at `deadline`.
    pub fn insert(&mut self, id: u64, deadline: u64, value: V) {
        self.pending.insert(id, (deadline, value));
    }

    /// Takes operation `id` out, when its answer arrived.
    pub fn resolve(&mut self, id: u64) -> Option<V> {
        self.pending.remove(id).map(|(_, v)| v)
    }

    /// Takes out every operation due at or before `now`, in id order.
    pub fn expire(&mut self, now: u64) -> Vec<(u64, V)> {
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, (deadline, _))| *deadline <= now)
            .map(|(id, _)| id)
            .collect();
        due.into_iter()
            .filter_map(|id| self.resolve(id).map(|v| (id, v)))
            .collect()
    }

    /// The earliest deadline, to arm a timer.
    pub fn next_deadline(&self) -> Option<u64> {
        self.pending.iter().map(|(_, (d, _))| *d).min()
    }

    /// Takes out every operation, in id order.
    pub fn drain_all(&mut self) -> Vec<(u64, V)> {
        // Every deadline is at or before the end of time: one copy of the code.
        self.expire(u64::MAX)
    }

    /// How many operations are pending.
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
    fn expire_takes_only_due_operations_and_moves_the_next_deadline() {
        let mut d = Deadlines::default();
        d.insert(1, 300, "c");
        d.insert(2, 100, "a");
        d.insert(3, 200, "b");
        assert_eq!(d.next_deadline(), Some(100));
        assert_eq!(d.expire(200), vec![(2, "a"), (3, "b")]);
        assert_eq!(d.next_deadline(), Some(300));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn drain_all_takes_every_operation_in_id_order_whatever_its_deadline() {
        let mut d = Deadlines::default();
        d.insert(9, u64::MAX, "never");
        d.insert(2, 100, "a");
        d.insert(5, 0, "b");
        assert_eq!(d.drain_all(), vec![(2, "a"), (5, "b"), (9, "never")]);
        assert!(d.is_empty());
        assert_eq!(d.next_deadline(), None);
    }

    #[test]
    fn a_resolved_operation_no_longer_expires() {
        let mut d = Deadlines::default();
        d.insert(7, 10, ());
        assert_eq!(d.resolve(7), Some(()));
        assert!(d.expire(1_000).is_empty());
        assert_eq!(d.next_deadline(), None);
    }
}
