//! SIGTERM the gateway most clients are on, under the same load as
//! `fault_gateway_kill`: it drains (stops accepting, tells clients to move, finishes
//! confirms; clients resume elsewhere from their position) and nothing is lost or
//! duplicated.

use warren_e2e::sdk_driver::{failover_under_load, Fault, Load};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_gateway_under_load_loses_nothing() {
    let figures = failover_under_load("gw-drain", Fault::Terminate, Load::default()).await;
    println!("fault_gateway_drain: {figures}");
    figures.assert_nothing_lost_or_duplicated();
    assert_eq!(
        figures.requests_resolved, figures.requests_sent,
        "every pending writeAndWait resolves with its reply"
    );
    assert_eq!(figures.recovered, figures.moved, "every client moved");
}
