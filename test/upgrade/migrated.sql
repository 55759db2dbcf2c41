-- What an update from the oldest release migrates on purpose (CHANGELOG.md):
-- the seeded config keys fill.sql deleted are remembered for restores.
\set ON_ERROR_STOP 1
SELECT tbl, key FROM tiermeter._deleted_seeds ORDER BY tbl, key::text;
