-- Per-(screen, cell) aggregate projections on the all-users tables.
--
-- The dashboard's default question is "this screen, whole range, every
-- campaign and type": without a projection ClickHouse sums every (hour,
-- campaign, type) row of the screen (about 770k rows for the top screen of a
-- 50M-event day in bench/bench_query.py); with it, one row per cell. The
-- optimizer picks the projection by itself whenever a query filters only on
-- screen_name and groups by (an expression of) cell_x, cell_y; queries with a
-- time, campaign or type filter read the table as before. Measured: grid-64
-- top-screen p50 10.1 ms -> 3.4 ms in SQL, for +2 % (64) / +15 % (512) disk.
--
-- AggregatingMergeTree refuses projections unless merges rebuild them
-- (deduplicate_merge_projection_mode). MATERIALIZE builds them for parts that
-- existed before this migration (a background mutation; new parts get the
-- projection at insert).

ALTER TABLE touch_cells_64 MODIFY SETTING deduplicate_merge_projection_mode = 'rebuild';
ALTER TABLE touch_cells_64 ADD PROJECTION IF NOT EXISTS by_screen_cell
    (SELECT screen_name, cell_x, cell_y, sum(events) GROUP BY screen_name, cell_x, cell_y);
ALTER TABLE touch_cells_64 MATERIALIZE PROJECTION by_screen_cell;

ALTER TABLE touch_cells MODIFY SETTING deduplicate_merge_projection_mode = 'rebuild';
ALTER TABLE touch_cells ADD PROJECTION IF NOT EXISTS by_screen_cell
    (SELECT screen_name, cell_x, cell_y, sum(events) GROUP BY screen_name, cell_x, cell_y);
ALTER TABLE touch_cells MATERIALIZE PROJECTION by_screen_cell;
