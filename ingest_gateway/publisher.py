"""Publishing touch batches to Kafka: the ``EventPublisher`` seam and its Kafka implementation.

``KafkaPublisher.publish`` produces one message and returns only once the
broker acknowledged it (``acks=all``). Delivery reports are served on the
event loop itself: while messages are outstanding, a pump task calls
``producer.poll(0)`` every ``poll_interval_s`` (1 ms) and the delivery
callbacks resolve the callers' futures directly. A poll *thread* was measured
against this (``bench/gateway.md``): it cost ~6 % of the gateway's
throughput (the thread takes the GIL for every batch of reports and wakes
the loop through its self-pipe) for no better latency. With nothing
outstanding the pump stops, so an idle gateway does not spin.

Failure modes map to retryable codes:

* the local queue is full (``BufferError``): ``ResourceExhausted``. The queue
  is bounded by ``producer_queue_max_messages`` / ``_kbytes``, so a slow or
  absent broker makes the gateway push back instead of growing without bound;
* delivery failed, or no report within ``publish_timeout_s``: ``Unavailable``,
  whose message says "not stored" where librdkafka knows the message never
  left the client, else that it may have been stored and the same request
  should be resent;
  ``message.timeout.ms`` equals the publish timeout, so librdkafka gives up
  on the message at about the time the caller is told to retry; a message it
  still delivers later is a duplicate that the worker drops by batch id when
  the client sent one.

Producer configuration and why:

* ``enable.idempotence=true`` (implies ``acks=all``, in-order retries, at most
  5 in flight per partition): broker-side retries never duplicate or reorder
  a message, which keeps one user's batches ordered on their partition;
* ``acks=all``: the contract's durability promise;
* ``compression.type`` from settings (lz4 by default: cheap to compress, the
  columnar batches shrink ~3x);
* ``linger.ms=2``: batches concurrent requests into one produce request
  (less broker CPU per message) for 2 ms of latency; measured on this
  machine with 9 KB batches at 340 msg/s, linger 1-2 ms gave p99 ~7-15 ms
  and 5 ms gave p99 ~20-50 ms (p50 ~6 ms), so 2 it is;
* ``socket.nagle.disable=true``: acks=all round trips are latency-bound,
  Nagle's algorithm only delays them;
* ``partitioner=murmur2_random``: the Java client's key hashing, so any
  producer (Java, aiokafka) puts a user's batches on the same partition;
* ``socket.keepalive.enable``, ``reconnect.backoff.max.ms=1000``: a broker
  that comes back is found again within a second;
* TLS and SASL keys from ``heatmap.kafka_security`` (the same settings the
  worker and the topic admin use).

Health: the publisher is healthy once the broker answered a metadata request
for the topic (which must exist: the gateway does not create topics, that is
``heatmap dev``'s or the operator's job, so a typo in ``HEATMAP_KAFKA_TOPIC``
shows as NOT_SERVING instead of a silently auto-created topic). A failed
delivery or "all brokers down" marks it unhealthy; a background probe or the
next successful delivery marks it healthy again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Producer

from heatmap.errors import ResourceExhausted, Unavailable
from heatmap.kafka_security import confluent_config
from heatmap.settings import KafkaSettings

logger = logging.getLogger(__name__)

FORMAT_HEADER = ("format", b"touch_batch.v1")
# librdkafka's errors for a message that never left the client (its
# NOT_PERSISTED status; the Python client does not expose the status itself).
# Any other failure, a timeout above all, may have reached the broker.
_NOT_PERSISTED = frozenset(
    {KafkaError._PURGE_QUEUE, KafkaError._QUEUE_FULL, KafkaError.MSG_SIZE_TOO_LARGE}
)
_MAYBE = (
    "it may have been stored: resend the same request (deduplicated by batch_id, "
    "or by its bytes when every event has a timestamp)"
)


class EventPublisher(Protocol):
    """Where accepted batches go; ``publish`` returns once they are durable."""

    async def start(self) -> None: ...

    async def publish(self, key: bytes, value: bytes, timeout_s: float | None = None) -> None:
        """Durably publish one message within ``timeout_s`` (default: the configured
        publish timeout), or raise ``Unavailable``/``ResourceExhausted``."""
        ...

    def healthy(self) -> bool: ...

    async def stop(self) -> None:
        """Flush what is queued (bounded), then close."""
        ...


def producer_config(settings: KafkaSettings) -> dict[str, Any]:
    if not settings.bootstrap:
        raise ValueError("Kafka bootstrap is not configured")
    return {
        "bootstrap.servers": settings.bootstrap,
        "client.id": "heatmap-gateway",
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": settings.compression,
        "linger.ms": 2,
        "socket.nagle.disable": True,
        "partitioner": "murmur2_random",
        "queue.buffering.max.messages": settings.producer_queue_max_messages,
        "queue.buffering.max.kbytes": settings.producer_queue_max_kbytes,
        "message.timeout.ms": max(1, int(settings.publish_timeout_s * 1000)),
        "socket.keepalive.enable": True,
        "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 1000,
        # librdkafka's own log lines go through Python logging (JSON), not stderr.
        "logger": logging.getLogger("ingest_gateway.librdkafka"),
        "log.connection.close": False,
        **confluent_config(settings),
    }


class KafkaPublisher:
    """``EventPublisher`` over a confluent-kafka ``Producer`` polled from the event loop."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        flush_timeout_s: float = 10.0,
        probe_interval_s: float = 2.0,
        poll_interval_s: float = 0.001,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        self._settings = settings
        self._topic = settings.topic
        self._timeout_s = settings.publish_timeout_s
        self._flush_timeout_s = flush_timeout_s
        self._probe_interval_s = probe_interval_s
        self._poll_interval_s = poll_interval_s
        self._config = {**producer_config(settings), **(extra_config or {})}
        self._config["error_cb"] = self._on_error
        self._producer: Producer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pump: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[None] | None = None
        self._healthy = False
        self._fatal = False

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Create the producer; never blocks on the broker."""
        self._loop = asyncio.get_running_loop()
        self._producer = Producer(self._config)
        self._probe = asyncio.create_task(self._probe_loop())

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        producer = self._producer
        self._healthy = False
        if producer is not None:
            # The pump serves the remaining reports (on the loop that owns
            # their futures); it gets the flush timeout to finish.
            if self._pump is None and len(producer) > 0:
                self._pump = asyncio.create_task(self._pump_reports())
            if self._pump is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._pump), self._flush_timeout_s)
            producer.poll(0)
            left = len(producer)
            if left:
                logger.error("producer closed with %d message(s) undelivered", left)
            else:
                logger.info("producer flushed")
        self._producer = None
        if self._pump is not None:
            await self._pump

    def healthy(self) -> bool:
        return self._producer is not None and self._healthy

    def queued(self) -> int:
        """Messages waiting in the producer's queue or in flight."""
        return len(self._producer) if self._producer is not None else 0

    # ------------------------------------------------------------ publishing

    async def publish(self, key: bytes, value: bytes, timeout_s: float | None = None) -> None:
        timeout_s = self._timeout_s if timeout_s is None else min(timeout_s, self._timeout_s)
        producer, loop = self._producer, self._loop
        if producer is None or loop is None:
            raise Unavailable("Kafka producer is not running")
        future: asyncio.Future[None] = loop.create_future()
        try:
            producer.produce(
                self._topic,
                value=value,
                key=key,
                headers=[FORMAT_HEADER],
                on_delivery=functools.partial(self._delivered, future),
            )
        except BufferError as e:
            raise ResourceExhausted("Kafka producer queue is full; not stored, retry later") from e
        except KafkaException as e:
            raise Unavailable(f"Kafka produce failed, not stored: {e}") from e
        if self._pump is None:
            self._pump = asyncio.create_task(self._pump_reports())
        try:
            # On timeout the future is cancelled; a late report then finds it done.
            async with asyncio.timeout(timeout_s):
                await future
        except TimeoutError as e:
            raise Unavailable(f"no Kafka delivery report within {timeout_s:g}s; {_MAYBE}") from e
        except KafkaException as e:
            error = e.args[0]
            stored = "not stored" if error.code() in _NOT_PERSISTED else _MAYBE
            raise Unavailable(f"Kafka delivery failed ({error.str()}); {stored}") from e

    # ------------------------------------------------------------ internals

    def _delivered(self, future: asyncio.Future[None], error: KafkaError | None, _msg: Any) -> None:
        """Delivery callback: runs inside ``poll``, on the loop."""
        if error is None:
            self._healthy = True
        elif error.code() != KafkaError._PURGE_QUEUE:
            self._healthy = False
        _resolve(future, error)

    async def _pump_reports(self) -> None:
        """Serve delivery reports while any are outstanding (``len``: messages queued,
        in flight, or with a report not served yet). Follows ``self._producer``, so
        a producer replaced after a fatal error keeps being served."""
        try:
            while (producer := self._producer) is not None and len(producer) > 0:
                producer.poll(0)
                await asyncio.sleep(self._poll_interval_s)
        finally:
            self._pump = None

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            # The idempotent producer cannot continue (e.g. the broker lost
            # acknowledged data); the probe replaces it with a fresh one.
            logger.critical("Kafka producer fatal error: %s", error.str())
            self._fatal = True
            self._healthy = False
        elif error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            if self._healthy:
                logger.warning("Kafka unreachable: %s", error.str())
            self._healthy = False
        else:
            logger.warning("Kafka client error: %s", error.str())

    async def _probe_loop(self) -> None:
        """While unhealthy, ask the broker for the topic's metadata until it answers.
        Also serves the producer's error and log events while no pump does."""
        was: bool | None = None
        while True:
            if self._fatal:
                self._replace_producer()
            if self._pump is None and self._producer is not None:
                self._producer.poll(0)
            if not self._healthy:
                self._healthy = await asyncio.to_thread(self._topic_reachable)
            if self._healthy != was:
                log = logger.info if self._healthy else logger.warning
                log(
                    "Kafka topic %s %s",
                    self._topic,
                    "reachable" if self._healthy else "NOT reachable",
                )
                was = self._healthy
            await asyncio.sleep(self._probe_interval_s)

    def _replace_producer(self) -> None:
        old, self._producer = self._producer, Producer(self._config)
        self._fatal = False
        logger.warning("Kafka producer replaced after a fatal error")
        if old is not None:
            # Its messages fail now (their callers get UNAVAILABLE and retry),
            # not when their timeout runs out.
            old.purge()
            old.poll(0)

    def _topic_reachable(self) -> bool:
        producer = self._producer
        if producer is None:
            return False
        try:
            metadata = producer.list_topics(self._topic, timeout=max(1.0, self._probe_interval_s))
        except KafkaException as e:
            logger.debug("metadata request failed: %s", e)
            return False
        topic = metadata.topics.get(self._topic)
        if topic is None or topic.error is not None:
            if topic is not None and topic.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                logger.error("Kafka topic %s does not exist (create it first)", self._topic)
            return False
        return bool(metadata.brokers)


def _resolve(future: asyncio.Future[None], error: KafkaError | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(KafkaException(error))
