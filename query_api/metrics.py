"""Query-service metrics beyond the per-method RPC latency the shared interceptor records."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class QueryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows_read = Counter(
            "heatmap_query_rows_read_total",
            "Rows read by heatmap queries as ClickHouse reports them (query summary read_rows; "
            "a server reports rows scanned, chDB reports result rows)",
            ["table"],
            registry=registry,
        )
        self.bytes_read = Counter(
            "heatmap_query_bytes_read_total",
            "Bytes read by heatmap queries as ClickHouse reports them (see rows_read)",
            ["table"],
            registry=registry,
        )
        self.clickhouse_seconds = Histogram(
            "heatmap_query_clickhouse_seconds",
            "Time in ClickHouse per heatmap query",
            ["table"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.points = Histogram(
            "heatmap_query_points",
            "Data points per heatmap answer",
            ["mode"],
            registry=registry,
            buckets=(0, 10, 100, 1_000, 4_096, 10_000, 50_000, 100_000, 262_144, 1_000_000),
        )
        self.store_seconds = Histogram(
            "heatmap_screenshot_store_seconds",
            "Time per screenshot-store operation",
            ["op"],
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.uploads = Counter(
            "heatmap_screenshot_uploads_total",
            "Screenshot uploads by outcome (stored, duplicate)",
            ["outcome"],
            registry=registry,
        )
