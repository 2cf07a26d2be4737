//! A `Service` dropped without `stop`, over real RabbitMQ: it stops as on `stop`, its
//! consumers first. Dropped, its consumers went on consuming while nothing supervised
//! the connection any more: after the next connection loss nobody reconnected, and the
//! service never consumed again nor turned `Failed`.

use std::time::Duration;

use warren_e2e::service::{counted_echo, in_fresh_namespace, wait_for_counts};
use warren_protocol::amqp::Names;
use warren_service::{Answer, Incoming, Outcome, ServiceConfig, ServiceState};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_service_dropped_without_stop_stops_consuming_its_queue() {
    in_fresh_namespace(LIMIT, |ns| async move {
        let (service, _calls) =
            counted_echo(&ns, ServiceConfig::default(), |_, m: Incoming| async move {
                Ok(Outcome::Reply(Answer::raw(m.body)))
            })
            .await;
        let queue = Names::new(&ns).channel_queue("echo");
        wait_for_counts(&queue, Duration::from_secs(5), "one consumer", |_, c| {
            c == 1
        })
        .await;
        let mut state = service.state_receiver();
        drop(service);
        // Cancelled at once (no handler runs, so no grace period to wait out).
        wait_for_counts(
            &queue,
            Duration::from_secs(10),
            "no consumer left after the drop",
            |_, consumers| consumers == 0,
        )
        .await;
        let stopped = tokio::time::timeout(
            Duration::from_secs(5),
            state.wait_for(|s| *s == ServiceState::Stopped),
        )
        .await
        .is_ok_and(|s| s.is_ok());
        assert!(
            stopped,
            "the dropped service turned Stopped (now {:?})",
            *state.borrow()
        );
    })
    .await;
}
