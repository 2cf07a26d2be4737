//! Load for the fault-injection tests: confirmed publishes from many tasks at a fixed
//! rate, what the producers saw, the states a service went through, and the figures
//! the tests print (stalls, messages handled).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::types::ShortString;
use lapin::BasicProperties;
use warren_service::{Publisher, Service, ServiceState};

/// What a producer saw: the `message_id`s confirmed (and when), and those that failed
/// with why.
#[derive(Debug, Default)]
pub struct Sent {
    /// Confirmed `message_id`s, in confirm order.
    pub confirmed: Mutex<Vec<String>>,
    /// Failed `message_id`s with the error.
    pub failed: Mutex<Vec<(String, String)>>,
    /// When each confirm arrived.
    pub confirm_times: Mutex<Vec<Instant>>,
}

impl Sent {
    /// Records `id` as confirmed now.
    pub fn confirm(&self, id: String) {
        self.confirmed.lock().unwrap().push(id);
        self.confirm_times.lock().unwrap().push(Instant::now());
    }

    /// Records `id` as failed with `why`.
    pub fn fail(&self, id: String, why: String) {
        self.failed.lock().unwrap().push((id, why));
    }
}

/// How much [`publish_load`] publishes, how fast, and under which ids.
#[derive(Debug, Clone, Copy)]
pub struct LoadPlan {
    /// Messages in all (split evenly over the tasks).
    pub messages: usize,
    /// Concurrent publishing tasks; each waits for its confirm before the next publish.
    pub tasks: usize,
    /// Total publish rate.
    pub rate_per_sec: u64,
    /// Each `message_id` is `<id_prefix><task>-<seq>`.
    pub id_prefix: &'static str,
}

/// Publishes `plan.messages` to `exchange` (routing key `chat.load`, persistent, a JSON
/// body) from `plan.tasks` tasks at `plan.rate_per_sec` in total, each waiting for its
/// confirm; records every outcome in `sent`. Returns when every task is done.
pub async fn publish_load(publisher: Publisher, exchange: String, plan: LoadPlan, sent: Arc<Sent>) {
    publish_load_to(publisher, exchange, "chat.load", plan, None, sent).await;
}

/// Bounds on a load's waits, for a broker that may never answer a publish.
#[derive(Debug, Clone, Copy)]
pub struct LoadBounds {
    /// A publish whose confirm has not come within this is recorded as failed
    /// (`"no confirm within …"`); the task goes on with the next one.
    pub confirm_within: Duration,
    /// No publish starts after this; the rest are recorded as failed (`"not
    /// published"`).
    pub stop_at: Instant,
}

/// [`publish_load`] with routing key `key` (e.g. `chat.all` on `warren.out`: a
/// broadcast to clients) and, with `bounds`, every wait bounded.
pub async fn publish_load_to(
    publisher: Publisher,
    exchange: String,
    key: &'static str,
    plan: LoadPlan,
    bounds: Option<LoadBounds>,
    sent: Arc<Sent>,
) {
    let per_task = plan.messages / plan.tasks;
    let interval = Duration::from_micros(1_000_000 * plan.tasks as u64 / plan.rate_per_sec);
    let mut tasks = Vec::new();
    for task in 0..plan.tasks {
        let publisher = publisher.clone();
        let exchange = exchange.clone();
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for seq in 0..per_task {
                tick.tick().await;
                if bounds.is_some_and(|b| Instant::now() >= b.stop_at) {
                    for rest in seq..per_task {
                        let id = format!("{}{task}-{rest}", plan.id_prefix);
                        sent.fail(id, "not published: the load's deadline passed".into());
                    }
                    break;
                }
                let id = format!("{}{task}-{seq}", plan.id_prefix);
                let properties = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type(ShortString::from("application/json"))
                    .with_message_id(ShortString::from(id.as_str()));
                let body = format!("{{\"task\":{task},\"seq\":{seq}}}");
                let publish =
                    publisher.publish_confirmed(&exchange, key, body.as_bytes(), properties);
                let outcome = match bounds {
                    Some(b) => match tokio::time::timeout(b.confirm_within, publish).await {
                        Ok(outcome) => outcome.map_err(|e| e.to_string()),
                        Err(_) => Err(format!("no confirm within {:?}", b.confirm_within)),
                    },
                    None => publish.await.map_err(|e| e.to_string()),
                };
                match outcome {
                    Ok(()) => sent.confirm(id),
                    Err(why) => sent.fail(id, why),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher task");
    }
}

/// The states a service went through, each with when it entered it.
pub type StateLog = Arc<Mutex<Vec<(Instant, String)>>>;

/// Records every state `service` goes through from now on (`running`,
/// `reconnecting`, `failed`, `stopped`), with when.
pub fn watch_states(service: &Service) -> StateLog {
    let log = Arc::new(Mutex::new(Vec::new()));
    let out = log.clone();
    let mut states = service.state_receiver();
    tokio::spawn(async move {
        while states.changed().await.is_ok() {
            let name = match &*states.borrow_and_update() {
                ServiceState::Running => "running",
                ServiceState::Reconnecting(_) => "reconnecting",
                ServiceState::Failed(_) => "failed",
                ServiceState::Stopped => "stopped",
            };
            out.lock().unwrap().push((Instant::now(), name.to_string()));
        }
    });
    log
}

/// Waits (polling every 100 ms) until every id of `confirmed` is a key of `handled`;
/// whether that happened within `within`.
pub async fn wait_handled<V>(
    handled: &Mutex<HashMap<String, V>>,
    confirmed: &[String],
    within: Duration,
) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let done = {
            let handled = handled.lock().unwrap();
            confirmed.iter().all(|id| handled.contains_key(id))
        };
        if done || Instant::now() > deadline {
            return done;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ids of `confirmed` that `handled` never saw.
pub fn lost<'a, V>(confirmed: &'a [String], handled: &HashMap<String, V>) -> Vec<&'a String> {
    confirmed
        .iter()
        .filter(|id| !handled.contains_key(*id))
        .collect()
}

/// The longest time without any confirm, from `from` on.
pub fn longest_gap_after(times: &[Instant], from: Instant) -> Duration {
    let mut sorted: Vec<Instant> = times.to_vec();
    sorted.sort();
    let mut last = from;
    let mut longest = Duration::ZERO;
    for t in sorted.into_iter().filter(|t| *t >= from) {
        longest = longest.max(t.duration_since(last));
        last = t;
    }
    longest
}

/// The `message_id`s in `stream` with the number of copies of each, read from its
/// start on the node at `uri` until nothing came for 3 s (at most 30 s in all).
pub async fn read_stream_ids(uri: &str, stream: &str) -> Result<HashMap<String, usize>, String> {
    let mut ids = HashMap::new();
    for (_, id) in read_stream(uri, stream, Duration::from_secs(3)).await? {
        if let Some(id) = id {
            *ids.entry(id).or_insert(0) += 1;
        }
    }
    Ok(ids)
}

/// Every message in `stream`, in order, as its position (`x-stream-offset`) and
/// `message_id`, read from its start on the node at `uri` until nothing came for
/// `quiet` (at most 30 s in all).
pub async fn read_stream(
    uri: &str,
    stream: &str,
    quiet: Duration,
) -> Result<Vec<(Option<u64>, Option<String>)>, String> {
    use futures_util::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let read = async {
        let connection =
            lapin::Connection::connect(uri, lapin::ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel.basic_qos(1_000, BasicQosOptions::default()).await?;
        let mut from_start = FieldTable::default();
        from_start.insert("x-stream-offset".into(), AMQPValue::LongLongInt(0));
        let mut consumer = channel
            .basic_consume(
                stream.into(),
                "warren-e2e-check".into(),
                BasicConsumeOptions::default(),
                from_start,
            )
            .await?;
        let mut read = Vec::new();
        while let Ok(Some(delivery)) = tokio::time::timeout(quiet, consumer.next()).await {
            let delivery = delivery?;
            let position = match delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("x-stream-offset"))
            {
                Some(AMQPValue::LongLongInt(o)) => u64::try_from(*o).ok(),
                _ => None,
            };
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|i| i.to_string());
            read.push((position, id));
            delivery.acker.ack(BasicAckOptions::default()).await?;
        }
        let _ = connection.close(200, "done".into()).await;
        Ok::<_, lapin::Error>(read)
    };
    match tokio::time::timeout(Duration::from_secs(30), read).await {
        Ok(Ok(read)) => Ok(read),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("not read within 30 s".into()),
    }
}
