//! A small map from increasing ids to values, kept as a sorted `Vec`. The client's ids
//! only grow, so inserts append; lookups are binary searches. Used instead of
//! `BTreeMap` because every `BTreeMap<K, V>` instantiates its own copy of the B-tree
//! code, which weighs kilobytes in the wasm.

/// Values by id, in id order.
#[derive(Debug, Clone)]
pub struct IdMap<V> {
    entries: Vec<(u64, V)>,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap {
            entries: Vec::new(),
        }
    }
}

impl<V> IdMap<V> {
    fn find(&self, id: u64) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&id, |(k, _)| *k)
    }

    /// Inserts or replaces the value of `id`.
    pub fn insert(&mut self, id: u64, value: V) {
        match self.find(id) {
            Ok(i) => self.entries[i].1 = value,
            Err(i) => self.entries.insert(i, (id, value)),
        }
    }

    /// Takes the value of `id` out.
    pub fn remove(&mut self, id: u64) -> Option<V> {
        self.find(id).ok().map(|i| self.entries.remove(i).1)
    }

    /// The value of `id`.
    pub fn get(&self, id: u64) -> Option<&V> {
        self.find(id).ok().map(|i| &self.entries[i].1)
    }

    /// Every entry, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &V)> {
        self.entries.iter().map(|(k, v)| (*k, v))
    }

    /// Keeps only the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(u64, &V) -> bool) {
        self.entries.retain(|(k, v)| keep(*k, v));
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_stay_in_id_order_whatever_the_insert_order() {
        let mut m = IdMap::default();
        m.insert(5, "e");
        m.insert(1, "a");
        m.insert(3, "c");
        assert_eq!(m.iter().map(|(k, _)| k).collect::<Vec<_>>(), vec![1, 3, 5]);
        assert_eq!(m.remove(3), Some("c"));
        assert_eq!(m.get(5), Some(&"e"));
        assert_eq!(m.remove(3), None);
        m.retain(|k, _| k > 1);
        assert_eq!(m.len(), 1);
    }
}
