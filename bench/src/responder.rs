//! A raw-lapin echo service for `--responder builtin`: consumes `IN_<rpc channel>` and
//! answers every request with its own body, as Warren services reply (default exchange,
//! routing key = `reply_to`, `correlation_id` copied, fresh `message_id`, persistent).

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use tokio::task::JoinHandle;
use warren_protocol::amqp::Names;

use crate::error::Result;

/// Running echo consumers; dropping it does not stop them, [`stop`](Self::stop) does.
pub struct EchoResponder {
    conn: Connection,
    tasks: Vec<JoinHandle<()>>,
}

impl EchoResponder {
    /// Starts `consumers` consumers with `prefetch` each on the channel's queue.
    ///
    /// # Errors
    /// `Amqp` when the queue cannot be declared or consumed.
    pub async fn start(
        uri: &str,
        names: &Names,
        channel: &str,
        consumers: usize,
        prefetch: u16,
    ) -> Result<Self> {
        let conn = crate::amqp::connect(uri, "warren-bench-echo").await?;
        crate::amqp::ensure_channel_queue(&conn, names, channel).await?;
        let queue = names.channel_queue(channel);
        let mut tasks = Vec::new();
        for i in 0..consumers.max(1) {
            let ch = conn.create_channel().await?;
            ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
            let mut deliveries = ch
                .basic_consume(
                    queue.as_str().into(),
                    format!("warren-bench-echo-{i}").into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while let Some(Ok(d)) = deliveries.next().await {
                    n += 1;
                    if let Some(reply_to) = d.properties.reply_to().clone() {
                        let mut props = BasicProperties::default()
                            .with_delivery_mode(2)
                            .with_message_id(format!("echo-{i}-{n}").into())
                            .with_content_type("application/json".into());
                        if let Some(c) = d.properties.correlation_id() {
                            props = props.with_correlation_id(c.clone());
                        }
                        let _ = ch
                            .basic_publish(
                                "".into(),
                                reply_to,
                                BasicPublishOptions::default(),
                                &d.data,
                                props,
                            )
                            .await;
                    }
                    let _ = ch
                        .basic_ack(d.delivery_tag, BasicAckOptions::default())
                        .await;
                }
            }));
        }
        Ok(EchoResponder { conn, tasks })
    }

    /// Stops the consumers and closes their connection (waiting at most 10 s).
    pub async fn stop(self) {
        crate::amqp::close(&self.conn, std::time::Duration::from_secs(10)).await;
        for t in self.tasks {
            t.abort();
        }
    }
}
