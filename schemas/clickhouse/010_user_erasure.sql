-- Exact erasure of one user (docs/privacy.md).
--
-- user_suppressions is the suppression list the stream workers consult at
-- every flush: one row per erase or un-erase request, numbered by seq (above
-- every earlier one); a user's state is the action of their highest seq.
-- A version (seq) comes into force for a Kafka partition at the CUT a worker
-- that owns the partition writes to suppression_cuts: records at offsets up
-- to the cut are counted as before, records above it follow the new state.
-- Because the rule depends only on stored rows, every replay of a record
-- decides it the same way in every table, whichever worker replays it.
--
-- user_erasures holds the progress of each erasure (planned, with how many events
-- it removes; negated: the all-users tables are corrected), erasure_audit one
-- line per completed erase / un-erase (who, when, how many events; no data
-- beyond the user id). Negative rows in the all-users tables carry a marker
-- row (screen_name '', campaign_id 'erase#<erasure_id>') in the same insert,
-- so a rerun after a crash knows which (table, month) is already corrected.

CREATE TABLE IF NOT EXISTS user_suppressions
(
    seq             UInt64                 COMMENT 'Version: above every earlier request',
    user_id         String                 COMMENT 'JWT sub of the user',
    action          UInt8                  COMMENT '1 erase (suppress the user from the cut on), 0 un-erase',
    erasure_id      String                 COMMENT 'Opaque id of this request (marker rows name it, not the user)',
    requested_by    String                 COMMENT 'Principal who asked (admin token subject or os user)',
    requested_at    DateTime('UTC') DEFAULT now() COMMENT 'When it was recorded'
)
ENGINE = MergeTree
ORDER BY seq
COMMENT 'Erase / un-erase requests per user, versioned (the workers suppression list)';

CREATE TABLE IF NOT EXISTS suppression_cuts
(
    topic           LowCardinality(String) COMMENT 'Kafka topic',
    kafka_partition UInt32                 COMMENT 'Kafka partition',
    seq             UInt64                 COMMENT 'user_suppressions.seq this cut brings into force',
    cut             Int64                  COMMENT 'Records above this offset follow version seq (-1: all of them)',
    owner           String                 COMMENT 'Fence token of the worker that wrote it',
    written_at      DateTime('UTC') DEFAULT now() COMMENT 'When it was written'
)
ENGINE = MergeTree
ORDER BY (topic, kafka_partition, seq)
COMMENT 'Offset from which each suppression version applies, per Kafka partition';

CREATE TABLE IF NOT EXISTS user_erasures
(
    erasure_id      String                 COMMENT 'user_suppressions.erasure_id',
    user_id         String                 COMMENT 'JWT sub of the erased user',
    stage           UInt8                  COMMENT '1 planned, 2 all-users tables negated',
    events          UInt64                 COMMENT 'Touch events the erasure removes (per-user table, at planning)',
    rows_by_user    UInt64                 COMMENT 'Per-user rows it removes',
    written_at      DateTime('UTC') DEFAULT now() COMMENT 'When the stage was reached'
)
ENGINE = MergeTree
ORDER BY (erasure_id, stage)
COMMENT 'Progress of each user erasure (crash-safe reruns resume from here)';

CREATE TABLE IF NOT EXISTS erasure_audit
(
    erasure_id      String                 COMMENT 'user_suppressions.erasure_id',
    user_id         String                 COMMENT 'JWT sub of the user (the only personal datum here)',
    action          LowCardinality(String) COMMENT 'erase or unerase',
    requested_by    String                 COMMENT 'Principal who asked',
    events          UInt64                 COMMENT 'Touch events removed (0 for unerase)',
    done_at         DateTime('UTC') DEFAULT now() COMMENT 'When it completed'
)
ENGINE = MergeTree
ORDER BY (done_at, erasure_id)
COMMENT 'One line per completed erasure or un-erasure';
