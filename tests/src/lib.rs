//! End-to-end test support for Warren: everything runs against the real RabbitMQ at
//! `AMQP_ADDR`, each test under its own namespace so tests run in parallel.
//!
//! # Layout
//!
//! - [`binary`]: finds (or builds) a workspace binary and the command that runs it
//!   as a child process.
//! - [`broker_node`]: private RabbitMQ nodes (one, or a three-node cluster) for
//!   fault-injection tests: start, stop, kill, restart; removed on Drop.
//! - [`env`]: a test's namespace, raw AMQP access (a stand-in for "some service"),
//!   cleanup of what the test declared.
//! - [`client`]: a tokio-tungstenite WebSocket client speaking protocol v1.
//! - [`raw_ws`]: a WebSocket client framed by hand, to see RSV1 and compressed bytes.
//! - [`load`]: confirmed publish load, state logs and figures for fault tests.
//! - [`gateway`]: starts an in-process gateway on `127.0.0.1:0`.
//! - [`presence`]: presence events as services see them, short presence timers.
//! - [`jwt`]: signed test tokens and the clock their claims count in.
//! - [`service`]: starts the demo service in-process or as a child process (to
//!   SIGKILL it), and a raw-lapin stand-in gateway for service tests.

pub mod binary;
pub mod broker_node;
pub mod client;
pub mod env;
pub mod fuzz;
pub mod gateway;
pub mod jwt;
pub mod load;
pub mod presence;
pub mod rabbitmqctl;
pub mod raw_amqp;
pub mod raw_ws;
pub mod sdk_driver;

pub mod service;
pub mod stream_protocol;
