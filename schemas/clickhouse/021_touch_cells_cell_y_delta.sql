-- touch_cells (the 512 all-users table) stores cell_y with Delta instead of
-- T64 (migration 020). Inside each (screen, campaign, type, hour, cell_x)
-- run of its ORDER BY, cell_y is sorted, so Delta + ZSTD packs it smaller:
-- 0.553 against 0.635 bytes per event on 50 M events of the realistic fleet
-- (docs/operations.md, "Storage"). In the per-user table the runs are short
-- and T64 stays the smaller one (Delta measured 1.170 against 1.071).
--
-- A codec-only change: `migrate --cluster` runs it ON CLUSTER on the local
-- replicated table only (the Distributed twin stores no parts). The codec
-- applies to new parts; older parts keep T64 until a merge rewrites them
-- (docs/operations.md, "Storage").

ALTER TABLE touch_cells MODIFY COLUMN cell_y CODEC(Delta, ZSTD(1));
