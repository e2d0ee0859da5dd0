"""The message browser's API over every partition of a topic: a bounded
scan with a cursor, and a case-insensitive search of keys, headers and
values (GET /api/topics/{topic}/messages).

Contract: docs/http.md (Messages of a topic).
"""

from __future__ import annotations

from api import call, get, ok


def produce(broker, topic, records):
    ok(call(broker, "POST", f"/api/topics/{topic}/messages", {"records": records}))


def test_browsing_all_partitions_pages_by_cursor(broker, name):
    ok(call(broker, "POST", "/api/topics", {"name": name, "partitions": 3}), 201)
    produce(broker, name, [{"partition": i % 3, "value": f"v{i}"} for i in range(30)])
    seen, cursor, pages = [], None, 0
    while pages < 50:  # 5 expected; bounded so a cursor that never ends fails
        path = f"/api/topics/{name}/messages?limit=7" + (f"&cursor={cursor}" if cursor else "")
        page = ok(get(broker, path))
        assert len(page["messages"]) <= 7
        seen += [(m["partition"], m["offset"], m["value"]) for m in page["messages"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 5
    assert sorted(seen) == sorted((i % 3, i // 3, f"v{i}") for i in range(30))
    only = ok(get(broker, f"/api/topics/{name}/messages?partition=2&limit=100"))
    assert {m["partition"] for m in only["messages"]} == {2} and len(only["messages"]) == 10
    assert [p["partition"] for p in only["positions"]] == [2]


def test_search_finds_keys_headers_and_values_in_every_partition(broker, name):
    ok(call(broker, "POST", "/api/topics", {"name": name, "partitions": 4}), 201)
    records = [{"partition": i % 4, "key": f"k{i}", "value": f"plain {i}"} for i in range(40)]
    records[5]["value"] = "has the NEEDLE inside"
    records[14]["key"] = "needle-key"
    records[27]["headers"] = [{"key": "trace", "value": "a-needle-b"}]
    records[38]["headers"] = [{"key": "Needle-Name", "value": None}]
    produce(broker, name, records)

    found = ok(get(broker, f"/api/topics/{name}/messages?search=needle"))
    assert sorted((m["partition"], m["offset"]) for m in found["messages"]) == \
        sorted((i % 4, i // 4) for i in (5, 14, 27, 38))
    assert found["scanned"] == 40 and found["next_cursor"] is None
    in_keys = ok(get(broker, f"/api/topics/{name}/messages?search=NEEDLE&in=key"))
    assert [m["key"] for m in in_keys["messages"]] == ["needle-key"]
    in_headers = ok(get(broker, f"/api/topics/{name}/messages?search=needle&in=headers"))
    assert len(in_headers["messages"]) == 2
    in_values = ok(get(broker, f"/api/topics/{name}/messages?search=needle&in=value,key"))
    assert len(in_values["messages"]) == 2

    bad = call(broker, "GET", f"/api/topics/{name}/messages?search=x&in=body")
    assert bad.status == 400 and bad.error["field"] == "in"
    assert call(broker, "GET", f"/api/topics/{name}/messages?partition=9").error["field"] == "partition"
    assert call(broker, "GET", f"/api/topics/{name}/messages?cursor=0:x").error["field"] == "cursor"
    assert call(broker, "GET", f"/api/topics/{name}/messages?max_scan=0").error["field"] == "max_scan"
    assert call(broker, "GET", f"/api/topics/{name}-absent/messages").status == 404


def test_a_search_scans_at_most_max_scan_records_per_request(broker, name):
    ok(call(broker, "POST", "/api/topics", {"name": name, "partitions": 2}), 201)
    produce(broker, name, [{"partition": i % 2, "value": "hay"} for i in range(5000)])
    produce(broker, name, [{"partition": 1, "value": "the needle"}])
    scanned, cursor, found, requests = 0, None, [], 0
    while requests < 60:  # 6 expected; bounded so a cursor that never ends fails
        path = f"/api/topics/{name}/messages?search=needle&max_scan=1000" + (f"&cursor={cursor}" if cursor else "")
        page = ok(get(broker, path))
        requests += 1
        assert page["scanned"] <= 1000
        scanned += page["scanned"]
        found += page["messages"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert requests == 6 and scanned == 5001
    assert [(m["partition"], m["offset"], m["value"]) for m in found] == [(1, 2500, "the needle")]
