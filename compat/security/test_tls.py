"""TLS on every listener that has it (Kafka SSL and SASL_SSL, AMQPS,
HTTPS), with real clients: what a client sees of the broker's certificate,
who is refused (a plaintext client, a client that does not trust the CA,
a client that offers nothing newer than TLS 1.1, and under
`tls.client_auth` a client without a good certificate), and the
certificate changing under a running broker on SIGHUP or when the files
change, while a broken file keeps the last good certificate in use.

The certificates come from the `pki` fixture (compat/common/pki.py),
made for this run. Each refusal is also checked in the broker's log, so a
test cannot pass because the client gave up on its own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pika
import pika.exceptions
import pytest
from confluent_kafka import KafkaError

from common.broker import broker_binary, child_env
from common.wire import request_frame, wait_closed
from support import (
    api,
    client_context,
    first_client_error,
    handshake,
    kafka_config,
    metadata_brokers,
    produce_and_consume,
    served_serial,
    unique_name,
    wait_for_log,
)

# --- who the TLS listeners refuse --------------------------------------------------


def test_a_plaintext_kafka_client_on_the_ssl_port_gets_no_kafka_answer(secure_broker):
    mark = secure_broker.log_size()
    with socket.create_connection(("127.0.0.1", secure_broker.listener_ports["SSL"]), timeout=10) as raw:
        raw.sendall(request_frame(18, 0, 1, b""))  # ApiVersions v0
        raw.settimeout(10)
        answer = raw.recv(64)
        # A TLS alert record (content type 21), never a Kafka response.
        assert answer == b"" or answer[0] == 21, answer
        assert wait_closed(raw, 10)
    wait_for_log(secure_broker, mark, r"TLS handshake failed.*listener=SSL")

    error = first_client_error(kafka_config(secure_broker, "PLAINTEXT") | {
        "bootstrap.servers": secure_broker.address("SSL")})
    assert error is not None, "a PLAINTEXT client got along with the SSL listener"


def test_a_client_that_does_not_trust_the_ca_refuses_the_broker(secure_broker, pki):
    # The system's CAs, not the suite's.
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(secure_broker.listener_ports["SSL"], ssl.create_default_context())
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(secure_broker.amqps_port, client_context(pki, ca_file=pki.untrusted_ca_file))
    config = kafka_config(secure_broker, "SSL", **{"ssl.ca.location": str(pki.untrusted_ca_file)})
    error = first_client_error(config)
    assert error is not None and error.code() in (KafkaError._SSL, KafkaError._TRANSPORT), error
    assert "certificate verify failed" in error.str(), error
    # The right CA: the same listener answers, as localhost and 127.0.0.1.
    assert metadata_brokers(kafka_config(secure_broker, "SSL")) == {1: secure_broker.address("SSL")}


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["TLSv1.2", "TLSv1.3"])
def test_tls_1_2_and_1_3_are_served(secure_broker, pki, version):
    context = client_context(pki)
    context.minimum_version = context.maximum_version = version
    expected = {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    for port in (secure_broker.listener_ports["SSL"], secure_broker.listener_ports["SASL_SSL"],
                 secure_broker.amqps_port):
        assert handshake(port, context) == (expected, pki.server.serial)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_client_offering_at_most_tls_1_1_is_refused_by_the_broker(secure_broker, pki):
    context = client_context(pki)
    # Debian's OpenSSL refuses TLS 1.1 itself at its default security
    # level; level 0 lets the client offer it, so the refusal must come
    # from the broker.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    mark = secure_broker.log_size()
    with pytest.raises(ssl.SSLError) as refused:
        handshake(secure_broker.listener_ports["SSL"], context)
    if refused.value.reason in ("NO_PROTOCOLS_AVAILABLE", "NO_CIPHERS_AVAILABLE", "UNSUPPORTED_PROTOCOL"):
        pytest.skip(f"the local OpenSSL will not offer TLS 1.1 ({refused.value.reason}); "
                    "test_tls_1_2_and_1_3_are_served still covers the versions served")
    # An alert the broker sent, and its own account of the refusal.
    assert "ALERT" in (refused.value.reason or ""), refused.value
    wait_for_log(secure_broker, mark, r"TLS handshake failed.*listener=SSL")


# --- AMQPS ---------------------------------------------------------------------------


def amqps_parameters(broker, pki, cert=None, user=("guest", "guest")) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host="127.0.0.1",
        port=broker.amqps_port,
        credentials=pika.PlainCredentials(*user),
        ssl_options=pika.SSLOptions(client_context(pki, cert), server_hostname="localhost"),
        connection_attempts=1,
        socket_timeout=10,
        stack_timeout=15,
    )


def publish_and_get(parameters: pika.ConnectionParameters) -> bytes:
    """Declares a queue, publishes one message with confirms and gets it
    back over one connection; returns its body."""
    queue = unique_name("amqps")
    connection = pika.BlockingConnection(parameters)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(queue, auto_delete=True)
        channel.basic_publish("", queue, b"over TLS " + queue.encode(), mandatory=True)
        method, _, body = channel.basic_get(queue, auto_ack=True)
        assert method is not None, "the message did not arrive"
        return body
    finally:
        connection.close()


def test_amqps_publishes_and_gets_with_pika(secure_broker, pki):
    assert publish_and_get(amqps_parameters(secure_broker, pki)).startswith(b"over TLS ")
    # The AMQPS port speaks only TLS.
    plain = pika.ConnectionParameters(host="127.0.0.1", port=secure_broker.amqps_port, connection_attempts=1,
                                      socket_timeout=5, stack_timeout=10)
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(plain)


# --- client certificates -------------------------------------------------------------


@pytest.fixture
def mtls_broker(own_broker, pki):
    return own_broker({"tls.client_auth": "required", "tls.ca_file": str(pki.ca_file)})


def test_required_client_certificates_admit_only_a_valid_one_over_amqps(mtls_broker, pki):
    broker = mtls_broker
    assert publish_and_get(amqps_parameters(broker, pki, cert=pki.client)).startswith(b"over TLS ")

    for cert, reason in [(None, "no certificates"),
                         (pki.untrusted_client, "UnknownIssuer|unknown issuer"),
                         (pki.expired_client, "expired")]:
        mark = broker.log_size()
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            publish_and_get(amqps_parameters(broker, pki, cert=cert))
        # The broker refused it, and says why.
        wait_for_log(broker, mark, rf"(?i)TLS handshake failed.*({reason}).*listener=amqps")


def test_required_client_certificates_over_kafka_ssl(mtls_broker, pki, topic, group):
    broker = mtls_broker
    with_cert = kafka_config(broker, "SSL", **{"ssl.certificate.location": str(pki.client.cert),
                                               "ssl.key.location": str(pki.client.key)})
    assert sorted(produce_and_consume(with_cert, topic, group)) == [f"{topic}-{i}".encode() for i in range(5)]

    for cert, reason in [(None, "no certificates"), (pki.expired_client, "expired")]:
        mark = broker.log_size()
        config = kafka_config(broker, "SSL")
        if cert:
            config |= {"ssl.certificate.location": str(cert.cert), "ssl.key.location": str(cert.key)}
        assert first_client_error(config) is not None, f"a client with {cert} got along"
        wait_for_log(broker, mark, rf"(?i)TLS handshake failed.*{reason}.*listener=SSL")


def test_optional_client_certificates_admit_none_but_refuse_a_bad_one(own_broker, pki):
    broker = own_broker({"tls.client_auth": "optional", "tls.ca_file": str(pki.ca_file)})
    assert publish_and_get(amqps_parameters(broker, pki)).startswith(b"over TLS ")
    assert publish_and_get(amqps_parameters(broker, pki, cert=pki.client)).startswith(b"over TLS ")
    mark = broker.log_size()
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        publish_and_get(amqps_parameters(broker, pki, cert=pki.untrusted_client))
    wait_for_log(broker, mark, r"(?i)TLS handshake failed.*(UnknownIssuer|unknown issuer).*listener=amqps")


# --- HTTPS ---------------------------------------------------------------------------


def test_the_admin_api_over_https(own_broker, pki):
    broker = own_broker({"http.tls": "true"})
    url = f"https://127.0.0.1:{broker.http_port}/api/overview"
    curl = subprocess.run(["curl", "--silent", "--show-error", "--fail", "--max-time", "15",
                           "--cacert", str(pki.ca_file), "-u", "guest:guest", url],
                          capture_output=True, text=True, timeout=30)
    assert curl.returncode == 0, curl.stderr
    assert '"version"' in curl.stdout
    # Python's client, checking the name 127.0.0.1 against the SAN.
    answer = api(broker, "GET", "/api/overview", context=client_context(pki))
    assert answer.status == 200 and answer.body["version"], answer.body
    assert handshake(broker.http_port, client_context(pki))[1] == pki.server.serial

    # Plain HTTP to the same port gets no HTTP answer.
    plain = subprocess.run(["curl", "--silent", "--max-time", "15", "-u", "guest:guest",
                            "-o", "/dev/null", "-w", "%{http_code}",
                            f"http://127.0.0.1:{broker.http_port}/api/overview"],
                           capture_output=True, text=True, timeout=30)
    assert plain.returncode != 0 and plain.stdout == "000", (plain.returncode, plain.stdout)
    # curl without the CA refuses the broker.
    untrusted = subprocess.run(["curl", "--silent", "--max-time", "15", "-u", "guest:guest", url],
                               capture_output=True, text=True, timeout=30)
    assert untrusted.returncode == 60, untrusted.returncode  # CURLE_PEER_FAILED_VERIFICATION

    # The sluice CLI over HTTPS, trusting the suite's CA with --cacert
    # (or SLUICE_CACERT); without it the public roots do not know the CA.
    cli = [str(broker_binary()), "users", "--http", f"https://127.0.0.1:{broker.http_port}",
           "--output", "json", "list"]
    trusted = subprocess.run([*cli, "--cacert", str(pki.ca_file)], capture_output=True, text=True,
                             timeout=30, env=child_env(), stdin=subprocess.DEVNULL)
    assert trusted.returncode == 0, trusted.stderr
    assert "guest" in {user["name"] for user in json.loads(trusted.stdout)}
    refused = subprocess.run(cli, capture_output=True, text=True, timeout=30, env=child_env(),
                             stdin=subprocess.DEVNULL)
    assert refused.returncode != 0 and "guest" not in refused.stdout, refused


# --- certificate reloads -------------------------------------------------------------


def install(directory: Path, cert: bytes, key: bytes) -> None:
    """Replaces the broker's certificate and key files, each by a rename
    (as a deployment tool would), the certificate first."""
    for name, data in (("server.pem", cert), ("server.key", key)):
        staged = directory / f".{name}.new"
        staged.write_bytes(data)
        os.replace(staged, directory / name)


@pytest.fixture
def reloading_broker(own_broker, pki, tmp_path):
    """Starts a broker on its own copy of the server certificate (the tests
    overwrite it) with HTTPS too; `start(interval)` returns (broker, the
    certificate directory)."""

    def start(reload_interval: str):
        directory = tmp_path / "tls"
        directory.mkdir()
        install(directory, pki.server.cert.read_bytes(), pki.server.key.read_bytes())
        broker = own_broker({
            "tls.cert_file": str(directory / "server.pem"),
            "tls.key_file": str(directory / "server.key"),
            "tls.reload_interval": reload_interval,
            "http.tls": "true",
        })
        return broker, directory

    return start


def tls_ports(broker) -> list[int]:
    return [broker.listener_ports["SSL"], broker.listener_ports["SASL_SSL"], broker.amqps_port, broker.http_port]


def wait_for_serial(broker, pki, serial: int, timeout: float = 15.0) -> None:
    """Waits until every TLS listener presents the certificate `serial`
    to new connections."""
    deadline = time.monotonic() + timeout
    while True:
        served = {port: served_serial(port, pki) for port in tls_ports(broker)}
        if set(served.values()) == {serial}:
            return
        assert time.monotonic() < deadline, f"after {timeout} s the listeners serve {served}, not {serial}"
        time.sleep(0.2)


def test_sighup_reloads_the_certificate_for_new_connections(reloading_broker, pki):
    # Files are checked only hourly here: what changes it is the signal.
    broker, directory = reloading_broker("1h")
    assert {served_serial(port, pki) for port in tls_ports(broker)} == {pki.server.serial}
    cert, key, serial = pki.ca.server_pem()
    # A connection opened before the reload keeps its session.
    with socket.create_connection(("127.0.0.1", broker.amqps_port), timeout=10) as raw, \
            client_context(pki).wrap_socket(raw, server_hostname="localhost") as before:
        install(directory, cert, key)
        time.sleep(0.5)
        assert served_serial(broker.listener_ports["SSL"], pki) == pki.server.serial, \
            "the certificate changed before SIGHUP"
        mark = broker.log_size()
        os.kill(broker.proc.pid, signal.SIGHUP)
        wait_for_serial(broker, pki, serial)
        (reloaded,) = wait_for_log(broker, mark, r"TLS certificate and key reloaded")
        assert 'reason="SIGHUP"' in reloaded
        before.sendall(b"AMQP\x00\x00\x09\x01")
        assert before.recv(1), "the connection from before the reload was dropped"
    assert broker.alive(), "SIGHUP stopped the broker"


def test_changed_files_are_reloaded_without_a_signal(reloading_broker, pki):
    broker, directory = reloading_broker("1s")
    cert, key, serial = pki.ca.server_pem()
    mark = broker.log_size()
    install(directory, cert, key)
    wait_for_serial(broker, pki, serial)
    wait_for_log(broker, mark, r'TLS certificate and key reloaded.*reason="the files changed"')


def test_a_broken_key_file_keeps_the_last_good_certificate(reloading_broker, pki):
    broker, directory = reloading_broker("1s")
    mark = broker.log_size()
    (directory / "server.key").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    (failed,) = wait_for_log(broker, mark, r"TLS reload failed", timeout=15)
    assert " WARN " in failed
    assert {served_serial(port, pki) for port in tls_ports(broker)} == {pki.server.serial}
    # A SIGHUP over the broken file fails the same way and changes nothing.
    mark = broker.log_size()
    os.kill(broker.proc.pid, signal.SIGHUP)
    wait_for_log(broker, mark, r'TLS reload failed.*reason="SIGHUP"')
    assert served_serial(broker.amqps_port, pki) == pki.server.serial
    # Repaired files are taken at the next check.
    cert, key, serial = pki.ca.server_pem()
    install(directory, cert, key)
    wait_for_serial(broker, pki, serial)
