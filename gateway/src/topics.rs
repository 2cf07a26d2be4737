//! The hub's index of topic patterns (`*` one word, `#` zero or more): a trie of
//! their words, as RabbitMQ's topic exchange keeps its bindings. A routing key is
//! matched by walking its words down the trie once, so the cost of a message grows
//! with the words of its key and the patterns that share their prefixes, not with
//! the number of distinct patterns the gateway's sessions hold. (The hub used to try
//! every pattern on every message under its lock: 10,000 sessions each subscribed to
//! a pattern of their own cost 10,000 matches per message; see BENCHMARKS.md, "Topic
//! patterns in the hub".)
//!
//! Matches exactly what [`warren_protocol::amqp::topic_matches`] matches, which is
//! what RabbitMQ's topic exchange routes; the tests check every pattern and key of up
//! to four words against it.

use std::collections::{HashMap, HashSet};

/// Topic patterns and the members (connection ids) holding each.
#[derive(Debug, Default)]
pub struct TopicIndex {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    /// The next word of the patterns that go on through this node (`*` and `#`
    /// included, as words).
    children: HashMap<Box<str>, Node>,
    /// The members holding the pattern that ends here.
    members: HashSet<u64>,
}

impl TopicIndex {
    /// Records that `member` holds `pattern`.
    pub fn insert(&mut self, pattern: &str, member: u64) {
        let mut node = &mut self.root;
        for word in pattern.split('.') {
            node = node.children.entry(word.into()).or_default();
        }
        node.members.insert(member);
    }

    /// Records that `member` no longer holds `pattern`; nodes left holding nothing
    /// are dropped, so the index is as small as what is held.
    pub fn remove(&mut self, pattern: &str, member: u64) {
        let words: Vec<&str> = pattern.split('.').collect();
        remove(&mut self.root, &words, member);
    }

    /// Whether no pattern is held.
    pub fn is_empty(&self) -> bool {
        self.root.children.is_empty() && self.root.members.is_empty()
    }

    /// Adds to `out` the members holding a pattern that routes `key`.
    pub fn matching(&self, key: &str, out: &mut HashSet<u64>) {
        if self.is_empty() {
            return;
        }
        let words: Vec<&str> = key.split('.').collect();
        let mut walk = Walk {
            words: &words,
            out,
            seen: HashSet::new(),
        };
        walk.from(&self.root, 0);
    }
}

/// Removes `member` from the pattern `words` below `node`; returns whether `node`
/// then holds nothing (so its parent drops it).
fn remove(node: &mut Node, words: &[&str], member: u64) -> bool {
    match words.split_first() {
        None => {
            node.members.remove(&member);
        }
        Some((word, rest)) => {
            if let Some(child) = node.children.get_mut(*word) {
                if remove(child, rest, member) {
                    node.children.remove(*word);
                }
            }
        }
    }
    node.members.is_empty() && node.children.is_empty()
}

/// One key's walk down the trie.
struct Walk<'a, 'o> {
    words: &'a [&'a str],
    out: &'o mut HashSet<u64>,
    /// `#` nodes already walked from a word: a pattern with several `#` could
    /// otherwise be walked once per way of sharing the key's words among them.
    seen: HashSet<(*const Node, usize)>,
}

impl Walk<'_, '_> {
    /// Walks `node` with the key's words from `at` on still to match.
    fn from(&mut self, node: &Node, at: usize) {
        if at == self.words.len() {
            self.out.extend(&node.members);
        } else {
            // A key word `#` is taken by the `#` child below (once per word, with its
            // memo), not here a second time without it.
            if self.words[at] != "#" {
                if let Some(child) = node.children.get(self.words[at]) {
                    self.from(child, at + 1);
                }
            }
            if self.words[at] != "*" {
                if let Some(child) = node.children.get("*") {
                    self.from(child, at + 1);
                }
            }
        }
        if let Some(child) = node.children.get("#") {
            // `#` takes none, one or more of the words left.
            for next in at..=self.words.len() {
                if self.seen.insert((child as *const Node, next)) {
                    self.from(child, next);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_protocol::amqp::topic_matches;

    /// Every dotted string of 1 to `max` words over `alphabet`.
    fn all(alphabet: &[&str], max: usize) -> Vec<String> {
        let mut out: Vec<String> = alphabet.iter().map(|w| w.to_string()).collect();
        let mut last = out.clone();
        for _ in 1..max {
            last = last
                .iter()
                .flat_map(|s| alphabet.iter().map(move |w| format!("{s}.{w}")))
                .collect();
            out.extend(last.iter().cloned());
        }
        out
    }

    fn check(index: &TopicIndex, patterns: &[(u64, &String)], keys: &[String]) {
        for key in keys {
            let mut got = HashSet::new();
            index.matching(key, &mut got);
            let want: HashSet<u64> = patterns
                .iter()
                .filter(|(_, p)| topic_matches(p, key))
                .map(|(i, _)| *i)
                .collect();
            assert_eq!(got, want, "key {key:?}");
        }
    }

    #[test]
    fn routes_exactly_what_the_topic_exchange_routes_for_every_short_pattern_and_key() {
        // Empty words (`a..b`, a trailing dot) included, in patterns and keys.
        let patterns = all(&["a", "b", "", "*", "#"], 4);
        let keys = all(&["a", "b", "", "c"], 5);
        let mut index = TopicIndex::default();
        let held: Vec<(u64, &String)> = patterns
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u64, p))
            .collect();
        for (i, p) in &held {
            index.insert(p, *i);
        }
        check(&index, &held, &keys);

        // Half of them let go: the rest still route exactly, the others not at all.
        let (gone, kept): (Vec<_>, Vec<_>) = held.iter().partition(|(i, _)| i % 2 == 0);
        for (i, p) in &gone {
            index.remove(p, *i);
        }
        check(&index, &kept, &keys);
        for (i, p) in &kept {
            index.remove(p, *i);
        }
        assert!(index.is_empty(), "every node dropped: {index:?}");
    }

    #[test]
    fn members_sharing_a_pattern_are_each_found_and_let_go_alone() {
        let mut index = TopicIndex::default();
        index.insert("chat.event.#", 1);
        index.insert("chat.event.#", 2);
        index.insert("chat.*.order", 3);
        let found = |index: &TopicIndex, key: &str| {
            let mut out = HashSet::new();
            index.matching(key, &mut out);
            let mut v: Vec<u64> = out.into_iter().collect();
            v.sort_unstable();
            v
        };
        assert_eq!(found(&index, "chat.event.order"), vec![1, 2, 3]);
        assert_eq!(found(&index, "chat.event"), vec![1, 2]);
        index.remove("chat.event.#", 1);
        assert_eq!(found(&index, "chat.event.x.y"), vec![2]);
        // Letting go of a pattern not held changes nothing.
        index.remove("chat.event.#", 7);
        index.remove("chat.nothing.#", 2);
        assert_eq!(found(&index, "chat.event.order"), vec![2, 3]);
    }

    #[test]
    fn many_hashes_against_a_long_key_are_walked_once_per_node_and_word() {
        // 40 `#` against 120 words: without the memo, the ways of sharing the words
        // among the `#`s are beyond counting; with it, each `#` node is walked once
        // from each word (and each walk tries the words left): 40 × 121².
        let pattern = vec!["#"; 40].join(".") + ".z";
        let key = vec!["a"; 120].join(".") + ".z";
        let mut index = TopicIndex::default();
        index.insert(&pattern, 1);
        let mut out = HashSet::new();
        index.matching(&key, &mut out);
        assert_eq!(out, HashSet::from([1]));
        out.clear();
        index.matching(&vec!["a"; 120].join("."), &mut out);
        assert!(out.is_empty());
        // A key of literal `#` words (a raw AMQP publisher's) is walked alike.
        let hashes = vec!["#"; 120].join(".") + ".z";
        out.clear();
        index.matching(&hashes, &mut out);
        assert_eq!(out, HashSet::from([1]));
    }
}
