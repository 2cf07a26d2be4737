//! Priority consumption, the IO loop around the sans-IO [`Ladder`]: one channel with
//! prefetch 1 per consumed queue of an ordered list, one handler run at a time, always
//! on the highest-priority delivery held. Messages go through the same path as
//! [`Service::consume`](crate::Service::consume) ([`consumer::process`]): duplicate
//! window, handler, reply, ack, retries, dead-lettering.
//!
//! Switching is event-driven: the queues above the one being worked on keep a
//! consumer, so a message arriving there is pushed at once; the lower consumers are
//! then cancelled, and a delivery one of them held unhandled goes back to its queue
//! when its channel is closed (never acknowledged, never handled). The message in
//! progress finishes first. Ready counts (passive declares) are read only when the
//! handler is idle and not every queue is consumed, to move down the list.
//!
//! When the connection (or a channel) is lost, everything not acknowledged is
//! requeued by RabbitMQ; the loop waits for the link's next connection, declares the
//! queues again and starts from the top, keeping the duplicate windows. A handler still
//! running then finishes first (its ack fails when its connection is gone, and the copy
//! redelivered is recognised by the duplicate window; its channel is closed after it,
//! so that with the connection still up its message is acknowledged, not handed back),
//! and the next message is handled after it, never beside it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::{FutureExt, Stream};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Consumer};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::consumer::{self, retry_backoff, LoopEnd, Shared};
use crate::error::{Result, ServiceError};
use crate::handler::{BoxFuture, Context, Handler, HandlerError, Outcome};
use crate::incoming::Incoming;
use crate::ladder::{Action, Ladder};
use crate::link::Epoch;
use crate::short_string::exact;
use crate::topology;

/// Pause before the ready counts are read again when a consumed queue had ready
/// messages that were not delivered to this worker (another worker took them, or
/// they were on the way): see [`Action::ProbeLater`]. Only while the handler is idle.
pub const PROBE_PAUSE: Duration = Duration::from_millis(100);

/// One handler shared by the consume paths of every queue of the list.
pub(crate) struct SharedHandler<H>(pub(crate) Arc<H>);

impl<H: Handler> Handler for SharedHandler<H> {
    fn handle(
        &self,
        ctx: Context,
        message: Incoming,
    ) -> BoxFuture<'static, std::result::Result<Outcome, HandlerError>> {
        self.0.handle(ctx, message)
    }
}

/// The consume path of each queue of the list, highest priority first.
pub(crate) type Levels<H> = Vec<Arc<Shared<SharedHandler<H>>>>;

/// Checks a priority list: at least one queue, no blank name, no queue twice.
///
/// # Errors
/// [`ServiceError::InvalidQueueList`] saying what is wrong.
pub fn validate_queue_list<S: AsRef<str>>(queues: &[S]) -> Result<Vec<String>> {
    if queues.is_empty() {
        return Err(ServiceError::InvalidQueueList("no queue named".into()));
    }
    let mut list: Vec<String> = Vec::with_capacity(queues.len());
    for queue in queues {
        let queue = queue.as_ref().trim();
        if queue.is_empty() || queue.len() > 255 {
            return Err(ServiceError::InvalidQueueList(format!(
                "`{queue}` is not a queue name (1 to 255 bytes)"
            )));
        }
        if list.iter().any(|q| q == queue) {
            return Err(ServiceError::InvalidQueueList(format!(
                "`{queue}` is named twice"
            )));
        }
        list.push(queue.to_string());
    }
    Ok(list)
}

/// A consumer of one level on its own channel.
struct Rung {
    channel: Channel,
    consumer: Consumer,
    /// `basic.cancel` sent: the stream ends, it is not polled any more.
    cancelled: bool,
    /// A delivery not handed to the handler yet.
    held: Option<Delivery>,
}

/// Runs priority consumption for the life of the service: on a lost consumer or
/// connection, waits for the link to be up again, declares the queues again and
/// starts from the top. Returns when `stop` turns true or the link is closed.
pub(crate) async fn keep_consuming<H: Handler>(
    levels: Levels<H>,
    first: Epoch,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let link = levels[0].link.clone();
    let config = levels[0].config.clone();
    let names = levels[0].context.names().clone();
    let mut ladder = Ladder::new(levels.len());
    let mut next = Some(first);
    let mut min_generation = 0;
    let mut failures = 0u32;
    // The handler a lost run left running: the next run starts once it ended (one
    // handler run at a time, across runs too).
    let mut previous: Option<JoinHandle<()>> = None;
    loop {
        let epoch = match next.take() {
            Some(epoch) => epoch,
            None => {
                let epoch = tokio::select! {
                    epoch = link.up(min_generation, None) => match epoch {
                        Ok(epoch) => epoch,
                        Err(_) => return,
                    },
                    _ = stop.changed() => return,
                };
                if *stop.borrow() {
                    return;
                }
                let mut declared = Ok(());
                for level in &levels {
                    declared = topology::declare_priority_queue(
                        &epoch.connection,
                        &names,
                        &level.queue,
                        &config,
                    )
                    .await;
                    if declared.is_err() {
                        break;
                    }
                }
                if let Err(e) = declared {
                    failures += 1;
                    if !epoch.connection.status().connected() {
                        link.report_lost(epoch.generation);
                        min_generation = epoch.generation + 1;
                    }
                    let wait = retry_backoff(failures);
                    warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "declaring the priority queues failed");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => return,
                    }
                    continue;
                }
                epoch
            }
        };
        if let Some(handler) = previous.take() {
            debug!("waiting for the handler still running from the lost consumer");
            tokio::select! {
                _ = handler => {}
                _ = stop.changed() => return,
            }
        }
        ladder.reset();
        let since = Instant::now();
        match run(
            &levels,
            &epoch,
            &mut ladder,
            stop.clone(),
            grace,
            &mut previous,
        )
        .await
        {
            LoopEnd::Stopped => return,
            LoopEnd::Lost(reason) => {
                if since.elapsed() < Duration::from_secs(1) {
                    failures += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(retry_backoff(failures)) => {}
                        _ = stop.changed() => return,
                    }
                } else {
                    failures = 0;
                }
                let connection_up = epoch.connection.status().connected();
                if connection_up {
                    min_generation = epoch.generation;
                } else {
                    link.report_lost(epoch.generation);
                    min_generation = epoch.generation + 1;
                }
                warn!(reason = %reason, connection_up, "priority consumer lost; consuming again once RabbitMQ is back");
            }
        }
    }
}

/// The loop on one connection: carries out the ladder's actions, hands the highest
/// held delivery to the handler, reports deliveries and handler ends to the ladder.
/// Lost with a handler running, it leaves in `previous` the task that lets the handler
/// end and then closes its level's channel.
async fn run<H: Handler>(
    levels: &Levels<H>,
    epoch: &Epoch,
    ladder: &mut Ladder,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    previous: &mut Option<JoinHandle<()>>,
) -> LoopEnd {
    let queues: Vec<String> = levels.iter().map(|l| l.queue.clone()).collect();
    let mut rungs: Vec<Option<Rung>> = (0..levels.len()).map(|_| None).collect();
    let mut busy: Option<(usize, JoinHandle<()>)> = None;
    let mut probe_at: Option<Instant> = None;
    let one_at_a_time = Arc::new(Semaphore::new(1));
    let mut pending: VecDeque<Action> = ladder.start().into();
    info!(queues = ?queues, generation = epoch.generation, "consuming by priority");
    let end = 'run: loop {
        if *stop.borrow() {
            break LoopEnd::Stopped;
        }
        while let Some(action) = pending.pop_front() {
            match action {
                Action::Consume(level) => match open(epoch, &levels[level]).await {
                    Ok(rung) => {
                        debug!(queue = %queues[level], level, "consuming");
                        rungs[level] = Some(rung);
                    }
                    Err(e) => break 'run LoopEnd::Lost(e.to_string()),
                },
                Action::Cancel(level) => {
                    if let Some(rung) = rungs[level].as_mut() {
                        debug!(queue = %queues[level], level, "cancelling (its message in progress finishes first)");
                        rung.cancelled = true;
                        let cancel = rung
                            .channel
                            .basic_cancel(rung.consumer.tag(), BasicCancelOptions::default());
                        let _ = tokio::time::timeout(Duration::from_secs(5), cancel).await;
                    }
                }
                Action::Close(level) => {
                    if let Some(rung) = rungs[level].take() {
                        debug!(queue = %queues[level], level, handed_back = rung.held.is_some(), "closing");
                        close(rung).await;
                    }
                }
                Action::Probe => match topology::ready_counts(&epoch.connection, &queues).await {
                    Ok(counts) => {
                        debug!(ready = ?counts, "ready counts");
                        pending.extend(ladder.probed(&counts));
                    }
                    Err(e) => break 'run LoopEnd::Lost(format!("counting ready messages: {e}")),
                },
                Action::ProbeLater => probe_at = Some(Instant::now() + PROBE_PAUSE),
            }
        }
        if busy.is_none() {
            if let Some(level) = ladder.next_handle() {
                match rungs[level].as_mut().and_then(|r| r.held.take()) {
                    Some(delivery) => {
                        let permit = one_at_a_time
                            .clone()
                            .try_acquire_owned()
                            .expect("one message at a time");
                        let task = tokio::spawn(consumer::process(
                            levels[level].clone(),
                            delivery,
                            permit,
                        ));
                        busy = Some((level, task));
                    }
                    None => {
                        pending.extend(ladder.handled(level));
                        continue;
                    }
                }
            }
        }
        let first = tokio::select! {
            biased;
            _ = stop.changed() => break LoopEnd::Stopped,
            // Deliveries before the end of the message in progress: a higher one that
            // came meanwhile is known before the ladder considers moving down.
            next = std::future::poll_fn(|cx| poll_deliveries(&mut rungs, cx)) => next,
            result = async { (&mut busy.as_mut().expect("busy").1).await }, if busy.is_some() => {
                let (level, _) = busy.take().expect("busy");
                if let Err(e) = result {
                    warn!(queue = %queues[level], error = %e, "message task ended abnormally");
                }
                pending.extend(ladder.handled(level));
                continue;
            }
            _ = sleep_until(probe_at), if probe_at.is_some() => {
                probe_at = None;
                pending.extend(ladder.probe_due());
                continue;
            }
        };
        // Take every delivery available now before choosing, highest level first.
        let mut next = Some(first);
        while let Some((level, item)) = next.take() {
            match item {
                Some(Ok(delivery)) => {
                    if ladder.accepts(level) {
                        if let Some(rung) = rungs[level].as_mut() {
                            rung.held = Some(delivery);
                        }
                        pending.extend(ladder.delivered(level));
                    }
                }
                Some(Err(e)) => break 'run LoopEnd::Lost(e.to_string()),
                None => {
                    break 'run LoopEnd::Lost(format!(
                        "the consumer of {} was cancelled",
                        queues[level]
                    ))
                }
            }
            next = std::future::poll_fn(|cx| poll_deliveries(&mut rungs, cx)).now_or_never();
        }
    };
    match &end {
        LoopEnd::Stopped => {
            let busy_level = busy.as_ref().map(|(level, _)| *level);
            for (level, slot) in rungs.iter_mut().enumerate() {
                if Some(level) == busy_level {
                    if let Some(rung) = slot.as_mut().filter(|r| !r.cancelled) {
                        let cancel = rung
                            .channel
                            .basic_cancel(rung.consumer.tag(), BasicCancelOptions::default());
                        let _ = tokio::time::timeout(Duration::from_secs(5), cancel).await;
                    }
                } else if let Some(rung) = slot.take() {
                    close(rung).await;
                }
            }
            if let Some((level, mut task)) = busy.take() {
                if tokio::time::timeout(grace, &mut task).await.is_err() {
                    warn!(queue = %queues[level], "handler still running after the grace period; its message goes back to the queue");
                    task.abort();
                }
            }
            for rung in rungs.into_iter().flatten() {
                close(rung).await;
            }
            info!(queues = ?queues, "priority consumer stopped");
        }
        LoopEnd::Lost(_) => {
            // The handler in progress (if any) finishes in the background, and its
            // level's channel is closed only then: with the connection still up (a
            // consumer cancelled by RabbitMQ, its queue deleted), closing it at once
            // handed its message back while the handler ran, to another worker's
            // handler too, and the handler's ack was lost.
            let busy_level = busy.as_ref().map(|(level, _)| *level);
            let mut busy_rung = None;
            for (level, slot) in rungs.iter_mut().enumerate() {
                if Some(level) == busy_level {
                    busy_rung = slot.take();
                } else if let Some(rung) = slot.take() {
                    tokio::spawn(close(rung));
                }
            }
            // Cancelled, so that the slot the handler's ack frees is not filled with a
            // message that its closing would hand back (marked redelivered).
            if let Some(rung) = busy_rung
                .as_mut()
                .filter(|r| !r.cancelled && r.channel.status().connected())
            {
                rung.cancelled = true;
                let cancel = rung
                    .channel
                    .basic_cancel(rung.consumer.tag(), BasicCancelOptions::default());
                let _ = tokio::time::timeout(Duration::from_secs(5), cancel).await;
            }
            if let Some((_, task)) = busy.take() {
                *previous = Some(tokio::spawn(async move {
                    let _ = task.await;
                    if let Some(rung) = busy_rung {
                        close(rung).await;
                    }
                }));
            }
        }
    }
    end
}

/// The first delivery (or end) among the consumers that run, highest level first.
fn poll_deliveries(
    rungs: &mut [Option<Rung>],
    cx: &mut TaskContext<'_>,
) -> Poll<(usize, Option<std::result::Result<Delivery, lapin::Error>>)> {
    for (level, slot) in rungs.iter_mut().enumerate() {
        let Some(rung) = slot else { continue };
        if rung.cancelled || rung.held.is_some() {
            continue;
        }
        if let Poll::Ready(item) = std::pin::Pin::new(&mut rung.consumer).poll_next(cx) {
            return Poll::Ready((level, item));
        }
    }
    Poll::Pending
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Opens a channel with prefetch 1 and consumes the level's queue.
async fn open<H>(epoch: &Epoch, level: &Shared<H>) -> Result<Rung> {
    let queue = exact("queue name", &level.queue)?;
    // `<app_id>-<queue>-<uuid>`, shortened past 255 bytes (a queue name may have 255).
    let tag = consumer::consumer_tag(&level.config.app_id, &level.queue);
    let channel = epoch.connection.create_channel().await?;
    channel.basic_qos(1, BasicQosOptions::default()).await?;
    let consumer = channel
        .basic_consume(
            queue,
            tag,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(Rung {
        channel,
        consumer,
        cancelled: false,
        held: None,
    })
}

/// Closes a level's channel: RabbitMQ requeues what it delivered there and was not
/// acknowledged.
async fn close(rung: Rung) {
    drop(rung.held);
    if rung.channel.status().connected() {
        let close = rung
            .channel
            .close(200, ShortString::from("priority switch"));
        let _ = tokio::time::timeout(Duration::from_secs(5), close).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_list_needs_distinct_non_blank_names() {
        assert_eq!(
            validate_queue_list(&["a", " b "]).unwrap(),
            vec!["a".to_string(), "b".to_string()]
        );
        assert!(validate_queue_list::<&str>(&[]).is_err());
        assert!(validate_queue_list(&["a", ""]).is_err());
        assert!(validate_queue_list(&["a", "a"]).is_err());
    }
}
