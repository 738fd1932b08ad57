"""The ingest gateway: IngestTouchEvents -> validated columnar batches on Kafka."""
