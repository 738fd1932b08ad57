"""Stream workers: Kafka touch batches -> grid-cell aggregates in ClickHouse, exactly once."""
