"""AMQP permissions per user and virtual host on the real broker, driven
by pika: configure, write and read expressions checked for each method as
RabbitMQ checks them, with its 403 ACCESS_REFUSED texts; topic
permissions on topic exchanges; a user without permissions refused the
virtual host (530); the management API's `/api/permissions` and
`/api/topic-permissions`; permissions kept across a restart and gone with
their user.
"""

from __future__ import annotations

import pika
import pytest

from support import ADMIN, add_user, api, unique_name

REFUSED = 403


def connect(broker, user: tuple[str, str]) -> pika.BlockingConnection:
    parameters = pika.ConnectionParameters(
        host="127.0.0.1", port=broker.amqp_port, credentials=pika.PlainCredentials(*user),
        connection_attempts=1, socket_timeout=10, stack_timeout=15)
    return pika.BlockingConnection(parameters)


def refusal(action) -> tuple[int, str]:
    """The channel close (code, text) `action` ends in (it must)."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
        action()
    return closed.value.reply_code, closed.value.reply_text


def set_permissions(broker, user: str, configure: str, write: str, read: str, vhost: str = "%2F") -> None:
    answer = api(broker, "PUT", f"/api/permissions/{vhost}/{user}",
                 {"configure": configure, "write": write, "read": read})
    assert answer.status in (201, 204), (answer.status, answer.body)


@pytest.fixture
def user(secure_broker):
    """A user with no permissions (the test sets them)."""
    name = unique_name("amqp-user")
    add_user(secure_broker, name, "Pw-" + name, permissions=None)
    return name, "Pw-" + name


def test_the_configurations_users_have_every_permission_and_a_new_user_none(secure_broker, user):
    listed = api(secure_broker, "GET", "/api/permissions").body
    assert {"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"} in listed
    assert {"user": ADMIN[0], "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"} in listed
    assert not [p for p in listed if p["user"] == user[0]]
    # pika reports a connection.close during the handshake as "probable
    # access denied", with the broker's close inside.
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as refused:
        connect(secure_broker, user)
    assert f'(530) "NOT_ALLOWED - access to vhost \'/\' refused for user \'{user[0]}\'"' in str(refused.value)


def test_each_method_checks_configure_write_or_read_as_rabbitmq_does(secure_broker, user):
    name = user[0]
    prefix = unique_name("own")
    # Everything on the user's own names; reading also amq.direct.
    set_permissions(secure_broker, name, f"^{prefix}", f"^{prefix}", f"^({prefix}|amq\\.direct$)")
    # Someone else's queue, declared by guest.
    other = unique_name("others")
    with connect(secure_broker, ("guest", "guest")) as admin:
        admin.channel().queue_declare(other)

    connection = connect(secure_broker, user)
    try:
        channel = connection.channel()
        queue, exchange = f"{prefix}-q", f"{prefix}-x"
        channel.exchange_declare(exchange, "direct")
        channel.queue_declare(queue)
        channel.queue_bind(queue, exchange, "k")
        channel.basic_publish(exchange, "k", b"mine")
        method, _, body = channel.basic_get(queue, auto_ack=True)
        assert body == b"mine"
        # A passive declare needs no permission.
        channel.queue_declare(other, passive=True)

        denied = {
            "queue.declare": (lambda c: c.queue_declare(unique_name("x")), "queue", None),
            "exchange.declare": (lambda c: c.exchange_declare(unique_name("x"), "fanout"), "exchange", None),
            "basic.get": (lambda c: c.basic_get(other), "queue", other),
            "basic.consume": (lambda c: c.basic_consume(other, lambda *a: None), "queue", other),
            "queue.purge": (lambda c: c.queue_purge(other), "queue", other),
            "queue.delete": (lambda c: c.queue_delete(other), "queue", other),
            # Write on the queue, read on the exchange: the queue is not theirs.
            "queue.bind": (lambda c: c.queue_bind(other, "amq.direct", "k"), "queue", other),
            # The default exchange is checked as amq.default.
            "basic.publish": (lambda c: c.basic_publish("", other, b"x") or c.basic_qos(prefetch_count=1),
                              "exchange", "amq.default"),
        }
        for method_name, (action, kind, resource) in denied.items():
            channel = connection.channel()
            code, text = refusal(lambda: action(channel))
            assert code == REFUSED, (method_name, code, text)
            assert text.startswith(f"ACCESS_REFUSED - access to {kind} '"), (method_name, text)
            if resource:
                assert text == (f"ACCESS_REFUSED - access to {kind} '{resource}' in vhost '/' "
                                f"refused for user '{name}'"), (method_name, text)
    finally:
        connection.close()


def test_topic_permissions_limit_routing_keys_on_topic_exchanges(secure_broker, user):
    name = user[0]
    set_permissions(secure_broker, name, ".*", ".*", ".*")
    answer = api(secure_broker, "PUT", f"/api/topic-permissions/%2F/{name}",
                 {"exchange": "amq.topic", "write": "^eu\\.", "read": "^eu\\."})
    assert answer.status == 201, answer.body
    assert api(secure_broker, "GET", f"/api/topic-permissions/%2F/{name}").body == [
        {"user": name, "vhost": "/", "exchange": "amq.topic", "write": "^eu\\.", "read": "^eu\\."}]
    queue = unique_name("topics")
    with connect(secure_broker, user) as connection:
        channel = connection.channel()
        channel.queue_declare(queue)
        channel.queue_bind(queue, "amq.topic", "eu.#")
        channel.basic_publish("amq.topic", "eu.sales", b"ok")
        channel.basic_qos(prefetch_count=1)  # a round trip: the publish was taken
        code, text = refusal(lambda: channel.basic_publish("amq.topic", "us.sales", b"no")
                             or channel.basic_qos(prefetch_count=1))
        assert (code, text) == (REFUSED, "ACCESS_REFUSED - write access to topic 'us.sales' in exchange "
                                         f"'amq.topic' in vhost '/' refused for user '{name}'")
        channel = connection.channel()
        code, text = refusal(lambda: channel.queue_bind(queue, "amq.topic", "us.#"))
        assert code == REFUSED and text.startswith("ACCESS_REFUSED - read access to topic 'us.#'"), text
        # Other exchanges are not limited by amq.topic's permission.
        channel = connection.channel()
        channel.basic_publish("amq.direct", "us.sales", b"fine")
        channel.basic_qos(prefetch_count=1)
        method, _, body = channel.basic_get(queue, auto_ack=True)
        assert body == b"ok"
    assert api(secure_broker, "DELETE", f"/api/topic-permissions/%2F/{name}").status == 204
    assert api(secure_broker, "GET", f"/api/topic-permissions/%2F/{name}").body == []


def test_permissions_change_live_and_go_with_their_user(secure_broker, user):
    name = user[0]
    set_permissions(secure_broker, name, ".*", ".*", ".*")
    connect(secure_broker, user).close()
    assert api(secure_broker, "GET", f"/api/permissions/%2F/{name}").body["write"] == ".*"
    assert api(secure_broker, "DELETE", f"/api/permissions/%2F/{name}").status == 204
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        connect(secure_broker, user)
    set_permissions(secure_broker, name, ".*", ".*", ".*")
    assert api(secure_broker, "DELETE", f"/api/users/{name}").status == 204
    assert not [p for p in api(secure_broker, "GET", "/api/permissions").body if p["user"] == name]
    # Re-added, the user starts with none.
    add_user(secure_broker, name, user[1], permissions=None)
    assert api(secure_broker, "GET", f"/api/users/{name}/permissions").body == []


def test_the_permissions_api_refuses_bad_input_and_non_administrators(secure_broker, user):
    name = user[0]
    bad = api(secure_broker, "PUT", f"/api/permissions/%2F/{name}",
              {"configure": "(unclosed", "write": ".*", "read": ".*"})
    assert bad.status == 400 and "regular expression" in bad.body["error"]["message"], bad.body
    assert api(secure_broker, "PUT", f"/api/permissions/no-such-vhost/{name}",
               {"configure": ".*", "write": ".*", "read": ".*"}).status == 400
    # RabbitMQ answers an unknown user with 400 (vhost_or_user_not_found).
    assert api(secure_broker, "PUT", "/api/permissions/%2F/nobody-at-all",
               {"configure": ".*", "write": ".*", "read": ".*"}).status == 400
    assert api(secure_broker, "GET", "/api/users/nobody-at-all/permissions").status == 404
    # rabbitmqadmin sends the vhost and user in the body too.
    answer = api(secure_broker, "PUT", f"/api/permissions/%2F/{name}",
                 {"vhost": "/", "user": name, "configure": "", "write": "", "read": ""})
    assert answer.status == 201, answer.body
    manager = unique_name("manager")
    add_user(secure_broker, manager, "Manag3r-pw", tags="management")
    as_manager = {"credentials": (manager, "Manag3r-pw")}
    assert api(secure_broker, "GET", "/api/permissions", **as_manager).status == 403
    assert api(secure_broker, "PUT", f"/api/permissions/%2F/{manager}",
               {"configure": ".*", "write": ".*", "read": ".*"}, **as_manager).status == 403


def test_permissions_survive_a_restart(own_broker):
    broker = own_broker()
    add_user(broker, "pat", "P4t-password", permissions={"configure": "^pat-", "write": "^pat-", "read": "^pat-"})
    broker.kill()
    broker.start()
    assert api(broker, "GET", "/api/permissions/%2F/pat").body == {
        "user": "pat", "vhost": "/", "configure": "^pat-", "write": "^pat-", "read": "^pat-"}
    with connect(broker, ("pat", "P4t-password")) as connection:
        channel = connection.channel()
        channel.queue_declare("pat-q")
        code, _ = refusal(lambda: channel.queue_declare("someone-elses"))
        assert code == REFUSED


def test_bindings_deletes_dead_letters_alternates_and_server_named_queues(secure_broker, user):
    name = user[0]
    prefix = unique_name("mine")
    # Everything on the user's own names, nothing else.
    set_permissions(secure_broker, name, f"^{prefix}", f"^{prefix}", f"^{prefix}")
    with connect(secure_broker, ("guest", "guest")) as admin:
        admin.channel().exchange_declare(f"{prefix}-theirs", "fanout")
        admin.channel().exchange_declare("not-" + prefix, "fanout")
    connection = connect(secure_broker, user)
    try:
        channel = connection.channel()
        queue, exchange = f"{prefix}-q", f"{prefix}-x"
        channel.queue_declare(queue)
        channel.exchange_declare(exchange, "fanout")
        cases = {
            # Read on the exchange is missing (amq.fanout is not theirs).
            "queue.bind": (lambda c: c.queue_bind(queue, "amq.fanout"), "exchange", "amq.fanout"),
            "queue.unbind": (lambda c: c.queue_unbind(queue, "amq.fanout"), "exchange", "amq.fanout"),
            # exchange.bind: write on the destination, read on the source.
            "exchange.bind (destination)": (lambda c: c.exchange_bind("not-" + prefix, exchange),
                                            "exchange", "not-" + prefix),
            "exchange.bind (source)": (lambda c: c.exchange_bind(exchange, "not-" + prefix),
                                       "exchange", "not-" + prefix),
            "exchange.delete": (lambda c: c.exchange_delete("not-" + prefix), "exchange", "not-" + prefix),
            "basic.publish": (lambda c: c.basic_publish("not-" + prefix, "", b"x") or c.basic_qos(prefetch_count=1),
                              "exchange", "not-" + prefix),
            # Dead letters: write on the exchange they go to.
            "queue.declare (dead letters)": (
                lambda c: c.queue_declare(f"{prefix}-dl", arguments={"x-dead-letter-exchange": "not-" + prefix}),
                "exchange", "not-" + prefix),
            # An alternate exchange: write on it.
            "exchange.declare (alternate)": (
                lambda c: c.exchange_declare(f"{prefix}-ae", "fanout", arguments={"alternate-exchange": "amq.fanout"}),
                "exchange", "amq.fanout"),
        }
        for method_name, (action, kind, resource) in cases.items():
            channel = connection.channel()
            code, text = refusal(lambda: action(channel))
            assert (code, text) == (REFUSED, f"ACCESS_REFUSED - access to {kind} '{resource}' in vhost '/' "
                                             f"refused for user '{name}'"), method_name
        # Their own exchange-to-exchange binding and dead-letter queue pass.
        channel = connection.channel()
        channel.exchange_bind(exchange, f"{prefix}-theirs")
        channel.queue_declare(f"{prefix}-dl", arguments={"x-dead-letter-exchange": exchange})
        # A server-named queue is checked by the name it gets, and is
        # not left behind when refused.
        code, text = refusal(lambda: channel.queue_declare("", exclusive=True))
        assert code == REFUSED and text.startswith("ACCESS_REFUSED - access to queue 'amq.gen-"), text
        generated = text.split("'")[1]
        assert api(secure_broker, "GET", f"/api/queues/%2F/{generated}").status == 404
    finally:
        connection.close()


def test_revoked_permissions_apply_to_an_open_connection(secure_broker, user):
    name = user[0]
    set_permissions(secure_broker, name, ".*", ".*", ".*")
    queue = unique_name("revoked")
    with connect(secure_broker, user) as connection:
        channel = connection.channel()
        channel.queue_declare(queue)
        channel.basic_publish("", queue, b"before")
        set_permissions(secure_broker, name, ".*", "^$", ".*")
        code, text = refusal(lambda: channel.basic_publish("", queue, b"after") or channel.basic_qos(prefetch_count=1))
        assert code == REFUSED and "amq.default" in text, text
