-- Ledger of client batch ids, for "a retried request with the same batch_id
-- from the same user is counted once". Only batches whose batch_id the
-- CLIENT chose are recorded (generated ids cannot be retried).
--
-- The worker writes a flush's ledger rows BEFORE the flush's cells and treats
-- a batch as a duplicate only when the same (user_id, batch_id) was seen at a
-- LOWER offset of the same partition. So a crash between the two inserts
-- loses nothing: on replay the batch finds itself (same offset) and is
-- counted. Kafka keys messages by user id, so every retry of a batch lands on
-- the partition that holds the first copy.
--
-- TTL bounds the deduplication window: a retry arriving more than 7 days
-- after the first copy is counted again (devices retry within minutes).

CREATE TABLE IF NOT EXISTS ingest_batches
(
    topic           LowCardinality(String) COMMENT 'Kafka topic the batch was read from',
    kafka_partition UInt32                 COMMENT 'Kafka partition of the batch',
    user_id         String                 COMMENT 'JWT sub of the sender',
    batch_id        String                 COMMENT 'Client idempotency key (IngestTouchEventsRequest.batch_id)',
    kafka_offset    Int64                  COMMENT 'Offset of the first copy seen',
    received_at     DateTime('UTC')     COMMENT 'Gateway receive time of that copy'
)
ENGINE = ReplacingMergeTree
ORDER BY (topic, kafka_partition, user_id, batch_id)
TTL received_at + INTERVAL 7 DAY
COMMENT 'Client batch ids already counted, per Kafka partition (deduplication ledger)';
