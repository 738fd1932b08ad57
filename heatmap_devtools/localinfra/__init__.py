"""Real backing services on this machine, for ``heatmap dev``, tests and benches.

Apache Kafka (KRaft, from its Maven Central jars on the installed Java) and a
SeaweedFS S3 server (built from the Go module proxy) run as child processes
bound to loopback; downloads and builds are cached outside the repository in
``$HEATMAP_CACHE_DIR`` (default ``~/.cache/heatmap``). ClickHouse needs no
process: chDB runs in-process.
"""
