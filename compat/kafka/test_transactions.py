"""Transactions are not implemented: a transactional producer must learn
so at once.

Contract: FindCoordinator for a transactional id (key type 1) answers
TRANSACTIONAL_ID_AUTHORIZATION_FAILED (53) with the message "transactions
are not supported yet"; librdkafka treats that as fatal, so
init_transactions() fails with it instead of retrying
COORDINATOR_NOT_AVAILABLE until its timeout. ApiVersions advertises no
transaction API.
"""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from support import confluent_config, unique_name


def test_init_transactions_fails_fatally_without_transaction_support(broker):
    producer = Producer(confluent_config(broker, **{"transactional.id": unique_name("txn")}))
    # Bounded by the client's own timeout: a retriable refusal would end in
    # a retriable _TIMED_OUT, not the fatal error asserted here.
    with pytest.raises(KafkaException) as raised:
        producer.init_transactions(10)
    error = raised.value.args[0]
    assert error.code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, error
    assert error.fatal(), error
    assert not error.retriable(), error
    assert "transactions are not supported yet" in error.str(), error


def test_api_versions_advertise_no_transaction_api(broker):
    from kafka import KafkaAdminClient

    # AddPartitionsToTxn, AddOffsetsToTxn, EndTxn, WriteTxnMarkers, TxnOffsetCommit.
    transaction_apis = {24, 25, 26, 27, 28}
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=20000)
    try:
        advertised = admin._client.get_api_versions()
    finally:
        admin.close()
    assert advertised, "no ApiVersions answer"
    assert transaction_apis.isdisjoint(advertised), sorted(transaction_apis & set(advertised))
