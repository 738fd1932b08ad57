"""Prometheus metrics of a stream worker (registered on the registry passed in)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter(
            "heatmap_worker_messages",
            "Kafka messages (touch batches) taken from the topic, poison included",
            registry=registry,
        )
        self.events = Counter(
            "heatmap_worker_events_aggregated",
            "Touch events aggregated into cells (duplicates and dead letters excluded)",
            registry=registry,
        )
        self.replayed_events = Counter(
            "heatmap_worker_replayed_events",
            "Events of replayed records already stored (dropped by the offset watermarks)",
            ["table"],
            registry=registry,
        )
        self.duplicate_batches = Counter(
            "heatmap_worker_duplicate_batches",
            "Batches dropped because the same (user, batch_id) was counted before",
            registry=registry,
        )
        self.suppressed_events = Counter(
            "heatmap_worker_suppressed_events",
            "Events not counted because their user is erased (suppression list)",
            registry=registry,
        )
        self.cells_flushed = Counter(
            "heatmap_worker_cells_flushed",
            "Aggregated cell rows inserted into ClickHouse (marker rows excluded)",
            ["table"],
            registry=registry,
        )
        self.flush_seconds = Histogram(
            "heatmap_worker_flush_seconds",
            "Wall time of one flush (aggregate, ledger, every insert), retries included",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        self.clickhouse_failures = Counter(
            "heatmap_worker_clickhouse_failures",
            "Failed ClickHouse calls (retried with backoff, nothing committed meanwhile)",
            registry=registry,
        )
        self.dead_letters = Counter(
            "heatmap_worker_dead_letters",
            "Poison messages sent to the dead-letter topic",
            ["reason"],
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "heatmap_worker_consumer_lag",
            "Messages of an assigned partition not stored yet: partition end minus the next "
            "offset to store (after this worker's last flush, else the group's committed offset)",
            ["partition"],
            registry=registry,
        )
        self.fenced_flushes = Counter(
            "heatmap_worker_fenced_flushes",
            "Flushes refused because another worker claimed their partitions (this one stops)",
            registry=registry,
        )
        self.assigned_partitions = Gauge(
            "heatmap_worker_assigned_partitions",
            "Topic partitions currently assigned to this worker",
            registry=registry,
        )
