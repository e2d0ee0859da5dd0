//! Transactions (`tx.select`, `tx.commit`, `tx.rollback`): a
//! transactional channel buffers its publishes and settlements, and a
//! commit applies them and waits until its publishes are durable.
//!
//! What a commit routes to streams is written as one Kafka transaction of
//! the channel's own transactional id (`__sluice_amqp_tx-<node>-<channel
//! key>`, forgotten when the connection closes or, on another node's
//! coordinator, after an hour idle; Kafka clients may not take ids of
//! that prefix): read_committed consumers see all of it or none, crash
//! included, on one node and on a cluster (where the broker is a Kafka
//! producer of the id's coordinator and the streams' leaders).

use amq_protocol::protocol::{AMQPClass, tx};
use bytes::BytesMut;

use super::Connection;
use crate::channel::{Channel, Settlement, TxAction};
use crate::errors::{AmqpError, PRECONDITION_FAILED};
use crate::frames;
use crate::handlers;

impl Connection {
    pub(super) async fn tx(&mut self, id: u16, method: tx::AMQPMethod) -> Result<(), AmqpError> {
        let reply = |out: &mut BytesMut, method: tx::AMQPMethod| {
            frames::put_method(out, id, AMQPClass::Tx(method))
        };
        match method {
            tx::AMQPMethod::Select(_) => {
                let Some(channel) = self.channels.get_mut(&id) else {
                    return Ok(());
                };
                if channel.confirms.is_some() {
                    return Err(AmqpError::channel(
                        PRECONDITION_FAILED,
                        "cannot switch from confirm to tx mode",
                    ));
                }
                if channel.tx.is_none() {
                    channel.tx = Some(Vec::new());
                }
                reply(&mut self.out, tx::AMQPMethod::SelectOk(tx::SelectOk {}));
                Ok(())
            }
            tx::AMQPMethod::Rollback(_) => {
                // Buffered publishes and settlements are dropped.
                self.take_tx_actions(id)?;
                reply(&mut self.out, tx::AMQPMethod::RollbackOk(tx::RollbackOk {}));
                Ok(())
            }
            tx::AMQPMethod::Commit(_) => {
                let Some(actions) = self.take_tx_actions(id)? else {
                    return Ok(());
                };
                let atomic = self.broker.transactions().writes_atomically();
                let mut writes = sluice_core::transactions::TxnWrites::default();
                let mut transactional_id = String::new();
                let node = self.broker.node_id();
                let acks = self.with_channel(id, |ctx, channel| {
                    transactional_id = format!(
                        "{}amqp_tx-{}-{}",
                        sluice_core::transactions::BROKER_TXN_PREFIX,
                        node,
                        channel.key
                    );
                    let mut acks = sluice_core::Acks::default();
                    for action in actions {
                        match action {
                            TxAction::Publish(publish) => {
                                let (method, message) = *publish;
                                let returned = method.mandatory.then(|| message.clone());
                                let exchange = method.exchange.as_str();
                                let outcome = if atomic {
                                    ctx.vhost.publish_in_transaction(
                                        exchange,
                                        message,
                                        &mut writes,
                                    )?
                                } else {
                                    ctx.vhost.publish(exchange, message)?
                                };
                                if outcome.queues == 0
                                    && let Some(message) = returned
                                {
                                    handlers::basic::return_message(
                                        ctx, channel.id, &method, &message,
                                    );
                                }
                                acks.merge(outcome.acks);
                            }
                            TxAction::Ack(tag, multiple) => {
                                let taken = channel.take_unacked(tag, multiple)?;
                                Channel::settle(ctx, taken, Settlement::Ack)?;
                            }
                            TxAction::Reject(tag, multiple, requeue) => {
                                let taken = channel.take_unacked(tag, multiple)?;
                                Channel::settle(ctx, taken, Settlement::Reject { requeue })?;
                            }
                        }
                    }
                    Ok(acks)
                })?;
                if !writes.is_empty() {
                    if !self.transactional_ids.contains(&transactional_id) {
                        self.transactional_ids.push(transactional_id.clone());
                    }
                    let broker = std::sync::Arc::clone(&self.broker);
                    committed(move || {
                        broker
                            .transactions()
                            .write_atomically(&broker, &transactional_id, writes)
                    })
                    .await?;
                }
                if !acks.is_empty() {
                    committed(move || acks.wait()).await?;
                }
                reply(&mut self.out, tx::AMQPMethod::CommitOk(tx::CommitOk {}));
                Ok(())
            }
            other => Err(handlers::unexpected_method(&AMQPClass::Tx(other))),
        }
    }

    /// Takes the buffered actions of transactional channel `id` (`None` if
    /// the channel is gone).
    fn take_tx_actions(&mut self, id: u16) -> Result<Option<Vec<TxAction>>, AmqpError> {
        let Some(channel) = self.channels.get_mut(&id) else {
            return Ok(None);
        };
        let Some(actions) = channel.tx.as_mut() else {
            return Err(AmqpError::channel(
                PRECONDITION_FAILED,
                "channel is not transactional",
            ));
        };
        Ok(Some(std::mem::take(actions)))
    }
}

/// Runs a commit's blocking step off the async workers; its failure
/// closes the connection (the client cannot know what was applied).
async fn committed<E: std::fmt::Display + Send + 'static>(
    step: impl FnOnce() -> Result<(), E> + Send + 'static,
) -> Result<(), AmqpError> {
    match tokio::task::spawn_blocking(step).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(AmqpError::connection(
            crate::errors::INTERNAL_ERROR,
            format!("commit failed: {error}"),
        )),
        Err(_) => Err(AmqpError::connection(
            crate::errors::INTERNAL_ERROR,
            "commit task failed",
        )),
    }
}
