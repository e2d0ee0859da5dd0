"""Kafka ACLs on the real broker with real clients: CreateAcls,
DescribeAcls and DeleteAcls through confluent-kafka's and kafka-python's
admin clients; literal and prefixed patterns, DENY over ALLOW, super
users, `kafka.allow_everyone_if_no_acl_found`; each API a principal
without ACLs calls answered with its *_AUTHORIZATION_FAILED error (and
Metadata leaving out the topics it may not describe); ACLs kept across a
restart; SECURITY_DISABLED on a broker without `kafka.acls`.

The module broker has `kafka.acls` on. `admin` (tagged administrator)
passes every check, as super users do; the users under test are added
through the admin API and log in with SCRAM on the SASL_PLAINTEXT
listener.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from common.wire import compact_string, kafka_string, recv_frame, request_frame, uvarint
from support import ADMIN, CLIENT_TIMEOUT_S, SecureBroker, add_user, kafka_config, produce_and_consume, unique_name

SETTINGS = {
    "amqp.users": f"guest:guest,{ADMIN[0]}:{ADMIN[1]}",
    "amqp.loopback_users": "guest",
    "kafka.acls": "true",
    "kafka.super_users": "User:root-principal",
    "kafka.share_auto_offset_reset": "earliest",
}
PROTOCOL = "SASL_PLAINTEXT"
MECHANISM = "SCRAM-SHA-512"


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory, pki):
    from support import running

    with running(tmp_path_factory.mktemp("acls") / "data", "broker[test_kafka_acls]", pki, SETTINGS,
                 listeners=(PROTOCOL,), amqps=False) as broker:
        yield broker


def config(broker: SecureBroker, user: tuple[str, str], **extra) -> dict:
    return kafka_config(broker, PROTOCOL, MECHANISM, user, **extra)


def admin_client(broker: SecureBroker, user: tuple[str, str] = ADMIN) -> AdminClient:
    return AdminClient(config(broker, user))


def new_user(broker: SecureBroker, hint: str) -> tuple[str, str]:
    user = (unique_name(hint), "Pw-" + hint)
    add_user(broker, *user)
    return user


def admin_call(cfg: dict, method: str, *args, **kwargs):
    """One admin call through a client of `cfg`, kept alive until its
    answer: the result of its one future."""
    client = AdminClient(cfg)
    answer = getattr(client, method)(*args, **kwargs)
    futures = list(answer.values()) if isinstance(answer, dict) else [answer]
    results = [future.result(timeout=CLIENT_TIMEOUT_S) for future in futures]
    return results[0] if len(results) == 1 else results


def grant(broker: SecureBroker, *bindings: AclBinding) -> None:
    admin_call(config(broker, ADMIN), "create_acls", list(bindings))


def acl(resource: ResourceType, name: str, principal: str, operation: AclOperation,
        permission: AclPermissionType = AclPermissionType.ALLOW,
        pattern: ResourcePatternType = ResourcePatternType.LITERAL) -> AclBinding:
    return AclBinding(resource, name, pattern, principal, "*", operation, permission)


def every_acl() -> AclBindingFilter:
    return AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                            AclOperation.ANY, AclPermissionType.ANY)


def refusal(call) -> int:
    """The Kafka error code `call` raises (it must raise)."""
    with pytest.raises(KafkaException) as raised:
        call()
    return raised.value.args[0].code()


def create_topic(broker: SecureBroker, name: str, partitions: int = 1) -> None:
    admin_call(config(broker, ADMIN), "create_topics", [NewTopic(name, partitions, 1)])


# --- the ACL APIs -------------------------------------------------------------------


def test_acls_are_created_described_and_deleted_with_literal_and_prefixed_patterns(acl_broker):
    admin = admin_client(acl_broker)
    principal = f"User:{unique_name('alice')}"
    literal = acl(ResourceType.TOPIC, "orders", principal, AclOperation.READ)
    prefixed = acl(ResourceType.TOPIC, "orders-", principal, AclOperation.WRITE,
                   pattern=ResourcePatternType.PREFIXED)
    group = acl(ResourceType.GROUP, "billing", principal, AclOperation.READ, AclPermissionType.DENY)
    grant(acl_broker, literal, prefixed, group)
    mine = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, principal, None,
                            AclOperation.ANY, AclPermissionType.ANY)
    described = admin.describe_acls(mine).result(timeout=CLIENT_TIMEOUT_S)
    assert sorted(described) == sorted([literal, prefixed, group])
    # MATCH finds every pattern that applies to a name: the literal one and
    # the prefix.
    matching = AclBindingFilter(ResourceType.TOPIC, "orders-eu", ResourcePatternType.MATCH, principal, None,
                                AclOperation.ANY, AclPermissionType.ANY)
    assert admin.describe_acls(matching).result(timeout=CLIENT_TIMEOUT_S) == [prefixed]
    # Deleting by filter answers what it removed.
    prefixed_only = AclBindingFilter(ResourceType.TOPIC, None, ResourcePatternType.PREFIXED, principal, None,
                                     AclOperation.ANY, AclPermissionType.ANY)
    deleted = admin.delete_acls([prefixed_only])[prefixed_only].result(timeout=CLIENT_TIMEOUT_S)
    assert deleted == [prefixed]
    assert sorted(admin.describe_acls(mine).result(timeout=CLIENT_TIMEOUT_S)) == sorted([literal, group])
    admin.delete_acls([mine])[mine].result(timeout=CLIENT_TIMEOUT_S)
    assert admin.describe_acls(mine).result(timeout=CLIENT_TIMEOUT_S) == []


def test_an_invalid_acl_is_refused_with_invalid_request(acl_broker):
    # The cluster resource has one name, as Kafka's authorizer checks.
    bad = acl(ResourceType.BROKER, "my-cluster", "User:x", AclOperation.ALTER)
    code = refusal(lambda: admin_call(config(acl_broker, ADMIN), "create_acls", [bad]))
    assert code == KafkaError.INVALID_REQUEST
    assert bad not in admin_call(config(acl_broker, ADMIN), "describe_acls", every_acl())


# --- a principal without ACLs ------------------------------------------------------


@pytest.fixture(scope="module")
def nobody(acl_broker):
    """A user no ACL names, and a topic and group the administrator made."""
    user = new_user(acl_broker, "nobody")
    topic = unique_name("guarded")
    create_topic(acl_broker, topic)
    produce_and_consume(config(acl_broker, ADMIN), topic, unique_name("guarded-group"), count=2)
    create_topic(acl_broker, topic + "-described")
    principal = f"User:{user[0]}"
    grant(
        acl_broker,
        acl(ResourceType.TOPIC, topic + "-described", principal, AclOperation.DESCRIBE),
        # DESCRIBE on these groups lets FindCoordinator through, so the
        # group APIs' own checks answer.
        acl(ResourceType.GROUP, DESCRIBED_GROUPS, principal, AclOperation.DESCRIBE,
            pattern=ResourcePatternType.PREFIXED),
    )
    return user, topic


def produce_error(cfg: dict, topic: str) -> int:
    errors = []
    producer = Producer({**cfg, "message.timeout.ms": 10000})
    producer.produce(topic, b"x", on_delivery=lambda err, msg: errors.append(err))
    producer.flush(CLIENT_TIMEOUT_S)
    assert errors and errors[0] is not None, "the produce was not refused"
    return errors[0].code()


def consume_error(cfg: dict, topic: str, group: str | None) -> int:
    """The first error a consumer of `topic` gets (in `group`, or with
    assign() and no group)."""
    consumer = Consumer({**cfg, "group.id": group or unique_name("unused"), "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    try:
        if group:
            consumer.subscribe([topic])
        else:
            consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error(), f"read {message.value()!r} without authorization"
            if message.error().code() != KafkaError._PARTITION_EOF:
                return message.error().code()
        raise AssertionError("no error within the deadline")
    finally:
        consumer.close()


def kafka_python_config(broker: SecureBroker, user: tuple[str, str]) -> dict:
    return {
        "bootstrap_servers": broker.address(PROTOCOL),
        "security_protocol": PROTOCOL,
        "sasl_mechanism": MECHANISM,
        "sasl_plain_username": user[0],
        "sasl_plain_password": user[1],
    }


def fetch_error(broker: SecureBroker, user: tuple[str, str], topic: str) -> int:
    """The error kafka-python's consumer without a group (no coordinator:
    only Metadata, ListOffsets and Fetch) meets reading `topic`."""
    import kafka
    from kafka.errors import KafkaError as KpError

    consumer = kafka.KafkaConsumer(**kafka_python_config(broker, user), auto_offset_reset="earliest")
    try:
        consumer.assign([kafka.TopicPartition(topic, 0)])
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                records = consumer.poll(timeout_ms=500)
            except KpError as error:
                return error.errno
            assert not records, f"read {records} without authorization"
        raise AssertionError("no error within the deadline")
    finally:
        consumer.close()


def fatal_producer_error(cfg: dict) -> int:
    """The error an idempotent producer's InitProducerId ends in."""
    errors = []
    producer = Producer({**cfg, "enable.idempotence": True, "error_cb": errors.append})
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    try:
        producer.produce(unique_name("idempotent"), b"x")
        while not errors and time.monotonic() < deadline:
            producer.poll(0.2)
    except KafkaException as raised:
        return raised.args[0].code()
    return errors[0].code() if errors else 0


def anonymous_answer(broker: SecureBroker, api_key: int, version: int, body: bytes, flexible: bool) -> bytes:
    """One raw request on the PLAINTEXT listener (principal User:ANONYMOUS,
    which no ACL names): the response after its correlation id (and, when
    flexible, the header's tagged fields)."""
    with socket.create_connection(("127.0.0.1", broker.kafka_port), timeout=CLIENT_TIMEOUT_S) as sock:
        sock.sendall(request_frame(api_key, version, 7, body, flexible=flexible))
        frame = recv_frame(sock)
    assert struct.unpack(">i", frame[:4]) == (7,)
    return frame[5:] if flexible else frame[4:]


def list_offsets_error(broker: SecureBroker, topic: str) -> int:
    """ListOffsets v1 (latest offset of partition 0) as User:ANONYMOUS."""
    body = struct.pack(">ii", -1, 1) + kafka_string(topic) + struct.pack(">iiq", 1, 0, -1)
    answer = anonymous_answer(broker, 2, 1, body, flexible=False)
    # topics[1]: name, partitions[1]: index, error_code.
    name_length = struct.unpack(">h", answer[4:6])[0]
    at = 6 + name_length + 4 + 4
    return struct.unpack(">h", answer[at:at + 2])[0]


def describe_cluster_error(broker: SecureBroker) -> int:
    """DescribeCluster v0 as User:ANONYMOUS (librdkafka does not report
    this API's error)."""
    answer = anonymous_answer(broker, 60, 0, b"\x00" + uvarint(0), flexible=True)
    return struct.unpack(">h", answer[4:6])[0]


def describe_acls_error(broker: SecureBroker, user: tuple[str, str]) -> int:
    """kafka-python's DescribeAcls error (librdkafka does not report this
    API's error)."""
    from kafka import KafkaAdminClient
    from kafka.admin import ACLFilter, ACLOperation, ACLPermissionType, ACLResourcePatternType
    from kafka.admin import ResourcePatternFilter, ResourceType as KpResource
    from kafka.errors import KafkaError as KpError

    admin = KafkaAdminClient(**kafka_python_config(broker, user))
    try:
        admin.describe_acls(ACLFilter(None, None, ACLOperation.ANY, ACLPermissionType.ANY,
                                      ResourcePatternFilter(KpResource.ANY, None, ACLResourcePatternType.ANY)))
    except KpError as error:
        return error.errno
    finally:
        admin.close()
    raise AssertionError("DescribeAcls was not refused")


# Group ids with this prefix: the user may DESCRIBE them, nothing more.
DESCRIBED_GROUPS = "described-"
TOPIC_DENIED = KafkaError.TOPIC_AUTHORIZATION_FAILED
GROUP_DENIED = KafkaError.GROUP_AUTHORIZATION_FAILED
CLUSTER_DENIED = KafkaError.CLUSTER_AUTHORIZATION_FAILED

# (API, what it does as the user without ACLs, the error Kafka answers).
UNAUTHORIZED = {
    "Produce": (lambda b, u, t, g: produce_error(config(b, u), t), TOPIC_DENIED),
    # DESCRIBE (Metadata, ListOffsets) but not READ.
    "Fetch": (lambda b, u, t, g: fetch_error(b, u, t + "-described"), TOPIC_DENIED),
    "FindCoordinator": (lambda b, u, t, g: consume_error(config(b, u), t, g), GROUP_DENIED),
    # DESCRIBE but not READ on the group.
    "JoinGroup": (lambda b, u, t, g: consume_error(config(b, u), t + "-described", DESCRIBED_GROUPS + g),
                  GROUP_DENIED),
    "InitProducerId (idempotent)": (lambda b, u, t, g: fatal_producer_error(config(b, u)), CLUSTER_DENIED),
    "InitProducerId (transactional)": (
        lambda b, u, t, g: refusal(
            lambda: Producer({**config(b, u), "transactional.id": g}).init_transactions(CLIENT_TIMEOUT_S)),
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    ),
    # librdkafka asks Metadata first, which already refuses the topic.
    "ListOffsets": (lambda b, u, t, g: list_offsets_error(b, t), TOPIC_DENIED),
    "Metadata (by name)": (
        lambda b, u, t, g: refusal(lambda: admin_call(config(b, u), "describe_topics", TopicCollection([t]))),
        TOPIC_DENIED,
    ),
    "CreateTopics": (
        lambda b, u, t, g: refusal(lambda: admin_call(config(b, u), "create_topics", [NewTopic(t + "-new", 1, 1)])),
        TOPIC_DENIED,
    ),
    "DeleteTopics": (
        lambda b, u, t, g: refusal(lambda: admin_call(config(b, u), "delete_topics", [t])),
        TOPIC_DENIED,
    ),
    "CreatePartitions": (
        lambda b, u, t, g: refusal(lambda: admin_call(config(b, u), "create_partitions", [NewPartitions(t, 4)])),
        TOPIC_DENIED,
    ),
    # Needs DESCRIBE to find the leader in Metadata: nobody has it on
    # its `-described` topic, not DELETE.
    "DeleteRecords": (
        lambda b, u, t, g: refusal(
            lambda: admin_call(config(b, u), "delete_records", [TopicPartition(t + "-described", 0, 1)])),
        TOPIC_DENIED,
    ),
    "DescribeConfigs": (
        lambda b, u, t, g: refusal(
            lambda: admin_call(config(b, u), "describe_configs", [ConfigResource(ConfigResource.Type.TOPIC, t)])),
        TOPIC_DENIED,
    ),
    "IncrementalAlterConfigs": (
        lambda b, u, t, g: refusal(lambda: admin_call(config(b, u), "incremental_alter_configs", [ConfigResource(
            ConfigResource.Type.TOPIC, t, incremental_configs=[
                ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)])])),
        TOPIC_DENIED,
    ),
    "DescribeGroups": (
        lambda b, u, t, g: refusal(lambda: admin_call(config(b, u), "describe_consumer_groups", [g])),
        GROUP_DENIED,
    ),
    "DeleteGroups": (
        lambda b, u, t, g: refusal(
            lambda: admin_call(config(b, u), "delete_consumer_groups", [DESCRIBED_GROUPS + g])),
        GROUP_DENIED,
    ),
    "OffsetFetch": (
        lambda b, u, t, g: refusal(
            lambda: admin_call(config(b, u), "list_consumer_group_offsets", [ConsumerGroupTopicPartitions(g)])),
        GROUP_DENIED,
    ),
    "DescribeAcls": (lambda b, u, t, g: describe_acls_error(b, u), CLUSTER_DENIED),
    "CreateAcls": (
        lambda b, u, t, g: refusal(lambda: admin_call(
            config(b, u), "create_acls", [acl(ResourceType.TOPIC, t, "User:me", AclOperation.ALL)])),
        CLUSTER_DENIED,
    ),
    "DeleteAcls": (
        lambda b, u, t, g: refusal(lambda: admin_call(config(b, u), "delete_acls", [every_acl()])),
        CLUSTER_DENIED,
    ),
}


@pytest.mark.parametrize("api", list(UNAUTHORIZED))
def test_a_principal_without_acls_gets_the_apis_authorization_error(acl_broker, nobody, api):
    user, topic = nobody
    call, expected = UNAUTHORIZED[api]
    code = call(acl_broker, user, topic, unique_name("nobodys-group"))
    assert code == expected, f"{api}: {KafkaError(code)} instead of {KafkaError(expected)}"


def test_describe_cluster_is_open_to_everyone_as_in_kafka(acl_broker):
    assert describe_cluster_error(acl_broker) == 0


def test_metadata_leaves_out_the_topics_a_principal_may_not_describe(acl_broker, nobody):
    user, topic = nobody
    visible = unique_name("visible")
    create_topic(acl_broker, visible)
    grant(acl_broker, acl(ResourceType.TOPIC, visible, f"User:{user[0]}", AclOperation.DESCRIBE))
    listed = AdminClient(config(acl_broker, user)).list_topics(timeout=CLIENT_TIMEOUT_S).topics
    assert visible in listed
    assert topic not in listed
    assert topic in admin_client(acl_broker).list_topics(timeout=CLIENT_TIMEOUT_S).topics


# --- granted, denied ----------------------------------------------------------------


def test_granted_acls_let_a_user_produce_and_consume_and_a_deny_wins(acl_broker):
    user = new_user(acl_broker, "granted")
    principal = f"User:{user[0]}"
    prefix = unique_name("granted-topics") + "-"
    group = unique_name("granted-group")
    grant(
        acl_broker,
        acl(ResourceType.TOPIC, prefix, principal, AclOperation.ALL, pattern=ResourcePatternType.PREFIXED),
        acl(ResourceType.GROUP, group, principal, AclOperation.READ),
    )
    topic = prefix + "a"
    seen = produce_and_consume(config(acl_broker, user), topic, group, count=3)
    assert seen == [f"{topic}-{i}".encode() for i in range(3)]
    # A DENY on one topic under the prefix wins over the ALLOW.
    denied = prefix + "secret"
    create_topic(acl_broker, denied)
    grant(acl_broker, acl(ResourceType.TOPIC, denied, principal, AclOperation.WRITE, AclPermissionType.DENY))
    assert produce_error(config(acl_broker, user), denied) == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # Another user still gets nothing under the prefix.
    other = new_user(acl_broker, "other")
    assert produce_error(config(acl_broker, other), topic) == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_kafka_python_manages_and_meets_acls(acl_broker):
    from kafka import KafkaAdminClient, KafkaConsumer
    from kafka.admin import ACL, ACLFilter, ACLOperation, ACLPermissionType, ACLResourcePatternType
    from kafka.admin import ResourcePattern, ResourcePatternFilter, ResourceType as KpResource
    from kafka.errors import TopicAuthorizationFailedError

    def kp_config(user):
        return kafka_python_config(acl_broker, user)

    user = new_user(acl_broker, "kp-user")
    topic = unique_name("kp-topic")
    create_topic(acl_broker, topic)
    admin = KafkaAdminClient(**kp_config(ADMIN))
    try:
        binding = ACL(f"User:{user[0]}", "*", ACLOperation.DESCRIBE, ACLPermissionType.ALLOW,
                      ResourcePattern(KpResource.TOPIC, topic))
        created = admin.create_acls([binding])
        assert created["failed"] == [], created
        found, error = admin.describe_acls(ACLFilter(f"User:{user[0]}", None, ACLOperation.ANY,
                                                     ACLPermissionType.ANY,
                                                     ResourcePatternFilter(KpResource.ANY, None,
                                                                           ACLResourcePatternType.ANY)))
        assert error.errno == 0 and [a.operation for a in found] == [ACLOperation.DESCRIBE], (found, error)
    finally:
        admin.close()
    # DESCRIBE is not READ: the fetch is refused.
    consumer = KafkaConsumer(**kp_config(user), auto_offset_reset="earliest", consumer_timeout_ms=10000)
    try:
        consumer.assign([__import__("kafka").TopicPartition(topic, 0)])
        with pytest.raises(TopicAuthorizationFailedError):
            deadline = time.monotonic() + CLIENT_TIMEOUT_S
            while time.monotonic() < deadline:
                consumer.poll(timeout_ms=500)
    finally:
        consumer.close()


# --- brokers of their own -----------------------------------------------------------


def test_acls_survive_a_restart_and_super_users_pass(own_broker):
    broker = own_broker({**SETTINGS, "kafka.super_users": "User:root"}, listeners=(PROTOCOL,), amqps=False)
    root = ("root", "R00t-pass")
    add_user(broker, *root)
    kept = acl(ResourceType.TOPIC, "kept", "User:someone", AclOperation.READ)
    grant(broker, kept)
    # root is no administrator, but a super user: ALTER on the cluster.
    sudo = acl(ResourceType.GROUP, "g", "User:someone", AclOperation.READ)
    admin_call(config(broker, root), "create_acls", [sudo])
    broker.stop()
    broker.start()
    assert sorted(admin_client(broker).describe_acls(every_acl()).result(timeout=CLIENT_TIMEOUT_S)) == sorted(
        [kept, sudo])


def test_allow_everyone_if_no_acl_found_opens_only_the_resources_no_acl_names(own_broker):
    broker = own_broker({**SETTINGS, "kafka.allow_everyone_if_no_acl_found": "true"},
                        listeners=(PROTOCOL,), amqps=False)
    user = new_user(broker, "anyone")
    open_topic, named_topic = unique_name("open"), unique_name("named")
    for name in (open_topic, named_topic):
        create_topic(broker, name)
    grant(broker, acl(ResourceType.TOPIC, named_topic, "User:someone-else", AclOperation.WRITE))
    producer = Producer({**config(broker, user), "message.timeout.ms": 10000})
    delivered = []
    producer.produce(open_topic, b"x", on_delivery=lambda err, msg: delivered.append(err))
    producer.flush(CLIENT_TIMEOUT_S)
    assert delivered == [None]
    assert produce_error(config(broker, user), named_topic) == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_the_acl_apis_answer_security_disabled_without_kafka_acls(own_broker):
    broker = own_broker({"amqp.users": f"guest:guest,{ADMIN[0]}:{ADMIN[1]}", "amqp.loopback_users": "guest"},
                        listeners=(PROTOCOL,), amqps=False)
    assert describe_acls_error(broker, ADMIN) == KafkaError.SECURITY_DISABLED
    binding = acl(ResourceType.TOPIC, "t", "User:x", AclOperation.READ)
    assert refusal(lambda: admin_call(config(broker, ADMIN), "create_acls", [binding])) == KafkaError.SECURITY_DISABLED
    # Without an authorizer anyone may do everything.
    user = new_user(broker, "free")
    topic = unique_name("free")
    assert produce_and_consume(config(broker, user), topic, unique_name("free-group"), count=1) == [
        f"{topic}-0".encode()]


# --- finer rules --------------------------------------------------------------------


def test_wildcard_principals_hosts_and_a_prefixed_deny_over_a_literal_allow(acl_broker):
    user = new_user(acl_broker, "rules")
    principal = f"User:{user[0]}"
    everyone, here, elsewhere, denied = (unique_name(n) for n in ("everyone", "here", "elsewhere", "denied"))
    for name in (everyone, here, elsewhere, denied):
        create_topic(acl_broker, name)
    grant(
        acl_broker,
        acl(ResourceType.TOPIC, everyone, "User:*", AclOperation.WRITE),
        AclBinding(ResourceType.TOPIC, here, ResourcePatternType.LITERAL, principal, "127.0.0.1",
                   AclOperation.WRITE, AclPermissionType.ALLOW),
        AclBinding(ResourceType.TOPIC, elsewhere, ResourcePatternType.LITERAL, principal, "10.9.8.7",
                   AclOperation.WRITE, AclPermissionType.ALLOW),
        acl(ResourceType.TOPIC, denied, principal, AclOperation.WRITE),
        acl(ResourceType.TOPIC, denied[:8], principal, AclOperation.WRITE, AclPermissionType.DENY,
            pattern=ResourcePatternType.PREFIXED),
    )

    def delivered(topic: str):
        outcome = []
        producer = Producer({**config(acl_broker, user), "message.timeout.ms": 10000})
        producer.produce(topic, b"x", on_delivery=lambda err, msg: outcome.append(err and err.code()))
        producer.flush(CLIENT_TIMEOUT_S)
        return outcome

    assert delivered(everyone) == [None], "User:* matches every principal"
    assert delivered(here) == [None], "the client's own address"
    assert delivered(elsewhere) == [KafkaError.TOPIC_AUTHORIZATION_FAILED], "another host's ACL"
    assert delivered(denied) == [KafkaError.TOPIC_AUTHORIZATION_FAILED], "a prefixed DENY wins"


def test_a_deny_of_read_leaves_describe_and_fetch_is_refused(acl_broker):
    user = new_user(acl_broker, "no-read")
    principal = f"User:{user[0]}"
    topic = unique_name("no-read")
    create_topic(acl_broker, topic)
    grant(acl_broker,
          acl(ResourceType.TOPIC, topic, principal, AclOperation.DESCRIBE),
          acl(ResourceType.TOPIC, topic, principal, AclOperation.READ, AclPermissionType.DENY))
    assert topic in AdminClient(config(acl_broker, user)).list_topics(timeout=CLIENT_TIMEOUT_S).topics
    assert fetch_error(acl_broker, user, topic) == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_list_groups_shows_only_the_groups_a_principal_may_describe(acl_broker):
    user = new_user(acl_broker, "lister")
    topic = unique_name("listed")
    mine, theirs = unique_name("mine"), unique_name("theirs")
    create_topic(acl_broker, topic)
    for group in (mine, theirs):
        produce_and_consume(config(acl_broker, ADMIN), topic, group, count=1)
    grant(acl_broker, acl(ResourceType.GROUP, mine, f"User:{user[0]}", AclOperation.DESCRIBE))
    listed = admin_call(config(acl_broker, user), "list_consumer_groups")
    ids = {g.group_id for g in listed.valid}
    assert mine in ids and theirs not in ids, ids


def test_share_fetch_needs_read_on_the_topic(acl_broker):
    from confluent_kafka import ShareConsumer

    user = new_user(acl_broker, "sharer")
    principal = f"User:{user[0]}"
    topic, group = unique_name("shared"), unique_name("share-group")
    create_topic(acl_broker, topic)
    produce_and_consume(config(acl_broker, ADMIN), topic, unique_name("filler"), count=2)
    # READ on the group and DESCRIBE on the topic: the member joins, but
    # each ShareFetch of the topic is refused.
    grant(acl_broker,
          acl(ResourceType.GROUP, group, principal, AclOperation.READ),
          acl(ResourceType.TOPIC, topic, principal, AclOperation.DESCRIBE))

    def share_poll(seconds: float):
        errors, values = [], []
        consumer = ShareConsumer({**config(acl_broker, user), "group.id": group, "error_cb": errors.append})
        consumer.subscribe([topic])
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline and not values:
                try:
                    batch = consumer.poll(0.5)
                except KafkaException as raised:  # librdkafka raises ShareFetch errors
                    errors.append(raised.args[0])
                    batch = []
                for message in batch:
                    (errors if message.error() else values).append(message.error() or message.value())
                if any(e.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED for e in errors):
                    break
        finally:
            consumer.close()
        return [e.code() for e in errors], values

    codes, values = share_poll(CLIENT_TIMEOUT_S)
    assert values == [] and KafkaError.TOPIC_AUTHORIZATION_FAILED in codes, (codes, values)
    grant(acl_broker, acl(ResourceType.TOPIC, topic, principal, AclOperation.READ))
    codes, values = share_poll(CLIENT_TIMEOUT_S)
    assert values, codes


def test_allow_everyone_lets_an_idempotent_producer_in_beside_other_acls(own_broker):
    broker = own_broker({**SETTINGS, "kafka.allow_everyone_if_no_acl_found": "true"},
                        listeners=(PROTOCOL,), amqps=False)
    grant(broker, acl(ResourceType.GROUP, "someone-elses", "User:someone", AclOperation.READ))
    user = new_user(broker, "idempotent")
    producer = Producer({**config(broker, user), "enable.idempotence": True, "message.timeout.ms": 10000})
    outcome = []
    producer.produce(unique_name("idem"), b"x", on_delivery=lambda err, msg: outcome.append(err))
    producer.flush(CLIENT_TIMEOUT_S)
    assert outcome == [None]


# --- finer points Kafka has -----------------------------------------------------------


def test_filters_naming_delegation_tokens_match_nothing(acl_broker):
    """A filter on a kind of resource Sluice keeps no ACL of is valid and
    matches nothing (Kafka's answer), for DescribeAcls and DeleteAcls."""
    from kafka import KafkaAdminClient
    from kafka.admin import ACLFilter, ACLOperation, ACLPermissionType, ACLResourcePatternType
    from kafka.admin import ResourcePatternFilter, ResourceType as KpResource

    grant(acl_broker, acl(ResourceType.TOPIC, unique_name("kept"), "User:keeper", AclOperation.READ))
    before = admin_call(config(acl_broker, ADMIN), "describe_acls", every_acl())
    admin = KafkaAdminClient(**kafka_python_config(acl_broker, ADMIN))
    try:
        tokens = ACLFilter(None, None, ACLOperation.ANY, ACLPermissionType.ANY,
                           ResourcePatternFilter(KpResource.DELEGATION_TOKEN, None, ACLResourcePatternType.ANY))
        found, error = admin.describe_acls(tokens)
        assert error.errno == 0 and found == [], (found, error)
        deleted = admin.delete_acls([tokens])
        assert deleted == [(tokens, [], None)] or all(not matches for _, matches, _ in deleted), deleted
    finally:
        admin.close()
    assert sorted(admin_call(config(acl_broker, ADMIN), "describe_acls", every_acl())) == sorted(before)


def test_created_topic_configs_need_describe_configs(acl_broker):
    """CreateTopics v5+ returns a new topic's configs only to a client
    that may describe them; otherwise TOPIC_AUTHORIZATION_FAILED in
    topic_config_error_code (a tagged field) and no configs. Raw
    requests as User:ANONYMOUS, granted CREATE on a prefix of its own."""
    prefix = unique_name("anonymous-made") + "-"
    grant(acl_broker, acl(ResourceType.TOPIC, prefix, "User:ANONYMOUS", AclOperation.CREATE,
                          pattern=ResourcePatternType.PREFIXED))

    def create(name: str) -> bytes:
        """CreateTopics v5 of one topic (1 partition, factor 1): what
        follows the topic's name in the answer."""
        body = (uvarint(2) + compact_string(name) + struct.pack(">ih", 1, 1) + uvarint(1) + uvarint(1)
                + uvarint(0) + struct.pack(">i", 30000) + b"\x00" + uvarint(0))
        answer = anonymous_answer(acl_broker, 19, 5, body, flexible=True)
        return answer[answer.index(name.encode()) + len(name):]

    def fields(rest: bytes) -> tuple[int, int, int, int, bytes]:
        """(error, partitions, factor, configs count + 1 (0: null), tags)."""
        error, = struct.unpack(">h", rest[:2])
        message = rest[2]  # a short compact string: its length + 1, or 0
        at = 3 + max(message - 1, 0)
        partitions, factor = struct.unpack(">ih", rest[at:at + 6])
        configs = rest[at + 6]
        return error, partitions, factor, configs, rest[at + 7:]

    error, partitions, factor, configs, tags = fields(create(prefix + "a"))
    assert (error, partitions, factor) == (0, 1, 1)
    assert configs == 0, "configs were returned"
    # One tag: 0 (topic_config_error_code), 2 bytes, 29.
    assert tags[:3] == b"\x01\x00\x02" and struct.unpack(">h", tags[3:5]) == (29,), tags

    grant(acl_broker, acl(ResourceType.TOPIC, prefix, "User:ANONYMOUS", AclOperation.DESCRIBE_CONFIGS,
                          pattern=ResourcePatternType.PREFIXED))
    error, _, _, configs, _ = fields(create(prefix + "b"))
    assert error == 0 and configs > 1, "no configs for a client that may describe them"
