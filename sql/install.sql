-- The extension installs its schema, the seeded catalog of docs/reference.md, and
-- grants nothing to PUBLIC.  (pg_regress --load-extension created it.)
SELECT extname, extversion, extrelocatable, n.nspname
  FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE extname = 'tiermeter';

-- every table is dumped by pg_dump
SELECT c.relname
  FROM pg_extension e, unnest(e.extconfig) AS cfg(oid)
  JOIN pg_class c ON c.oid = cfg.oid
 WHERE e.extname = 'tiermeter'
 ORDER BY 1;

-- every table, view, sequence, type and function of the schema has a comment
SELECT 'relation' AS kind, c.relname AS name
  FROM pg_class c
 WHERE c.relnamespace = 'tiermeter'::regnamespace AND c.relkind IN ('r', 'v')
   AND obj_description(c.oid, 'pg_class') IS NULL
UNION ALL
SELECT 'function', p.oid::regprocedure::text
  FROM pg_proc p
 WHERE p.pronamespace = 'tiermeter'::regnamespace
   AND obj_description(p.oid, 'pg_proc') IS NULL
UNION ALL
SELECT 'type', t.typname
  FROM pg_type t
 WHERE t.typnamespace = 'tiermeter'::regnamespace AND t.typtype = 'c'
   AND t.typrelid IN (SELECT oid FROM pg_class WHERE relkind = 'c')
   AND obj_description(t.oid, 'pg_type') IS NULL;

-- nothing is granted to PUBLIC: no function, table, sequence, type or the schema
SELECT 'function' AS kind, p.oid::regprocedure::text AS name
  FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
 WHERE p.pronamespace = 'tiermeter'::regnamespace AND a.grantee = 0
UNION ALL
SELECT 'relation', c.relname
  FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
 WHERE c.relnamespace = 'tiermeter'::regnamespace AND c.relkind IN ('r', 'v', 'S') AND a.grantee = 0
UNION ALL
SELECT 'type', t.typname
  FROM pg_type t, aclexplode(coalesce(t.typacl, acldefault('T', t.typowner))) a
 WHERE t.typnamespace = 'tiermeter'::regnamespace AND a.grantee = 0
   AND t.typcategory <> 'A'                       -- arrays follow their element
   AND NOT EXISTS (SELECT 1 FROM pg_class c       -- a table's row type follows the table
                    WHERE c.oid = t.typrelid AND c.relkind <> 'c')
UNION ALL
SELECT 'schema', n.nspname
  FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
 WHERE n.nspname = 'tiermeter' AND a.grantee = 0;

-- a role without grants can call nothing and read nothing
CREATE ROLE tm_nobody;
SET ROLE tm_nobody;
SELECT tiermeter.check_org_limits('acme');
SELECT * FROM tiermeter.tiers;
RESET ROLE;
DROP ROLE tm_nobody;

-- the extension can be dropped and created again
DROP EXTENSION tiermeter;
CREATE EXTENSION tiermeter;
SELECT count(*) AS tiers FROM tiermeter.tiers;

-- a tiermeter schema made beforehand by an ordinary role is refused: that
-- role could replace the extension's objects
DROP EXTENSION tiermeter;
DROP SCHEMA tiermeter;			-- DROP EXTENSION leaves the schema
CREATE ROLE tm_mallory;
CREATE SCHEMA tiermeter AUTHORIZATION tm_mallory;
CREATE EXTENSION tiermeter;
SELECT count(*) AS extensions FROM pg_extension WHERE extname = 'tiermeter';
DROP SCHEMA tiermeter;
DROP ROLE tm_mallory;
CREATE EXTENSION tiermeter;
SELECT extversion FROM pg_extension WHERE extname = 'tiermeter';
