"""The broker's users as stored metadata: added, changed and deleted
through the admin API and `sluice users` by administrators only, answered
without any password or key, surviving a kill -9; the configuration's
users a bootstrap taken once, on a data directory's first start, so a
deleted one stays deleted and a changed `amqp.users` password changes
nothing; and failed logins (AMQP, HTTP basic) refused, delayed and logged
once per source address, never with the password.

Logins are checked through every front-end that takes them: AMQP PLAIN
(pika), Kafka SASL (confluent-kafka) and HTTP basic.
"""

from __future__ import annotations

import json
import time

import pika
import pika.exceptions
from confluent_kafka import KafkaError

from support import (
    ADMIN,
    add_user,
    api,
    field,
    kafka_config,
    login_error,
    login_failures,
    sluice_users,
    unique_name,
    wait_for_log,
)

# What the API may show of a user; a salt, a stored or server key, or a
# password would be a leak.
USER_KEYS = {"name", "tags", "loopback_only", "mechanisms"}


def amqp_login(broker, user: str, password: str) -> bool:
    """Whether an AMQP connection as `user` opens (False: refused)."""
    parameters = pika.ConnectionParameters(
        host="127.0.0.1", port=broker.amqp_port, credentials=pika.PlainCredentials(user, password),
        connection_attempts=1, socket_timeout=10, stack_timeout=15)
    try:
        connection = pika.BlockingConnection(parameters)
    except pika.exceptions.ProbableAuthenticationError:
        return False
    connection.close()
    return True


def kafka_login(broker, user: str, password: str, mechanism: str = "SCRAM-SHA-512") -> bool:
    """Whether a SASL_PLAINTEXT login as `user` works (False: the client
    reported an authentication failure)."""
    error = login_error(kafka_config(broker, "SASL_PLAINTEXT", mechanism, (user, password)))
    assert error is None or error.code() == KafkaError._AUTHENTICATION, error
    return error is None


def http_status(broker, user: str, password: str) -> int:
    return api(broker, "GET", "/api/overview", credentials=(user, password)).status


# --- the admin API and the CLI -----------------------------------------------------


def test_only_administrators_manage_users(secure_broker):
    name = unique_name("monitor")
    add_user(secure_broker, name, "M0nitor-pass", tags="monitoring")
    as_monitor = {"credentials": (name, "M0nitor-pass")}
    assert api(secure_broker, "GET", "/api/overview", **as_monitor).status == 200
    assert api(secure_broker, "GET", "/api/users", **as_monitor).status == 403
    assert api(secure_broker, "GET", "/api/users/guest", **as_monitor).status == 403
    assert api(secure_broker, "PUT", f"/api/users/{name}", {"tags": "administrator"}, **as_monitor).status == 403
    assert api(secure_broker, "PUT", "/api/users/sneaky", {"password": "x1"}, **as_monitor).status == 403
    assert api(secure_broker, "DELETE", "/api/users/guest", **as_monitor).status == 403
    # A user may see itself, and nothing changed.
    own = api(secure_broker, "GET", f"/api/users/{name}", **as_monitor)
    assert own.status == 200 and own.body["tags"] == ["monitoring"], own.body
    assert api(secure_broker, "GET", "/api/users/sneaky").status == 404
    # The CLI as that user is refused the same way.
    refused = sluice_users(secure_broker, "list", user=(name, "M0nitor-pass"), check=False)
    assert refused.returncode != 0 and "administrator" in refused.stderr, refused


def test_tags_decide_what_a_user_may_do_through_the_api(secure_broker):
    # RabbitMQ's management tags: none, no API at all (the user still
    # logs in over AMQP and Kafka); management reads everything and
    # manages topics, queues and the like; cluster operations, users and
    # closing connections need administrator.
    plain, manager = unique_name("app"), unique_name("manager")
    add_user(secure_broker, plain, "App-only-pw")
    add_user(secure_broker, manager, "Manag3r-pw", tags="management")
    refused = api(secure_broker, "GET", "/api/overview", credentials=(plain, "App-only-pw"))
    assert refused.status == 403 and "tag" in refused.body["error"]["message"], refused.body
    assert amqp_login(secure_broker, plain, "App-only-pw")
    assert kafka_login(secure_broker, plain, "App-only-pw")

    as_manager = {"credentials": (manager, "Manag3r-pw")}
    assert api(secure_broker, "GET", "/api/overview", **as_manager).status == 200
    assert api(secure_broker, "GET", "/api/queues", **as_manager).status == 200
    topic = unique_name("managed")
    created = api(secure_broker, "POST", "/api/topics", {"name": topic, "partitions": 1}, **as_manager)
    assert created.status == 201, created.body
    assert api(secure_broker, "GET", f"/api/users/{manager}", **as_manager).status == 200
    for method, path, body in [
        ("GET", "/api/users", None),
        ("GET", "/api/users/guest", None),
        ("POST", "/api/cluster/elect-leaders", {}),
        ("DELETE", "/api/connections/1", None),
        ("POST", "/api/rebalance/queues", {}),
    ]:
        answer = api(secure_broker, method, path, body, **as_manager)
        assert answer.status == 403, (method, path, answer.status, answer.body)
    # The administrator may do what the manager may not.
    assert api(secure_broker, "GET", "/api/users").status == 200


def test_put_creates_then_changes_and_no_answer_carries_a_secret(secure_broker):
    name, first, second = unique_name("putter"), "F1rst-secret-pw", "S3cond-secret-pw"
    created = api(secure_broker, "PUT", f"/api/users/{name}",
                  {"password": first, "tags": ["policymaker", "monitoring"], "loopback_only": True})
    assert created.status == 201, created.body
    changed = api(secure_broker, "PUT", f"/api/users/{name}", {"password": second})
    assert changed.status == 204, changed.body
    retagged = api(secure_broker, "PUT", f"/api/users/{name}", {"tags": "management"})
    assert retagged.status == 204, retagged.body

    shown = api(secure_broker, "GET", f"/api/users/{name}")
    assert shown.body == {"name": name, "tags": ["management"], "loopback_only": True,
                          "mechanisms": ["SCRAM-SHA-256", "SCRAM-SHA-512"]}
    listed = api(secure_broker, "GET", "/api/users")
    assert listed.status == 200
    assert all(set(user) == USER_KEYS for user in listed.body), listed.body
    assert {ADMIN[0], "guest", name} <= {user["name"] for user in listed.body}
    for answer in (created, changed, retagged, shown, listed):
        for secret in (first, second, "salt", "stored_key", "server_key", "password"):
            assert secret not in answer.text, (secret, answer.text)

    # The change took: the new password logs in over HTTP and Kafka SASL.
    assert http_status(secure_broker, name, second) == 200
    assert kafka_login(secure_broker, name, second)
    assert api(secure_broker, "DELETE", f"/api/users/{name}").status == 204
    assert api(secure_broker, "DELETE", f"/api/users/{name}").status == 404


def test_the_cli_adds_lists_changes_and_deletes_users(secure_broker):
    name = unique_name("cli")
    done = sluice_users(secure_broker, "add", name, "--password", "Cl1-first", "--tags", "monitoring,management")
    assert done.stdout.strip() == f"added user {name}"
    again = sluice_users(secure_broker, "add", name, "--password", "Cl1-other", check=False)
    assert again.returncode != 0 and "already exists" in again.stderr

    listed = json.loads(sluice_users(secure_broker, "--output", "json", "list").stdout)
    (entry,) = [user for user in listed if user["name"] == name]
    assert entry == {"name": name, "tags": ["management", "monitoring"], "loopback_only": False,
                     "mechanisms": ["SCRAM-SHA-256", "SCRAM-SHA-512"]}
    table = sluice_users(secure_broker, "list").stdout
    assert name in table and "Cl1-first" not in table

    # The password from stdin, so it stays out of the process list.
    sluice_users(secure_broker, "passwd", name, stdin="Cl1-from-stdin\n")
    assert http_status(secure_broker, name, "Cl1-from-stdin") == 200
    assert kafka_login(secure_broker, name, "Cl1-from-stdin", mechanism="PLAIN")
    sluice_users(secure_broker, "tags", name, "administrator")
    # Now an administrator, the user may run the CLI itself.
    as_user = sluice_users(secure_broker, "--output", "json", "list", user=(name, "Cl1-from-stdin"))
    assert name in {user["name"] for user in json.loads(as_user.stdout)}

    sluice_users(secure_broker, "delete", name)
    assert api(secure_broker, "GET", f"/api/users/{name}").status == 404
    typo = sluice_users(secure_broker, "passwd", name, "--password", "x", check=False)
    assert typo.returncode != 0, "passwd created a user that did not exist"
    assert api(secure_broker, "GET", f"/api/users/{name}").status == 404


def test_a_wrong_password_over_http_is_401_and_logged_without_it(own_broker):
    broker = own_broker()
    add_user(broker, "olivia", "0livia-pass")
    mark = broker.log_size()
    assert http_status(broker, "olivia", "0livia-WRONG-guess") == 401
    (line,) = wait_for_log(broker, mark, r"login failed")
    assert " WARN " in line
    assert (field(line, "user"), field(line, "peer"), field(line, "via")) == ("olivia", "127.0.0.1", "http basic")
    assert "0livia-WRONG-guess" not in broker.log_text(0, tail_lines=None)
    # A request without credentials is a client's first step, not a failure.
    assert api(broker, "GET", "/api/overview", credentials=None).status == 401
    assert len(login_failures(broker, mark)) == 1


# --- restarts ----------------------------------------------------------------------


def test_users_survive_kill_9_and_a_deleted_config_user_stays_deleted(own_broker):
    broker = own_broker({"amqp.users": "guest:guest,alice:Al1ce-config-pw", "amqp.loopback_users": "guest"})
    assert amqp_login(broker, "alice", "Al1ce-config-pw")
    add_user(broker, "victor", "V1ctor-first", tags="management")
    sluice_users(broker, "passwd", "victor", "--password", "V1ctor-second")
    assert api(broker, "DELETE", "/api/users/alice").status == 204

    broker.kill()
    broker.start()

    assert amqp_login(broker, "victor", "V1ctor-second")
    assert kafka_login(broker, "victor", "V1ctor-second")
    assert kafka_login(broker, "victor", "V1ctor-second", mechanism="SCRAM-SHA-256")
    assert http_status(broker, "victor", "V1ctor-second") == 200
    # The configuration still names alice; the stored users do not.
    assert api(broker, "GET", "/api/users/alice").status == 404
    assert not amqp_login(broker, "alice", "Al1ce-config-pw")


def test_a_changed_config_password_does_not_change_the_stored_one(own_broker):
    broker = own_broker({"amqp.users": "guest:guest,bob:B0b-first-pw"})
    assert amqp_login(broker, "bob", "B0b-first-pw")
    broker.kill()
    broker.settings["amqp.users"] = "guest:guest,bob:B0b-second-pw,newbie:N3wbie-pw"
    broker.start()

    assert amqp_login(broker, "bob", "B0b-first-pw")
    assert http_status(broker, "bob", "B0b-first-pw") == 200
    assert not amqp_login(broker, "bob", "B0b-second-pw")
    # Nor is a user the configuration added later taken.
    assert api(broker, "GET", "/api/users/newbie").status == 404


# --- failed AMQP logins ------------------------------------------------------------


def test_a_burst_of_failed_amqp_logins_is_delayed_and_logged_once(own_broker):
    broker = own_broker()
    add_user(broker, "walter", "W4lter-pass")
    mark = broker.log_size()
    took = []
    for _ in range(5):
        started = time.monotonic()
        assert not amqp_login(broker, "walter", "Wr0ng-w4lter-guess")
        took.append(time.monotonic() - started)

    # One warning for the burst (each address is logged at most every
    # 10 s), naming the user and the first failure of the minute.
    (line,) = login_failures(broker, mark)
    assert field(line, "user") == "walter"
    assert field(line, "via") == "amqp PLAIN"
    assert field(line, "peer") == "127.0.0.1"
    assert field(line, "failures_in_last_minute") == "1"
    assert "Wr0ng-w4lter-guess" not in broker.log_text(0, tail_lines=None)
    # Each refusal waits 100 ms more than the one before (the fifth at
    # least 500 ms). Only a lower bound is checked: a slow machine makes
    # refusals slower, never faster.
    assert took[-1] >= 0.45, took
    # No lockout: the right password still opens a connection.
    assert amqp_login(broker, "walter", "W4lter-pass")
