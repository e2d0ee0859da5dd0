"""Chart history and group views of the admin API: the hour of rates and
lag the broker keeps (GET /api/overview/history, /api/groups/{group}/lag-history),
internal groups left out on request, and a topic's consumer groups.

Contract: docs/http.md (Overview, Consumer groups, Topics).
"""

from __future__ import annotations

from api import call, get, ok
from common.broker import wait_until


def test_the_broker_keeps_rate_and_lag_points_every_five_seconds(broker, name):
    ok(call(broker, "POST", "/api/topics", {"name": name}), 201)
    ok(call(broker, "POST", f"/api/topics/{name}/messages", {"records": [{"value": "x"}] * 7}))
    ok(call(broker, "POST", f"/api/groups/{name}-g/reset-offsets", {"topic": name, "to": "earliest"}))

    def kept():
        lag = ok(get(broker, f"/api/groups/{name}-g/lag-history"))["points"]
        return len(lag) >= 2 and lag

    lag = wait_until(kept, timeout=20, what="two lag points")
    assert all(p["lag"] == 7 for p in lag)
    assert all(b["t"] - a["t"] >= 4900 for a, b in zip(lag, lag[1:]))
    overview = ok(get(broker, "/api/overview/history"))
    assert (overview["interval_ms"], overview["capacity"]) == (5000, 720)
    assert set(overview["points"][-1]["rates"]) == {
        "kafka_records_in", "kafka_bytes_in", "kafka_records_out", "kafka_bytes_out",
        "amqp_publish", "amqp_deliver", "amqp_ack"}
    newest = overview["points"][-1]["t"]
    assert ok(get(broker, f"/api/overview/history?since={newest}"))["points"] == []
    assert get(broker, f"/api/groups/{name}-absent/lag-history").status == 404


def test_internal_groups_can_be_left_out_and_topics_list_their_groups(broker, name):
    ok(call(broker, "POST", "/api/topics", {"name": name, "partitions": 2,
                                             "configs": {"sluice.forward.exchange": "amq.fanout"}}), 201)
    ok(call(broker, "POST", f"/api/topics/{name}/messages", {"records": [{"partition": 0, "value": "x"}] * 3}))
    ok(call(broker, "POST", f"/api/groups/{name}-reader/reset-offsets",
            {"topic": name, "partitions": [0], "to": "earliest"}))
    forwarder = "__sluice_forward:/:amq.fanout"

    def listed():
        items = ok(get(broker, "/api/groups?page_size=1000"))["items"]
        return any(g["group_id"] == forwarder for g in items) and items

    items = wait_until(listed, timeout=15, what="the forwarder group")
    assert next(g for g in items if g["group_id"] == forwarder)["internal"] is True
    assert next(g for g in items if g["group_id"] == f"{name}-reader")["internal"] is False
    visible = ok(get(broker, "/api/groups?internal=false&page_size=1000"))["items"]
    assert forwarder not in [g["group_id"] for g in visible] and f"{name}-reader" in [g["group_id"] for g in visible]

    groups = ok(get(broker, f"/api/topics/{name}/groups"))
    reader = next(g for g in groups["items"] if g["group_id"] == f"{name}-reader")
    assert (reader["partitions_committed"], reader["lag"], reader["internal"]) == (1, 3, False)
    assert forwarder in [g["group_id"] for g in groups["items"]]
    only_users = ok(get(broker, f"/api/topics/{name}/groups?internal=false"))
    assert [g["group_id"] for g in only_users["items"]] == [f"{name}-reader"]
    assert get(broker, f"/api/topics/{name}-absent/groups").status == 404
