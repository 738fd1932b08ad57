-- Column codecs for the three cell tables, chosen per column by measurement
-- (bench/bench_query.py on both fleets, docs/operations.md "Storage"):
--
--   cell_x          sorted inside each (screen, [user,] campaign, type, hour)
--                   run: Delta turns it into small steps, ZSTD packs them
--   cell_y          unsorted 9-bit values in 16 bits: T64 drops the empty
--                   high bits (grid 512); at grid 64 (8 bits) Delta wins
--   events          mostly 1 or small: ZSTD(3) (T64 and LZ4 measured larger)
--   user_id         sorted runs of one id: ZSTD(3) (LZ4 4x, ZSTD(1) 8x larger)
--   the rest        long runs: ZSTD(1)
--
-- Decompression speed of ZSTD does not depend on its level; the level only
-- costs at insert and merge, and only the two columns named take level 3.
-- default_compression_codec covers the columns no CODEC names, i.e. the
-- projections' aggregate states (sum, uniqExact), which otherwise get LZ4.
--
-- MODIFY COLUMN ... CODEC is a metadata change: new parts (inserts, merges,
-- mutations) are written with it, existing parts keep their codec until a
-- merge rewrites them (OPTIMIZE TABLE ... FINAL forces that; see
-- docs/operations.md). Types, keys and comments are unchanged.
--
-- One ALTER per table, the setting included: codecs belong to the stored
-- parts only, so `migrate --cluster` runs it on the local replicated tables
-- and does not mirror it on their Distributed twins (which store nothing).

ALTER TABLE touch_cells_by_user
    MODIFY COLUMN screen_name CODEC(ZSTD(1)),
    MODIFY COLUMN user_id CODEC(ZSTD(3)),
    MODIFY COLUMN campaign_id CODEC(ZSTD(1)),
    MODIFY COLUMN event_type CODEC(ZSTD(1)),
    MODIFY COLUMN hour CODEC(ZSTD(1)),
    MODIFY COLUMN cell_x CODEC(Delta, ZSTD(1)),
    MODIFY COLUMN cell_y CODEC(T64, ZSTD(1)),
    MODIFY COLUMN events CODEC(ZSTD(3)),
    MODIFY COLUMN source_offset CODEC(ZSTD(1)),
    MODIFY SETTING default_compression_codec = 'ZSTD(1)';

ALTER TABLE touch_cells
    MODIFY COLUMN screen_name CODEC(ZSTD(1)),
    MODIFY COLUMN campaign_id CODEC(ZSTD(1)),
    MODIFY COLUMN event_type CODEC(ZSTD(1)),
    MODIFY COLUMN hour CODEC(ZSTD(1)),
    MODIFY COLUMN cell_x CODEC(Delta, ZSTD(1)),
    MODIFY COLUMN cell_y CODEC(T64, ZSTD(1)),
    MODIFY COLUMN events CODEC(ZSTD(3)),
    MODIFY COLUMN source_offset CODEC(ZSTD(1)),
    MODIFY SETTING default_compression_codec = 'ZSTD(1)';

ALTER TABLE touch_cells_64
    MODIFY COLUMN screen_name CODEC(ZSTD(1)),
    MODIFY COLUMN campaign_id CODEC(ZSTD(1)),
    MODIFY COLUMN event_type CODEC(ZSTD(1)),
    MODIFY COLUMN hour CODEC(ZSTD(1)),
    MODIFY COLUMN cell_x CODEC(Delta, ZSTD(1)),
    MODIFY COLUMN cell_y CODEC(Delta, ZSTD(1)),
    MODIFY COLUMN events CODEC(ZSTD(3)),
    MODIFY COLUMN source_offset CODEC(ZSTD(1)),
    MODIFY SETTING default_compression_codec = 'ZSTD(1)';
