"""Data contracts: the gRPC API, the Kafka message format and the ClickHouse DDL."""
