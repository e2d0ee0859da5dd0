"""Altering topic settings from both admin clients.

Contract: IncrementalAlterConfigs (confluent-kafka) sets and deletes single
keys and leaves the others, appends to and subtracts from list keys
(cleanup.policy) and refuses both on other keys with INVALID_CONFIG; AlterConfigs (kafka-python) replaces the topic's
whole set; invalid names or values are refused with INVALID_CONFIG and
change nothing; the settings survive a broker restart and act on the data
(max.message.bytes).
"""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource as PyConfigResource
from kafka.admin import ConfigResourceType

from support import CLIENT_TIMEOUT_S, confluent_admin, confluent_producer, create_topic_confluent


def describe(admin, topic) -> dict:
    [future] = admin.describe_configs([ConfigResource("topic", topic)]).values()
    return {name: entry for name, entry in future.result(timeout=CLIENT_TIMEOUT_S).items()}


def incremental(admin, topic, entries):
    resource = ConfigResource("topic", topic, incremental_configs=entries)
    [future] = admin.incremental_alter_configs([resource]).values()
    return future.result(timeout=CLIENT_TIMEOUT_S)


def test_incremental_alter_sets_and_deletes_single_keys(broker, topic):
    admin = create_topic_confluent(broker, topic, config={"retention.ms": "3600000"})
    incremental(
        admin,
        topic,
        [
            ConfigEntry("segment.bytes", "1048576", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
        ],
    )
    entries = describe(admin, topic)
    assert entries["segment.bytes"].value == "1048576"
    assert not entries["segment.bytes"].is_default
    assert entries["retention.ms"].is_default, "deleted key is back to its default"
    assert entries["retention.ms"].value == "604800000"


def test_incremental_alter_refuses_bad_values_and_changes_nothing(broker, topic):
    admin = create_topic_confluent(broker, topic, config={"retention.ms": "3600000"})
    with pytest.raises(KafkaException) as raised:
        incremental(
            admin,
            topic,
            [
                ConfigEntry("retention.ms", "60000", incremental_operation=AlterConfigOpType.SET),
                ConfigEntry("retention.ms.typo", "1", incremental_operation=AlterConfigOpType.SET),
            ],
        )
    assert raised.value.args[0].code() == KafkaError.INVALID_CONFIG
    assert describe(admin, topic)["retention.ms"].value == "3600000"


def test_incremental_append_and_subtract_edit_list_configs(broker, topic):
    """APPEND adds list items not present, starting from the default
    (delete → delete,compact); SUBTRACT removes them (→ compact)."""
    admin = create_topic_confluent(broker, topic)
    incremental(
        admin, topic, [ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND)]
    )
    entries = describe(admin, topic)
    assert entries["cleanup.policy"].value == "delete,compact"
    assert not entries["cleanup.policy"].is_default
    incremental(
        admin, topic, [ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND)]
    )
    assert describe(admin, topic)["cleanup.policy"].value == "delete,compact", "no duplicates"
    incremental(
        admin, topic, [ConfigEntry("cleanup.policy", "delete", incremental_operation=AlterConfigOpType.SUBTRACT)]
    )
    assert describe(admin, topic)["cleanup.policy"].value == "compact"


@pytest.mark.parametrize("operation", [AlterConfigOpType.APPEND, AlterConfigOpType.SUBTRACT])
def test_incremental_append_or_subtract_on_a_non_list_config_is_invalid(broker, topic, operation):
    """Kafka answers INVALID_CONFIG for APPEND/SUBTRACT on a key whose type
    is not LIST, and changes nothing."""
    admin = create_topic_confluent(broker, topic, config={"retention.ms": "3600000"})
    with pytest.raises(KafkaException) as raised:
        incremental(admin, topic, [ConfigEntry("retention.ms", "60000", incremental_operation=operation)])
    assert raised.value.args[0].code() == KafkaError.INVALID_CONFIG
    assert "retention.ms" in raised.value.args[0].str()
    assert describe(admin, topic)["retention.ms"].value == "3600000"


def test_kafka_python_alter_configs_replaces_the_set(broker, topic):
    create_topic_confluent(broker, topic, config={"retention.ms": "3600000", "segment.bytes": "2097152"})
    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=20000)
    try:
        response = client.alter_configs(
            [PyConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": "2000"})]
        )
        errors = [r[0] for r in response.resources]
        assert errors == [0], response
    finally:
        client.close()
    entries = describe(confluent_admin(broker), topic)
    assert entries["max.message.bytes"].value == "2000"
    assert entries["retention.ms"].is_default, "AlterConfigs replaces the whole set"
    assert entries["segment.bytes"].is_default


def test_altered_settings_act_and_survive_a_restart(fresh_broker, topic):
    admin = create_topic_confluent(fresh_broker, topic)
    incremental(
        admin,
        topic,
        [ConfigEntry("max.message.bytes", "1000", incremental_operation=AlterConfigOpType.SET)],
    )
    assert fresh_broker.stop() == 0, "clean shutdown"
    fresh_broker.start()
    admin = confluent_admin(fresh_broker)
    assert describe(admin, topic)["max.message.bytes"].value == "1000"
    reports = []
    producer = confluent_producer(fresh_broker, **{"acks": "all", "compression.type": "none"})
    # Sent one at a time: the limit applies to a whole batch.
    producer.produce(topic, value=b"x" * 5000, on_delivery=lambda err, msg: reports.append(err))
    producer.flush(CLIENT_TIMEOUT_S)
    producer.produce(topic, value=b"small", on_delivery=lambda err, msg: reports.append(err))
    producer.flush(CLIENT_TIMEOUT_S)
    codes = sorted(err.code() if err else 0 for err in reports)
    assert codes == sorted([0, KafkaError.MSG_SIZE_TOO_LARGE]), reports
