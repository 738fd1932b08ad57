"""The gateway component: ``IngestTouchEvents`` -> validate -> one Kafka message -> ack.

``Gateway`` implements ``heatmap.serve.Component``; ``heatmap.serve.serve``
puts its one handler behind the shared interceptor (auth: any valid token,
the caller is ``current_principal()``; domain errors -> gRPC status; RPC
metrics), with health and reflection, and drains it on SIGTERM.

Per call: size check, ``validation.to_batch`` (decode, all-or-nothing
checks, columns), ``encoding.encode`` (the bytes of
``schemas.touch_batch.encode_batch``, written from numpy), then
``publisher.publish`` keyed by the user id, which returns
only after Kafka acknowledged the message (``acks=all``). Codes: invalid
input INVALID_ARGUMENT (with ``google.rpc.BadRequest``); a request over the
size limit or a full producer queue RESOURCE_EXHAUSTED; Kafka down or slow
UNAVAILABLE, answered before the caller's deadline where it has one.

Size limit: every valid request is under ~830 KB (500 events of at most
200 + 200 four-byte characters), so the gateway accepts at most
``MAX_REQUEST_BYTES`` = 1 MiB (or the server's limit if lower). ``heatmap
gateway`` also sets the gRPC transport limit to it, so grpc itself refuses
larger messages before they are buffered; in the embedded server (which
also takes 10 MiB screenshots) the handler enforces it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import grpc
from prometheus_client import CollectorRegistry

from heatmap.auth import current_principal
from heatmap.errors import ResourceExhausted, Unavailable
from heatmap.settings import Settings
from ingest_gateway.encoding import encode
from ingest_gateway.metrics import GatewayMetrics
from ingest_gateway.publisher import EventPublisher, KafkaPublisher
from ingest_gateway.validation import BatchRejected, to_batch
from schemas.api import SERVICE
from schemas.heatmap.v1 import heatmap_pb2

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1 << 20
# Answer UNAVAILABLE this long before the caller's deadline, not DEADLINE_EXCEEDED after it.
DEADLINE_MARGIN_S = 0.05


class Gateway:
    name = "gateway"

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry,
        publisher: EventPublisher | None = None,
    ) -> None:
        self._settings = settings
        self._publisher = publisher
        self._owns_publisher = publisher is None
        self._metrics = metrics = GatewayMetrics(registry)
        self._accepted = metrics.requests.labels("accepted")
        self._max_request_bytes = min(MAX_REQUEST_BYTES, settings.server.max_message_bytes)
        self._publish_timeout_s = settings.kafka.publish_timeout_s
        self._max_event_age_s = settings.ingest.max_event_age_s

    # ------------------------------------------------------------ Component

    async def start(self) -> None:
        """Start the Kafka publisher (unless one was passed in: its owner starts and stops
        it). Never waits for the broker: health stays NOT_SERVING until it answers."""
        if self._publisher is None:
            self._publisher = KafkaPublisher(
                self._settings.kafka, flush_timeout_s=max(1.0, self._publish_timeout_s)
            )
        publisher = self._publisher
        if isinstance(publisher, KafkaPublisher):
            self._metrics.watch(publisher.queued, publisher.healthy)
        if self._owns_publisher:
            await publisher.start()
        logger.info(
            "gateway publishing to %s topic %s (compression %s, max request %d bytes)",
            self._settings.kafka.bootstrap,
            self._settings.kafka.topic,
            self._settings.kafka.compression,
            self._max_request_bytes,
        )

    def handlers(self) -> Sequence[grpc.GenericRpcHandler]:
        return [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "IngestTouchEvents": grpc.unary_unary_rpc_method_handler(
                        self.ingest,
                        # Raw bytes in: the size check comes before decoding,
                        # and undecodable bytes become INVALID_ARGUMENT.
                        request_deserializer=None,
                        response_serializer=heatmap_pb2.IngestTouchEventsResponse.SerializeToString,
                    )
                },
            )
        ]

    def healthy(self) -> bool:
        return self._publisher is not None and self._publisher.healthy()

    async def stop(self) -> None:
        """Flush and close the publisher it created (bounded by the publish timeout)."""
        if self._publisher is not None and self._owns_publisher:
            await self._publisher.stop()

    # ------------------------------------------------------------ the RPC

    async def ingest(
        self, data: bytes, context: grpc.aio.ServicerContext
    ) -> heatmap_pb2.IngestTouchEventsResponse:
        self._metrics.in_flight.inc()
        try:
            return await self._ingest(data, context)
        finally:
            self._metrics.in_flight.dec()

    async def _ingest(
        self, data: bytes, context: grpc.aio.ServicerContext
    ) -> heatmap_pb2.IngestTouchEventsResponse:
        metrics = self._metrics
        if len(data) > self._max_request_bytes:
            self._reject("too_large", "exhausted")
            raise ResourceExhausted(
                f"request of {len(data)} bytes exceeds the limit of {self._max_request_bytes}"
            )
        user_id = current_principal().user_id
        try:
            batch = to_batch(data, user_id, time.time_ns() // 1_000_000, self._max_event_age_s)
        except BatchRejected as e:
            metrics.requests.labels("rejected").inc()
            for reason in e.reasons:
                metrics.rejections.labels(reason).inc()
            raise
        value = encode(batch)

        publisher = self._publisher
        if publisher is None:
            self._reject("publish_failed", "unavailable")
            raise Unavailable("gateway is not started")
        timeout_s = self._publish_timeout_s
        remaining = context.time_remaining()
        if remaining is not None:
            timeout_s = max(0.001, min(timeout_s, remaining - DEADLINE_MARGIN_S))
        started = time.perf_counter()
        try:
            await publisher.publish(user_id.encode(), value, timeout_s)
        except ResourceExhausted:
            self._reject("queue_full", "exhausted")
            raise
        except Unavailable:
            self._reject("publish_failed", "unavailable")
            raise
        metrics.publish_seconds.observe(time.perf_counter() - started)
        n = len(batch)
        self._accepted.inc()
        metrics.events.inc(n)
        metrics.batch_events.observe(n)
        return heatmap_pb2.IngestTouchEventsResponse(ingested_count=n)

    def _reject(self, reason: str, outcome: str) -> None:
        self._metrics.requests.labels(outcome).inc()
        self._metrics.rejections.labels(reason).inc()
