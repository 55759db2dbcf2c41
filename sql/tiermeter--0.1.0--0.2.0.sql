-- tiermeter 0.1.0 -> 0.2.0 (unreleased: edited in place until its release).
-- Every SQL change after 0.1.0 is made here; the 0.2.0 install script is
-- built from 0.1.0's and this one (docs/design.md, "Versions and upgrades").
-- Every new object: a COMMENT, and REVOKE ... FROM PUBLIC.

\echo Use "ALTER EXTENSION tiermeter UPDATE TO '0.2.0'" to load this file. \quit

------------------------------------------------------------------------------
-- Volatility and parallel safety (docs/design.md, "Volatility and parallel
-- safety").
------------------------------------------------------------------------------

-- It reads shared counters that other sessions' commits change during a
-- statement, and the caller's own uncommitted usage, which only the leader
-- process knows.
ALTER FUNCTION @extschema@.check_org_limits(text, text) VOLATILE PARALLEL RESTRICTED;
ALTER FUNCTION @extschema@.usage_stats(text) VOLATILE PARALLEL RESTRICTED;

-- Pure functions of their arguments.
ALTER FUNCTION @extschema@.verify_stripe_signature(text, text, text, integer, timestamptz)
	IMMUTABLE PARALLEL SAFE;
ALTER FUNCTION @extschema@._require_amount(bigint, text, boolean) PARALLEL SAFE;
ALTER FUNCTION @extschema@._stripe_time(jsonb) PARALLEL SAFE;

-- Lookups run as the extension's owner: kept in the leader process.
ALTER FUNCTION @extschema@._require_feature(text) PARALLEL RESTRICTED;
ALTER FUNCTION @extschema@._require_tier(text) PARALLEL RESTRICTED;

------------------------------------------------------------------------------
-- NOTIFY tiermeter carries only the event's id and kind: any role that can
-- connect may LISTEN, so the rest (org ids, Stripe ids) is read from
-- limit_events by a role allowed to.
------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION @extschema@._notify_limit_event() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	PERFORM pg_notify('tiermeter', jsonb_build_object('id', NEW.id, 'kind', NEW.kind)::text);
	RETURN NULL;
END $$;
COMMENT ON FUNCTION @extschema@._notify_limit_event() IS 'Trigger: sends NOTIFY tiermeter with the new limit event''s id and kind only (JSON).';

------------------------------------------------------------------------------
-- Writes that bypass the functions (a backfill, COPY, pg_restore
-- --data-only, logical replication) reach the shared-memory cache: a row
-- inserted into usage_log or orgs by anyone but the functions invalidates
-- its org when the transaction commits (docs/design.md, "The shared-memory
-- counter cache").  The functions' own rows return at once.  Every
-- invalidation trigger also fires in a logical replication apply worker.
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@._invalidate_insert() RETURNS trigger
AS 'MODULE_PATHNAME', 'tiermeter_invalidate_insert_trigger' LANGUAGE C;
REVOKE ALL ON FUNCTION @extschema@._invalidate_insert() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._invalidate_insert() IS 'Trigger: a row inserted into usage_log or orgs by anyone but the functions invalidates its org in the shared-memory cache at commit.';

CREATE TRIGGER usage_log_insert_invalidate BEFORE INSERT ON @extschema@.usage_log
	FOR EACH ROW EXECUTE FUNCTION @extschema@._invalidate_insert();
CREATE TRIGGER orgs_insert_invalidate BEFORE INSERT ON @extschema@.orgs
	FOR EACH ROW EXECUTE FUNCTION @extschema@._invalidate_insert();

ALTER TABLE @extschema@.usage_log ENABLE ALWAYS TRIGGER usage_log_insert_invalidate;
ALTER TABLE @extschema@.usage_log ENABLE ALWAYS TRIGGER usage_log_invalidate;
ALTER TABLE @extschema@.usage_log ENABLE ALWAYS TRIGGER usage_log_truncate_invalidate;
ALTER TABLE @extschema@.orgs ENABLE ALWAYS TRIGGER orgs_insert_invalidate;
ALTER TABLE @extschema@.orgs ENABLE ALWAYS TRIGGER orgs_invalidate;
ALTER TABLE @extschema@.orgs ENABLE ALWAYS TRIGGER orgs_delete_invalidate;
ALTER TABLE @extschema@.orgs ENABLE ALWAYS TRIGGER orgs_truncate_invalidate;
ALTER TABLE @extschema@.org_quotas ENABLE ALWAYS TRIGGER org_quotas_invalidate;
ALTER TABLE @extschema@.org_quotas ENABLE ALWAYS TRIGGER org_quotas_truncate_invalidate;
ALTER TABLE @extschema@.usage_grants ENABLE ALWAYS TRIGGER usage_grants_invalidate;
ALTER TABLE @extschema@.usage_grants ENABLE ALWAYS TRIGGER usage_grants_truncate_invalidate;
-- (a fresh install has just seeded tiers: its deferred default-tier check
-- runs now, so that the table can be altered, and is deferred again after)
SET CONSTRAINTS @extschema@.tiers_exactly_one_default IMMEDIATE;
ALTER TABLE @extschema@.tiers ENABLE ALWAYS TRIGGER tiers_invalidate;
SET CONSTRAINTS @extschema@.tiers_exactly_one_default DEFERRED;
ALTER TABLE @extschema@.features ENABLE ALWAYS TRIGGER features_invalidate;
ALTER TABLE @extschema@.tier_quotas ENABLE ALWAYS TRIGGER tier_quotas_invalidate;
ALTER TABLE @extschema@.alert_thresholds ENABLE ALWAYS TRIGGER alert_thresholds_invalidate;

------------------------------------------------------------------------------
-- Access levels (docs/security.md).  Nothing is granted to PUBLIC; the
-- extension's owner gives a role a level with grant_access(role, level) and
-- takes it back with revoke_access(role, level).
--   app      the hot path: check_org_limits, record_usage, consume;
--   billing  app, plus the billing functions and the config tables;
--   reader   usage_stats, format_duration and limit_events.
-- rollover and schedule_rollover belong to no level: the owner runs them.
------------------------------------------------------------------------------

-- The levels each role was given.  Privileges overlap (billing contains app,
-- every level has USAGE on the schema), so the ACLs alone cannot say which
-- level a privilege came from: revoke_access reads this table to keep what
-- another level of the role still gives.
--
-- The role is a regrole: it follows ALTER ROLE ... RENAME, and pg_dump
-- writes it as the role's name, as it writes the GRANTs (an OID would name
-- another role, or none, in another cluster).  pg_dump keeps the rows, since
-- it keeps the GRANTs that grant_access made (pg_dump dumps an extension
-- member's privileges that differ from the ones CREATE EXTENSION gave): a
-- restore without them would hold the privileges but not the levels, and a
-- later revoke_access would misjudge what the role still holds.  Rows of
-- dropped roles (DROP ROLE leaves them: roles are cluster-wide and no
-- dependency can point at one from here) are left out of the dump and
-- deleted by the next grant_access or revoke_access.  Roles are not in a
-- database's dump: restored where a role is missing, the GRANTs to it fail,
-- and so does the load of this table, as a whole (docs/security.md).
CREATE TABLE @extschema@._access (
	grantee	regrole NOT NULL,
	level	text NOT NULL CHECK (level IN ('app', 'billing', 'reader')),
	PRIMARY KEY (grantee, level)
);
SELECT pg_catalog.pg_extension_config_dump('@extschema@._access',
	'WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) grantee)');
REVOKE ALL ON @extschema@._access FROM PUBLIC;
COMMENT ON TABLE @extschema@._access IS 'The access levels granted to each role by grant_access (internal; dumped by pg_dump, like the GRANTs).';

-- What each level gives, one privilege on one object a row: the one place
-- that says it.  billing contains app.  An object added later joins its
-- level here (the session functions app, the reporting views reader); the
-- upgrade script does not grant it to the roles that hold the level (a
-- GRANT in an extension script is an initial privilege, which pg_dump
-- omits): the owner grants the levels again (docs/security.md, "Upgrades").
CREATE FUNCTION @extschema@._access_privileges(level text)
RETURNS TABLE (privilege text, kind text, object text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
	SELECT p.privilege, p.kind, p.object
	  FROM (VALUES
		('app', 'USAGE', 'SCHEMA', '@extschema@'),
		-- lets the app declare the result type in its own functions and tables
		('app', 'USAGE', 'TYPE', '@extschema@.limit_status'),
		('app', 'EXECUTE', 'FUNCTION', '@extschema@.check_org_limits(text, text)'),
		('app', 'EXECUTE', 'FUNCTION', '@extschema@.record_usage(text, bigint, text, text, text, timestamptz)'),
		('app', 'EXECUTE', 'FUNCTION', '@extschema@.consume(text, bigint, text, text, text)'),
		('billing', 'EXECUTE', 'FUNCTION', '@extschema@.verify_stripe_signature(text, text, text, integer, timestamptz)'),
		('billing', 'EXECUTE', 'FUNCTION', '@extschema@.apply_subscription_event(jsonb)'),
		('billing', 'EXECUTE', 'FUNCTION', '@extschema@.set_org_tier(text, text)'),
		('billing', 'EXECUTE', 'FUNCTION', '@extschema@.set_org_quota(text, text, bigint)'),
		('billing', 'EXECUTE', 'FUNCTION', '@extschema@.grant_usage(text, bigint, text, text)'),
		('billing', 'SELECT', 'TABLE', '@extschema@.tiers'),
		('billing', 'INSERT', 'TABLE', '@extschema@.tiers'),
		('billing', 'UPDATE', 'TABLE', '@extschema@.tiers'),
		('billing', 'DELETE', 'TABLE', '@extschema@.tiers'),
		('billing', 'SELECT', 'TABLE', '@extschema@.features'),
		('billing', 'INSERT', 'TABLE', '@extschema@.features'),
		('billing', 'UPDATE', 'TABLE', '@extschema@.features'),
		('billing', 'DELETE', 'TABLE', '@extschema@.features'),
		('billing', 'SELECT', 'TABLE', '@extschema@.tier_quotas'),
		('billing', 'INSERT', 'TABLE', '@extschema@.tier_quotas'),
		('billing', 'UPDATE', 'TABLE', '@extschema@.tier_quotas'),
		('billing', 'DELETE', 'TABLE', '@extschema@.tier_quotas'),
		('billing', 'SELECT', 'TABLE', '@extschema@.stripe_prices'),
		('billing', 'INSERT', 'TABLE', '@extschema@.stripe_prices'),
		('billing', 'UPDATE', 'TABLE', '@extschema@.stripe_prices'),
		('billing', 'DELETE', 'TABLE', '@extschema@.stripe_prices'),
		('billing', 'SELECT', 'TABLE', '@extschema@.alert_thresholds'),
		('billing', 'INSERT', 'TABLE', '@extschema@.alert_thresholds'),
		('billing', 'UPDATE', 'TABLE', '@extschema@.alert_thresholds'),
		('billing', 'DELETE', 'TABLE', '@extschema@.alert_thresholds'),
		-- An INSERT into tiers, features, tier_quotas or alert_thresholds
		-- runs the trigger _replace_seed as the inserting role, and it reads
		-- _seeds.  Reading _seeds (the catalog as CREATE EXTENSION seeded it,
		-- which docs/reference.md prints) is granted rather than making the
		-- trigger SECURITY DEFINER: it would then run its dynamic UPDATE as
		-- the extension's owner, a superuser, for any role that may insert.
		('billing', 'SELECT', 'TABLE', '@extschema@._seeds'),
		('reader', 'USAGE', 'SCHEMA', '@extschema@'),
		('reader', 'EXECUTE', 'FUNCTION', '@extschema@.usage_stats(text)'),
		('reader', 'EXECUTE', 'FUNCTION', '@extschema@.format_duration(bigint)'),
		('reader', 'SELECT', 'TABLE', '@extschema@.limit_events')
	  ) AS p(lvl, privilege, kind, object)
	 WHERE p.lvl = level OR (level = 'billing' AND p.lvl = 'app')
$$;
REVOKE ALL ON FUNCTION @extschema@._access_privileges(text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._access_privileges(text) IS 'Internal: the privileges an access level gives, one (privilege, object kind, object) a row.';

-- Whether a role holds every privilege of a level, granted to it directly.
-- A recorded level counts only while this is true: after DROP OWNED BY or a
-- REVOKE by hand the record is stale, and must not keep privileges alive.
CREATE FUNCTION @extschema@._access_held(role regrole, level text) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
	SELECT coalesce(bool_and(EXISTS (
			SELECT 1
			  FROM aclexplode(CASE p.kind
					WHEN 'SCHEMA' THEN (SELECT n.nspacl FROM pg_namespace n WHERE n.oid = p.object::regnamespace)
					WHEN 'TYPE' THEN (SELECT t.typacl FROM pg_type t WHERE t.oid = p.object::regtype)
					WHEN 'FUNCTION' THEN (SELECT f.proacl FROM pg_proc f WHERE f.oid = p.object::regprocedure)
					WHEN 'TABLE' THEN (SELECT c.relacl FROM pg_class c WHERE c.oid = p.object::regclass)
				   END) a
			 WHERE a.grantee = role AND a.privilege_type = p.privilege)), false)
	  FROM @extschema@._access_privileges(level) p
$$;
REVOKE ALL ON FUNCTION @extschema@._access_held(regrole, text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._access_held(regrole, text) IS 'Internal: whether a role directly holds every privilege of an access level.';

-- The checks of grant_access and revoke_access on their arguments.
CREATE FUNCTION @extschema@._access_require(role regrole, level text) RETURNS void
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF role IS NULL THEN
		RAISE EXCEPTION 'tiermeter: role must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF level IS NULL THEN
		RAISE EXCEPTION 'tiermeter: level must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF level NOT IN ('app', 'billing', 'reader') THEN
		RAISE EXCEPTION 'tiermeter: unknown access level "%"', level
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Known access levels: app, billing, reader.';
	END IF;
	-- a regrole made from a number need not name a role (0 is PUBLIC)
	IF NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.oid = role) THEN
		RAISE EXCEPTION 'tiermeter: role % does not exist', role::oid
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- the owner holds every privilege: a REVOKE would take its own away
	IF role = (SELECT n.nspowner FROM pg_namespace n WHERE n.nspname = '@extschema@') THEN
		RAISE EXCEPTION 'tiermeter: role % owns the extension: it needs no access level', role
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
END $$;
REVOKE ALL ON FUNCTION @extschema@._access_require(regrole, text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._access_require(regrole, text) IS 'Internal: errors unless the role exists and is not the extension''s owner, and the level is app, billing or reader.';

-- SECURITY INVOKER: the GRANTs are the caller's own, so a role can give no
-- more than it may give itself.  EXECUTE is revoked from PUBLIC, and a
-- caller that is not the extension's owner (nor a member of it, nor a
-- superuser) is refused even if EXECUTE was granted to it.
CREATE FUNCTION @extschema@.grant_access(role regrole, level text) RETURNS void
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT SECURITY INVOKER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	p	record;
BEGIN
	IF NOT pg_has_role(current_user, (SELECT n.nspowner FROM pg_namespace n WHERE n.nspname = '@extschema@'), 'USAGE') THEN
		RAISE EXCEPTION 'tiermeter: only the extension''s owner may grant or revoke access levels'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	PERFORM @extschema@._access_require(role, level);
	-- one call at a time: revoke_access decides from the levels held
	LOCK TABLE @extschema@._access IN EXCLUSIVE MODE;
	DELETE FROM @extschema@._access a WHERE NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.oid = a.grantee);
	INSERT INTO @extschema@._access (grantee, level) VALUES (role, level) ON CONFLICT DO NOTHING;
	FOR p IN SELECT * FROM @extschema@._access_privileges(level) LOOP
		EXECUTE format('GRANT %s ON %s %s TO %s', p.privilege, p.kind, p.object, role);
	END LOOP;
END $$;
REVOKE ALL ON FUNCTION @extschema@.grant_access(regrole, text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.grant_access(regrole, text) IS 'Gives a role an access level (app, billing or reader): GRANTs its privileges. Idempotent. The extension''s owner only.';

CREATE FUNCTION @extschema@.revoke_access(role regrole, level text) RETURNS void
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT SECURITY INVOKER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	p	record;
BEGIN
	IF NOT pg_has_role(current_user, (SELECT n.nspowner FROM pg_namespace n WHERE n.nspname = '@extschema@'), 'USAGE') THEN
		RAISE EXCEPTION 'tiermeter: only the extension''s owner may grant or revoke access levels'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	PERFORM @extschema@._access_require(role, level);
	-- one call at a time: revoke_access decides from the levels held
	LOCK TABLE @extschema@._access IN EXCLUSIVE MODE;
	DELETE FROM @extschema@._access a WHERE NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.oid = a.grantee);
	-- forget this level, and any other one the role no longer fully holds
	DELETE FROM @extschema@._access a
	 WHERE a.grantee = role
	   AND (a.level = revoke_access.level OR NOT @extschema@._access_held(role, a.level));
	-- take away what this level gives and no level the role keeps gives
	FOR p IN
		SELECT * FROM @extschema@._access_privileges(level)
		EXCEPT
		SELECT q.* FROM @extschema@._access a, @extschema@._access_privileges(a.level) q
		 WHERE a.grantee = role
	LOOP
		EXECUTE format('REVOKE %s ON %s %s FROM %s', p.privilege, p.kind, p.object, role);
	END LOOP;
END $$;
REVOKE ALL ON FUNCTION @extschema@.revoke_access(regrole, text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.revoke_access(regrole, text) IS 'Takes an access level from a role: REVOKEs its privileges but those another level of the role still gives. Idempotent. The extension''s owner only.';

------------------------------------------------------------------------------
-- limit_status gains a column (columns are only ever appended): reserved,
-- what other sessions' uncommitted consume calls hold of the quota, so that
-- a consume refused because of them says so.
------------------------------------------------------------------------------

ALTER TYPE @extschema@.limit_status ADD ATTRIBUTE reserved bigint;
COMMENT ON COLUMN @extschema@.limit_status.reserved IS 'Quota held by other sessions'' consume calls that have not committed yet (0 without the shared-memory cache).';

------------------------------------------------------------------------------
-- The schema must not belong to a role that could replace the extension's
-- objects: a tiermeter schema made beforehand by an ordinary role is
-- refused, at CREATE EXTENSION and at an update.  (A schema owned by another
-- superuser, as a restore by a different superuser leaves it, is fine.)
------------------------------------------------------------------------------

DO $$
DECLARE
	owner	regrole := (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = '@extschema@');
BEGIN
	IF owner <> (SELECT e.extowner FROM pg_catalog.pg_extension e WHERE e.extname = 'tiermeter')
	   AND NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid = owner) THEN
		RAISE EXCEPTION 'tiermeter: schema "@extschema@" belongs to role %, which could replace the extension''s objects', owner
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Drop that schema, or make the role that creates the extension its owner (ALTER SCHEMA @extschema@ OWNER TO ...), then try again.';
	END IF;
END $$;

------------------------------------------------------------------------------
-- A feature with usage cannot be renamed: its ledger rows keep the name they
-- were recorded under, so a rename would orphan them (used 40 -> 0).  The
-- UPDATE itself is refused.
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@._refuse_feature_rename() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	-- SECURITY DEFINER: a role with the billing level may rename features
	-- but not read the ledger
	IF EXISTS (SELECT 1 FROM @extschema@.usage_log u WHERE u.feature = OLD.feature) THEN
		RAISE EXCEPTION 'tiermeter: feature "%" has usage and cannot be renamed', OLD.feature
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Its usage is recorded under that name.',
				  HINT = 'Add a feature with the new name instead, and give it quotas.';
	END IF;
	RETURN NEW;
END $$;
REVOKE ALL ON FUNCTION @extschema@._refuse_feature_rename() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._refuse_feature_rename() IS 'Trigger: refuses renaming a feature that has usage in the ledger.';
CREATE TRIGGER features_refuse_rename BEFORE UPDATE OF feature ON @extschema@.features
	FOR EACH ROW WHEN (OLD.feature IS DISTINCT FROM NEW.feature)
	EXECUTE FUNCTION @extschema@._refuse_feature_rename();
