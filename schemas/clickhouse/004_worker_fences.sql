-- Fencing of stream-worker writes (docs/exactly-once.md, "Fencing").
--
-- A worker that is assigned a Kafka partition first CLAIMS it here (a row
-- with an epoch above every earlier one of the topic), and only then reads
-- the partition's watermarks. Every cell insert is an INSERT ... SELECT
-- whose WHERE, evaluated by the server, requires that the inserting worker
-- holds the latest claim of every source partition of the block. A worker
-- that lost its partitions while it was stalled (GC pause, SIGSTOP, a long
-- ClickHouse outage) therefore inserts nothing when it resumes.
--
-- The current owner of a partition is argMax(owner, (epoch, owner)) over
-- ALL its rows: a plain MergeTree, because a merge that keeps one row per key
-- (ReplacingMergeTree) could keep the other of two claims with equal epochs
-- and flip the owner. One row per assignment of a partition (tens of bytes;
-- a rebalance of 48 partitions adds 48 rows).

CREATE TABLE IF NOT EXISTS worker_fences
(
    topic           LowCardinality(String) COMMENT 'Kafka topic of the partition',
    kafka_partition UInt32                 COMMENT 'Kafka partition claimed',
    owner           String                 COMMENT 'Token of one assignment of the partition to one worker',
    epoch           UInt64                 COMMENT 'Above every earlier claim of the topic',
    claimed_at      DateTime('UTC') DEFAULT now() COMMENT 'When the claim was made (for operators)'
)
ENGINE = MergeTree
ORDER BY (topic, kafka_partition, epoch)
COMMENT 'Claims of Kafka partitions by stream workers, the latest one owns (write fencing)';
