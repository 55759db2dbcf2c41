-- Describes every object of the tiermeter extension from the catalogs, one
-- line each, without OIDs: scripts/upgrade.sh compares an updated database
-- with a fresh install of the same version.  (pg_dump omits extension
-- members, so the catalogs are read directly.)
\set ON_ERROR_STOP 1
\pset format unaligned
\pset tuples_only on
\pset footer off
SET search_path = pg_catalog;

WITH ext AS (SELECT * FROM pg_extension WHERE extname = 'tiermeter'),
sch AS (SELECT extnamespace AS oid FROM ext),
rels AS (SELECT c.* , c.oid AS coid FROM pg_class c, sch WHERE c.relnamespace = sch.oid)
SELECT line FROM (
	-- the extension itself and what pg_dump keeps of it
	SELECT 'extension ' || extversion || ' relocatable=' || extrelocatable
	       || ' config=' || coalesce((SELECT string_agg(c::regclass::text || ' where ' || quote_literal(w), ', '
	                                                    ORDER BY c::regclass::text)
	                                    FROM unnest(extconfig, extcondition) AS u(c, w)), '') AS line
	  FROM ext
	UNION ALL
	-- every member object
	SELECT 'member ' || pg_describe_object(d.classid, d.objid, d.objsubid)
	  FROM pg_depend d, ext WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid
	   AND d.deptype = 'e'
	UNION ALL
	-- the schema: owner, grants, comment
	SELECT 'schema ' || n.nspname || ' owner=' || n.nspowner::regrole || ' acl=' || coalesce(n.nspacl::text, '-')
	       || ' comment=' || coalesce(obj_description(n.oid, 'pg_namespace'), '-')
	  FROM pg_namespace n, sch WHERE n.oid = sch.oid
	UNION ALL
	-- relations: tables, views, sequences, composite types, indexes
	SELECT format('relation %s kind=%s persistence=%s owner=%s acl=%s options=%s rls=%s comment=%s',
	              relname, relkind, relpersistence, relowner::regrole, coalesce(relacl::text, '-'),
	              coalesce(reloptions::text, '-'), relrowsecurity, coalesce(obj_description(coid, 'pg_class'), '-'))
	  FROM rels
	UNION ALL
	-- columns, in their order (dropped columns left out of the count)
	SELECT format('column %s #%s %s %s notnull=%s default=%s identity=%s generated=%s collation=%s acl=%s comment=%s',
	              r.relname, lpad((row_number() OVER (PARTITION BY r.coid ORDER BY a.attnum))::text, 3, '0'), a.attname,
	              format_type(a.atttypid, a.atttypmod), a.attnotnull,
	              coalesce(pg_get_expr(ad.adbin, ad.adrelid), '-'), a.attidentity, a.attgenerated,
	              coalesce(nullif(a.attcollation, 0)::regcollation::text, '-'), coalesce(a.attacl::text, '-'),
	              coalesce(col_description(r.coid, a.attnum), '-'))
	  FROM rels r JOIN pg_attribute a ON a.attrelid = r.coid AND a.attnum > 0 AND NOT a.attisdropped
	  LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
	 WHERE r.relkind <> 'i'
	UNION ALL
	SELECT 'index ' || pg_get_indexdef(i.indexrelid) || ' clustered=' || i.indisclustered
	  FROM pg_index i JOIN rels r ON r.coid = i.indrelid
	UNION ALL
	SELECT format('sequence %s type=%s start=%s inc=%s min=%s max=%s cache=%s cycle=%s',
	              r.relname, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
	              s.seqcache, s.seqcycle)
	  FROM pg_sequence s JOIN rels r ON r.coid = s.seqrelid
	UNION ALL
	SELECT format('constraint %s.%s %s deferrable=%s deferred=%s valid=%s comment=%s',
	              r.relname, c.conname, pg_get_constraintdef(c.oid), c.condeferrable, c.condeferred,
	              c.convalidated, coalesce(obj_description(c.oid, 'pg_constraint'), '-'))
	  FROM pg_constraint c JOIN rels r ON r.coid = c.conrelid
	UNION ALL
	SELECT format('trigger %s enabled=%s comment=%s', pg_get_triggerdef(t.oid), t.tgenabled,
	              coalesce(obj_description(t.oid, 'pg_trigger'), '-'))
	  FROM pg_trigger t JOIN rels r ON r.coid = t.tgrelid WHERE NOT t.tgisinternal
	UNION ALL
	SELECT format('rule %s', pg_get_ruledef(w.oid))
	  FROM pg_rewrite w JOIN rels r ON r.coid = w.ev_class WHERE w.rulename <> '_RETURN'
	UNION ALL
	SELECT format('view %s %s', r.relname, pg_get_viewdef(r.coid))
	  FROM rels r WHERE r.relkind IN ('v', 'm')
	UNION ALL
	SELECT format('policy %s.%s %s', r.relname, p.polname, p.polcmd)
	  FROM pg_policy p JOIN rels r ON r.coid = p.polrelid
	UNION ALL
	-- functions: their whole definition (language, volatility, parallel
	-- safety, strictness, security, settings, body), owner, grants, comment
	SELECT format('function %s kind=%s owner=%s acl=%s comment=%s%s',
	              p.oid::regprocedure, p.prokind, p.proowner::regrole, coalesce(p.proacl::text, '-'),
	              coalesce(obj_description(p.oid, 'pg_proc'), '-'),
	              CASE WHEN p.prokind IN ('f', 'p') THEN E'\n' || pg_get_functiondef(p.oid) ELSE '' END)
	  FROM pg_proc p, sch WHERE p.pronamespace = sch.oid
	UNION ALL
	-- types: composite types (their columns are above), enums, domains
	SELECT format('type %s type=%s owner=%s acl=%s comment=%s', t.typname, t.typtype, t.typowner::regrole,
	              coalesce(t.typacl::text, '-'), coalesce(obj_description(t.oid, 'pg_type'), '-'))
	  FROM pg_type t, sch WHERE t.typnamespace = sch.oid
	UNION ALL
	SELECT format('enum %s %s', e.enumtypid::regtype, string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder))
	  FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid, sch WHERE t.typnamespace = sch.oid
	 GROUP BY e.enumtypid
	UNION ALL
	SELECT format('domain constraint %s.%s %s', t.typname, c.conname, pg_get_constraintdef(c.oid))
	  FROM pg_constraint c JOIN pg_type t ON t.oid = c.contypid, sch WHERE t.typnamespace = sch.oid
	UNION ALL
	-- anything of the extension outside the schema (casts, event triggers, ...)
	SELECT format('event trigger %s %s %s %s', evtname, evtevent, evtfoid::regproc, evtenabled)
	  FROM pg_event_trigger e, ext
	 WHERE EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_event_trigger'::regclass
	                  AND d.objid = e.oid AND d.refobjid = ext.oid AND d.deptype = 'e')
) AS x
ORDER BY line COLLATE "C";
