-- Distinct users per (screen, 64-grid cell), for the unique_users of
-- ALL_USERS answers (docs/privacy.md, "Unique users").
--
-- Exact distinct counts need the per-user rows: a projection of the per-user
-- table keeps, per part, one uniqExact state (a set of 128-bit hashes of the
-- user ids) per (screen, cell at grid 64). A whole-range query of a screen at
-- grid 8..64 merges those states instead of reading every per-user row; a
-- query with a time, campaign or type filter reads the table. Being part of
-- the per-user table's parts, the projection is rebuilt by every mutation of
-- them, so an erasure's DELETE of a user's rows removes the user from it too.
--
-- The divisions are written exactly as heatmap_query writes them: the
-- optimizer matches the expressions, not their values.

ALTER TABLE touch_cells_by_user MODIFY SETTING deduplicate_merge_projection_mode = 'rebuild';
ALTER TABLE touch_cells_by_user ADD PROJECTION IF NOT EXISTS users_by_screen_cell64
    (SELECT screen_name, intDiv(cell_x, 8), intDiv(cell_y, 8), uniqExact(user_id)
     GROUP BY screen_name, intDiv(cell_x, 8), intDiv(cell_y, 8));
ALTER TABLE touch_cells_by_user MATERIALIZE PROJECTION users_by_screen_cell64;
