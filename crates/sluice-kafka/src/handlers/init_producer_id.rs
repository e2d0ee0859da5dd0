//! InitProducerId: a producer id for an idempotent producer, or for a
//! transactional id from the transaction coordinator.

use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use sluice_core::acls::{Operation, ResourceType};

use super::{Context, blocking};
use crate::errors;

pub(crate) async fn handle(
    context: &Context,
    request: InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    let refused = |code: ResponseError| {
        InitProducerIdResponse::default()
            .with_error_code(code.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if let Some(id) = request.transactional_id {
        // The broker's own ids (AMQP transactions into streams), which
        // only other nodes' brokers may ask for.
        if super::transactions::txn_id_refused(context, &id) {
            return refused(ResponseError::TransactionalIdAuthorizationFailed);
        }
        let broker = Arc::clone(&context.broker);
        let current = (request.producer_id.0 >= 0 && request.producer_epoch >= 0)
            .then_some((request.producer_id.0, request.producer_epoch));
        let timeout_ms = request.transaction_timeout_ms;
        let done = blocking(move || {
            broker
                .transactions()
                .init_producer(&broker, &id, timeout_ms, current)
        })
        .await;
        return match done {
            Some(Ok((producer_id, epoch))) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(producer_id))
                .with_producer_epoch(epoch),
            Some(Err(error)) => refused(errors::txn_code(&error, version >= 4)),
            None => refused(ResponseError::UnknownServerError),
        };
    }
    // An idempotent producer needs IDEMPOTENT_WRITE on the cluster or
    // WRITE on some topic (Kafka 3's rule).
    let checker = context.checker();
    if !checker.allows_on_cluster(Operation::IdempotentWrite)
        && !checker.allows_on_any(Operation::Write, ResourceType::Topic)
    {
        return refused(ResponseError::ClusterAuthorizationFailed);
    }
    // KIP-360: a producer that already has an id may ask to bump its epoch.
    if request.producer_id.0 >= 0 && request.producer_epoch >= 0 {
        return match request.producer_epoch.checked_add(1) {
            Some(epoch) => InitProducerIdResponse::default()
                .with_producer_id(request.producer_id)
                .with_producer_epoch(epoch),
            None => refused(ResponseError::InvalidProducerEpoch),
        };
    }
    let broker = Arc::clone(&context.broker);
    match blocking(move || broker.producer_ids().allocate()).await {
        Some(Ok(id)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Some(Err(err)) => refused(errors::code(&err)),
        None => refused(ResponseError::UnknownServerError),
    }
}
