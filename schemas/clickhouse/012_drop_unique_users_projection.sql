-- Undo of a projection an earlier build of migration 011 added to the per-user
-- table (one uniqExact state per screen and 64-cell). Measured on 50 M events
-- it grew the table from 306 to 1,026 MiB and still answered the top screen's
-- distinct users in seconds, so unique users read the rows, on request
-- (docs/privacy.md, "Unique users"). Stores that never had it: nothing to do.

ALTER TABLE touch_cells_by_user DROP PROJECTION IF EXISTS users_by_screen_cell64;
