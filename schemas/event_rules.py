"""The one rule set for touch events: what the gateway accepts, the worker decodes and
the query service takes as filters.

The gateway (``ingest_gateway.validation``) rejects a request that breaks any
rule; the worker's decoder (``schemas.touch_batch.decode_batch``) re-checks
the same rules on every Kafka message, because bytes on a topic can come from
anywhere. Both read the limits from here, so a request the gateway
acknowledges always decodes in the worker: an acknowledged event is never
dead-lettered (``tests/unit/test_ingest_invariant.py`` holds them to it).

Time window. An event's time must lie in ``[received - max_age, received +
24 h]`` (receive time of the request at the gateway; both ends included, in
milliseconds). Future times beyond 24 h are the contract's rule. The past
bound is ``HEATMAP_MAX_EVENT_AGE_S`` (default 30 days): long enough for a
phone that buffered its touches offline for weeks, short enough that one
request touches at most 3 monthly partitions (30 days + 24 h spans at most 3
calendar months), so a hostile or broken client cannot make one 500-event
request into 500 inserts and 500 new partitions. Older events are rejected
(INVALID_ARGUMENT naming each one), not clamped to the receive time: a
clamped touch would be counted in an hour it did not happen in, and the
hourly time filter would silently lie.

The worker checks the widest window any gateway may be configured with
(``MAX_EVENT_AGE_LIMIT_S``), not the gateway's own setting, so a change of
``HEATMAP_MAX_EVENT_AGE_S`` between gateway and worker deployments can never
dead-letter a batch that a gateway acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_EVENTS = 500
MAX_SCREEN_NAME = 200  # characters
MAX_CAMPAIGN_ID = 200  # characters
MAX_BATCH_ID = 128  # characters
MAX_USER_ID = 256  # characters: the bearer token's ``sub``
EVENT_TYPES = (1, 2, 3)  # TAP, SCROLL, ACTION_CLICK
EVENT_TYPE_NAMES = "TAP, SCROLL, ACTION_CLICK"
COORDINATE_MIN = 0.0  # x and y, both ends included
COORDINATE_MAX = 1.0

MAX_FUTURE_MS = 24 * 3600 * 1000
DEFAULT_MAX_EVENT_AGE_S = 30 * 24 * 3600
# The largest HEATMAP_MAX_EVENT_AGE_S accepted (a little over a year): at most
# 14 monthly partitions per request, and the window the worker's decoder allows.
MAX_EVENT_AGE_LIMIT_S = 400 * 24 * 3600
NANOS_PER_SECOND = 1_000_000_000
# Receive times a gateway can stamp: after 2020 and before ClickHouse
# DateTime's end (2106); anything else on the topic is not from a gateway.
MIN_RECEIVED_AT_MS = 1_577_836_800_000
MAX_RECEIVED_AT_MS = (2**32 - 1) * 1000 - MAX_FUTURE_MS


@dataclass(frozen=True)
class TimeWindow:
    """Event times a request received at ``received_at_ms`` may carry, in Unix ms."""

    received_at_ms: int
    max_age_s: int

    @property
    def earliest_ms(self) -> int:
        return max(0, self.received_at_ms - self.max_age_s * 1000)

    @property
    def latest_ms(self) -> int:
        return self.received_at_ms + MAX_FUTURE_MS

    def violation(self, timestamp_ms: int) -> str | None:
        """Why ``timestamp_ms`` is outside the window, or None if it is inside."""
        if timestamp_ms > self.latest_ms:
            return "more than 24 h in the future"
        if timestamp_ms < self.earliest_ms:
            return (
                f"older than {self.max_age_s} s before the receive time (HEATMAP_MAX_EVENT_AGE_S)"
            )
        return None
