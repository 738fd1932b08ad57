"""The gateway's Prometheus metrics (beside the shared per-RPC ones of ``heatmap.grpc_server``)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class GatewayMetrics:
    """Registered in the registry given, so tests and embedded mode can hold several."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "heatmap_gateway_requests_total",
            "IngestTouchEvents calls by outcome (accepted, rejected, unavailable, exhausted)",
            ["outcome"],
            registry=registry,
        )
        self.events = Counter(
            "heatmap_gateway_events_total",
            "Touch events accepted (published and acknowledged by Kafka)",
            registry=registry,
        )
        self.rejections = Counter(
            "heatmap_gateway_rejections_total",
            "Rejected calls by reason: the failing field path without indexes "
            "(events.x, events.timestamp, batch_id...), too_large, queue_full, "
            "publish_failed",
            ["reason"],
            registry=registry,
        )
        self.publish_seconds = Histogram(
            "heatmap_gateway_publish_seconds",
            "Time from produce() to the Kafka delivery report (acks=all)",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.batch_events = Histogram(
            "heatmap_gateway_batch_events",
            "Events per accepted call",
            registry=registry,
            buckets=(1, 10, 50, 100, 250, 500),
        )
        self.in_flight = Gauge(
            "heatmap_gateway_in_flight",
            "IngestTouchEvents calls being handled (validated or awaiting Kafka)",
            registry=registry,
        )
        self.producer_queue = Gauge(
            "heatmap_gateway_producer_queue_messages",
            "Messages in the Kafka producer's queue or in flight",
            registry=registry,
        )
        self.kafka_healthy = Gauge(
            "heatmap_gateway_kafka_healthy",
            "1 while the Kafka topic is reachable, else 0",
            registry=registry,
        )

    def watch(self, queued: Callable[[], int], healthy: Callable[[], bool]) -> None:
        """Read the producer's queue length and health at scrape time."""
        self.producer_queue.set_function(lambda: float(queued()))
        self.kafka_healthy.set_function(lambda: 1.0 if healthy() else 0.0)
