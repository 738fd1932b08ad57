"""Shared plumbing of the heatmaps pipeline: settings, auth, gRPC server
scaffolding, ClickHouse access and migrations, local infrastructure and the
``heatmap`` command line. Stage-specific code lives in ``ingest_gateway``,
``stream_workers`` and ``query_api``."""
