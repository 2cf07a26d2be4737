//! `fault_gateway_kill` with `request_replies = "direct"`: the replies to requests come
//! by direct reply-to, not through the outbound stream, so the replies on their way to
//! the killed gateway are lost with it. Every pending `writeAndWait` still resolves
//! with its own reply: the SDK sends the request again on the other gateway, and the
//! service (here one that answers every copy) answers it. Writes and deliveries are
//! unaffected: nothing lost, no duplicate to the app.

use warren_e2e::sdk_driver::{failover_under_load, Fault, Load};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_direct_replies_killing_a_gateway_under_load_still_resolves_every_request() {
    let load = Load {
        gateway_args: &["--request-replies", "direct"],
        ..Load::default()
    };
    let figures = failover_under_load("gw-kill-direct", Fault::Kill, load).await;
    println!("fault_gateway_kill_direct_replies: {figures}");
    figures.assert_nothing_lost_or_duplicated();
    figures.assert_every_client_moved_and_resumed("killed");
    assert_eq!(
        figures.requests_resolved, figures.requests_sent,
        "every pending writeAndWait resolves with its own reply"
    );
}
