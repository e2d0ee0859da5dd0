"""RabbitMQ's virtual host limits (max-connections, max-queues) and user
limits (max-connections, max-channels) on the real broker, set through the
management API's `/api/vhost-limits` and `/api/user-limits` and enforced
on pika clients with RabbitMQ's NOT_ALLOWED (530) and PRECONDITION_FAILED
(406) texts; a negative value lifts a limit, 0 allows nothing; limits are
kept across a restart and go with their user; only administrators change
them.

Each test uses its own virtual host or user, so the module broker's other
tests are not limited.
"""

from __future__ import annotations

import urllib.parse

import pika
import pika.exceptions
import pytest

from support import ADMIN, add_user, api, unique_name

VHOSTS = [f"limited-{i}" for i in range(4)]
SETTINGS = {
    "amqp.users": f"guest:guest,{ADMIN[0]}:{ADMIN[1]}",
    "amqp.loopback_users": "guest",
    "amqp.vhosts": ",".join(["/", *VHOSTS]),
}
FULL = {"configure": ".*", "write": ".*", "read": ".*"}


@pytest.fixture(scope="module")
def limits_broker(tmp_path_factory, pki):
    from support import running

    with running(tmp_path_factory.mktemp("limits") / "data", "broker[test_amqp_limits]", pki, SETTINGS,
                 listeners=(), amqps=False) as broker:
        yield broker


def quoted(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def connect(broker, user=("guest", "guest"), vhost: str = "/") -> pika.BlockingConnection:
    parameters = pika.ConnectionParameters(
        host="127.0.0.1", port=broker.amqp_port, virtual_host=vhost, credentials=pika.PlainCredentials(*user),
        connection_attempts=1, socket_timeout=10, stack_timeout=15)
    return pika.BlockingConnection(parameters)


def refused_connection(broker, user=("guest", "guest"), vhost: str = "/") -> str:
    """The broker's text refusing a connection during its handshake."""
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as refused:
        connect(broker, user, vhost).close()
    return str(refused.value)


def set_limit(broker, kind: str, key: str, name: str, value: int | None, credentials=("guest", "guest")):
    path = f"/api/{kind}-limits/{quoted(key)}/{name}"
    if value is None:
        return api(broker, "DELETE", path, credentials=credentials)
    return api(broker, "PUT", path, {"value": value}, credentials=credentials)


def grant(broker, user: str, vhost: str) -> None:
    answer = api(broker, "PUT", f"/api/permissions/{quoted(vhost)}/{user}", FULL)
    assert answer.status in (201, 204), (answer.status, answer.body)


def test_vhost_max_connections_counts_open_connections(limits_broker):
    broker, vhost = limits_broker, VHOSTS[0]
    assert set_limit(broker, "vhost", vhost, "max-connections", 2).status == 204
    assert api(broker, "GET", f"/api/vhost-limits/{quoted(vhost)}").body == [
        {"vhost": vhost, "value": {"max-connections": 2}}]
    first, second = connect(broker, vhost=vhost), connect(broker, vhost=vhost)
    try:
        text = refused_connection(broker, vhost=vhost)
        assert (f"(530) \"NOT_ALLOWED - access to vhost '{vhost}' refused for user 'guest': "
                "connection limit (2) is reached\"") in text, text
        # Other virtual hosts are not limited.
        connect(broker).close()
        # One closed: room for one more.
        first.close()
        third = connect(broker, vhost=vhost)
        third.close()
    finally:
        for connection in (first, second):
            if connection.is_open:
                connection.close()
    # 0 allows none; a negative value lifts the limit.
    assert set_limit(broker, "vhost", vhost, "max-connections", 0).status == 204
    assert "connection limit (0) is reached" in refused_connection(broker, vhost=vhost)
    assert set_limit(broker, "vhost", vhost, "max-connections", -1).status == 204
    connect(broker, vhost=vhost).close()
    assert set_limit(broker, "vhost", vhost, "max-connections", None).status == 204
    assert api(broker, "GET", f"/api/vhost-limits/{quoted(vhost)}").body == []


def test_vhost_max_queues_refuses_a_new_queue_past_it(limits_broker):
    broker, vhost = limits_broker, VHOSTS[1]
    assert set_limit(broker, "vhost", vhost, "max-queues", 2).status == 204
    connection = connect(broker, vhost=vhost)
    try:
        channel = connection.channel()
        channel.queue_declare("q1")
        channel.queue_declare("q2", durable=True)
        # Declaring one that exists is not a new queue.
        channel.queue_declare("q1")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
            channel.queue_declare("q3")
        assert closed.value.reply_code == 406
        assert closed.value.reply_text == (
            f"PRECONDITION_FAILED - cannot declare queue 'q3': queue limit in vhost '{vhost}' (2) is reached")
        channel = connection.channel()
        channel.queue_delete("q1")
        channel.queue_declare("q3")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            channel.queue_declare("")  # a server-named queue counts too
    finally:
        connection.close()
    assert set_limit(broker, "vhost", vhost, "max-queues", None).status == 204
    with connect(broker, vhost=vhost) as connection:
        connection.channel().queue_declare("q4")


def test_user_max_connections(limits_broker):
    broker = limits_broker
    name = unique_name("conn-user")
    add_user(broker, name, "Pw-" + name)
    user = (name, "Pw-" + name)
    grant(broker, name, VHOSTS[2])
    assert set_limit(broker, "user", name, "max-connections", 1).status == 204
    assert api(broker, "GET", f"/api/user-limits/{name}").body == [{"user": name, "value": {"max-connections": 1}}]
    held = connect(broker, user)
    try:
        text = refused_connection(broker, user)
        assert f"(530) \"NOT_ALLOWED - connection refused for user '{name}': user connection limit (1) is reached\"" \
            in text, text
        # Counted over every virtual host.
        assert "user connection limit (1)" in refused_connection(broker, user, VHOSTS[2])
        # Other users are not limited.
        connect(broker).close()
    finally:
        held.close()
    connect(broker, user).close()


def test_user_max_channels_counts_channels_on_all_its_connections(limits_broker):
    broker = limits_broker
    name = unique_name("chan-user")
    add_user(broker, name, "Pw-" + name)
    user = (name, "Pw-" + name)
    assert set_limit(broker, "user", name, "max-channels", 2).status == 204
    first, second = connect(broker, user), connect(broker, user)
    try:
        first.channel()
        second.channel()
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            second.channel()
        assert closed.value.reply_code == 530
        assert closed.value.reply_text == (
            f"NOT_ALLOWED - number of channels opened for user '{name}' has reached the maximum allowed user "
            "limit of (2)")
        # The other connection's channel closes: room for one.
        first.close()
        third = connect(broker, user)
        third.channel()
        third.close()
    finally:
        for connection in (first, second):
            if connection.is_open:
                connection.close()


def test_the_api_refuses_bad_limits_and_non_administrators(limits_broker):
    broker = limits_broker
    name = unique_name("limited")
    add_user(broker, name, "Pw-" + name)
    for kind, key, limit, value, status in [("vhost", VHOSTS[3], "max-channels", 1, 400),
                                             ("vhost", "no-such-vhost", "max-queues", 1, 404),
                                             ("user", name, "max-queues", 1, 400),
                                             ("user", "no-such-user", "max-channels", 1, 400)]:
        answer = set_limit(broker, kind, key, limit, value)
        assert answer.status == status, (kind, key, limit, answer.status, answer.body)
    answer = api(broker, "PUT", f"/api/vhost-limits/{quoted(VHOSTS[3])}/max-queues", {"value": "many"})
    assert answer.status == 400, answer.body

    monitor = unique_name("monitor")
    add_user(broker, monitor, "Pw-" + monitor, tags="monitoring")
    creds = (monitor, "Pw-" + monitor)
    assert set_limit(broker, "vhost", VHOSTS[3], "max-queues", 5, credentials=creds).status == 403
    assert set_limit(broker, "user", name, "max-channels", 5, credentials=creds).status == 403
    # Reading is open to every management tag, as in RabbitMQ.
    assert api(broker, "GET", "/api/user-limits", credentials=creds).status == 200
    assert api(broker, "GET", "/api/vhost-limits", credentials=creds).status == 200


def test_limits_survive_a_restart_and_go_with_their_user(own_broker):
    broker = own_broker(SETTINGS, listeners=(), amqps=False)
    name = unique_name("kept")
    add_user(broker, name, "Pw-" + name)
    assert set_limit(broker, "vhost", VHOSTS[0], "max-connections", 0).status == 204
    assert set_limit(broker, "user", name, "max-channels", 3).status == 204
    broker.stop()
    broker.start()
    assert api(broker, "GET", "/api/vhost-limits").body == [{"vhost": VHOSTS[0], "value": {"max-connections": 0}}]
    assert api(broker, "GET", "/api/user-limits").body == [{"user": name, "value": {"max-channels": 3}}]
    assert "connection limit (0) is reached" in refused_connection(broker, vhost=VHOSTS[0])
    assert api(broker, "DELETE", f"/api/users/{name}").status == 204
    assert api(broker, "GET", "/api/user-limits").body == []
    # A user of the same name starts without limits.
    add_user(broker, name, "Pw-" + name)
    assert api(broker, "GET", f"/api/user-limits/{name}").body == []
