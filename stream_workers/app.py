"""The Faust app, its agent, and ``Worker``: the stream worker as a ``heatmap.serve`` component.

No app exists at import time: ``create_app(settings)`` builds one and
``register_agents`` attaches the single agent (concurrency 1, so each
partition's records are flushed in offset order). The agent takes up to
``take_messages`` records or ``flush_interval_s`` seconds with
``noack_take``, hands them to ``Processor.process`` and acks them only after
it returned, i.e. after the flush is durably in ClickHouse. Faust commits
acked offsets every ``COMMIT_INTERVAL_S``; a crash between flush and commit
replays records that the offset watermarks in ClickHouse then drop.

``Worker.start`` starts the Faust app as a mode service inside the running
event loop (it does not take over the loop or the signals), so ``heatmap dev``
can run it beside gRPC services. ``Worker.stop`` stops the app: the consumer
waits until every delivered record is acked (the agent flushes its buffer),
commits, and leaves the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import faust
import grpc
import mode
from clickhouse_connect.driver.client import Client
from prometheus_client import CollectorRegistry

from heatmap.clickhouse import connect
from heatmap.kafka_admin import ensure_topics
from heatmap.kafka_security import faust_credentials
from heatmap.settings import Settings
from stream_workers.dead_letters import DeadLetterTopic
from stream_workers.metrics import WorkerMetrics
from stream_workers.processor import Fenced, FlushAbandoned, Prepared, Processor, RawRecord
from stream_workers.sink import CellStore, ClickHouseCellStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaustTuning:
    """Consumer-group timings. A flush (``flush_interval_s`` + insert time) must stay well
    under ``rebalance_timeout_s``: a revoke waits for the in-flight flush."""

    session_timeout_s: float = 10.0
    heartbeat_interval_s: float = 1.0
    rebalance_timeout_s: float = 30.0
    commit_interval_s: float = 0.5
    max_poll_interval_s: float = 120.0
    max_fetch_bytes_per_partition: int = 8 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> FaustTuning:
        worker = settings.worker
        return cls(
            session_timeout_s=worker.session_timeout_s,
            rebalance_timeout_s=worker.rebalance_timeout_s,
            commit_interval_s=worker.commit_interval_s,
        )


def take_messages(settings: Settings) -> int:
    """Records per ``noack_take``: about ``flush_max_cells`` events of 500-event batches."""
    return max(16, settings.worker.flush_max_cells // 500)


def create_app(settings: Settings, data_dir: Path, tuning: FaustTuning | None = None) -> faust.App:
    bootstrap = settings.require_kafka()
    tuning = tuning or FaustTuning.from_settings(settings)
    return faust.App(
        settings.kafka.consumer_group,
        broker=[f"kafka://{host.strip()}" for host in bootstrap.split(",")],
        # TLS/SASL for the consumer and the producer (dead letters) alike.
        broker_credentials=faust_credentials(settings.kafka),
        datadir=str(data_dir),
        web_enabled=False,
        table_standby_replicas=0,
        topic_partitions=settings.kafka.partitions,
        topic_replication_factor=settings.kafka.replication,
        topic_allow_declare=False,
        topic_disable_leader=True,  # no leader election needed: no tables, round-robin assignor
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=tuning.session_timeout_s,
        broker_heartbeat_interval=tuning.heartbeat_interval_s,
        broker_rebalance_timeout=tuning.rebalance_timeout_s,
        broker_request_timeout=max(40.0, tuning.session_timeout_s + 5),
        broker_commit_interval=tuning.commit_interval_s,
        broker_max_poll_interval=tuning.max_poll_interval_s,
        consumer_max_fetch_size=tuning.max_fetch_bytes_per_partition,
        stream_wait_empty=True,
        stream_recovery_delay=0.0,
        agent_supervisor=mode.CrashingSupervisor,
        producer_acks=-1,
    )


def register_agents(app: faust.App, settings: Settings, processor: Processor) -> Any:
    """The single agent: ``noack_take`` batches, pipelined two deep.

    While batch N is being inserted (a background task that acks N's records
    once every insert succeeded), batch N+1 is decoded and aggregated; N+1's
    inserts start only after N's finished, so per partition the inserts and
    acks stay in offset order. On a rebalance or stop Faust waits until every
    delivered record is acked, which includes both stages.
    """
    topic = app.topic(settings.kafka.topic, value_serializer="raw", key_serializer="raw")
    batch_size = take_messages(settings)
    within = settings.worker.flush_interval_s

    async def store_and_ack(stream: Any, prepared: Prepared, events: Sequence[Any]) -> None:
        await processor.store(prepared)
        for event in events:
            await stream.ack(event)

    crash_tasks: set[asyncio.Future[None]] = set()

    def crash_on_error(task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, Fenced):
            logger.error("fenced, stopping this worker (restarted, it rejoins fresh): %s", error)
            crash_tasks.add(asyncio.ensure_future(app.crash(error)))
        elif error is not None and not isinstance(error, FlushAbandoned):
            logger.error("flush failed unexpectedly: %r", error, exc_info=error)
            crash_tasks.add(asyncio.ensure_future(app.crash(error)))

    async def aggregate_touch_batches(stream: Any) -> None:
        in_flight: asyncio.Task[None] | None = None
        try:
            async for events in stream.noack_take(batch_size, within=within):
                raw = [
                    RawRecord(e.message.partition, e.message.offset, e.message.value)
                    for e in events
                ]
                prepared = await processor.prepare(raw)
                if in_flight is not None:
                    await in_flight
                in_flight = asyncio.create_task(store_and_ack(stream, prepared, events))
                in_flight.add_done_callback(crash_on_error)
        except FlushAbandoned as e:
            logger.warning("stopping with an unflushed batch (replayed on restart): %s", e)
        finally:
            if in_flight is not None and not in_flight.done():
                with contextlib.suppress(FlushAbandoned, asyncio.CancelledError):
                    await asyncio.shield(in_flight)

    return app.agent(topic, name="aggregate_touch_batches", concurrency=1)(aggregate_touch_batches)


def committed_offsets(consumer: Any) -> dict[Any, int]:
    """The group's committed offset (the next one to read) per partition, as Faust knows it.

    Faust sets it when it seeks to the committed offsets after an assignment
    and on each of its commits; it has no public accessor, hence the
    attribute read (a missing one only drops the fallback, not the metric).
    """
    known = getattr(consumer, "_committed_offset", None) or {}
    return {tp: int(o) for tp, o in dict(known).items() if o is not None}


class Worker:
    """The stream worker as a ``heatmap.serve.Component``."""

    name = "worker"

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry,
        clickhouse_client: Client | None = None,
        *,
        tuning: FaustTuning | None = None,
        wrap_store: Callable[[CellStore], CellStore] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = WorkerMetrics(registry)
        self.tuning = tuning or FaustTuning.from_settings(settings)
        self._client = clickhouse_client
        self._owns_client = clickhouse_client is None
        self._insert_clients: list[Client] = []
        # A seam around the store (tests inject stalls into the insert path).
        self._wrap_store = wrap_store
        self._app: faust.App | None = None
        self._processor: Processor | None = None
        self._data_dir: Path | None = None
        self._owns_data_dir = False
        self._joined = False
        self._lag_task: asyncio.Task[None] | None = None
        self._lag_series: set[int] = set()
        self.lag_interval_s = 2.0
        self._suppression_task: asyncio.Task[None] | None = None
        self._assigned: set[int] = set()
        # How soon an idle partition brings a new suppression version into
        # force (an erasure waits for every partition).
        self.suppression_interval_s = 1.0

    @property
    def app(self) -> faust.App:
        if self._app is None:
            raise RuntimeError("worker not started")
        return self._app

    @property
    def processor(self) -> Processor:
        if self._processor is None:
            raise RuntimeError("worker not started")
        return self._processor

    async def start(self) -> None:
        settings = self.settings
        settings.require_kafka()
        await asyncio.to_thread(ensure_topics, settings.kafka)
        if self._client is None:
            self._client = await asyncio.to_thread(connect, settings.clickhouse)
        if settings.data_dir is not None:
            self._data_dir = settings.data_dir / "worker"
            self._data_dir.mkdir(parents=True, exist_ok=True)
        else:
            self._data_dir = Path(tempfile.mkdtemp(prefix="heatmap-worker-"))
            self._owns_data_dir = True
        app = create_app(settings, self._data_dir, self.tuning)
        self._app = app
        dead_letters = DeadLetterTopic(app, settings.kafka.topic, settings.kafka.dlq_topic)
        # Inserts side by side need a connection each; the first is the worker's own.
        self._insert_clients = [
            await asyncio.to_thread(connect, settings.clickhouse)
            for _ in range(settings.worker.insert_concurrency - 1)
        ]
        clickhouse_store = ClickHouseCellStore(
            self._client, insert_clients=[self._client, *self._insert_clients]
        )
        store: CellStore = clickhouse_store
        if self._wrap_store is not None:
            store = self._wrap_store(store)
        self._processor = Processor(
            store,
            settings.kafka.topic,
            self.metrics,
            dead_letters,
            chunk_events=settings.worker.flush_max_cells,
            retry_max_s=settings.worker.clickhouse_retry_max_s,
            ledger_entries=settings.worker.ledger_memory_entries,
            ledger_filter_bytes=settings.worker.ledger_filter_mb << 20,
            suppressions=clickhouse_store,
            insert_concurrency=settings.worker.insert_concurrency,
        )
        register_agents(app, settings, self._processor)
        app.on_partitions_revoked.connect(cast(Any, self._on_revoked))
        app.on_partitions_assigned.connect(cast(Any, self._on_assigned))
        await app.start()
        self._lag_task = asyncio.create_task(self._watch_lag())
        self._suppression_task = asyncio.create_task(self._watch_suppressions())
        logger.info(
            "worker started: topic %s, group %s",
            settings.kafka.topic,
            settings.kafka.consumer_group,
        )

    async def _on_revoked(self, app: Any, *args: Any, **kwargs: Any) -> None:
        revoked = args[0] if args else kwargs.get("revoked", set())
        # Faust has already waited for the agent to flush and ack everything
        # delivered, and committed: forget the partitions' state.
        if self._processor is not None:
            self._processor.reset()
        gone = sorted(tp.partition for tp in revoked if tp.topic == self.settings.kafka.topic)
        self._keep_lag_series(set())  # until the new assignment, this worker owns nothing
        self._assigned = set()
        logger.info("partitions revoked: %s", gone)

    async def _on_assigned(self, app: Any, *args: Any, **kwargs: Any) -> None:
        assigned = args[0] if args else kwargs.get("assigned", set())
        if self._processor is not None:
            self._processor.reset()
        mine = sorted(tp.partition for tp in assigned if tp.topic == self.settings.kafka.topic)
        self.metrics.assigned_partitions.set(len(mine))
        self._keep_lag_series(set(mine))
        self._assigned = set(mine)
        self._joined = True
        logger.info("partitions assigned: %s", mine)

    def _keep_lag_series(self, partitions: set[int]) -> None:
        """Drop the lag series of every partition this worker no longer owns.

        Another worker reports those now; a stale series would count their
        lag twice in any sum over the fleet.
        """
        for partition in set(self._lag_series) - partitions:
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(str(partition))
            self._lag_series.discard(partition)

    async def _watch_lag(self) -> None:
        while True:
            await asyncio.sleep(self.lag_interval_s)
            with contextlib.suppress(Exception):
                self.report_lag()

    async def _watch_suppressions(self) -> None:
        while True:
            await asyncio.sleep(self.suppression_interval_s)
            if not self._assigned or self._processor is None:
                continue
            try:
                await self._processor.refresh_idle(sorted(self._assigned))
            except Fenced as e:  # lost a partition meanwhile: the next rebalance resets us
                logger.info("idle suppression refresh fenced: %s", e)
            except FlushAbandoned:
                return
            except Exception as e:
                logger.warning("idle suppression refresh failed: %s", e)

    def report_lag(self) -> None:
        """``heatmap_worker_consumer_lag{partition}`` for each partition assigned now.

        Lag = partition end - the next offset this group still has to store:
        the offset after this worker's last flush of the partition, or, before
        its first flush since the assignment, the group's committed offset
        (an idle partition whose records were all stored has lag 0).
        """
        consumer = self.app.consumer
        assigned = {
            tp.partition: tp
            for tp in consumer.assignment()
            if tp.topic == self.settings.kafka.topic
        }
        self._keep_lag_series(set(assigned))
        committed = committed_offsets(consumer)
        for partition, tp in assigned.items():
            end = consumer.highwater(tp)
            if end is None:
                continue
            done = self.processor.flushed_offsets.get(partition, -1) + 1
            start = committed.get(tp)
            nxt = max(done, start or 0)
            self.metrics.consumer_lag.labels(partition=str(partition)).set(max(0, int(end) - nxt))
            self._lag_series.add(partition)

    def handlers(self) -> Sequence[grpc.GenericRpcHandler]:
        return []

    def healthy(self) -> bool:
        if self._app is None or self._processor is None or not self._joined:
            return False
        if self._app.should_stop or self._app.crashed:
            return False
        return self._processor.failing_for() <= max(
            60.0, self.settings.worker.clickhouse_retry_max_s
        )

    def crashed(self) -> bool:
        return self._app is not None and bool(self._app.crashed)

    async def stop(self) -> None:
        started = time.monotonic()
        for task in (self._lag_task, self._suppression_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._keep_lag_series(set())  # a stopped worker owns no partition
        if self._app is not None:
            processor = self._processor
            give_up = None
            if processor is not None:
                if processor.failing_since is not None:
                    processor.stop()  # ClickHouse is failing: do not block shutdown
                else:  # or if it starts failing during the final flush
                    give_up = asyncio.get_running_loop().call_later(
                        self.settings.server.shutdown_grace_s, processor.stop
                    )
            try:
                await self._app.stop()
            finally:
                if give_up is not None:
                    give_up.cancel()
        for client in self._insert_clients:
            client.close()
        self._insert_clients = []
        if self._owns_client and self._client is not None:
            self._client.close()
        self._client = None if self._owns_client else self._client
        if self._owns_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
        logger.info("worker stopped in %.1fs", time.monotonic() - started)
