//! What matching a message's routing key against the topic patterns the gateway's
//! sessions hold costs the hub, with the patterns in its trie ([`TopicIndex`])
//! against the baseline of trying every distinct pattern in turn (what the hub did
//! before), in the same run; and what a whole `Hub::publish` costs with that many
//! patterns held.
//!
//! `cargo bench -p warren-gateway --bench topics` (release; about 20 s). Each session
//! holds a pattern of its own (`orders.u<i>.*`, as a per-user subscription), and every
//! 100th also `orders.#`; each key routes to one session's pattern and the shared
//! ones. Median of 5 runs per figure. Run by `cargo test` (without the `--bench` that
//! `cargo bench` passes) or with `--quick`: one size, one short run, nothing to read in
//! the figures, but the two ways must find the same sessions.

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::time::Instant;

use lapin::BasicProperties;
use warren_gateway::hub::{Hub, Message};
use warren_gateway::topics::TopicIndex;
use warren_protocol::amqp::topic_matches;

const RUNS: usize = 5;

fn pattern(i: u64) -> String {
    format!("orders.u{i}.*")
}

fn key(i: u64, n: u64) -> String {
    format!("orders.u{}.created", (i * 7_919) % n)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// ns per key, median of `runs` runs of `keys` keys each.
fn time(runs: usize, keys: u64, mut one: impl FnMut(u64) -> usize) -> f64 {
    let runs: Vec<f64> = (0..runs)
        .map(|_| {
            let began = Instant::now();
            let mut found = 0;
            for i in 0..keys {
                found += one(i);
            }
            black_box(found);
            began.elapsed().as_nanos() as f64 / keys as f64
        })
        .collect();
    median(runs)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick") || !args.iter().any(|a| a == "--bench");
    let (sizes, runs, keys): (&[u64], usize, u64) = if quick {
        (&[1_000], 1, 200)
    } else {
        (&[100, 1_000, 10_000, 25_600], RUNS, 20_000)
    };
    println!(
        "| distinct patterns | every pattern tried, ns/message | trie, ns/message | ratio | Hub::publish, ns/message |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for &n in sizes {
        let mut linear: HashMap<String, HashSet<u64>> = HashMap::new();
        let mut trie = TopicIndex::default();
        for i in 0..n {
            let mut held = vec![pattern(i)];
            if i % 100 == 0 {
                held.push("orders.#".into());
            }
            for p in held {
                trie.insert(&p, i);
                linear.entry(p).or_default().insert(i);
            }
        }
        let by_linear = |k: &str| {
            let mut out = HashSet::new();
            for (p, set) in &linear {
                if topic_matches(p, k) {
                    out.extend(set);
                }
            }
            out
        };
        let by_trie = |k: &str| {
            let mut out = HashSet::new();
            trie.matching(k, &mut out);
            out
        };
        for i in 0..keys.min(1_000) {
            let k = key(i, n);
            assert_eq!(by_trie(&k), by_linear(&k), "{k}: the two ways disagree");
        }
        let linear_ns = time(runs, keys / 10, |i| by_linear(&key(i, n)).len());
        let trie_ns = time(runs, keys, |i| by_trie(&key(i, n)).len());

        // A whole publish: the ring, the index, the pushes to the one session's inbox
        // (taken at once, so it stays live).
        let hub = Hub::new(10_000);
        let members: Vec<_> = (0..n)
            .map(|i| {
                let (m, _) = hub.join(i, &format!("s{i}"), None);
                hub.subscribe(i, &[pattern(i)]);
                m
            })
            .collect();
        let mut offset = 0;
        let publish_ns = time(runs, keys, |i| {
            let k = key(i, n);
            let message = Message::new(
                offset,
                "warren.out".into(),
                k,
                BasicProperties::default(),
                b"{}".to_vec(),
            );
            offset += 1;
            hub.publish(message);
            let m = &members[((i * 7_919) % n) as usize];
            usize::from(m.inbox.try_recv().is_some())
        });
        assert!(hub.members() == n as usize);
        println!(
            "| {n} | {linear_ns:.0} | {trie_ns:.0} | {:.0}× | {publish_ns:.0} |",
            linear_ns / trie_ns
        );
    }
}
