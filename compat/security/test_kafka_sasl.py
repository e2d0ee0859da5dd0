"""Kafka SASL on the real broker with real clients: PLAIN, SCRAM-SHA-256
and SCRAM-SHA-512 (KIP-43, KIP-84, KIP-152) on SASL_SSL and SASL_PLAINTEXT
listeners, for confluent-kafka (librdkafka 2.16), kafka-python and
Debian's kcat (librdkafka 2.0.2); each listener advertising its own
address in Metadata; what the wire answers before, during and after a
login, and when a KIP-368 session lifetime runs out; failed logins refused
with SASL_AUTHENTICATION_FAILED and logged without the password; and the
users managed by Kafka's own DescribeUserScramCredentials and
AlterUserScramCredentials (KIP-554).

Users are added through `sluice users` and the admin API, so every login
here is against the broker's stored SCRAM credentials.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

from common.broker import BrokerStartError
from common.wire import Reader, compact_string, kafka_string, recv_frame, request_frame, uvarint, wait_closed
from support import (
    ADMIN,
    CLIENT_TIMEOUT_S,
    SecureBroker,
    add_user,
    api,
    field,
    first_client_error,
    kafka_config,
    login_error,
    login_failures,
    metadata_brokers,
    produce_and_consume,
    sluice_users,
    unique_name,
    wait_for_log,
)

MECHANISMS = ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]


# --- confluent-kafka ---------------------------------------------------------------


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_a_user_added_by_the_cli_produces_and_consumes_over_sasl_ssl(secure_broker, topic, group, mechanism):
    user = (unique_name("cli-user"), "Pa55-" + mechanism)
    done = sluice_users(secure_broker, "add", user[0], "--password", user[1])
    assert f"added user {user[0]}" in done.stdout
    config = kafka_config(secure_broker, "SASL_SSL", mechanism, user)

    # Metadata on the SASL_SSL listener sends clients back to it, not to the
    # PLAINTEXT listener: a client following the advertised address would
    # otherwise leave TLS and SASL behind.
    assert metadata_brokers(config) == {1: secure_broker.address("SASL_SSL")}
    values = produce_and_consume(config, topic, group)
    assert sorted(values) == [f"{topic}-{i}".encode() for i in range(5)]
    # The group's commit went through the SASL listener too.
    committed = api(secure_broker, "GET", f"/api/groups/{group}")
    assert committed.status == 200, committed.body
    assert [(o["topic"], o["lag"]) for o in committed.body["offsets"]] == [(topic, 0)], committed.body


def test_each_listener_advertises_its_own_address(secure_broker):
    user = (unique_name("advertised"), "Adv3rtised-pw")
    add_user(secure_broker, *user)
    for protocol in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        config = kafka_config(secure_broker, protocol, "SCRAM-SHA-256", user) if "SASL" in protocol \
            else kafka_config(secure_broker, protocol)
        assert metadata_brokers(config) == {1: secure_broker.address(protocol)}, protocol


def test_the_main_listener_can_be_sasl_ssl(own_broker, topic, group):
    # kafka.listen itself speaks SASL_SSL; PLAINTEXT is an extra listener.
    broker = own_broker({"kafka.security_protocol": "SASL_SSL"}, listeners=("PLAINTEXT",))
    add_user(broker, "kim", "K1m-main-listener")
    config = kafka_config(broker, "SASL_SSL", "SCRAM-SHA-512", ("kim", "K1m-main-listener"))
    assert broker.address("SASL_SSL") == broker.bootstrap
    assert metadata_brokers(config) == {1: broker.bootstrap}
    assert sorted(produce_and_consume(config, topic, group)) == [f"{topic}-{i}".encode() for i in range(5)]
    assert metadata_brokers(kafka_config(broker, "PLAINTEXT")) == {1: broker.address("PLAINTEXT")}
    # A plaintext client on the main port gets nowhere.
    plain = kafka_config(broker, "PLAINTEXT") | {"bootstrap.servers": broker.bootstrap}
    assert login_error(plain, timeout=15) is not None


def test_a_listener_clashing_with_the_main_one_is_refused_at_startup(pki, tmp_path):
    # kafka.listeners may not name kafka.security_protocol's protocol again.
    broker = SecureBroker(tmp_path / "data", "clash", pki, {"kafka.security_protocol": "SSL"},
                          listeners=("SSL",))
    with pytest.raises(BrokerStartError) as refused:
        broker.start()
    assert "kafka.listeners names SSL" in str(refused.value)
    assert not broker.alive()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
@pytest.mark.parametrize("who", ["wrong-password", "unknown-user"])
def test_a_failed_login_is_refused_and_logged_without_the_password(own_broker, mechanism, who):
    # A broker of its own: failed logins are logged once per address every
    # 10 s, so another test's failure must not swallow this one's line.
    broker = own_broker()
    add_user(broker, "carol", "c0rrect-Horse")
    password = "Wr0ng-b4ttery-staple"
    user = ("carol", password) if who == "wrong-password" else ("mallory", password)
    mark = broker.log_size()

    error = first_client_error(kafka_config(broker, "SASL_SSL", mechanism, user))
    assert error is not None, "the client reported no error"
    assert error.code() == KafkaError._AUTHENTICATION, error
    assert ("Authentication failed during authentication due to invalid credentials with SASL mechanism "
            f"{mechanism}") in error.str()

    (line,) = wait_for_log(broker, mark, r"login failed")
    assert " WARN " in line
    assert field(line, "user") == user[0]
    assert field(line, "peer") == "127.0.0.1"
    assert field(line, "via") == f"kafka SASL {mechanism}"
    # librdkafka retries the login; all within 10 s make one line.
    assert len(login_failures(broker, mark)) == 1
    assert password not in broker.log_text(0, tail_lines=None)


# --- kafka-python and kcat ---------------------------------------------------------


@pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLS is deprecated:DeprecationWarning")
@pytest.mark.parametrize("protocol,mechanism", [
    ("SASL_PLAINTEXT", "PLAIN"),
    ("SASL_PLAINTEXT", "SCRAM-SHA-256"),
    ("SSL", None),
])
def test_kafka_python_produces_and_consumes(secure_broker, topic, group, protocol, mechanism):
    from kafka import KafkaConsumer, KafkaProducer

    user = (unique_name("kafka-python"), "kafka-Pyth0n-pw")
    add_user(secure_broker, *user)
    options = {
        "bootstrap_servers": secure_broker.address(protocol),
        "security_protocol": protocol,
        "request_timeout_ms": 20000,
        "api_version_auto_timeout_ms": 10000,
    }
    if mechanism:
        options.update(sasl_mechanism=mechanism, sasl_plain_username=user[0], sasl_plain_password=user[1])
    else:
        options.update(ssl_cafile=str(secure_broker.pki.ca_file), ssl_check_hostname=True)

    producer = KafkaProducer(acks="all", **options)
    try:
        for i in range(5):
            producer.send(topic, f"kp-{i}".encode()).get(timeout=CLIENT_TIMEOUT_S)
    finally:
        producer.close(timeout=10)
    consumer = KafkaConsumer(topic, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=1000, **options)
    try:
        seen = []
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while len(seen) < 5 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                seen.extend(record.value for record in records)
        consumer.commit()
    finally:
        consumer.close(autocommit=False)
    assert sorted(seen) == [f"kp-{i}".encode() for i in range(5)]


def kcat_round_trip(kcat, options: list[str], topic: str) -> list[str]:
    """Produces five lines with `kcat -P`, reads them back with `kcat -C
    -e`; returns what was read."""
    lines = [f"kcat-{i}" for i in range(5)]
    produced = subprocess.run([kcat, *options, "-P", "-t", topic], input="\n".join(lines) + "\n",
                              capture_output=True, text=True, timeout=60)
    assert produced.returncode == 0, produced.stderr
    consumed = subprocess.run([kcat, *options, "-C", "-t", topic, "-o", "beginning", "-e", "-q"],
                              capture_output=True, text=True, timeout=60)
    assert consumed.returncode == 0, consumed.stderr
    return consumed.stdout.splitlines()


def test_kcat_produces_and_consumes_over_ssl(secure_broker, kcat, topic):
    options = ["-X", "security.protocol=SSL", "-X", f"ssl.ca.location={secure_broker.pki.ca_file}",
               "-b", secure_broker.address("SSL")]
    assert kcat_round_trip(kcat, options, topic) == [f"kcat-{i}" for i in range(5)]


def test_kcat_logs_in_with_sasl_plain(secure_broker, kcat, topic):
    # Debian's kcat runs on librdkafka 2.0.2. It needs SaslHandshake v0 in
    # the advertised range to log in at all. Its SCRAM sends the client
    # nonce twice in client-final-message, which Kafka's server tolerates
    # (it checks that the nonce ends with the server's) and rsasl does not,
    # so it logs in with PLAIN here (compat/security/FINDINGS.md).
    user = (unique_name("kcat"), "kc4t-Plain-pw")
    add_user(secure_broker, *user)
    options = ["-X", "security.protocol=SASL_PLAINTEXT", "-X", "sasl.mechanisms=PLAIN",
               "-X", f"sasl.username={user[0]}", "-X", f"sasl.password={user[1]}",
               "-b", secure_broker.address("SASL_PLAINTEXT")]
    assert kcat_round_trip(kcat, options, topic) == [f"kcat-{i}" for i in range(5)]

    # The same kcat with a wrong password gets nothing (librdkafka 2.0.2
    # reports the connection the broker closed after refusing it).
    options[options.index(f"sasl.password={user[1]}")] = "sasl.password=not-the-password"
    refused = subprocess.run([kcat, *options, "-C", "-t", topic, "-o", "beginning", "-e", "-q"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "kcat-" not in refused.stdout
    assert "kcat-0" not in refused.stdout


# --- the wire ----------------------------------------------------------------------

API_METADATA = 3
API_SASL_HANDSHAKE = 17
API_API_VERSIONS = 18
API_SASL_AUTHENTICATE = 36
API_DESCRIBE_USER_SCRAM_CREDENTIALS = 50
CLUSTER_AUTHORIZATION_FAILED = 31
SASL_AUTHENTICATION_FAILED = 58
UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34


class Wire:
    """One raw Kafka connection, requests answered in turn."""

    def __init__(self, address: str):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.correlation_id = 0

    def call(self, api_key: int, version: int, body: bytes, flexible: bool = False) -> Reader:
        self.correlation_id += 1
        self.sock.sendall(request_frame(api_key, version, self.correlation_id, body, flexible=flexible))
        reader = Reader(recv_frame(self.sock))
        assert reader.int32() == self.correlation_id
        if flexible:
            reader.tagged_fields()  # response header v1
        return reader

    def api_versions(self) -> int:
        return self.call(API_API_VERSIONS, 0, b"").int16()

    def handshake(self, mechanism: str) -> tuple[int, list[str]]:
        reader = self.call(API_SASL_HANDSHAKE, 1, kafka_string(mechanism))
        error = reader.int16()
        return error, [reader.string() for _ in range(reader.int32())]

    def authenticate(self, token: bytes) -> tuple[int, str | None, int]:
        """SaslAuthenticate v1: (error code, error message, session
        lifetime in ms)."""
        reader = self.call(API_SASL_AUTHENTICATE, 1, struct.pack(">i", len(token)) + token)
        error, message = reader.int16(), reader.string()
        reader.take(reader.int32())
        return error, message, reader.int64()

    def login_plain(self, user: str, password: str) -> tuple[int, str | None, int]:
        error, _ = self.handshake("PLAIN")
        assert error == 0
        return self.authenticate(b"\0" + user.encode() + b"\0" + password.encode())

    def metadata(self) -> list[tuple[int, str, int]]:
        """Metadata v1 for every topic: the brokers as (node, host, port)."""
        reader = self.call(API_METADATA, 1, struct.pack(">i", -1))
        brokers = []
        for _ in range(reader.int32()):
            node, host, port = reader.int32(), reader.string(), reader.int32()
            reader.string()  # rack
            brokers.append((node, host, port))
        return brokers

    def describe_scram(self, users: list[str]) -> tuple[int, str | None, list[tuple[str, int]]]:
        """DescribeUserScramCredentials v0 (flexible): (request error code,
        request error message, [(user, error code)])."""
        body = uvarint(len(users) + 1) + b"".join(compact_string(u) + uvarint(0) for u in users) + uvarint(0)
        reader = self.call(API_DESCRIBE_USER_SCRAM_CREDENTIALS, 0, body, flexible=True)

        def nullable() -> str | None:
            size = reader.uvarint()
            return None if size == 0 else reader.take(size - 1).decode()

        reader.int32()  # throttle time
        error, message, results = reader.int16(), nullable(), []
        for _ in range(reader.uvarint() - 1):
            user, code = nullable(), reader.int16()
            nullable()
            for _ in range(reader.uvarint() - 1):
                reader.take(5)
                reader.tagged_fields()
            reader.tagged_fields()
            results.append((user, code))
        return error, message, results

    def closed(self, timeout: float = 5.0) -> bool:
        return wait_closed(self.sock, timeout)

    def close(self):
        self.sock.close()


@pytest.fixture
def wire():
    opened = []

    def connect(address: str) -> Wire:
        opened.append(Wire(address))
        return opened[-1]

    yield connect
    for connection in opened:
        connection.close()


def test_a_sasl_listener_serves_nothing_but_the_login_before_it(secure_broker, wire):
    sasl = wire(secure_broker.address("SASL_PLAINTEXT"))
    # ApiVersions is how a client learns it may start SASL: it is answered.
    assert sasl.api_versions() == 0
    sasl.sock.sendall(request_frame(API_METADATA, 1, 99, struct.pack(">i", -1)))
    assert sasl.closed(), "Metadata before authentication was not refused by a close"


def test_a_plain_login_on_the_wire_opens_the_connection(secure_broker, wire):
    user = (unique_name("wire"), "W1re-pass")
    add_user(secure_broker, *user)
    sasl = wire(secure_broker.address("SASL_PLAINTEXT"))
    error, _, lifetime = sasl.login_plain(*user)
    assert error == 0
    assert lifetime == 0, "no kafka.connections_max_reauth: the session never expires"
    port = secure_broker.listener_ports["SASL_PLAINTEXT"]
    assert sasl.metadata() == [(1, "127.0.0.1", port)]


def test_a_wrong_password_on_the_wire_is_answered_58_then_closed(own_broker, wire):
    broker = own_broker()
    add_user(broker, "dave", "D4ve-pass")
    sasl = wire(broker.address("SASL_PLAINTEXT"))
    error, message, _ = sasl.login_plain("dave", "not-dave's")
    assert error == SASL_AUTHENTICATION_FAILED
    assert message == ("Authentication failed during authentication due to invalid credentials "
                       "with SASL mechanism PLAIN")
    assert sasl.closed()


def test_an_unknown_or_disabled_mechanism_is_answered_33_with_the_enabled_ones(secure_broker, own_broker, wire):
    sasl = wire(secure_broker.address("SASL_PLAINTEXT"))
    error, mechanisms = sasl.handshake("GSSAPI")
    assert error == UNSUPPORTED_SASL_MECHANISM
    assert mechanisms == ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
    assert sasl.closed()

    narrow = own_broker({"kafka.sasl_mechanisms": "SCRAM-SHA-512"})
    add_user(narrow, "erin", "Er1n-pass")
    restricted = wire(narrow.address("SASL_PLAINTEXT"))
    error, mechanisms = restricted.handshake("PLAIN")
    assert (error, mechanisms) == (UNSUPPORTED_SASL_MECHANISM, ["SCRAM-SHA-512"])
    # The one mechanism left still works for a real client.
    ok = kafka_config(narrow, "SASL_PLAINTEXT", "SCRAM-SHA-512", ("erin", "Er1n-pass"))
    assert metadata_brokers(ok) == {1: narrow.address("SASL_PLAINTEXT")}


def test_sasl_handshake_on_a_plaintext_listener_is_illegal(secure_broker, wire):
    plain = wire(secure_broker.address("PLAINTEXT"))
    error, _ = plain.handshake("PLAIN")
    assert error == ILLEGAL_SASL_STATE
    # The listener is not SASL: the connection goes on serving.
    assert plain.metadata()[0][0] == 1


def test_a_session_lifetime_closes_connections_that_do_not_reauthenticate(own_broker, wire):
    broker = own_broker({"kafka.connections_max_reauth": "2s"})
    add_user(broker, "frank", "Fr4nk-pass")
    add_user(broker, "grace", "Gr4ce-pass")
    address = broker.address("SASL_PLAINTEXT")

    stale, renewed = wire(address), wire(address)
    assert stale.login_plain("frank", "Fr4nk-pass")[::2] == (0, 2000)
    started = time.monotonic()
    assert renewed.login_plain("frank", "Fr4nk-pass")[::2] == (0, 2000)
    assert stale.metadata() and renewed.metadata()

    # KIP-368: re-authenticating on the same connection renews the session.
    time.sleep(max(0.0, started + 1.2 - time.monotonic()))
    assert renewed.login_plain("frank", "Fr4nk-pass")[::2] == (0, 2000)
    time.sleep(max(0.0, started + 2.5 - time.monotonic()))
    # The renewed one first: it has 0.7 s left, the stale one none either way.
    assert renewed.metadata()[0][0] == 1
    stale.sock.sendall(request_frame(API_METADATA, 1, 99, struct.pack(">i", -1)))
    assert stale.closed(), "a request past the session lifetime was served"

    # Re-authentication may not change who the connection is.
    switching = wire(address)
    assert switching.login_plain("frank", "Fr4nk-pass")[0] == 0
    error, message, _ = switching.login_plain("grace", "Gr4ce-pass")
    assert error == SASL_AUTHENTICATION_FAILED, message
    assert switching.closed()


# --- DescribeUserScramCredentials and AlterUserScramCredentials --------------------


def scram_admin(broker, protocol="PLAINTEXT", user=None) -> AdminClient:
    mechanism = "SCRAM-SHA-256" if user else None
    return AdminClient(kafka_config(broker, protocol, mechanism, user))


def kafka_error(future) -> KafkaError:
    """The error an admin future failed with (it must fail). Read without
    raising: a traceback would keep the client alive past its broker."""
    error = future.exception(timeout=CLIENT_TIMEOUT_S)
    assert isinstance(error, KafkaException), f"expected a KafkaException, got {error!r}"
    return error.args[0]


def test_scram_credentials_made_by_kafka_admin_log_in_and_are_described(own_broker):
    broker = own_broker()
    user, password = "heidi", b"He1di-scram-512"
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192)
    # Not through a listener without SASL: these users also log in to the
    # admin API and AMQP, so no anonymous client may change them.
    anonymous = scram_admin(broker)
    futures = anonymous.alter_user_scram_credentials([UserScramCredentialUpsertion(user, info, password)])
    assert kafka_error(futures[user]).code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    assert api(broker, "GET", f"/api/users/{user}").status == 404
    # guest, a configuration user, is an administrator.
    admin = scram_admin(broker, "SASL_PLAINTEXT", ("guest", "guest"))
    futures = admin.alter_user_scram_credentials([UserScramCredentialUpsertion(user, info, password)])
    futures[user].result(timeout=CLIENT_TIMEOUT_S)

    described = admin.describe_user_scram_credentials([user])[user].result(timeout=CLIENT_TIMEOUT_S)
    assert [(c.mechanism, c.iterations) for c in described.scram_credential_infos] == [
        (ScramMechanism.SCRAM_SHA_512, 8192)]
    # The client sent only a salted password; the broker logs in with it.
    login = kafka_config(broker, "SASL_SSL", "SCRAM-SHA-512", (user, password.decode()))
    assert metadata_brokers(login) == {1: broker.address("SASL_SSL")}
    # No credential for SCRAM-SHA-256 was made, so that mechanism fails.
    error = first_client_error(kafka_config(broker, "SASL_SSL", "SCRAM-SHA-256", (user, password.decode())))
    assert error is not None and error.code() == KafkaError._AUTHENTICATION, error
    listed = api(broker, "GET", f"/api/users/{user}")
    assert listed.status == 200 and listed.body["mechanisms"] == ["SCRAM-SHA-512"], listed.body

    # Kafka's bounds on iterations.
    too_few = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 1000)
    futures = admin.alter_user_scram_credentials([UserScramCredentialUpsertion("ivan", too_few, b"Iv4n-pass")])
    assert kafka_error(futures["ivan"]).code() == KafkaError.UNACCEPTABLE_CREDENTIAL
    assert api(broker, "GET", "/api/users/ivan").status == 404

    # Deleting the last credential removes the user.
    deletion = UserScramCredentialDeletion(user, ScramMechanism.SCRAM_SHA_512)
    admin.alter_user_scram_credentials([deletion])[user].result(timeout=CLIENT_TIMEOUT_S)
    gone = admin.describe_user_scram_credentials([user])[user]
    assert kafka_error(gone).code() == KafkaError.RESOURCE_NOT_FOUND
    assert api(broker, "GET", f"/api/users/{user}").status == 404
    error = first_client_error(login)
    assert error is not None and error.code() == KafkaError._AUTHENTICATION, error


def test_only_administrators_manage_scram_credentials_over_sasl(own_broker, wire):
    broker = own_broker({"amqp.users": f"guest:guest,{ADMIN[0]}:{ADMIN[1]}"})
    add_user(broker, "judy", "Jud7-pass", tags="monitoring")
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096)

    judy = scram_admin(broker, "SASL_PLAINTEXT", ("judy", "Jud7-pass"))
    refused = judy.alter_user_scram_credentials([UserScramCredentialUpsertion("judy", info, b"escalated")])
    assert kafka_error(refused["judy"]).code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    # Describe is checked on the wire: confluent-kafka crashes on the
    # broker's refusal (see the next test).
    connection = wire(broker.address("SASL_PLAINTEXT"))
    assert connection.login_plain("judy", "Jud7-pass")[0] == 0
    assert connection.describe_scram([ADMIN[0]])[0] == CLUSTER_AUTHORIZATION_FAILED
    # Judy's password did not change.
    assert metadata_brokers(kafka_config(broker, "SASL_PLAINTEXT", "SCRAM-SHA-256", ("judy", "Jud7-pass")))

    # The configuration's users are administrators.
    admin = scram_admin(broker, "SASL_PLAINTEXT", ADMIN)
    admin.alter_user_scram_credentials([UserScramCredentialUpsertion("judy", info, b"Jud7-new")])[
        "judy"].result(timeout=CLIENT_TIMEOUT_S)
    described = admin.describe_user_scram_credentials([ADMIN[0]])[ADMIN[0]].result(timeout=CLIENT_TIMEOUT_S)
    assert {c.mechanism for c in described.scram_credential_infos} == {
        ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512}
    assert metadata_brokers(kafka_config(broker, "SASL_PLAINTEXT", "SCRAM-SHA-256", ("judy", "Jud7-new")))


def test_a_refused_describe_has_no_request_level_message(secure_broker, wire):
    user = (unique_name("not-admin"), "N0t-admin-pass")
    add_user(secure_broker, *user)
    connection = wire(secure_broker.address("SASL_PLAINTEXT"))
    assert connection.login_plain(*user)[0] == 0
    error, message, _ = connection.describe_scram([ADMIN[0]])
    assert error == CLUSTER_AUTHORIZATION_FAILED
    # Kafka answers ApiError.fromThrowable(CLUSTER_AUTHORIZATION_FAILED
    # .exception()): the generic message is left out, so null.
    assert message is None
