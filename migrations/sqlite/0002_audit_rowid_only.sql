-- The audit list query (`store::audit::list`) walks the rowid backwards
-- (`seq < cursor ORDER BY seq DESC LIMIT n`): SQLite's planner picks that
-- plan with or without these indexes, so on SQLite they only cost every
-- audit insert two more b-tree writes. (PostgreSQL keeps them.)
DROP INDEX IF EXISTS audit_type;
DROP INDEX IF EXISTS audit_time;
