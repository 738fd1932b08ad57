"""``heatmap loadgen``'s requests (never the same bytes twice from one device) and its summary.

The gateway counts a request without ``batch_id`` whose events all carry a
timestamp once per (user, request bytes) - its implicit idempotency key - so
a load that cycled through a pool of requests would be acknowledged in full
and counted in part.
"""

from __future__ import annotations

import json
from collections import Counter

from heatmap_devtools.fleet import Fleet, FleetSpec
from heatmap_devtools.loadgen import CUT_AT_STOP, DistinctRequests, LoadReport, build_requests
from ingest_gateway.columns import canonical
from ingest_gateway.validation import implicit_batch_id, parse
from schemas.heatmap.v1 import heatmap_pb2

TEMPLATES = 8
BATCH = 20
DEVICES = 5  # loadgen sends request k from device k % devices


def templates() -> list[bytes]:
    return build_requests(Fleet(FleetSpec(users=50, seed=3)), TEMPLATES, BATCH)


def test_implicit_keys_never_repeat_over_many_cycles_of_templates_and_devices() -> None:
    requests = DistinctRequests(templates())
    keys = [implicit_batch_id(f"device-{k % DEVICES}", requests[k]) for k in range(400)]
    assert len(set(keys)) == len(keys)


def test_cycling_the_pool_itself_would_repeat_keys() -> None:
    # The reference: what loadgen sent before (requests[k % n] from device k % d).
    pool = templates()
    keys = [implicit_batch_id(f"device-{k % DEVICES}", pool[k % TEMPLATES]) for k in range(400)]
    assert len(set(keys)) == TEMPLATES * DEVICES  # lcm(8, 5): the rest are "retries"


def test_request_k_is_its_template_with_the_last_timestamp_moved_k_div_n_ms() -> None:
    pool = templates()
    requests = DistinctRequests(pool)
    assert [requests[k] for k in range(TEMPLATES)] == pool
    for k in (TEMPLATES + 3, 5 * TEMPLATES + 1, 10**6 + 7):
        template = heatmap_pb2.IngestTouchEventsRequest.FromString(pool[k % TEMPLATES])
        got = heatmap_pb2.IngestTouchEventsRequest.FromString(requests[k])
        assert len(got.events) == BATCH
        assert list(got.events)[:-1] == list(template.events)[:-1]
        moved = got.events[-1].timestamp.ToMilliseconds()
        assert moved - template.events[-1].timestamp.ToMilliseconds() == k // TEMPLATES
        got.events[-1].timestamp.CopyFrom(template.events[-1].timestamp)
        assert got == template
        assert requests.screen_counts(k) == Counter(e.screen_name for e in template.events)


def test_requests_take_the_gateways_fast_path_with_and_without_batch_id() -> None:
    requests = DistinctRequests(templates())
    for k in (1, 2 * TEMPLATES + 5):
        plain = requests[k]
        with_id = plain + heatmap_pb2.IngestTouchEventsRequest(batch_id="b").SerializeToString()
        for data in (plain, with_id):
            assert canonical(data, parse(data))
        assert parse(with_id).batch_id == "b"


def test_the_summary_is_one_json_line_and_the_table_has_every_figure() -> None:
    report = LoadReport(
        batch_size=BATCH,
        offered_requests=100,
        sent_requests=60,
        accepted_requests=50,
        accepted_events=50 * BATCH,
        rejected=Counter({"RESOURCE_EXHAUSTED": 4, "UNAUTHENTICATED": 1}),
        failed=Counter({"UNAVAILABLE": 2, CUT_AT_STOP: 3}),
        latencies_s=[0.010, 0.020, 0.030],
        duration_s=2.0,
        elapsed_s=2.5,
    )
    line = report.summary()
    assert "\n" not in line
    summary = json.loads(line)
    assert summary["offered_events"] == 100 * BATCH
    assert summary["sent_events"] == 60 * BATCH
    assert summary["unsent_requests"] == 40
    assert summary["accepted_events"] == 50 * BATCH
    assert summary["accepted_events_per_s"] == 50 * BATCH / 2.5
    assert summary["rejected"] == {"RESOURCE_EXHAUSTED": 4, "UNAUTHENTICATED": 1}
    assert summary["failed"] == {CUT_AT_STOP: 3, "UNAVAILABLE": 2}
    assert summary["latency_ms"]["p50"] == 20.0
    table = report.table()
    for figure in (
        "offered",
        "100",
        "1,000",
        "sent",
        "60",
        "accepted",
        "50",
        "RESOURCE_EXHAUSTED 4",
    ):
        assert figure in table
    assert f"{CUT_AT_STOP} 3" in table
    assert "--duration of 2 s" in table
