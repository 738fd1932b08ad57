"""Exact erasure of one user's touch data, and its undo (docs/privacy.md).

``erase`` runs these steps; each one is idempotent and a rerun (after a
crash, SIGKILL included) resumes where the last run stopped:

1. Record the suppression (a new ``user_suppressions`` version), unless the
   user's current state is already an erase (then that erasure goes on).
2. Wait until every partition of the topic has a cut for that version and the
   consumer group has committed past it: from then on the per-user table holds
   exactly the user's events the all-users tables hold, and no more of them
   will ever be counted (the workers decide by the stored cuts).
3. Plan: how many events and per-user rows go (``user_erasures`` stage 1).
4. Negate: per all-users table and month, ONE insert of the user's cells
   (rolled up from the per-user table) with negated counts (UInt64 wraps, so a
   ``sum(events)`` over the remaining rows is the sum over the other users),
   plus a marker row naming the erasure, which tells a rerun it landed.
5. Delete the user's rows from the per-user table (a synchronous mutation).
6. Audit: one ``erasure_audit`` row (its presence means done) and a log line.

One erasure or un-erasure of a given user at a time: two concurrent runs for
the same user could both find a month's marker missing and negate it twice.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, TopicPartition

from heatmap.errors import FieldViolation, InvalidArgument, Unavailable
from heatmap.kafka_security import confluent_config
from heatmap.settings import KafkaSettings
from schemas.heatmap.v1 import heatmap_pb2

logger = logging.getLogger(__name__)
audit_logger = logging.getLogger("heatmap.audit")

PER_USER_TABLE = "touch_cells_by_user"
# all-users table -> (grid, cell type); rolled up from the 512 per-user grid.
ALL_USERS_TABLES: Mapping[str, tuple[int, str]] = {
    "touch_cells": (512, "UInt16"),
    "touch_cells_64": (64, "UInt8"),
}
ERASE, UNERASE = 1, 0
PLANNED, NEGATED = 1, 2
# Rows of one negation insert: it must stay one block (one atomic part).
MAX_NEGATION_ROWS = 900_000

# Committed offset of the consumer group per partition, and the partition count.
OffsetsReader = Callable[[], dict[int, int]]


def kafka_committed(settings: KafkaSettings, timeout_s: float = 10.0) -> OffsetsReader:
    """Reads the worker group's committed offset of every partition of the touch topic."""

    def read() -> dict[int, int]:
        consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap,
                "group.id": settings.consumer_group,
                "enable.auto.commit": False,
                **confluent_config(settings),
            }
        )
        try:
            topic = consumer.list_topics(settings.topic, timeout=timeout_s).topics[settings.topic]
            partitions = [TopicPartition(settings.topic, p) for p in sorted(topic.partitions)]
            found = consumer.committed(partitions, timeout=timeout_s)
            return {tp.partition: int(tp.offset) for tp in found}
        finally:
            consumer.close()

    return read


class ErasureError(RuntimeError):
    """The erasure cannot go on now (a message for the operator); rerun later."""


@dataclass(frozen=True)
class ErasureReport:
    user_id: str
    action: str  # erase | unerase | dry-run
    erasure_id: str
    events: int  # touch events removed (or that would be)
    rows_by_user: int
    outcome: str  # done | already done | not erased | would erase
    negated_rows: dict[str, int] = field(default_factory=dict)


def marker_campaign(erasure_id: str) -> str:
    return f"erase#{erasure_id}"


class Erasures:
    """Erase / un-erase users in the heatmap database of ``client``.

    ``committed``: reads the consumer group's committed offsets of the touch
    topic (every partition of it; a partition never committed is absent).
    """

    def __init__(
        self,
        client: Client,
        topic: str,
        committed: OffsetsReader,
        *,
        wait_timeout_s: float = 120.0,
        poll_s: float = 0.2,
    ) -> None:
        self._client = client
        self._topic = topic
        self._committed = committed
        self._wait_timeout_s = wait_timeout_s
        self._poll_s = poll_s

    # ------------------------------------------------------------------ API

    def erase(self, user_id: str, requested_by: str, *, dry_run: bool = False) -> ErasureReport:
        if not user_id:
            raise ValueError("user id is empty")
        if dry_run:
            events, rows = self._count(user_id)
            return ErasureReport(
                user_id, "dry-run", "", events, rows, "would erase" if rows else "nothing stored"
            )
        state = self._current(user_id)
        if state is None or state[1] != ERASE:
            self._record(user_id, ERASE, requested_by)
            state = self._current(user_id)
            assert state is not None
            logger.info("erasure %s: suppression version %d recorded", state[2], state[0])
        else:
            logger.info("erasure %s: resuming (suppression version %d)", state[2], state[0])
        seq, _, erasure_id, asked_by = state
        audited = self._audited(erasure_id)
        if audited is not None:
            return ErasureReport(user_id, "erase", erasure_id, audited, 0, "already done")
        self._wait_for_cuts(seq)
        logger.info("erasure %s: suppression in force on every partition", erasure_id)
        events, rows = self._plan(erasure_id, user_id)
        negated = self._negate(erasure_id, user_id)
        self._client.command(
            f"ALTER TABLE {PER_USER_TABLE} DELETE WHERE user_id = {{user:String}}",
            parameters={"user": user_id},
            settings={"mutations_sync": 2},
        )
        logger.info("erasure %s: per-user rows deleted", erasure_id)
        self._audit(erasure_id, user_id, "erase", asked_by or requested_by, events)
        return ErasureReport(user_id, "erase", erasure_id, events, rows, "done", negated)

    def unerase(self, user_id: str, requested_by: str) -> ErasureReport:
        """Stop suppressing the user's new events; what was erased stays erased."""
        state = self._current(user_id)
        if state is not None and state[1] == UNERASE and self._audited(state[2]) is None:
            self._audit(state[2], user_id, "unerase", state[3] or requested_by, 0)  # a rerun
            return ErasureReport(user_id, "unerase", state[2], 0, 0, "done")
        if state is None or state[1] != ERASE:
            return ErasureReport(user_id, "unerase", "", 0, 0, "not erased")
        if self._audited(state[2]) is None:
            raise ErasureError(
                f"the erasure of {user_id} has not completed: run erase-user again first"
            )
        self._record(user_id, UNERASE, requested_by)
        current = self._current(user_id)
        assert current is not None
        self._audit(current[2], user_id, "unerase", requested_by, 0)
        return ErasureReport(user_id, "unerase", current[2], 0, 0, "done")

    # ------------------------------------------------------------- the steps

    def _current(self, user_id: str) -> tuple[int, int, str, str] | None:
        """(seq, action, erasure_id, requested_by) of the user's latest request."""
        rows = self._client.query(
            "SELECT max(seq), argMax(action, (seq, erasure_id)), "
            "argMax(erasure_id, (seq, erasure_id)), argMax(requested_by, (seq, erasure_id)) "
            "FROM user_suppressions WHERE user_id = {user:String} HAVING count() > 0",
            parameters={"user": user_id},
        ).result_rows
        if not rows:
            return None
        seq, action, erasure_id, by = rows[0]
        return int(seq), int(action), str(erasure_id), str(by)

    def _record(self, user_id: str, action: int, requested_by: str) -> None:
        # Two concurrent requests may get the same seq: the tie-break on
        # erasure_id (argMax over (seq, erasure_id)) makes every reader agree.
        self._client.command(
            "INSERT INTO user_suppressions (seq, user_id, action, erasure_id, requested_by) "
            "SELECT (SELECT max(seq) FROM user_suppressions) + 1, {user:String}, "
            "{action:UInt8}, {id:String}, {by:String}",
            parameters={
                "user": user_id,
                "action": action,
                "id": uuid.uuid4().hex,
                "by": requested_by,
            },
        )

    def _audited(self, erasure_id: str) -> int | None:
        rows = self._client.query(
            "SELECT max(events) FROM erasure_audit WHERE erasure_id = {id:String} "
            "HAVING count() > 0",
            parameters={"id": erasure_id},
        ).result_rows
        return int(rows[0][0]) if rows else None

    def _wait_for_cuts(self, seq: int) -> None:
        """Until every partition's cut of ``seq`` is stored and committed past."""
        deadline = time.monotonic() + self._wait_timeout_s
        while True:
            committed = self._committed()
            rows = self._client.query(
                "SELECT kafka_partition, min(cut) FROM suppression_cuts "
                "WHERE topic = {topic:String} AND seq = {seq:UInt64} GROUP BY kafka_partition",
                parameters={"topic": self._topic, "seq": seq},
            ).result_rows
            cuts = {int(p): int(c) for p, c in rows}
            waiting = sorted(
                p
                for p, offset in committed.items()
                if p not in cuts or (cuts[p] >= 0 and offset <= cuts[p])
            )
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise ErasureError(
                    f"partitions {waiting} of {self._topic}: no worker has brought the "
                    "suppression into force and committed past it yet (are the workers "
                    "running?); the suppression is recorded, run the erasure again"
                )
            time.sleep(self._poll_s)

    def _count(self, user_id: str) -> tuple[int, int]:
        events, rows = self._client.query(
            f"SELECT sum(events), count() FROM {PER_USER_TABLE} "
            "WHERE user_id = {user:String} AND screen_name != ''",
            parameters={"user": user_id},
        ).result_rows[0]
        return int(events or 0), int(rows)

    def _plan(self, erasure_id: str, user_id: str) -> tuple[int, int]:
        rows = self._client.query(
            "SELECT events, rows_by_user FROM user_erasures "
            "WHERE erasure_id = {id:String} AND stage = 1 LIMIT 1",
            parameters={"id": erasure_id},
        ).result_rows
        if rows:
            return int(rows[0][0]), int(rows[0][1])
        events, count = self._count(user_id)
        self._stage(erasure_id, user_id, PLANNED, events, count)
        return events, count

    def _stage(self, erasure_id: str, user_id: str, stage: int, events: int, rows: int) -> None:
        self._client.command(
            "INSERT INTO user_erasures (erasure_id, user_id, stage, events, rows_by_user) "
            "VALUES ({id:String}, {user:String}, {stage:UInt8}, {events:UInt64}, {rows:UInt64})",
            parameters={
                "id": erasure_id,
                "user": user_id,
                "stage": stage,
                "events": events,
                "rows": rows,
            },
        )

    def _negate(self, erasure_id: str, user_id: str) -> dict[str, int]:
        done = self._client.query(
            "SELECT count() FROM user_erasures WHERE erasure_id = {id:String} AND stage = 2",
            parameters={"id": erasure_id},
        ).result_rows[0][0]
        if done:
            return {}
        months = [
            int(m)
            for (m,) in self._client.query(
                f"SELECT DISTINCT toYYYYMM(hour) FROM {PER_USER_TABLE} "
                "WHERE user_id = {user:String} AND screen_name != '' ORDER BY 1",
                parameters={"user": user_id},
            ).result_rows
        ]
        negated: dict[str, int] = {}
        for table, (grid, cell_type) in ALL_USERS_TABLES.items():
            for month in months:
                rows = self._negate_month(erasure_id, user_id, table, grid, cell_type, month)
                negated[table] = negated.get(table, 0) + rows
                logger.info("erasure %s: negated %s %d (%d rows)", erasure_id, table, month, rows)
        self._stage(erasure_id, user_id, NEGATED, 0, 0)
        return negated

    def _negate_month(
        self, erasure_id: str, user_id: str, table: str, grid: int, cell_type: str, month: int
    ) -> int:
        params = {
            "user": user_id,
            "month": month,
            "marker": marker_campaign(erasure_id),
            "div": 512 // grid,
        }
        landed = self._client.query(
            f"SELECT count() FROM {table} WHERE screen_name = '' "
            "AND campaign_id = {marker:String} AND toYYYYMM(hour) = {month:UInt32}",
            parameters=params,
        ).result_rows[0][0]
        if landed:
            return 0
        cells = (
            f"screen_name, campaign_id, event_type, hour, "
            f"to{cell_type}(intDiv(cell_x, {{div:UInt16}})) AS cx, "
            f"to{cell_type}(intDiv(cell_y, {{div:UInt16}})) AS cy"
        )
        source = (
            f"FROM {PER_USER_TABLE} WHERE user_id = {{user:String}} AND screen_name != '' "
            "AND toYYYYMM(hour) = {month:UInt32}"
        )
        rows = int(
            self._client.query(
                f"SELECT count() FROM (SELECT {cells} {source} GROUP BY ALL)", parameters=params
            ).result_rows[0][0]
        )
        if rows > MAX_NEGATION_ROWS:
            raise ErasureError(f"{rows} cells of one user in {table} {month}: above one block")
        # Rows and marker in ONE insert of one block into one partition: they
        # land together or not at all (the marker is what a rerun checks).
        self._client.command(
            f"INSERT INTO {table} "
            "(screen_name, campaign_id, event_type, hour, cell_x, cell_y, events, source_offset) "
            f"SELECT {cells}, toUInt64(-toInt64(sum(events))), toInt64(0) {source} "
            "GROUP BY screen_name, campaign_id, event_type, hour, cx, cy "
            "UNION ALL SELECT '', {marker:String}, toUInt8(0), "
            "toDateTime(toStartOfMonth(toDate(concat(toString({month:UInt32}), '01'))), 'UTC'), "
            f"to{cell_type}(0), to{cell_type}(0), toUInt64(0), toInt64(0)",
            parameters=params,
            settings={
                "max_threads": 1,
                "max_insert_threads": 1,
                "max_block_size": MAX_NEGATION_ROWS + 1,
                "min_insert_block_size_rows": MAX_NEGATION_ROWS + 1,
                "min_insert_block_size_bytes": 0,
                "optimize_on_insert": 0,
            },
        )
        return rows

    def _audit(self, erasure_id: str, user_id: str, action: str, by: str, events: int) -> None:
        if self._audited(erasure_id) is None:
            self._client.command(
                "INSERT INTO erasure_audit (erasure_id, user_id, action, requested_by, events) "
                "VALUES ({id:String}, {user:String}, {action:String}, {by:String}, "
                "{events:UInt64})",
                parameters={
                    "id": erasure_id,
                    "user": user_id,
                    "action": action,
                    "by": by,
                    "events": events,
                },
            )
        audit_logger.info(
            "%s user %s by %s: %d events (erasure %s)",
            action,
            user_id,
            by,
            events,
            erasure_id,
            extra={"erasure_id": erasure_id, "action": action, "events": events},
        )


def erase_user_data(
    client: Client,
    kafka: KafkaSettings,
    request: heatmap_pb2.EraseUserDataRequest,
    requested_by: str,
    wait_timeout_s: float = 120.0,
) -> heatmap_pb2.EraseUserDataResponse:
    """The EraseUserData RPC (blocking: run it in a thread)."""
    user = request.user_id
    if not user or len(user) > 256:
        raise InvalidArgument([FieldViolation("user_id", "1 to 256 characters")])
    erasures = Erasures(client, kafka.topic, kafka_committed(kafka), wait_timeout_s=wait_timeout_s)
    try:
        if request.undo:
            report = erasures.unerase(user, requested_by)
        else:
            report = erasures.erase(user, requested_by, dry_run=request.dry_run)
    except ErasureError as e:
        raise Unavailable(str(e)) from e
    return heatmap_pb2.EraseUserDataResponse(
        erasure_id=report.erasure_id,
        outcome=report.outcome,
        events=report.events,
        rows_by_user=report.rows_by_user,
    )
