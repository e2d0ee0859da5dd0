"""The soak run's short version (soak.py holds the workload; its 30-minute
run is one command, see RELIABILITY.md): 60 s of both protocols with
rebalancing groups, TTL and dead-lettering and retention, then no client or
broker error and no growth of memory, descriptors or threads."""

from __future__ import annotations

import json

import soak


def test_a_minute_of_mixed_load_leaves_no_errors_and_no_growth(own_broker):
    with own_broker({"log.retention_check_interval": "1s", "log.segment_bytes": "64KiB"}) as broker:
        report = soak.run(broker, 60)
        print("\nsoak:", json.dumps(report))
        assert report["passed"], json.dumps(report, indent=2)
        assert report["counts"]["rebalances"] >= 3
