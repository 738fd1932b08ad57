-- Grid-cell aggregates written by stream_workers (one row per key per flush;
-- background merges sum rows with the same key, so ALWAYS read with
-- sum(events) ... GROUP BY, never by trusting one row, and never with FINAL:
-- FINAL gives the same numbers ~50x slower).
--
-- Three tables hold the same events at different resolutions; the worker
-- writes all three from one flush, and the query service reads the smallest
-- one that can answer exactly:
--   touch_cells_by_user  per user, 512x512 grid  PER_USER mode, user filter
--   touch_cells          all users, 512x512 grid grid_size 128..512
--   touch_cells_64       all users, 64x64 grid   grid_size 8..64
-- Any grid_size of the API (8..512, powers of two) is an exact roll-up:
-- cell at grid g = intDiv(cell at 512, 512 / g).
--
-- Exactly-once bookkeeping rows ("markers") live in the same tables so that
-- each flush's rows and its marker land in ONE insert into ONE partition,
-- which ClickHouse commits atomically. A marker has screen_name = '' (never a
-- valid screen), event_type = 0, events = 0 and source_offset = the highest
-- Kafka offset of the flush; campaign_id = '<topic>#<partition>'. Filtering
-- on a screen (every real query does) excludes them. See docs/exactly-once.md.
--
-- PARTITION BY month: old months drop cheaply (ALTER TABLE ... DROP PARTITION)
-- and a late event only ever touches its own month's partition.

CREATE TABLE IF NOT EXISTS touch_cells_by_user
(
    screen_name     LowCardinality(String)  COMMENT 'Screen the touches happened on (TouchEvent.screen_name), empty only on marker rows',
    user_id         String                  COMMENT 'JWT sub of the device user who sent the events',
    campaign_id     LowCardinality(String)  COMMENT 'TouchEvent.campaign_id, empty when none was sent',
    event_type      UInt8                   COMMENT '1 TAP, 2 SCROLL, 3 ACTION_CLICK (see event_type_name), 0 only on marker rows',
    hour            DateTime('UTC')       COMMENT 'Start of the UTC hour holding the event timestamp',
    cell_x          UInt16                  COMMENT 'Column at the 512 grid: min(floor(x * 512), 511)',
    cell_y          UInt16                  COMMENT 'Row at the 512 grid: min(floor(y * 512), 511)',
    events          SimpleAggregateFunction(sum, UInt64) COMMENT 'Touch events in this cell (sum() it)',
    source_offset   SimpleAggregateFunction(max, Int64)  COMMENT 'Marker rows only: highest Kafka offset of the flush, else 0',
    event_type_name LowCardinality(String) ALIAS transform(event_type, [1, 2, 3], ['TAP', 'SCROLL', 'ACTION_CLICK'], '')
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
-- screen first: every API query filters on one screen; user next so a
-- one-user query reads a narrow range.
ORDER BY (screen_name, user_id, campaign_id, event_type, hour, cell_x, cell_y)
COMMENT 'Touch counts per (screen, user, campaign, type, UTC hour, 512-grid cell)';

CREATE TABLE IF NOT EXISTS touch_cells
(
    screen_name     LowCardinality(String)  COMMENT 'Screen the touches happened on, empty only on marker rows',
    campaign_id     LowCardinality(String)  COMMENT 'TouchEvent.campaign_id, empty when none was sent',
    event_type      UInt8                   COMMENT '1 TAP, 2 SCROLL, 3 ACTION_CLICK (see event_type_name), 0 only on marker rows',
    hour            DateTime('UTC')       COMMENT 'Start of the UTC hour holding the event timestamp',
    cell_x          UInt16                  COMMENT 'Column at the 512 grid: min(floor(x * 512), 511)',
    cell_y          UInt16                  COMMENT 'Row at the 512 grid: min(floor(y * 512), 511)',
    events          SimpleAggregateFunction(sum, UInt64) COMMENT 'Touch events in this cell, all users (sum() it)',
    source_offset   SimpleAggregateFunction(max, Int64)  COMMENT 'Marker rows only: highest Kafka offset of the flush, else 0',
    event_type_name LowCardinality(String) ALIAS transform(event_type, [1, 2, 3], ['TAP', 'SCROLL', 'ACTION_CLICK'], '')
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (screen_name, campaign_id, event_type, hour, cell_x, cell_y)
COMMENT 'Touch counts per (screen, campaign, type, UTC hour, 512-grid cell), all users';

CREATE TABLE IF NOT EXISTS touch_cells_64
(
    screen_name     LowCardinality(String)  COMMENT 'Screen the touches happened on, empty only on marker rows',
    campaign_id     LowCardinality(String)  COMMENT 'TouchEvent.campaign_id, empty when none was sent',
    event_type      UInt8                   COMMENT '1 TAP, 2 SCROLL, 3 ACTION_CLICK (see event_type_name), 0 only on marker rows',
    hour            DateTime('UTC')       COMMENT 'Start of the UTC hour holding the event timestamp',
    cell_x          UInt8                   COMMENT 'Column at the 64 grid: min(floor(x * 64), 63)',
    cell_y          UInt8                   COMMENT 'Row at the 64 grid: min(floor(y * 64), 63)',
    events          SimpleAggregateFunction(sum, UInt64) COMMENT 'Touch events in this cell, all users (sum() it)',
    source_offset   SimpleAggregateFunction(max, Int64)  COMMENT 'Marker rows only: highest Kafka offset of the flush, else 0',
    event_type_name LowCardinality(String) ALIAS transform(event_type, [1, 2, 3], ['TAP', 'SCROLL', 'ACTION_CLICK'], '')
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (screen_name, campaign_id, event_type, hour, cell_x, cell_y)
COMMENT 'Touch counts per (screen, campaign, type, UTC hour, 64-grid cell), all users';
