"""Shared runtime plumbing of the heatmaps pipeline: settings, auth, errors,
the gRPC server scaffolding, ClickHouse and Kafka access, logging.

It sits under the three deployables (``ingest_gateway``, ``stream_workers``,
``query_api``) and imports none of them; the ``heatmap`` command line that
wires them together is ``heatmap_cli``, and the local-only tools are in
``heatmap_devtools`` (``tests/unit/test_layers.py`` holds every arrow down)."""
