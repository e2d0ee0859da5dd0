//! InitProducerId for idempotent producers. Transactions are not served
//! yet: a transactional id is refused.

use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::{Context, blocking};
use crate::errors;

pub(crate) async fn handle(
    context: &Context,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let refused = |code: ResponseError| {
        InitProducerIdResponse::default()
            .with_error_code(code.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if request.transactional_id.is_some() {
        return refused(ResponseError::InvalidRequest);
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
