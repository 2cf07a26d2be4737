//! The service registry as a gateway sees it: which service instances are live and
//! which channels they consume, from their announcements on `warren.services`
//! ([`warren_protocol::services`]). A request on a channel nobody can answer is
//! refused with `no_service` at once instead of waiting for its timeout.
//!
//! "Nobody can answer" takes two witnesses, so a service that does not announce still
//! counts: no live instance in the registry **and** no consumer on the channel's
//! `IN_<CHANNEL>` queue (read with a passive declare on a scratch channel, at most once per
//! [`CONSUMER_CHECK_TTL`] per channel, and only when the registry has nobody; requests
//! asking together share looks). A count of zero RabbitMQ was slow to give is not a
//! witness ([`QueueCount::consumers`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use warren_protocol::services::{AnnounceEvent, Announcement};

use crate::broker::Broker;
use crate::error::GatewayError;

/// How long a consumer count read from the broker is trusted.
pub const CONSUMER_CHECK_TTL: Duration = Duration::from_millis(250);

/// RabbitMQ 3.10.8 asks a quorum queue's leader for its counts with a 250 ms timeout
/// and, when that passes, answers a passive declare with 0 messages and 0 consumers
/// (`rabbit_quorum_queue:stat/2`). An empty answer that took this long may be that.
const SLOW_EMPTY_ANSWER: Duration = Duration::from_millis(200);

/// How long a look at a queue's consumers may take ([`Services::answerable`]): past
/// it the broker cannot say, which counts as a consumer. A connection that stays open
/// while RabbitMQ answers nothing (a frozen node) held the request, and the WebSocket
/// connection's loop that handles it, until the AMQP heartbeat gave the connection up.
const CONSUMER_LOOK_LIMIT: Duration = Duration::from_secs(1);

/// What a passive declare said about a queue, and how long it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueCount {
    /// `declare-ok`'s message count.
    messages: u32,
    /// `declare-ok`'s consumer count.
    consumers: u32,
    /// From asking to the answer.
    took: Duration,
}

impl QueueCount {
    /// The consumer count, if it can be believed: `None` for an answer of no messages
    /// and no consumers that took [`SLOW_EMPTY_ANSWER`] or more, which is what
    /// RabbitMQ says when a busy quorum queue did not answer it in time (a storm of
    /// resumes made the gateway refuse requests with a false `no_service`).
    pub(crate) fn consumers(&self) -> Option<u32> {
        let maybe_timed_out =
            self.messages == 0 && self.consumers == 0 && self.took >= SLOW_EMPTY_ANSWER;
        (!maybe_timed_out).then_some(self.consumers)
    }
}

/// Live service instances, from their announcements. Pure: time is passed in.
#[derive(Debug, Default)]
pub struct ServiceView {
    instances: HashMap<String, Entry>,
}

#[derive(Debug)]
struct Entry {
    announcement: Announcement,
    first_seen: Instant,
    last_seen: Instant,
}

/// One live instance, as `GET /services` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveInstance {
    /// The instance id.
    pub instance: String,
    /// The channels it consumes.
    pub channels: Vec<String>,
    /// Its version.
    pub version: String,
    /// Milliseconds since its first announcement this gateway saw.
    pub up_ms: u64,
    /// Milliseconds since its last announcement.
    pub last_seen_ms: u64,
}

impl ServiceView {
    /// Takes one announcement in: a `leave` removes the instance, anything else
    /// (re)records it with its channels.
    pub fn apply(&mut self, announcement: Announcement, now: Instant) {
        if announcement.event == AnnounceEvent::Leave {
            self.instances.remove(&announcement.instance);
            return;
        }
        let first_seen = self
            .instances
            .get(&announcement.instance)
            .map_or(now, |e| e.first_seen);
        self.instances.insert(
            announcement.instance.clone(),
            Entry {
                announcement,
                first_seen,
                last_seen: now,
            },
        );
    }

    /// Forgets instances whose last announcement is older than its lifetime (three
    /// heartbeat intervals).
    pub fn expire(&mut self, now: Instant) {
        self.instances.retain(|_, e| alive(e, now));
    }

    /// Whether a live instance consumes `queue` of `channel`: one that announces the
    /// channel and, when it names its queues, that queue (a worker of one tenant does
    /// not answer for another's). Channels compare without case, as their queues are
    /// named (`Tickets` and `tickets` share `IN_TICKETS`; a priority worker announces
    /// the channel of its queue, lower case).
    pub fn serves(&self, channel: &str, queue: &str, now: Instant) -> bool {
        self.instances.values().any(|e| {
            let a = &e.announcement;
            alive(e, now)
                && a.channels.iter().any(|c| c.eq_ignore_ascii_case(channel))
                && (a.queues.is_empty() || a.queues.iter().any(|q| q == queue))
        })
    }

    /// The live instances by service name, sorted.
    pub fn live(&self, now: Instant) -> BTreeMap<String, Vec<LiveInstance>> {
        let mut by_name: BTreeMap<String, Vec<LiveInstance>> = BTreeMap::new();
        for e in self.instances.values().filter(|e| alive(e, now)) {
            let a = &e.announcement;
            by_name
                .entry(a.name.clone())
                .or_default()
                .push(LiveInstance {
                    instance: a.instance.clone(),
                    channels: a.channels.clone(),
                    version: a.version.clone(),
                    up_ms: now.duration_since(e.first_seen).as_millis() as u64,
                    last_seen_ms: now.duration_since(e.last_seen).as_millis() as u64,
                });
        }
        for list in by_name.values_mut() {
            list.sort_by(|a, b| a.instance.cmp(&b.instance));
        }
        by_name
    }
}

fn alive(e: &Entry, now: Instant) -> bool {
    now.duration_since(e.last_seen) < Duration::from_millis(e.announcement.lifetime_ms())
}

/// The registry view and the consumer-count cache of one gateway.
#[derive(Debug, Default)]
pub struct Services {
    view: Mutex<ServiceView>,
    /// The last look at each queue's consumers; its lock makes the requests that ask
    /// together share one look.
    consumers: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<ConsumerLook>>>>>,
}

/// One look at a queue's consumer count ([`consumer_count`]).
#[derive(Debug, Clone, Copy)]
struct ConsumerLook {
    /// When it began.
    began: Instant,
    /// What it found (`None`: the broker could not say).
    count: Option<u32>,
}

impl ConsumerLook {
    /// Whether something consumes the queue, for a request asked at `asked`, as far
    /// as this look tells at `now`: a look that began after the request was asked
    /// answers it, and a count it found is trusted for [`CONSUMER_CHECK_TTL`]. A
    /// broker that could not say counts as yes.
    fn answers(&self, asked: Instant, now: Instant) -> Option<bool> {
        let fresh = self.count.is_some() && now.duration_since(self.began) < CONSUMER_CHECK_TTL;
        (self.began >= asked || fresh).then(|| self.count.is_none_or(|c| c > 0))
    }
}

impl Services {
    /// Takes in the body of a message from `warren.services`; anything that is not an
    /// announcement is ignored.
    pub fn on_message(&self, body: &[u8]) {
        match serde_json::from_slice::<Announcement>(body) {
            Ok(a) => {
                let now = Instant::now();
                let mut view = self.view.lock().expect("service view lock");
                view.expire(now);
                view.apply(a, now);
            }
            Err(e) => tracing::debug!(error = %e, "not a service announcement; ignored"),
        }
    }

    /// The live instances by service name.
    pub fn live(&self) -> BTreeMap<String, Vec<LiveInstance>> {
        self.view
            .lock()
            .expect("service view lock")
            .live(Instant::now())
    }

    /// Whether anything can answer on `channel` through `queue`: a live instance in
    /// the registry ([`ServiceView::serves`]), or else a consumer on `queue` (a broker that cannot be asked counts as yes: the
    /// publish itself then reports what is wrong).
    pub async fn answerable(&self, broker: &Arc<Broker>, channel: &str, queue: &str) -> bool {
        let now = Instant::now();
        if self
            .view
            .lock()
            .expect("service view lock")
            .serves(channel, queue, now)
        {
            return true;
        }
        // RabbitMQ away: not asked. A look waited `broker_wait_ms` for it, and then the
        // publish as long again before it was refused `broker_unavailable`.
        if broker.state() != crate::broker::BrokerState::Connected {
            return true;
        }
        self.consumed_by(queue, now, || consumer_count(broker, queue))
            .await
    }

    /// Whether something consumes `queue`, for a request asked at `asked`, looking at
    /// its consumers with `look` unless a look answers it ([`ConsumerLook::answers`]).
    /// Requests that ask while a look is under way wait for it, then take one more
    /// look together: a storm of requests on a channel nobody announces (a service
    /// that does not, or none started yet) opened a scratch channel each, as many as
    /// RabbitMQ allows on the connection.
    async fn consumed_by<F, Fut>(&self, queue: &str, asked: Instant, look: F) -> bool
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Option<u32>>,
    {
        let slot = self
            .consumers
            .lock()
            .expect("consumer cache lock")
            .entry(queue.to_string())
            .or_default()
            .clone();
        let mut last = slot.lock().await;
        if let Some(answer) = last.and_then(|l| l.answers(asked, Instant::now())) {
            return answer;
        }
        let began = Instant::now();
        let count = tokio::time::timeout(CONSUMER_LOOK_LIMIT, look())
            .await
            .unwrap_or(None);
        *last = Some(ConsumerLook { began, count });
        count.is_none_or(|c| c > 0)
    }
}

/// The consumer count of `queue` ([`lookup`]); `None` when the broker cannot say (or
/// said it too slowly to be believed: [`QueueCount::consumers`]) or the queue does not
/// exist (the publish then reports what is wrong).
async fn consumer_count(broker: &Arc<Broker>, queue: &str) -> Option<u32> {
    match lookup(broker, queue).await {
        Ok(Some(count)) => {
            let consumers = count.consumers();
            if consumers.is_none() {
                tracing::debug!(
                    queue,
                    took_ms = count.took.as_millis() as u64,
                    "a slow empty answer: consumers unknown"
                );
            }
            consumers
        }
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(queue, error = %e, "consumer count not read");
            None
        }
    }
}

/// Looks a queue up without creating it (a passive declare on a scratch channel,
/// since a missing queue closes the channel). `None` when it does not exist, else its
/// counts.
///
/// # Errors
/// When RabbitMQ cannot be reached.
async fn lookup(broker: &Broker, queue: &str) -> Result<Option<QueueCount>, GatewayError> {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::{FieldTable, ShortString};
    let ch = broker.scratch().await?;
    let asked = Instant::now();
    let res = ch
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    let out = match res {
        Ok(q) => Ok(Some(QueueCount {
            messages: q.message_count(),
            consumers: q.consumer_count(),
            took: asked.elapsed(),
        })),
        Err(e) if crate::error::is_not_found(&e) => Ok(None),
        Err(e) => Err(GatewayError::amqp(
            format!("queue.declare passive {queue}"),
            e,
        )),
    };
    if ch.status().connected() {
        let _ = ch.close(200, "done".into()).await;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(event: AnnounceEvent, instance: &str, channels: &[&str]) -> Announcement {
        Announcement {
            event,
            name: "tickets".into(),
            instance: instance.into(),
            channels: channels.iter().map(|c| c.to_string()).collect(),
            queues: Vec::new(),
            version: "1".into(),
            interval_ms: 1_000,
        }
    }

    #[test]
    fn a_slow_answer_of_nothing_is_not_believed_a_quick_one_or_a_non_empty_one_is() {
        let count = |messages, consumers, took_ms| QueueCount {
            messages,
            consumers,
            took: Duration::from_millis(took_ms),
        };
        assert_eq!(count(0, 0, 5).consumers(), Some(0), "quick: no consumer");
        assert_eq!(
            count(0, 0, 250).consumers(),
            None,
            "RabbitMQ's timeout answer"
        );
        assert_eq!(count(0, 0, 200).consumers(), None);
        assert_eq!(count(0, 0, 199).consumers(), Some(0));
        assert_eq!(
            count(3, 0, 900).consumers(),
            Some(0),
            "messages: a real answer"
        );
        assert_eq!(count(0, 2, 900).consumers(), Some(2));
    }

    #[test]
    fn an_instance_serves_its_channels_until_it_leaves() {
        let t0 = Instant::now();
        let mut v = ServiceView::default();
        assert!(!v.serves("tickets", "IN_TICKETS", t0));
        v.apply(ann(AnnounceEvent::Join, "a", &["tickets", "chat"]), t0);
        v.apply(ann(AnnounceEvent::Join, "b", &["tickets"]), t0);
        assert!(v.serves("tickets", "IN_TICKETS", t0) && v.serves("chat", "IN_CHAT", t0));
        assert!(!v.serves("voice", "IN_VOICE", t0));
        v.apply(ann(AnnounceEvent::Leave, "a", &[]), t0);
        assert!(!v.serves("chat", "IN_CHAT", t0), "a leave removes at once");
        assert!(
            v.serves("tickets", "IN_TICKETS", t0),
            "b still serves tickets"
        );
        assert_eq!(v.live(t0)["tickets"].len(), 1);
    }

    #[test]
    fn a_channel_configured_in_upper_case_is_served_by_its_queue_s_worker() {
        let t0 = Instant::now();
        let mut v = ServiceView::default();
        // A priority worker announces the channel of its queue, lower case.
        let mut worker = ann(AnnounceEvent::Join, "w", &["tickets"]);
        worker.queues = vec!["IN_TICKETS".into()];
        v.apply(worker, t0);
        assert!(v.serves("Tickets", "IN_TICKETS", t0));
        assert!(!v.serves("Voice", "IN_VOICE", t0));
    }

    #[test]
    fn an_instance_naming_its_queues_serves_only_those() {
        let t0 = Instant::now();
        let mut v = ServiceView::default();
        let mut acme = ann(AnnounceEvent::Join, "acme-worker", &["scan"]);
        acme.queues = vec!["IN_SCAN.acme.delta".into(), "IN_SCAN.acme.full".into()];
        v.apply(acme, t0);
        assert!(v.serves("scan", "IN_SCAN.acme.delta", t0));
        assert!(v.serves("scan", "IN_SCAN.acme.full", t0));
        assert!(
            !v.serves("scan", "IN_SCAN.acme", t0),
            "not its general queue"
        );
        assert!(
            !v.serves("scan", "IN_SCAN.globex.delta", t0),
            "not another tenant's"
        );
        // One that names none answers for every queue of its channels.
        v.apply(ann(AnnounceEvent::Join, "any", &["scan"]), t0);
        assert!(v.serves("scan", "IN_SCAN.globex.delta", t0));
    }

    #[test]
    fn an_instance_is_gone_after_three_missed_heartbeats() {
        let t0 = Instant::now();
        let mut v = ServiceView::default();
        v.apply(ann(AnnounceEvent::Join, "a", &["tickets"]), t0);
        v.apply(
            ann(AnnounceEvent::Heartbeat, "a", &["tickets"]),
            t0 + Duration::from_millis(900),
        );
        let live_until = t0 + Duration::from_millis(900 + 3_000);
        assert!(v.serves(
            "tickets",
            "IN_TICKETS",
            live_until - Duration::from_millis(1)
        ));
        assert!(!v.serves("tickets", "IN_TICKETS", live_until));
        let l = v.live(t0 + Duration::from_millis(1_000));
        assert_eq!(l["tickets"][0].up_ms, 1_000);
        assert_eq!(l["tickets"][0].last_seen_ms, 100);
        v.expire(live_until);
        assert!(v.live(live_until).is_empty());
    }

    #[tokio::test]
    async fn requests_asking_together_share_looks_at_the_consumers() {
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        let services = Services::default();
        let looks = AtomicUsize::new(0);
        let found = |count: Option<u32>| {
            let looks = &looks;
            move || async move {
                looks.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
                count
            }
        };
        // Fifty requests on a channel nobody announces, asked together: one look (each
        // opened a scratch channel of its own before).
        let asked = Instant::now();
        let requests =
            (0..50).map(|_| services.consumed_by("IN_ECHO", Instant::now(), found(Some(0))));
        let answers = futures_util::future::join_all(requests).await;
        assert_eq!(answers, vec![false; 50]);
        assert_eq!(looks.load(Relaxed), 1);
        // A count found is trusted for CONSUMER_CHECK_TTL.
        let now = Instant::now();
        assert!(!services.consumed_by("IN_ECHO", now, found(Some(1))).await);
        assert_eq!(looks.load(Relaxed), 1);
        // Past it, looked at again.
        tokio::time::sleep(CONSUMER_CHECK_TTL).await;
        let now = Instant::now();
        assert!(services.consumed_by("IN_ECHO", now, found(Some(1))).await);
        assert_eq!(looks.load(Relaxed), 2);
        // A broker that cannot say counts as yes, for the requests asked before the
        // look began only: one asked while it was under way looks again.
        tokio::time::sleep(CONSUMER_CHECK_TTL).await;
        let first = services.consumed_by("IN_ECHO", Instant::now(), found(None));
        let later = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = Instant::now();
            services.consumed_by("IN_ECHO", now, found(None)).await
        };
        assert_eq!(tokio::join!(first, later), (true, true));
        assert_eq!(looks.load(Relaxed), 4);
        // Each queue has looks of its own.
        assert!(!services.consumed_by("IN_CHAT", asked, found(Some(0))).await);
        assert_eq!(looks.load(Relaxed), 5);
    }

    #[tokio::test]
    async fn a_look_the_broker_never_answers_is_given_up_and_counts_as_a_consumer() {
        let services = Services::default();
        let started = Instant::now();
        let never = || std::future::pending::<Option<u32>>();
        let answered = tokio::time::timeout(
            CONSUMER_LOOK_LIMIT * 3,
            services.consumed_by("IN_ECHO", Instant::now(), never),
        )
        .await;
        assert_eq!(answered, Ok(true), "the request waited for the look");
        assert!(started.elapsed() >= CONSUMER_LOOK_LIMIT);
    }
}
