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

-- Lookups run as the extension's owner: kept in the leader process.
ALTER FUNCTION @extschema@._require_feature(text) PARALLEL RESTRICTED;
ALTER FUNCTION @extschema@._require_tier(text) PARALLEL RESTRICTED;

------------------------------------------------------------------------------
-- NOTIFY tiermeter carries only the event's id and kind: any role that can
-- connect may LISTEN, so the rest (org ids, Stripe ids) is read from
-- limit_events by a role allowed to.
------------------------------------------------------------------------------

-- The trigger only queues the event: the transaction sends the NOTIFY at its
-- commit.  A prepared transaction cannot NOTIFY: its events wait in
-- _unannounced until COMMIT PREPARED, and the session that commits it (or
-- rollover) announces them (docs/design.md, "Two-phase commit").
CREATE OR REPLACE FUNCTION @extschema@._notify_limit_event() RETURNS trigger
AS 'MODULE_PATHNAME', 'tiermeter_notify_trigger' LANGUAGE C;
COMMENT ON FUNCTION @extschema@._notify_limit_event() IS 'Trigger: queues NOTIFY tiermeter with the new limit event''s id and kind only (JSON), sent when the transaction commits (after COMMIT PREPARED for a prepared one).';

-- For the tests: the undo records this backend looked at when its
-- subtransactions rolled back (each at most once, however many savepoints).
CREATE FUNCTION @extschema@._undo_visits() RETURNS bigint
AS 'MODULE_PATHNAME', 'tiermeter_undo_visits' LANGUAGE C;
COMMENT ON FUNCTION @extschema@._undo_visits() IS 'Internal, for the tests: how many undo records of the shared-memory cache this backend looked at when subtransactions rolled back.';
REVOKE ALL ON FUNCTION @extschema@._undo_visits() FROM PUBLIC;

CREATE TABLE @extschema@._unannounced (
	event_id	bigint PRIMARY KEY,
	kind		text NOT NULL
);
COMMENT ON TABLE @extschema@._unannounced IS 'Internal: limit events written by a prepared transaction, not announced yet (a prepared transaction cannot NOTIFY). Emptied by _announce_events().';
REVOKE ALL ON @extschema@._unannounced FROM PUBLIC;

CREATE FUNCTION @extschema@._announce_events() RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	r	record;
	n	bigint := 0;
BEGIN
	-- committed rows only; rows another announcer holds are left to it
	FOR r IN DELETE FROM @extschema@._unannounced u
			  WHERE u.event_id IN (SELECT x.event_id FROM @extschema@._unannounced x
									ORDER BY x.event_id FOR UPDATE SKIP LOCKED)
			  RETURNING u.event_id, u.kind
	LOOP
		PERFORM pg_notify('tiermeter', jsonb_build_object('id', r.event_id, 'kind', r.kind)::text);
		n := n + 1;
	END LOOP;
	RETURN n;
END $$;
COMMENT ON FUNCTION @extschema@._announce_events() IS 'Internal: sends NOTIFY tiermeter (at this transaction''s commit) for the committed limit events of prepared transactions that were not announced yet; returns how many. Run after COMMIT PREPARED and by rollover().';
REVOKE ALL ON FUNCTION @extschema@._announce_events() FROM PUBLIC;

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
CREATE TRIGGER tiers_invalidate_rows AFTER INSERT OR UPDATE OR DELETE ON @extschema@.tiers
	FOR EACH ROW EXECUTE FUNCTION @extschema@._invalidate();
ALTER TABLE @extschema@.tiers ENABLE ALWAYS TRIGGER tiers_invalidate_rows;
SET CONSTRAINTS @extschema@.tiers_exactly_one_default DEFERRED;
ALTER TABLE @extschema@.features ENABLE ALWAYS TRIGGER features_invalidate;
ALTER TABLE @extschema@.tier_quotas ENABLE ALWAYS TRIGGER tier_quotas_invalidate;
ALTER TABLE @extschema@.alert_thresholds ENABLE ALWAYS TRIGGER alert_thresholds_invalidate;
-- A logical replication apply worker fires row triggers only (and
-- TRUNCATE's): the config tables get row triggers too, so a replicated edit
-- reaches the cache and every backend's copy of the config tables.
-- (tiers' is made above, while its deferred check is not pending)
CREATE TRIGGER features_invalidate_rows AFTER INSERT OR UPDATE OR DELETE ON @extschema@.features
	FOR EACH ROW EXECUTE FUNCTION @extschema@._invalidate();
CREATE TRIGGER tier_quotas_invalidate_rows AFTER INSERT OR UPDATE OR DELETE ON @extschema@.tier_quotas
	FOR EACH ROW EXECUTE FUNCTION @extschema@._invalidate();
CREATE TRIGGER alert_thresholds_invalidate_rows AFTER INSERT OR UPDATE OR DELETE ON @extschema@.alert_thresholds
	FOR EACH ROW EXECUTE FUNCTION @extschema@._invalidate();
ALTER TABLE @extschema@.features ENABLE ALWAYS TRIGGER features_invalidate_rows;
ALTER TABLE @extschema@.tier_quotas ENABLE ALWAYS TRIGGER tier_quotas_invalidate_rows;
ALTER TABLE @extschema@.alert_thresholds ENABLE ALWAYS TRIGGER alert_thresholds_invalidate_rows;

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
-- Has distribute() spread the tables over a Citus cluster?
CREATE FUNCTION @extschema@._distributed() RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	found	boolean;
BEGIN
	IF pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
		RETURN false;			-- no Citus
	END IF;
	EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition d WHERE d.logicalrelid = $1)'
		INTO found USING '@extschema@.orgs'::regclass;
	RETURN found;
END $$;
REVOKE ALL ON FUNCTION @extschema@._distributed() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._distributed() IS 'Internal: whether distribute() has distributed the tables (Citus).';

-- Runs a command on every Citus worker (each commits on its own), or fails.
CREATE FUNCTION @extschema@._on_workers(command text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	r	record;
BEGIN
	IF command IS NULL THEN
		RAISE EXCEPTION 'tiermeter: command must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF pg_catalog.to_regprocedure('pg_catalog.run_command_on_workers(text,boolean)') IS NULL THEN
		RAISE EXCEPTION 'tiermeter: Citus is not installed in this database'
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	FOR r IN EXECUTE 'SELECT * FROM pg_catalog.run_command_on_workers($1)' USING command LOOP
		IF NOT r.success THEN
			RAISE EXCEPTION 'tiermeter: on worker %:%: %', r.nodename, r.nodeport, r.result
				USING ERRCODE = 'object_not_in_prerequisite_state';
		END IF;
	END LOOP;
END $$;
REVOKE ALL ON FUNCTION @extschema@._on_workers(text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._on_workers(text) IS 'Internal: runs a command on every Citus worker (each commits on its own) and fails if one fails.';

-- A GRANT or REVOKE of a level's privilege, made here, and on the workers
-- too for a function Citus does not propagate the grants of (one that is
-- not a distributed object: period_bounds, which the views call on the
-- workers).  A distributed function's grant reaches the workers inside
-- this transaction; doing it again from another connection would wait
-- for this one.
CREATE FUNCTION @extschema@._access_apply(command text, kind text, object text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	propagated	boolean;
BEGIN
	IF command IS NULL THEN
		RAISE EXCEPTION 'tiermeter: command must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF command !~ '^(GRANT|REVOKE) ' THEN
		RAISE EXCEPTION 'tiermeter: command must be a GRANT or a REVOKE' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	EXECUTE command;
	IF kind = 'FUNCTION' AND @extschema@._distributed() THEN
		EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_object d
								 WHERE d.classid = ''pg_catalog.pg_proc''::pg_catalog.regclass AND d.objid = $1)'
			INTO propagated USING object::regprocedure;
		IF NOT propagated THEN
			PERFORM @extschema@._on_workers(command);
		END IF;
	END IF;
END $$;
REVOKE ALL ON FUNCTION @extschema@._access_apply(text, text, text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._access_apply(text, text, text) IS 'Internal: runs a GRANT or REVOKE of an access level''s privilege, and on the Citus workers too for a function whose grants Citus does not propagate.';

CREATE FUNCTION @extschema@._access_privileges(level text)
RETURNS TABLE (privilege text, kind text, object text)
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
	SELECT p.privilege, p.kind, p.object
	  FROM (VALUES
		('app', 'USAGE', 'SCHEMA', '@extschema@'),
		-- lets the app declare the result type in its own functions and tables
		('app', 'USAGE', 'TYPE', '@extschema@.limit_status'),
		('app', 'EXECUTE', 'FUNCTION', '@extschema@.check_org_limits(text, text)'),
		('app', 'EXECUTE', 'FUNCTION', '@extschema@.record_usage(text, bigint, text, text, text, timestamptz)'),
		('app', 'EXECUTE', 'FUNCTION', '@extschema@.consume(text, bigint, text, text, text)'),
		('app', 'USAGE', 'TYPE', '@extschema@.session_status'),
		('app', 'EXECUTE', 'FUNCTION', '@extschema@.begin_session(text, text, text)'),
		('app', 'EXECUTE', 'FUNCTION', '@extschema@.touch_session(text, text)'),
		('app', 'EXECUTE', 'FUNCTION', '@extschema@.end_session(text, text)'),
		('app', 'EXECUTE', 'FUNCTION', '@extschema@.check_session_limits(text, text)'),
		('billing', 'EXECUTE', 'FUNCTION', '@extschema@.verify_stripe_signature(text, text, text, integer, timestamptz)'),
		('billing', 'EXECUTE', 'FUNCTION', '@extschema@.apply_subscription_event(jsonb)'),
		('billing', 'EXECUTE', 'FUNCTION', '@extschema@.link_stripe_customer(text, text)'),
		('billing', 'EXECUTE', 'FUNCTION', '@extschema@.link_stripe_subscription(text, text)'),
		('billing', 'EXECUTE', 'FUNCTION', '@extschema@.reapply_stripe_events()'),
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
		('reader', 'SELECT', 'TABLE', '@extschema@.limit_events'),
		('reader', 'EXECUTE', 'FUNCTION', '@extschema@.cache_stats()'),
		-- the views compute periods with it, as their reader
		('reader', 'EXECUTE', 'FUNCTION', '@extschema@.period_bounds(timestamptz, timestamptz, timestamptz, timestamptz)'),
		('reader', 'SELECT', 'TABLE', '@extschema@.org_usage'),
		('reader', 'SELECT', 'TABLE', '@extschema@.tier_summary'),
		('reader', 'SELECT', 'TABLE', '@extschema@.orgs_near_limit'),
		('reader', 'SELECT', 'TABLE', '@extschema@.usage_history')
	  ) AS p(lvl, privilege, kind, object)
	 WHERE p.lvl = level OR (level = 'billing' AND p.lvl = 'app')
	UNION ALL
	-- Once distribute() has spread the tables over a Citus cluster, Citus
	-- runs a view's queries on the workers' shards as the reader itself,
	-- not as the view's owner: the reader then reads the tables the views
	-- read (docs/security.md, "On a Citus cluster").
	SELECT 'SELECT', 'TABLE', '@extschema@.' || t
	  FROM unnest(ARRAY['orgs', 'usage_log', 'usage_grants', 'org_quotas',
						'tiers', 'features', 'tier_quotas', 'alert_thresholds']) AS t
	 WHERE level = 'reader' AND @extschema@._distributed()
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

-- What grant_access and revoke_access do first, once they know the caller
-- owns the extension: check the arguments, then take the table of levels (one call at a time: revoke_access
-- decides from the levels held) and forget the levels of dropped roles.
CREATE FUNCTION @extschema@._access_require(role regrole, level text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
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
	LOCK TABLE @extschema@._access IN EXCLUSIVE MODE;
	DELETE FROM @extschema@._access a WHERE NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.oid = a.grantee);
END $$;
REVOKE ALL ON FUNCTION @extschema@._access_require(regrole, text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._access_require(regrole, text) IS 'Internal: errors unless the role exists and is not its owner, and the level is app, billing or reader; then locks the table of levels and forgets dropped roles.';

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
	-- first, before any internal function (not executable by others)
	IF NOT pg_has_role(current_user, (SELECT n.nspowner FROM pg_namespace n WHERE n.nspname = '@extschema@'), 'USAGE') THEN
		RAISE EXCEPTION 'tiermeter: only the extension''s owner may grant or revoke access levels'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	PERFORM @extschema@._access_require(role, level);
	IF @extschema@._distributed() THEN
		-- Citus: GRANTs on distributed tables, one connection per node
		PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
	END IF;
	INSERT INTO @extschema@._access (grantee, level) VALUES (role, level) ON CONFLICT DO NOTHING;
	FOR p IN SELECT * FROM @extschema@._access_privileges(level) LOOP
		PERFORM @extschema@._access_apply(format('GRANT %s ON %s %s TO %s', p.privilege, p.kind, p.object, role),
										   p.kind, p.object);
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
	-- first, before any internal function (not executable by others)
	IF NOT pg_has_role(current_user, (SELECT n.nspowner FROM pg_namespace n WHERE n.nspname = '@extschema@'), 'USAGE') THEN
		RAISE EXCEPTION 'tiermeter: only the extension''s owner may grant or revoke access levels'
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	PERFORM @extschema@._access_require(role, level);
	IF @extschema@._distributed() THEN
		PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
	END IF;
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
		PERFORM @extschema@._access_apply(format('REVOKE %s ON %s %s FROM %s', p.privilege, p.kind, p.object, role),
										   p.kind, p.object);
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

------------------------------------------------------------------------------
-- Stripe (docs/stripe.md).
--
-- Input is checked before it is used: timestamps are Unix seconds (a string,
-- a fraction, a value out of range or a created more than a day ahead, such
-- as milliseconds, is malformed), metadata naming an org or a tier holds
-- strings, ids are at most 255 characters.  Each is a tiermeter: 22023
-- error that changes nothing.
--
-- State per subscription: each subscription belongs to one org (the first
-- one it was mapped to; metadata naming another org, a Checkout or a link
-- by hand moves it, a customer's mapping never does) and keeps the status,
-- tier, period, anchor and billing interval of its last applied event.  An
-- org's tier, period, anchor and Stripe ids are recomputed from its live
-- subscriptions after each change, so ending one subscription falls back on
-- the others.  Customers are linked to orgs in stripe_customers (by an event
-- whose metadata names the org, a Checkout, or by hand).  An unmapped event
-- keeps its payload, and is re-applied when a Checkout links its
-- subscription or customer, or by reapply_stripe_events().
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@._stripe_ts(v jsonb, what text) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	n	numeric;
BEGIN
	IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
		RETURN NULL;
	END IF;
	IF jsonb_typeof(v) = 'number' THEN
		n := (v #>> '{}')::numeric;
	END IF;
	-- 253402300799 is 9999-12-31 23:59:59 UTC
	IF n IS NULL OR n <> trunc(n) OR n < 0 OR n > 253402300799 THEN
		RAISE EXCEPTION 'tiermeter: malformed Stripe event: % is not a Unix time in seconds', what
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('%s = %s', what, v),
				  HINT = 'Pass the webhook body as received: Stripe sends timestamps as integer Unix seconds.';
	END IF;
	RETURN to_timestamp(n::double precision);
END $$;
REVOKE ALL ON FUNCTION @extschema@._stripe_ts(jsonb, text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._stripe_ts(jsonb, text) IS 'Internal: a Stripe Unix timestamp (integer seconds) as timestamptz; NULL when absent; an error otherwise.';

-- Every subscription's state, from its last applied event.  org_id is the
-- org it belongs to; a subscription linked by a Checkout or by hand before
-- any event of it has a row with no state yet (last_created -infinity).
ALTER TABLE @extschema@.stripe_subscriptions
	ADD COLUMN customer_id				text,
	ADD COLUMN status					text,
	ADD COLUMN live						boolean NOT NULL DEFAULT false,
	ADD COLUMN tier_id					text REFERENCES @extschema@.tiers ON UPDATE CASCADE ON DELETE SET NULL,
	ADD COLUMN subscription_created		timestamptz,
	ADD COLUMN period_start				timestamptz,
	ADD COLUMN period_end				timestamptz,
	ADD COLUMN billing_cycle_anchor		timestamptz,
	ADD COLUMN billing_interval			text,
	ADD COLUMN billing_interval_count	integer;
CREATE INDEX stripe_subscriptions_org ON @extschema@.stripe_subscriptions (org_id);
COMMENT ON TABLE @extschema@.stripe_subscriptions IS 'Per Stripe subscription: the org it belongs to, the created of its last applied event (older events are stale), and the state that event gave (status, live, tier, period, anchor, billing interval).';

-- 0.1.0 kept no state per subscription: a subscription that is its org's
-- current one takes the org's tier, period and anchor, live unless the org
-- is on the default tier or the subscription's last event deleted it; the
-- customer comes from its last event.  (The billing interval is unknown:
-- docs/stripe.md says how a period is then taken.)
UPDATE @extschema@.stripe_subscriptions s
   SET customer_id = e.customer_id
  FROM @extschema@.stripe_events e
 WHERE e.event_id = s.last_event_id;
UPDATE @extschema@.stripe_subscriptions s
   SET live = NOT t.is_default,
	   tier_id = CASE WHEN NOT t.is_default THEN o.tier_id END,
	   period_start = o.period_start,
	   period_end = o.period_end,
	   billing_cycle_anchor = o.billing_anchor
  FROM @extschema@.orgs o
  JOIN @extschema@.tiers t ON t.tier_id = o.tier_id
 WHERE o.org_id = s.org_id AND o.stripe_subscription_id = s.subscription_id;
UPDATE @extschema@.stripe_subscriptions s
   SET live = false, tier_id = NULL
  FROM @extschema@.stripe_events e
 WHERE e.event_id = s.last_event_id AND e.type = 'customer.subscription.deleted';

-- Which org each Stripe customer is linked to: the latest to claim it.
CREATE TABLE @extschema@.stripe_customers (
	customer_id	text PRIMARY KEY,
	org_id		text NOT NULL,
	linked_by	text NOT NULL CHECK (linked_by IN ('event', 'checkout', 'hand')),
	event_id	text,
	linked_at	timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_customers_org ON @extschema@.stripe_customers (org_id);
SELECT pg_catalog.pg_extension_config_dump('@extschema@.stripe_customers', '');
REVOKE ALL ON @extschema@.stripe_customers FROM PUBLIC;
COMMENT ON TABLE @extschema@.stripe_customers IS 'The org each Stripe customer is linked to (the latest claim: an event whose metadata names the org, a Checkout, or link_stripe_customer): used for a subscription that belongs to no org yet.';

-- 0.1.0 kept a customer's org as orgs.stripe_customer_id.
INSERT INTO @extschema@.stripe_customers (customer_id, org_id, linked_by, linked_at)
SELECT DISTINCT ON (o.stripe_customer_id) o.stripe_customer_id, o.org_id, 'event', o.updated_at
  FROM @extschema@.orgs o
 WHERE o.stripe_customer_id IS NOT NULL
 ORDER BY o.stripe_customer_id, o.updated_at DESC, o.org_id;

-- An unmapped event keeps its payload, to be re-applied.
ALTER TABLE @extschema@.stripe_events ADD COLUMN payload jsonb;
COMMENT ON TABLE @extschema@.stripe_events IS 'Every Stripe event received (id, type, created, org, outcome, received time, and the payload of an unmapped one), and a row per link or re-application made by tiermeter (type tiermeter.*): the idempotency key and the audit trail.';

-- A stripe_unmapped event with no org known has org_id NULL (0.1.0 wrote '').
ALTER TABLE @extschema@.limit_events ALTER COLUMN org_id DROP NOT NULL;
UPDATE @extschema@.limit_events SET org_id = NULL WHERE kind = 'stripe_unmapped' AND org_id = '';

-- Events, Checkouts and links of one customer or subscription run one at a
-- time: the customer first, then the subscription.
CREATE FUNCTION @extschema@._stripe_lock(customer_id text, subscription_id text) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF customer_id IS NOT NULL THEN
		PERFORM pg_advisory_xact_lock(hashtext('tiermeter.stripe'), hashtext('customer ' || customer_id));
	END IF;
	IF subscription_id IS NOT NULL THEN
		PERFORM pg_advisory_xact_lock(hashtext('tiermeter.stripe'), hashtext('subscription ' || subscription_id));
	END IF;
END $$;
REVOKE ALL ON FUNCTION @extschema@._stripe_lock(text, text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._stripe_lock(text, text) IS 'Internal: serializes the Stripe events, Checkouts and links of one customer and one subscription (transaction advisory locks).';

-- An org's state from its subscriptions: the highest-ranked tier among the
-- live ones (ties: the most recently created subscription), with that
-- subscription's period, anchor and ids; none live: the default tier, and
-- the period, anchor and ids of the subscription just changed if it is the
-- org's current one (or the org has none), else those the org had (less
-- the id of a subscription that has moved to another org).  A monthly
-- price gives Stripe's period exactly; another interval gives the month
-- that contains now() from the anchor; an unknown interval gives Stripe's
-- period when it is at most a month long, else that month.
-- Writes tier_changed (with cause) when the tier changes.
CREATE FUNCTION @extschema@._stripe_recompute(org_id text, subscription_id text, cause jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE CALLED ON NULL INPUT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	o			@extschema@.orgs;
	s			@extschema@.stripe_subscriptions;
	v_tier		text;
	v_chosen	text;
	v_anchor	timestamptz;
	v_ps		timestamptz;
	v_pe		timestamptz;
	v_customer	text;
	v_sub		text;
BEGIN
	SELECT * INTO o FROM @extschema@.orgs x WHERE x.org_id = _stripe_recompute.org_id FOR UPDATE;
	IF NOT FOUND THEN
		RETURN;
	END IF;
	SELECT x.* INTO s
	  FROM @extschema@.stripe_subscriptions x
	  JOIN @extschema@.tiers t ON t.tier_id = x.tier_id
	 WHERE x.org_id = o.org_id AND x.live
	 ORDER BY t.rank DESC, x.subscription_created DESC NULLS LAST, x.subscription_id DESC
	 LIMIT 1;
	IF FOUND THEN
		v_tier := s.tier_id;
		v_chosen := s.subscription_id;
	ELSE
		SELECT t.tier_id INTO v_tier FROM @extschema@.tiers t WHERE t.is_default;
		SELECT x.* INTO s
		  FROM @extschema@.stripe_subscriptions x
		 WHERE x.subscription_id = _stripe_recompute.subscription_id AND x.org_id = o.org_id
		   AND (o.stripe_subscription_id IS NULL OR o.stripe_subscription_id = x.subscription_id);
	END IF;

	v_anchor := o.billing_anchor;
	v_ps := o.period_start;
	v_pe := o.period_end;
	IF s.subscription_id IS NOT NULL THEN
		v_anchor := coalesce(s.billing_cycle_anchor, s.period_start, o.billing_anchor);
		IF s.period_start IS NOT NULL
		   AND ((s.billing_interval = 'month' AND s.billing_interval_count = 1)
				OR (s.billing_interval IS NULL
					AND s.period_end <= (@extschema@.period_bounds(s.period_start, s.period_start)).period_end)) THEN
			v_ps := s.period_start;
			v_pe := s.period_end;
		ELSIF s.billing_cycle_anchor IS NOT NULL OR s.period_start IS NOT NULL THEN
			SELECT p.period_start, p.period_end INTO v_ps, v_pe
			  FROM @extschema@.period_bounds(v_anchor, now()) p;
		END IF;
	END IF;
	v_customer := coalesce(s.customer_id, o.stripe_customer_id);
	v_sub := coalesce(s.subscription_id, o.stripe_subscription_id);
	IF s.subscription_id IS NULL AND EXISTS (
			SELECT 1 FROM @extschema@.stripe_subscriptions x
			 WHERE x.subscription_id = o.stripe_subscription_id AND x.org_id <> o.org_id) THEN
		v_sub := NULL;			-- the org's subscription moved to another org
	END IF;

	IF (o.tier_id, o.billing_anchor, o.period_start, o.period_end, o.stripe_customer_id, o.stripe_subscription_id)
	   IS DISTINCT FROM (v_tier, v_anchor, v_ps, v_pe, v_customer, v_sub) THEN
		UPDATE @extschema@.orgs x
		   SET tier_id = v_tier, billing_anchor = v_anchor, period_start = v_ps, period_end = v_pe,
			   stripe_customer_id = v_customer, stripe_subscription_id = v_sub, updated_at = now()
		 WHERE x.org_id = o.org_id;
	END IF;
	IF o.tier_id IS DISTINCT FROM v_tier THEN
		INSERT INTO @extschema@.limit_events (org_id, kind, payload)
		VALUES (o.org_id, 'tier_changed',
				jsonb_build_object('from', o.tier_id, 'to', v_tier, 'subscription', v_chosen)
				|| coalesce(cause, '{}'));
	END IF;
END $$;
REVOKE ALL ON FUNCTION @extschema@._stripe_recompute(text, text, jsonb) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._stripe_recompute(text, text, jsonb) IS 'Internal: sets an org''s tier, period, anchor and Stripe ids from its live subscriptions (the highest-ranked tier, then the newest); writes tier_changed when the tier changes.';

-- Links a customer and/or a subscription to an org (creating the org):
-- the customer's link moves to it (the latest claim wins); a subscription
-- with no row gets one with no state yet, one of another org moves to it
-- (both orgs are recomputed).  Returns whether anything changed.
CREATE FUNCTION @extschema@._stripe_link(org_id text, customer_id text, subscription_id text,
	linked_by text, event_id text) RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE CALLED ON NULL INPUT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	v_changed	boolean := false;
	v_old		text;
	v_found		boolean;
	v_org		text;
BEGIN
	IF linked_by IS NULL THEN
		RAISE EXCEPTION 'tiermeter: linked_by must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF linked_by NOT IN ('event', 'checkout', 'hand') THEN
		RAISE EXCEPTION 'tiermeter: linked_by must be event, checkout or hand' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM @extschema@._ensure_org(org_id);
	IF customer_id IS NOT NULL THEN
		INSERT INTO @extschema@.stripe_customers AS c (customer_id, org_id, linked_by, event_id)
		VALUES (_stripe_link.customer_id, _stripe_link.org_id, _stripe_link.linked_by, _stripe_link.event_id)
		ON CONFLICT ON CONSTRAINT stripe_customers_pkey DO UPDATE
		   SET org_id = EXCLUDED.org_id, linked_by = EXCLUDED.linked_by, event_id = EXCLUDED.event_id,
			   linked_at = now()
		 WHERE c.org_id <> EXCLUDED.org_id;
		v_changed := FOUND;
		UPDATE @extschema@.orgs o SET stripe_customer_id = _stripe_link.customer_id, updated_at = now()
		 WHERE o.org_id = _stripe_link.org_id AND o.stripe_customer_id IS NULL;
	END IF;
	IF subscription_id IS NOT NULL THEN
		SELECT s.org_id, true INTO v_old, v_found
		  FROM @extschema@.stripe_subscriptions s WHERE s.subscription_id = _stripe_link.subscription_id;
		IF v_found IS NULL THEN
			INSERT INTO @extschema@.stripe_subscriptions (subscription_id, org_id, last_created, customer_id)
			VALUES (_stripe_link.subscription_id, _stripe_link.org_id, '-infinity', _stripe_link.customer_id);
			v_changed := true;
		ELSIF v_old IS DISTINCT FROM _stripe_link.org_id THEN
			UPDATE @extschema@.stripe_subscriptions s SET org_id = _stripe_link.org_id
			 WHERE s.subscription_id = _stripe_link.subscription_id;
			v_changed := true;
			-- both orgs, in a fixed order
			FOR v_org IN SELECT x FROM unnest(ARRAY[v_old, _stripe_link.org_id]) AS x WHERE x IS NOT NULL ORDER BY x LOOP
				PERFORM @extschema@._stripe_recompute(v_org, _stripe_link.subscription_id,
					jsonb_build_object('source', CASE _stripe_link.linked_by WHEN 'checkout' THEN 'stripe'
																			ELSE 'link_stripe_subscription' END,
									   'event_id', _stripe_link.event_id));
			END LOOP;
		END IF;
	END IF;
	RETURN v_changed;
END $$;
REVOKE ALL ON FUNCTION @extschema@._stripe_link(text, text, text, text, text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._stripe_link(text, text, text, text, text) IS 'Internal: links a Stripe customer and/or subscription to an org (a subscription of another org moves, and both orgs are recomputed); returns whether anything changed.';

-- Applies one event: apply_subscription_event (replay_by NULL: the event is
-- claimed by its id, and a replay is a duplicate), or the re-application of
-- a stored unmapped event (replay_by says who re-applies it: the row must
-- still be unmapped, else nothing is done and the answer is 'duplicate').
CREATE FUNCTION @extschema@._stripe_event(event jsonb, replay_by text) RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE CALLED ON NULL INPUT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	v_id		text;
	v_type		text;
	v_created	timestamptz;
	v_obj		jsonb;
	v_meta		jsonb;
	v_item		jsonb;
	v_rec		jsonb;
	v_interval	text;
	v_count		integer;
	v_sub		text;
	v_customer	text;
	v_org		text;
	v_by_meta	boolean;
	v_status	text;
	v_live		boolean;
	v_tier		text;
	v_ps		timestamptz;
	v_pe		timestamptz;
	v_anchor	timestamptz;
	v_born		timestamptz;
	v_srow		@extschema@.stripe_subscriptions;
	v_last_type	text;
	v_last_at	timestamptz;
	v_received	timestamptz;
	v_prev		text;
	v_outcome	text;
	v_why		text;
	v_key		text;
	v_x			text;
	v_handled	boolean;
BEGIN
	-- malformed input is an error, and changes nothing
	IF event IS NULL THEN
		RAISE EXCEPTION 'tiermeter: event must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF jsonb_typeof(event) <> 'object' THEN
		PERFORM @extschema@._stripe_malformed('not a JSON object');
	END IF;
	IF jsonb_typeof(event->'id') IS DISTINCT FROM 'string' OR event->>'id' = '' THEN
		PERFORM @extschema@._stripe_malformed('no id');
	END IF;
	IF length(event->>'id') > 255 THEN
		PERFORM @extschema@._stripe_malformed('id is longer than 255 characters');
	END IF;
	IF jsonb_typeof(event->'type') IS DISTINCT FROM 'string' OR event->>'type' = '' THEN
		PERFORM @extschema@._stripe_malformed('no type');
	END IF;
	IF jsonb_typeof(event->'data'->'object') IS DISTINCT FROM 'object' THEN
		PERFORM @extschema@._stripe_malformed('no data.object');
	END IF;
	v_created := @extschema@._stripe_ts(event->'created', 'created');
	IF v_created IS NULL THEN
		PERFORM @extschema@._stripe_malformed('no created timestamp');
	END IF;
	IF v_created > now() + interval '1 day' THEN
		RAISE EXCEPTION 'tiermeter: malformed Stripe event: created is more than a day ahead of the database clock'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('created = %s (%s)', event->'created', v_created),
				  HINT = 'Stripe''s created is in Unix seconds, not milliseconds.';
	END IF;
	v_id := event->>'id';
	v_type := event->>'type';
	v_obj := event->'data'->'object';

	-- the period: on the first item (API 2025-03-31 and later), else on the
	-- subscription (older API versions); checked before anything is written
	v_item := v_obj->'items'->'data'->0;
	IF jsonb_typeof(v_item->'current_period_start') IS DISTINCT FROM 'null'
	   AND v_item->'current_period_start' IS NOT NULL THEN
		v_ps := @extschema@._stripe_ts(v_item->'current_period_start', 'items.data[0].current_period_start');
		v_pe := @extschema@._stripe_ts(v_item->'current_period_end', 'items.data[0].current_period_end');
	ELSE
		v_ps := @extschema@._stripe_ts(v_obj->'current_period_start', 'current_period_start');
		v_pe := @extschema@._stripe_ts(v_obj->'current_period_end', 'current_period_end');
	END IF;
	IF v_ps IS NOT NULL AND v_pe IS NOT NULL AND v_pe <= v_ps THEN
		RAISE EXCEPTION 'tiermeter: the subscription period must end after it starts'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('current_period_start = %s, current_period_end = %s', v_ps, v_pe);
	END IF;
	IF v_ps IS NULL OR v_pe IS NULL THEN
		v_ps := NULL;
		v_pe := NULL;
	END IF;
	v_anchor := @extschema@._stripe_ts(v_obj->'billing_cycle_anchor', 'billing_cycle_anchor');
	-- the billing interval: the first item's price.recurring, else its plan,
	-- else the subscription's plan (older API versions)
	v_rec := CASE
		WHEN jsonb_typeof(v_item->'price'->'recurring') = 'object' THEN v_item->'price'->'recurring'
		WHEN jsonb_typeof(v_item->'plan') = 'object' THEN v_item->'plan'
		WHEN jsonb_typeof(v_obj->'plan') = 'object' THEN v_obj->'plan' END;
	IF jsonb_typeof(v_rec->'interval') = 'string' THEN
		v_interval := v_rec->>'interval';
		IF jsonb_typeof(v_rec->'interval_count') = 'number'
		   AND (v_rec->>'interval_count')::numeric BETWEEN 1 AND 2147483647
		   AND (v_rec->>'interval_count')::numeric = trunc((v_rec->>'interval_count')::numeric) THEN
			v_count := (v_rec->>'interval_count')::integer;
		ELSIF coalesce(jsonb_typeof(v_rec->'interval_count'), 'null') = 'null' THEN
			v_count := 1;
		ELSE
			PERFORM @extschema@._stripe_malformed(format('the billing interval_count %s is not a positive integer',
														 v_rec->'interval_count'));
		END IF;
	ELSIF coalesce(jsonb_typeof(v_rec->'interval'), 'null') <> 'null' THEN
		PERFORM @extschema@._stripe_malformed('the billing interval must be a string');
	END IF;
	-- the metadata that names an org or a tier holds strings
	IF jsonb_typeof(v_obj->'metadata') = 'object' THEN
		FOREACH v_key IN ARRAY ARRAY['organizationId', 'org_id', 'tier'] LOOP
			IF jsonb_typeof(v_obj->'metadata'->v_key) NOT IN ('string', 'null') THEN
				PERFORM @extschema@._stripe_malformed(format('metadata.%s must be a string', v_key));
			END IF;
		END LOOP;
	END IF;
	v_meta := CASE WHEN jsonb_typeof(v_obj->'metadata') = 'object' THEN v_obj->'metadata' ELSE '{}' END;
	v_customer := CASE jsonb_typeof(v_obj->'customer')
		WHEN 'string' THEN v_obj->>'customer'
		WHEN 'object' THEN v_obj->'customer'->>'id' END;
	IF v_type = 'checkout.session.completed' THEN
		v_sub := CASE jsonb_typeof(v_obj->'subscription')
			WHEN 'string' THEN v_obj->>'subscription'
			WHEN 'object' THEN v_obj->'subscription'->>'id' END;
	ELSE
		v_sub := CASE WHEN v_obj->>'object' = 'subscription' THEN v_obj->>'id' END;
	END IF;
	IF length(v_sub) > 255 OR length(v_customer) > 255 THEN
		PERFORM @extschema@._stripe_malformed('a subscription or customer id is longer than 255 characters');
	END IF;
	v_handled := v_type IN ('customer.subscription.created', 'customer.subscription.updated',
							'customer.subscription.deleted', 'customer.subscription.paused',
							'customer.subscription.resumed', 'checkout.session.completed');

	IF replay_by IS NULL THEN
		-- idempotent by event id, forever: claim it (a concurrent twin waits here)
		INSERT INTO @extschema@.stripe_events (event_id, type, created)
		VALUES (v_id, v_type, v_created)
		ON CONFLICT (event_id) DO NOTHING;
		IF NOT FOUND THEN
			RETURN 'duplicate';
		END IF;
		v_received := now();
	END IF;

	-- what only the events applied need
	IF v_type LIKE 'customer.subscription.%' AND v_handled
	   AND (v_obj->>'object' IS DISTINCT FROM 'subscription' OR jsonb_typeof(v_obj->'id') IS DISTINCT FROM 'string'
			OR v_obj->>'id' = '') THEN
		PERFORM @extschema@._stripe_malformed('data.object is not a Subscription with an id');
	END IF;
	IF v_type = 'checkout.session.completed'
	   AND coalesce(jsonb_typeof(v_obj->'client_reference_id'), 'null') NOT IN ('string', 'null') THEN
		PERFORM @extschema@._stripe_malformed('client_reference_id must be a string');
	END IF;
	IF v_handled THEN
		v_born := @extschema@._stripe_ts(v_obj->'created', 'data.object.created');
		-- one at a time per customer and subscription
		PERFORM @extschema@._stripe_lock(v_customer, v_sub);
	END IF;

	IF replay_by IS NOT NULL THEN
		SELECT e.outcome, e.received_at INTO v_prev, v_received
		  FROM @extschema@.stripe_events e WHERE e.event_id = v_id FOR UPDATE;
		IF v_prev IS DISTINCT FROM 'unmapped' THEN
			RETURN 'duplicate';			-- gone, or re-applied already
		END IF;
	END IF;
	v_status := v_obj->>'status';

	<<decide>>
	BEGIN
		IF NOT v_handled THEN
			v_outcome := 'ignored';
			EXIT decide;
		END IF;

		-- Checkout: the org in client_reference_id (or the metadata) gets the
		-- session's customer and subscription
		IF v_type = 'checkout.session.completed' THEN
			v_org := coalesce(nullif(v_obj->>'client_reference_id', ''), nullif(v_meta->>'organizationId', ''),
							  nullif(v_meta->>'org_id', ''));
			IF v_org IS NULL OR (v_customer IS NULL AND v_sub IS NULL) THEN
				v_outcome := 'ignored';
				EXIT decide;
			END IF;
			PERFORM @extschema@._stripe_link(v_org, v_customer, v_sub, 'checkout', v_id);
			v_outcome := 'applied';
			EXIT decide;
		END IF;

		-- the org: metadata, else the org the subscription belongs to, else
		-- the org its customer is linked to
		v_org := coalesce(nullif(v_meta->>'organizationId', ''), nullif(v_meta->>'org_id', ''));
		v_by_meta := v_org IS NOT NULL;
		SELECT s.* INTO v_srow FROM @extschema@.stripe_subscriptions s WHERE s.subscription_id = v_sub;
		v_org := coalesce(v_org, v_srow.org_id);
		IF v_org IS NULL AND v_customer IS NOT NULL THEN
			SELECT c.org_id INTO v_org FROM @extschema@.stripe_customers c WHERE c.customer_id = v_customer;
		END IF;

		-- the status: incomplete (or a status we do not know) changes nothing yet
		IF v_type = 'customer.subscription.deleted'
		   OR v_status IN ('canceled', 'unpaid', 'incomplete_expired', 'paused') THEN
			v_live := false;
		ELSIF v_status IN ('active', 'trialing', 'past_due') THEN
			v_live := true;
		ELSE
			v_outcome := 'ignored';
			EXIT decide;
		END IF;
		IF v_org IS NULL THEN
			v_outcome := 'unmapped';
			v_why := 'no organizationId or org_id in metadata, and neither the subscription nor the customer is linked to an org';
			EXIT decide;
		END IF;

		-- the tier of a live subscription
		IF v_live THEN
			SELECT p.tier_id INTO v_tier FROM @extschema@.stripe_prices p
			 WHERE p.price_id = v_item->'price'->>'id';
			IF v_tier IS NULL THEN
				SELECT p.tier_id INTO v_tier FROM @extschema@.stripe_prices p
				 WHERE p.price_id = v_item->'price'->>'lookup_key';
			END IF;
			IF v_tier IS NULL THEN
				SELECT t.tier_id INTO v_tier FROM @extschema@.tiers t
				 WHERE t.tier_id = v_meta->>'tier';
			END IF;
			IF v_tier IS NULL THEN
				v_outcome := 'unmapped';
				v_why := format('price %s (lookup key %s) is not in tiermeter.stripe_prices, and metadata.tier names no tier',
								coalesce(v_item->'price'->>'id', 'none'),
								coalesce(v_item->'price'->>'lookup_key', 'none'));
				EXIT decide;
			END IF;
		END IF;

		-- the order of events, per subscription: an older one is stale; of
		-- two with the same created second, the one received later wins,
		-- except after a deletion (Stripe never revives a subscription)
		IF v_srow.subscription_id IS NOT NULL AND v_srow.last_event_id IS NOT NULL THEN
			SELECT e.type, e.received_at INTO v_last_type, v_last_at
			  FROM @extschema@.stripe_events e WHERE e.event_id = v_srow.last_event_id;
			IF v_created < v_srow.last_created
			   OR (v_created = v_srow.last_created
				   AND (v_last_type = 'customer.subscription.deleted' OR v_received < v_last_at)) THEN
				v_outcome := 'stale';
				EXIT decide;
			END IF;
		END IF;

		-- apply it to the subscription, then to its org (and the org it left):
		-- usage is never touched
		PERFORM @extschema@._ensure_org(v_org);
		INSERT INTO @extschema@.stripe_subscriptions AS s
			(subscription_id, org_id, last_created, last_event_id, customer_id, status, live, tier_id,
			 subscription_created, period_start, period_end, billing_cycle_anchor,
			 billing_interval, billing_interval_count)
		VALUES (v_sub, v_org, v_created, v_id, v_customer, v_status, v_live, v_tier,
				v_born, v_ps, v_pe, v_anchor, v_interval, v_count)
		ON CONFLICT ON CONSTRAINT stripe_subscriptions_pkey DO UPDATE
		   SET org_id = EXCLUDED.org_id,
			   last_created = EXCLUDED.last_created,
			   last_event_id = EXCLUDED.last_event_id,
			   customer_id = coalesce(EXCLUDED.customer_id, s.customer_id),
			   status = EXCLUDED.status,
			   live = EXCLUDED.live,
			   tier_id = EXCLUDED.tier_id,
			   subscription_created = coalesce(EXCLUDED.subscription_created, s.subscription_created),
			   period_start = CASE WHEN EXCLUDED.period_start IS NULL THEN s.period_start ELSE EXCLUDED.period_start END,
			   period_end = CASE WHEN EXCLUDED.period_start IS NULL THEN s.period_end ELSE EXCLUDED.period_end END,
			   billing_cycle_anchor = coalesce(EXCLUDED.billing_cycle_anchor, s.billing_cycle_anchor),
			   billing_interval = CASE WHEN EXCLUDED.billing_interval IS NULL THEN s.billing_interval
									   ELSE EXCLUDED.billing_interval END,
			   billing_interval_count = CASE WHEN EXCLUDED.billing_interval IS NULL THEN s.billing_interval_count
											 ELSE EXCLUDED.billing_interval_count END;
		-- the customer: an org named in metadata claims it (the latest claim
		-- wins); otherwise it is linked only if no org has it yet
		IF v_customer IS NOT NULL THEN
			INSERT INTO @extschema@.stripe_customers AS c (customer_id, org_id, linked_by, event_id)
			VALUES (v_customer, v_org, 'event', v_id)
			ON CONFLICT ON CONSTRAINT stripe_customers_pkey DO UPDATE
			   SET org_id = EXCLUDED.org_id, linked_by = EXCLUDED.linked_by, event_id = EXCLUDED.event_id,
				   linked_at = now()
			 WHERE v_by_meta AND c.org_id <> EXCLUDED.org_id;
		END IF;
		FOR v_x IN SELECT x FROM unnest(ARRAY[v_org, CASE WHEN v_srow.org_id <> v_org THEN v_srow.org_id END]) AS x
					WHERE x IS NOT NULL ORDER BY x LOOP
			PERFORM @extschema@._stripe_recompute(v_x, v_sub,
				jsonb_build_object('source', 'stripe', 'event_id', v_id, 'status', v_status));
		END LOOP;
		v_outcome := 'applied';
	END;

	IF replay_by IS NULL THEN
		IF v_outcome = 'unmapped' THEN
			INSERT INTO @extschema@.limit_events (org_id, kind, payload)
			VALUES (v_org, 'stripe_unmapped',
					jsonb_build_object('event_id', v_id, 'type', v_type, 'customer', v_customer,
									   'subscription', v_sub, 'reason', v_why));
		END IF;
		UPDATE @extschema@.stripe_events e
		   SET outcome = v_outcome, org_id = v_org, subscription_id = v_sub, customer_id = v_customer,
			   payload = CASE WHEN v_outcome = 'unmapped' THEN event END
		 WHERE e.event_id = v_id;
	ELSIF v_outcome <> 'unmapped' THEN
		-- re-applied: the event's row says what it did now, and a row of its own records when and by whom
		UPDATE @extschema@.stripe_events e
		   SET outcome = v_outcome, org_id = v_org, subscription_id = v_sub, customer_id = v_customer
		 WHERE e.event_id = v_id;
		INSERT INTO @extschema@.stripe_events (event_id, type, created, org_id, subscription_id, customer_id,
											   outcome, payload)
		VALUES ('tiermeter_' || gen_random_uuid(), 'tiermeter.reapply', now(), v_org, v_sub, v_customer, v_outcome,
				jsonb_build_object('event_id', v_id, 'reapplied_by', replay_by, 'role', session_user));
	END IF;

	-- a Checkout that linked something re-applies the stored unmapped events
	-- of its subscription and customer, oldest first
	IF v_type = 'checkout.session.completed' AND v_outcome = 'applied' THEN
		PERFORM 1 FROM @extschema@._stripe_reapply(v_customer, v_sub, v_id);
	END IF;
	RETURN v_outcome;
END $$;
REVOKE ALL ON FUNCTION @extschema@._stripe_event(jsonb, text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._stripe_event(jsonb, text) IS 'Internal: applies one Stripe event (replay_by NULL), or re-applies a stored unmapped one (replay_by: who re-applies it).';

-- Re-applies the stored unmapped events (of a customer or a subscription,
-- or all of them when both are NULL), oldest first; returns each one's row
-- as it is now (still unmapped ones unchanged).
CREATE FUNCTION @extschema@._stripe_reapply(customer_id text, subscription_id text, replay_by text)
RETURNS SETOF @extschema@.stripe_events
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE CALLED ON NULL INPUT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	r	@extschema@.stripe_events;
BEGIN
	IF replay_by IS NULL THEN
		RAISE EXCEPTION 'tiermeter: replay_by must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	FOR r IN
		SELECT e.* FROM @extschema@.stripe_events e
		 WHERE e.outcome = 'unmapped' AND e.payload IS NOT NULL
		   AND ((_stripe_reapply.customer_id IS NULL AND _stripe_reapply.subscription_id IS NULL)
				OR e.customer_id = _stripe_reapply.customer_id
				OR e.subscription_id = _stripe_reapply.subscription_id)
		 ORDER BY e.created, e.received_at, e.event_id
	LOOP
		IF @extschema@._stripe_event(r.payload, replay_by) <> 'duplicate' THEN
			RETURN QUERY SELECT e.* FROM @extschema@.stripe_events e WHERE e.event_id = r.event_id;
		END IF;
	END LOOP;
END $$;
REVOKE ALL ON FUNCTION @extschema@._stripe_reapply(text, text, text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._stripe_reapply(text, text, text) IS 'Internal: re-applies the stored unmapped Stripe events of a customer or subscription (all when both are NULL), oldest first; returns their rows as they are now.';

CREATE OR REPLACE FUNCTION @extschema@.apply_subscription_event(event jsonb) RETURNS text
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	RETURN @extschema@._stripe_event(event, NULL);
END $$;
COMMENT ON FUNCTION @extschema@.apply_subscription_event(jsonb) IS 'Applies a Stripe customer.subscription.* or checkout.session.completed event: applied, duplicate, stale, ignored or unmapped; usage is never touched.';

-- The repair functions (billing level): link by hand, re-apply.
CREATE FUNCTION @extschema@._stripe_require_id(id text, what text) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE CALLED ON NULL INPUT SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF id IS NULL THEN
		RAISE EXCEPTION 'tiermeter: % must not be NULL', coalesce(what, 'the id') USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF id !~ '\S' OR length(id) > 255 THEN
		RAISE EXCEPTION 'tiermeter: % must be a Stripe id of 1 to 255 characters', coalesce(what, 'the id')
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = CASE WHEN length(id) > 255 THEN format('%s is %s characters long', what, length(id))
								ELSE format('%s = %L', what, id) END;
	END IF;
END $$;
REVOKE ALL ON FUNCTION @extschema@._stripe_require_id(text, text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._stripe_require_id(text, text) IS 'Internal: errors unless a Stripe id is given, not blank and at most 255 characters.';

CREATE FUNCTION @extschema@.link_stripe_customer(org_id text, customer_id text) RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE CALLED ON NULL INPUT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	v_event		text := 'tiermeter_' || gen_random_uuid();
	v_prev		text;
	v_outcome	text;
BEGIN
	PERFORM @extschema@._ensure_org(org_id);
	PERFORM @extschema@._stripe_require_id(customer_id, 'customer_id');
	PERFORM @extschema@._stripe_lock(customer_id, NULL);
	SELECT c.org_id INTO v_prev FROM @extschema@.stripe_customers c
	 WHERE c.customer_id = link_stripe_customer.customer_id;
	v_outcome := CASE WHEN @extschema@._stripe_link(org_id, customer_id, NULL, 'hand', v_event)
					  THEN 'applied' ELSE 'ignored' END;
	INSERT INTO @extschema@.stripe_events (event_id, type, created, org_id, customer_id, outcome, payload)
	VALUES (v_event, 'tiermeter.link_stripe_customer', now(), link_stripe_customer.org_id,
			link_stripe_customer.customer_id, v_outcome,
			jsonb_build_object('previous_org_id', v_prev, 'role', session_user));
	RETURN v_outcome;
END $$;
REVOKE ALL ON FUNCTION @extschema@.link_stripe_customer(text, text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.link_stripe_customer(text, text) IS 'Links a Stripe customer to an org by hand (its subscriptions that belong to no org map there): applied, or ignored when it already was; audited in stripe_events. Re-apply stored unmapped events with reapply_stripe_events().';

CREATE FUNCTION @extschema@.link_stripe_subscription(org_id text, subscription_id text) RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE CALLED ON NULL INPUT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	v_event		text := 'tiermeter_' || gen_random_uuid();
	v_prev		text;
	v_customer	text;
	v_outcome	text;
BEGIN
	PERFORM @extschema@._ensure_org(org_id);
	PERFORM @extschema@._stripe_require_id(subscription_id, 'subscription_id');
	-- the subscription's customer first, as an event of it does
	SELECT s.customer_id INTO v_customer FROM @extschema@.stripe_subscriptions s
	 WHERE s.subscription_id = link_stripe_subscription.subscription_id;
	PERFORM @extschema@._stripe_lock(v_customer, subscription_id);
	SELECT s.org_id, s.customer_id INTO v_prev, v_customer FROM @extschema@.stripe_subscriptions s
	 WHERE s.subscription_id = link_stripe_subscription.subscription_id;
	v_outcome := CASE WHEN @extschema@._stripe_link(org_id, NULL, subscription_id, 'hand', v_event)
					  THEN 'applied' ELSE 'ignored' END;
	INSERT INTO @extschema@.stripe_events (event_id, type, created, org_id, subscription_id, customer_id,
										   outcome, payload)
	VALUES (v_event, 'tiermeter.link_stripe_subscription', now(), link_stripe_subscription.org_id,
			link_stripe_subscription.subscription_id, v_customer, v_outcome,
			jsonb_build_object('previous_org_id', v_prev, 'role', session_user));
	RETURN v_outcome;
END $$;
REVOKE ALL ON FUNCTION @extschema@.link_stripe_subscription(text, text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.link_stripe_subscription(text, text) IS 'Links a Stripe subscription to an org by hand (it moves there with its state, and both orgs are recomputed): applied, or ignored when it already was; audited in stripe_events. Re-apply stored unmapped events with reapply_stripe_events().';

CREATE FUNCTION @extschema@.reapply_stripe_events()
RETURNS TABLE (event_id text, type text, created timestamptz, subscription_id text, customer_id text,
			   org_id text, outcome text)
LANGUAGE sql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
	SELECT r.event_id, r.type, r.created, r.subscription_id, r.customer_id, r.org_id, r.outcome
	  FROM @extschema@._stripe_reapply(NULL, NULL, 'reapply_stripe_events') AS r
$$;
REVOKE ALL ON FUNCTION @extschema@.reapply_stripe_events() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.reapply_stripe_events() IS 'Re-applies every stored unmapped Stripe event, oldest first, now that a mapping (a link, a price) may exist; returns each with its outcome now (unmapped: still, and unchanged). Each re-application is audited in stripe_events.';

DROP FUNCTION @extschema@._stripe_time(jsonb);

------------------------------------------------------------------------------
-- A restore keeps the deletions of seeded config rows (docs/reference.md,
-- "Configuration tables").  A restore runs CREATE EXTENSION, which seeds
-- the config tables, then loads the dumped rows; a seeded row the user had
-- deleted is not in the dump, so it came back.  _deleted_seeds remembers, by key, every
-- seeded key that is absent from its table (deleted, renamed, truncated), and
-- pg_dump keeps it; loading it deletes the re-seeded rows again.
--
-- The rule kept: a key is in _deleted_seeds exactly while a seed (_seeds)
-- has it and its table has no row with it.  So a dump never holds both a
-- tombstone and a row with the same key, and a restore gives the same rows
-- whichever is loaded first:
--   - tombstones first (pg_restore's order: the table's name sorts before
--     the config tables'): each deletes its re-seeded row, and the dumped
--     rows are then loaded as usual;
--   - config rows first: the dumped rows replace their untouched seeds
--     (_replace_seed), the deleted seeds stay untouched until their
--     tombstones delete them.
-- The seeded default tier cannot be deleted while it is the default (a
-- table without a default fails the check at commit): its tombstone leaves
-- it in place, and the restored default tier, when it is inserted,
-- deletes it.  With the config rows loaded first (pg_restore -j loads the
-- larger tables first), a restored row that needs what a deleted seed still
-- holds (the default, a rank) collides with it, and the load of tiers fails:
-- a database that deleted the seeded default tier is restored without -j.
--
-- Privileges: a billing role may insert, update and delete config rows, so
-- the triggers that keep _deleted_seeds run for it.  They are SECURITY
-- DEFINER (search_path pinned) rather than granting billing write access to
-- _deleted_seeds: with INSERT and DELETE on it, a billing role could forge or
-- drop tombstones, which decide what a restore deletes, and every role that
-- holds the level before this update would fail to delete a seeded row until
-- the owner granted the levels again (docs/security.md, "Upgrades").  The
-- definer triggers write only the tombstone of the row being changed: the
-- key is read from the row and passed as a value, the table is the
-- trigger's own, and EXECUTE is revoked from PUBLIC, so no other role can
-- attach them to a table of its own.
------------------------------------------------------------------------------

CREATE TABLE @extschema@._deleted_seeds (
	tbl	text NOT NULL,
	key	jsonb NOT NULL,
	PRIMARY KEY (tbl, key)
);
SELECT pg_catalog.pg_extension_config_dump('@extschema@._deleted_seeds', '');
REVOKE ALL ON @extschema@._deleted_seeds FROM PUBLIC;
COMMENT ON TABLE @extschema@._deleted_seeds IS 'The seeded config keys absent from their tables (deleted, renamed, truncated), as {column: value} of the primary key: a restore deletes their re-seeded rows (internal; dumped by pg_dump).';

-- A database updated from 0.1.0 may have deleted seeds already: every seeded
-- key that its table lacks.  (A fresh install lacks none.)
INSERT INTO @extschema@._deleted_seeds (tbl, key)
SELECT s.tbl, (SELECT jsonb_object_agg(c, s.row_data->c) FROM unnest(k.cols) AS c)
  FROM @extschema@._seeds s
  JOIN (VALUES ('tiers', ARRAY['tier_id']), ('features', ARRAY['feature']),
			   ('tier_quotas', ARRAY['tier_id', 'feature']), ('alert_thresholds', ARRAY['percent'])
	   ) AS k(tbl, cols) ON k.tbl = s.tbl
 WHERE NOT CASE s.tbl
		WHEN 'tiers' THEN EXISTS (SELECT 1 FROM @extschema@.tiers t
								   WHERE t.tier_id = s.row_data->>'tier_id')
		WHEN 'features' THEN EXISTS (SELECT 1 FROM @extschema@.features f
									  WHERE f.feature = s.row_data->>'feature')
		WHEN 'tier_quotas' THEN EXISTS (SELECT 1 FROM @extschema@.tier_quotas q
										 WHERE q.tier_id = s.row_data->>'tier_id'
										   AND q.feature = s.row_data->>'feature')
		WHEN 'alert_thresholds' THEN EXISTS (SELECT 1 FROM @extschema@.alert_thresholds a
											  WHERE a.percent::text = s.row_data->>'percent')
	   END;

-- On the four seeded config tables (TG_ARGV: the key columns): a row with a
-- seeded key deleted, or its key changed, records the key; a TRUNCATE
-- records every seeded key of the table; a row inserted, or a key changed
-- to, takes the key's tombstone away (the user made that key again).
CREATE FUNCTION @extschema@._track_deleted_seeds() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	old_key	jsonb;
	new_key	jsonb;
BEGIN
	IF TG_OP = 'TRUNCATE' THEN
		INSERT INTO @extschema@._deleted_seeds (tbl, key)
		SELECT TG_TABLE_NAME, (SELECT jsonb_object_agg(c, s.row_data->c) FROM unnest(TG_ARGV) AS c)
		  FROM @extschema@._seeds s
		 WHERE s.tbl = TG_TABLE_NAME
		ON CONFLICT DO NOTHING;
		RETURN NULL;
	END IF;
	IF TG_OP IN ('DELETE', 'UPDATE') THEN
		SELECT jsonb_object_agg(c, to_jsonb(OLD)->c) INTO old_key FROM unnest(TG_ARGV) AS c;
	END IF;
	IF TG_OP IN ('INSERT', 'UPDATE') THEN
		SELECT jsonb_object_agg(c, to_jsonb(NEW)->c) INTO new_key FROM unnest(TG_ARGV) AS c;
	END IF;
	IF old_key IS NOT DISTINCT FROM new_key THEN
		RETURN NULL;			-- an update that kept the key
	END IF;
	IF old_key IS NOT NULL AND EXISTS (
			SELECT 1 FROM @extschema@._seeds s
			 WHERE s.tbl = TG_TABLE_NAME AND s.row_data @> old_key) THEN
		INSERT INTO @extschema@._deleted_seeds (tbl, key) VALUES (TG_TABLE_NAME, old_key)
		ON CONFLICT DO NOTHING;
	END IF;
	IF new_key IS NOT NULL THEN
		DELETE FROM @extschema@._deleted_seeds d WHERE d.tbl = TG_TABLE_NAME AND d.key = new_key;
	END IF;
	RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION @extschema@._track_deleted_seeds() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._track_deleted_seeds() IS 'Trigger: records in _deleted_seeds a seeded key deleted, renamed or truncated from its config table, and forgets a key inserted again.';

CREATE TRIGGER tiers_deleted_seeds AFTER INSERT OR UPDATE OR DELETE ON @extschema@.tiers
	FOR EACH ROW EXECUTE FUNCTION @extschema@._track_deleted_seeds('tier_id');
CREATE TRIGGER tiers_truncate_deleted_seeds AFTER TRUNCATE ON @extschema@.tiers
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._track_deleted_seeds('tier_id');
CREATE TRIGGER features_deleted_seeds AFTER INSERT OR UPDATE OR DELETE ON @extschema@.features
	FOR EACH ROW EXECUTE FUNCTION @extschema@._track_deleted_seeds('feature');
CREATE TRIGGER features_truncate_deleted_seeds AFTER TRUNCATE ON @extschema@.features
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._track_deleted_seeds('feature');
CREATE TRIGGER tier_quotas_deleted_seeds AFTER INSERT OR UPDATE OR DELETE ON @extschema@.tier_quotas
	FOR EACH ROW EXECUTE FUNCTION @extschema@._track_deleted_seeds('tier_id', 'feature');
CREATE TRIGGER tier_quotas_truncate_deleted_seeds AFTER TRUNCATE ON @extschema@.tier_quotas
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._track_deleted_seeds('tier_id', 'feature');
CREATE TRIGGER alert_thresholds_deleted_seeds AFTER INSERT OR UPDATE OR DELETE ON @extschema@.alert_thresholds
	FOR EACH ROW EXECUTE FUNCTION @extschema@._track_deleted_seeds('percent');
CREATE TRIGGER alert_thresholds_truncate_deleted_seeds AFTER TRUNCATE ON @extschema@.alert_thresholds
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._track_deleted_seeds('percent');

-- A tombstone inserted (pg_restore loading _deleted_seeds) deletes the row
-- with its key, so that the re-seeded row is gone again; the delete records
-- the tombstone itself (above).  A tombstone already there (one that a
-- cascade recorded first) or of a key that is not seeded here (a seed of
-- another version) is skipped.  The seeded default tier stays until the
-- restored default is inserted (_drop_deleted_default).  Runs as the
-- inserting role: the owner, or the owner's definer triggers above; no
-- level may write _deleted_seeds.
CREATE FUNCTION @extschema@._apply_deleted_seed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	cols	text[];
	cond	text;
BEGIN
	IF EXISTS (SELECT 1 FROM @extschema@._deleted_seeds d WHERE d.tbl = NEW.tbl AND d.key = NEW.key)
	   OR NOT EXISTS (SELECT 1 FROM @extschema@._seeds s WHERE s.tbl = NEW.tbl AND s.row_data @> NEW.key) THEN
		RETURN NULL;
	END IF;
	-- the key names exactly the table's primary key columns
	SELECT array_agg(a.attname::text ORDER BY a.attname) INTO cols
	  FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
	 WHERE i.indrelid = format('%I.%I', '@extschema@', NEW.tbl)::regclass AND i.indisprimary;
	IF cols IS DISTINCT FROM (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(NEW.key) AS k) THEN
		RAISE EXCEPTION 'tiermeter: a deleted seed''s key must name the primary key of %', NEW.tbl
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('key %s, primary key (%s)', NEW.key, array_to_string(cols, ', '));
	END IF;
	SELECT string_agg(format('t.%I::text = ($1->>%L)', c, c), ' AND ') INTO cond FROM unnest(cols) AS c;
	IF NEW.tbl = 'tiers' THEN
		cond := cond || ' AND NOT t.is_default';
	END IF;
	EXECUTE format('DELETE FROM %I.%I t WHERE %s', '@extschema@', NEW.tbl, cond) USING NEW.key;
	IF EXISTS (SELECT 1 FROM @extschema@._deleted_seeds d WHERE d.tbl = NEW.tbl AND d.key = NEW.key) THEN
		RETURN NULL;			-- the delete recorded it
	END IF;
	RETURN NEW;
END $$;
REVOKE ALL ON FUNCTION @extschema@._apply_deleted_seed() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._apply_deleted_seed() IS 'Trigger: a tombstone inserted into _deleted_seeds (by pg_restore) deletes the config row with its key; the seeded default tier waits for the restored default.';

CREATE TRIGGER deleted_seeds_apply BEFORE INSERT ON @extschema@._deleted_seeds
	FOR EACH ROW EXECUTE FUNCTION @extschema@._apply_deleted_seed();

-- A default tier inserted while the default is a tier with a tombstone (only
-- a restore makes one: _apply_deleted_seed left the seeded default in place)
-- deletes that tier first.  Named to run before tiers_replace_seed, whose
-- UPDATE would collide with it on tiers_one_default.
CREATE FUNCTION @extschema@._drop_deleted_default() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	DELETE FROM @extschema@.tiers t
	 WHERE t.is_default AND t.tier_id <> NEW.tier_id
	   AND EXISTS (SELECT 1 FROM @extschema@._deleted_seeds d
					WHERE d.tbl = 'tiers' AND d.key = jsonb_build_object('tier_id', t.tier_id));
	RETURN NEW;
END $$;
REVOKE ALL ON FUNCTION @extschema@._drop_deleted_default() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._drop_deleted_default() IS 'Trigger: a default tier inserted during a restore deletes the seeded default tier that the dumped database had deleted.';

CREATE TRIGGER tiers_deleted_default BEFORE INSERT ON @extschema@.tiers
	FOR EACH ROW WHEN (NEW.is_default) EXECUTE FUNCTION @extschema@._drop_deleted_default();

-- The shared-memory cache's own statistics, cluster-wide, since the server
-- started or the last cache_stats_reset() (docs/reference.md, "cache_stats").
CREATE FUNCTION @extschema@.cache_stats(
	OUT entries bigint, OUT capacity bigint, OUT hits bigint, OUT misses bigint,
	OUT builds bigint, OUT refreshes bigint, OUT evictions bigint,
	OUT fallbacks bigint, OUT invalidations bigint, OUT stats_reset timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'tiermeter_cache_stats'
LANGUAGE C VOLATILE STRICT PARALLEL SAFE;
REVOKE ALL ON FUNCTION @extschema@.cache_stats() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.cache_stats() IS 'The shared-memory cache: entries in use, capacity (tiermeter.cache_size), and since start or the last cache_stats_reset() its hits, misses, builds from the ledger, config refreshes, evictions, answers from the tables and invalidations, for the whole cluster.';

CREATE FUNCTION @extschema@.cache_stats_reset() RETURNS void
AS 'MODULE_PATHNAME', 'tiermeter_cache_stats_reset'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION @extschema@.cache_stats_reset() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.cache_stats_reset() IS 'Starts the counts of cache_stats() again from 0 (the entries stay). For the extension owner only.';

------------------------------------------------------------------------------
-- Conversation sessions (docs/reference.md, "Sessions"): the per-session
-- length limit (tiers.max_session_seconds) and the concurrent-conversation
-- limit (tiers.max_active_sessions).
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@._require_id(id text, what text) RETURNS text
AS 'MODULE_PATHNAME', 'tiermeter_require_id'
LANGUAGE C IMMUTABLE PARALLEL SAFE CALLED ON NULL INPUT;
REVOKE ALL ON FUNCTION @extschema@._require_id(text, text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._require_id(text, text) IS 'Internal: errors unless id is given, not blank and at most 1024 bytes (what names it); returns it.';

CREATE FUNCTION @extschema@._idle_timeout() RETURNS integer
AS 'MODULE_PATHNAME', 'tiermeter_idle_timeout'
LANGUAGE C STABLE PARALLEL SAFE;
REVOKE ALL ON FUNCTION @extschema@._idle_timeout() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._idle_timeout() IS 'Internal: tiermeter.idle_timeout in seconds.';

CREATE TYPE @extschema@.session_status AS (
	org_id				text,
	conversation_id		text,
	allowed				boolean,
	reason				text,
	active				boolean,
	started_at			timestamptz,
	last_active_at		timestamptz,
	duration_seconds	bigint,
	session_quota		bigint,
	session_remaining	bigint,
	active_sessions		integer,
	max_active_sessions	integer,
	used				bigint,
	quota				bigint,
	period_end			timestamptz
);
REVOKE ALL ON TYPE @extschema@.session_status FROM PUBLIC;
COMMENT ON TYPE @extschema@.session_status IS 'What the session functions return: the conversation''s session (duration against the tier''s max_session_seconds), the org''s active sessions against max_active_sessions, and its monthly conversation_seconds; allowed is false with a reason (limit_exceeded, session_limit_exceeded, too_many_active_sessions) when the conversation may not go on.';

-- One row per (org, conversation).  A session is active while it is not
-- ended and its last touch is at most its idle_timeout ago (idle_until).
-- accrued_to is how far its duration has been counted: whole seconds are
-- counted, the fraction waits for the next touch; last_counted is how many
-- the last touch of the C way counted (its one UPDATE returns it).
CREATE TABLE @extschema@.sessions (
	org_id				text NOT NULL,
	conversation_id		text NOT NULL,
	user_id				text,
	started_at			timestamptz NOT NULL,
	last_active_at		timestamptz NOT NULL,
	accrued_to			timestamptz NOT NULL,
	idle_timeout		integer NOT NULL CHECK (idle_timeout BETWEEN 1 AND 86400),
	idle_until			timestamptz NOT NULL,
	duration_seconds	bigint NOT NULL DEFAULT 0 CHECK (duration_seconds >= 0),
	last_counted		bigint NOT NULL DEFAULT 0,
	ended_at			timestamptz,
	PRIMARY KEY (org_id, conversation_id)
) WITH (fillfactor = 50);
-- a touch changes no indexed column (nor ended_at, in the predicate) and
-- the pages keep room: its UPDATE is HOT, with no new index entries
CREATE INDEX sessions_open ON @extschema@.sessions (org_id) WHERE ended_at IS NULL;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.sessions', '');
REVOKE ALL ON TABLE @extschema@.sessions FROM PUBLIC;
COMMENT ON TABLE @extschema@.sessions IS 'Conversation sessions by (org_id, conversation_id): start, last touch, counted duration, the idle_timeout in force when begun, and the end. Written by the session functions only.';

-- Begins of one org take this row's lock (and in REPEATABLE READ fail to
-- serialize rather than miss a concurrent begin), so that N callers racing
-- for the last slot admit exactly one.
CREATE TABLE @extschema@._session_slots (
	org_id		text PRIMARY KEY,
	taken_at	timestamptz NOT NULL
);
REVOKE ALL ON TABLE @extschema@._session_slots FROM PUBLIC;
COMMENT ON TABLE @extschema@._session_slots IS 'Internal: one row per org whose sessions were begun; its row lock serializes admissions of the org.';

-- The org's session limits (its tier's, or the default tier's for an org
-- not created yet).
-- (The session helpers are PL/pgSQL, not SQL: a SQL function with a SET
-- clause is planned again in every transaction, PL/pgSQL keeps its plans.
-- They run only under the public session functions, which pin search_path,
-- or for the owner; without a SET clause of their own a call costs no
-- configuration change.)
CREATE FUNCTION @extschema@._session_limits(org_id text,
	OUT max_session_seconds bigint, OUT max_active_sessions integer)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
	SELECT t.max_session_seconds, t.max_active_sessions
	  INTO max_session_seconds, max_active_sessions
	  FROM @extschema@.tiers t
	 WHERE t.tier_id = coalesce((SELECT o.tier_id FROM @extschema@.orgs o WHERE o.org_id = _session_limits.org_id),
								(SELECT d.tier_id FROM @extschema@.tiers d WHERE d.is_default));
END $$;
REVOKE ALL ON FUNCTION @extschema@._session_limits(text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._session_limits(text) IS 'Internal: the session limits of the org''s tier (NULL = unlimited).';

CREATE FUNCTION @extschema@._active_sessions(org_id text, at timestamptz, except_conversation text)
RETURNS integer
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
	RETURN (SELECT count(*)::integer FROM @extschema@.sessions s
			 WHERE s.org_id = _active_sessions.org_id AND s.ended_at IS NULL AND s.idle_until >= at
			   AND s.conversation_id IS DISTINCT FROM except_conversation);
END $$;
REVOKE ALL ON FUNCTION @extschema@._active_sessions(text, timestamptz, text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._active_sessions(text, timestamptz, text) IS 'Internal: the org''s sessions active at a time (not ended, last touched at most their idle_timeout before), leaving one conversation out.';

-- Builds a session_status.  s is the session row (NULL fields for none);
-- lim the org's limit_status for conversation_seconds; refused the reason
-- an admission was refused, if any.  Otherwise the reason is, in order:
-- the monthly quota spent, the session's length reached, NULL.
CREATE FUNCTION @extschema@._session_status(org_id text, conversation_id text,
	s @extschema@.sessions, lim @extschema@.limit_status, at timestamptz, refused text)
RETURNS @extschema@.session_status
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED AS $$
DECLARE
	r		@extschema@.session_status;
	caps	record;
	dur		bigint := coalesce(s.duration_seconds, 0);
BEGIN
	caps := @extschema@._session_limits(org_id);
	r.org_id := org_id;
	r.conversation_id := conversation_id;
	r.active := s.org_id IS NOT NULL AND s.ended_at IS NULL AND s.idle_until >= at;
	r.started_at := s.started_at;
	r.last_active_at := s.last_active_at;
	r.duration_seconds := dur;
	r.session_quota := caps.max_session_seconds;
	r.session_remaining := CASE WHEN caps.max_session_seconds IS NOT NULL
								THEN greatest(caps.max_session_seconds - dur, 0) END;
	r.active_sessions := @extschema@._active_sessions(org_id, at, NULL);
	r.max_active_sessions := caps.max_active_sessions;
	r.used := lim.used;
	r.quota := lim.quota;
	r.period_end := lim.period_end;
	r.reason := CASE
		WHEN NOT lim.allowed THEN 'limit_exceeded'
		WHEN refused IS NOT NULL THEN refused
		WHEN caps.max_session_seconds IS NOT NULL AND dur >= caps.max_session_seconds
			THEN 'session_limit_exceeded'
		END;
	r.allowed := r.reason IS NULL;
	RETURN r;
END $$;
REVOKE ALL ON FUNCTION @extschema@._session_status(text, text, @extschema@.sessions, @extschema@.limit_status, timestamptz, text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._session_status(text, text, @extschema@.sessions, @extschema@.limit_status, timestamptz, text) IS 'Internal: builds a session_status from a session row and the org''s monthly limit_status.';

-- May the org take one more active session at this time?  NULL if yes,
-- else the reason.  Caller holds the org's _session_slots row.
CREATE FUNCTION @extschema@._session_admission(org_id text, conversation_id text,
	lim @extschema@.limit_status, at timestamptz)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED AS $$
DECLARE
	caps	record;
BEGIN
	IF NOT lim.allowed THEN
		RETURN 'limit_exceeded';
	END IF;
	caps := @extschema@._session_limits(org_id);
	IF caps.max_active_sessions IS NOT NULL AND
	   @extschema@._active_sessions(org_id, at, conversation_id) >= caps.max_active_sessions THEN
		RETURN 'too_many_active_sessions';
	END IF;
	RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION @extschema@._session_admission(text, text, @extschema@.limit_status, timestamptz) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._session_admission(text, text, @extschema@.limit_status, timestamptz) IS 'Internal: whether an org may take one more active session (NULL) or why not.';

-- Takes the org's admission lock, to the end of the transaction: the org's
-- session advisory lock exclusively (touches hold it shared), then the row
-- of _session_slots (under REPEATABLE READ, updating a row another
-- admission changed after the snapshot fails to serialize).
CREATE FUNCTION @extschema@._session_lock(org_id text, at timestamptz) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE AS $$
BEGIN
	PERFORM pg_catalog.pg_advisory_xact_lock(1953330533, pg_catalog.hashtext(org_id));
	INSERT INTO @extschema@._session_slots AS l (org_id, taken_at) VALUES (org_id, at)
	ON CONFLICT ON CONSTRAINT _session_slots_pkey DO UPDATE SET taken_at = EXCLUDED.taken_at;
	IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
		-- an older snapshot may miss a touch that extended a session since:
		-- locking the open sessions fails to serialize if one changed
		PERFORM 1 FROM @extschema@.sessions x
		 WHERE x.org_id = _session_lock.org_id AND x.ended_at IS NULL FOR SHARE;
	END IF;
END $$;
REVOKE ALL ON FUNCTION @extschema@._session_lock(text, timestamptz) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._session_lock(text, timestamptz) IS 'Internal: locks the org''s session admissions until the transaction ends.';

-- The active time a touch at `at` adds: from accrued_to to the touch, or
-- to the last touch plus the idle timeout if the session went idle, in
-- whole seconds.
CREATE FUNCTION @extschema@._session_accrual(s @extschema@.sessions, at timestamptz) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
	RETURN greatest(floor(extract(epoch FROM least(at, s.idle_until) - s.accrued_to)), 0)::bigint;
END $$;
REVOKE ALL ON FUNCTION @extschema@._session_accrual(@extschema@.sessions, timestamptz) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._session_accrual(@extschema@.sessions, timestamptz) IS 'Internal: the whole seconds of active time a touch adds to a session.';

-- Accrues a session's active time up to `at` into its duration and, through
-- record_usage, the org's conversation_seconds.  Returns the session row
-- and the org's limit_status after it.  The caller holds the row locked.
CREATE FUNCTION @extschema@._session_accrue(INOUT s @extschema@.sessions, at timestamptz,
	OUT lim @extschema@.limit_status)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE AS $$
DECLARE
	delta	bigint := @extschema@._session_accrual(s, at);
BEGIN
	IF delta > 0 THEN
		lim := @extschema@.record_usage(s.org_id, delta, 'conversation_seconds', s.conversation_id,
										NULL, s.accrued_to + pg_catalog.make_interval(secs => delta::float8));
		s.duration_seconds := s.duration_seconds + delta;
		s.accrued_to := s.accrued_to + pg_catalog.make_interval(secs => delta::float8);
	ELSE
		lim := @extschema@.check_org_limits(s.org_id, 'conversation_seconds');
	END IF;
END $$;
REVOKE ALL ON FUNCTION @extschema@._session_accrue(@extschema@.sessions, timestamptz) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._session_accrue(@extschema@.sessions, timestamptz) IS 'Internal: adds a session''s active time up to a moment to its duration and to conversation_seconds usage.';

-- The session row of an open (not ended) conversation, locked, and the
-- moment of the call: `at`, or the clock once the locks are held (NULL).
-- With admit (touch), the org's admission lock is held first: exclusively
-- when the session is idle or within 5 s of it (a touch may then have to
-- re-admit it), else shared, so that touches of one org run side by side
-- but never beside an admission (the order is always the admission lock,
-- then the session row).  An error 22023 for an unknown or ended session.
CREATE FUNCTION @extschema@._session_open(org_id text, conversation_id text, admit boolean,
	INOUT at timestamptz, OUT s @extschema@.sessions)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE AS $$
DECLARE
	exclusive	boolean := false;
BEGIN
	org_id := @extschema@._require_id(org_id, 'org_id');
	conversation_id := @extschema@._require_id(conversation_id, 'conversation_id');
	IF NOT isfinite(at) THEN
		RAISE EXCEPTION 'tiermeter: at must be a finite timestamp' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT * INTO s FROM @extschema@.sessions x
	 WHERE x.org_id = _session_open.org_id AND x.conversation_id = _session_open.conversation_id;
	IF s.org_id IS NOT NULL AND s.ended_at IS NULL THEN
		-- the org's locks first, always (end_session too: it takes the row)
		exclusive := admit AND s.idle_until < coalesce(at, pg_catalog.clock_timestamp()) + interval '5 s';
		IF exclusive THEN
			PERFORM @extschema@._session_lock(org_id, coalesce(at, pg_catalog.clock_timestamp()));
		ELSE
			PERFORM pg_catalog.pg_advisory_xact_lock_shared(1953330533, pg_catalog.hashtext(org_id));
		END IF;
		SELECT * INTO s FROM @extschema@.sessions x
		 WHERE x.org_id = _session_open.org_id AND x.conversation_id = _session_open.conversation_id
		   FOR UPDATE;
	END IF;
	IF s.org_id IS NULL OR s.ended_at IS NOT NULL THEN
		RAISE EXCEPTION 'tiermeter: conversation "%" of org "%" has no open session', conversation_id, org_id
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = CASE WHEN s.org_id IS NULL THEN 'No session was begun for it.'
								ELSE 'Its session has ended.' END,
				  HINT = 'Begin it with tiermeter.begin_session(org_id, conversation_id).';
	END IF;
	at := coalesce(at, pg_catalog.clock_timestamp());
	IF admit AND NOT exclusive AND s.idle_until < at THEN
		-- it went idle while we waited for the locks (rare): re-admission
		-- needs the admission lock, and waiting for it while holding the
		-- shared one could deadlock with another such touch: retry instead
		IF NOT pg_catalog.pg_try_advisory_xact_lock(1953330533, pg_catalog.hashtext(org_id)) THEN
			RAISE EXCEPTION 'tiermeter: could not re-admit the idle session of conversation "%" of org "%"', conversation_id, org_id
				USING ERRCODE = 'serialization_failure',
					  DETAIL = 'It went idle while the call waited for an admission of the org.',
					  HINT = 'Retry the transaction.';
		END IF;
		PERFORM @extschema@._session_lock(org_id, at);
	END IF;
END $$;
REVOKE ALL ON FUNCTION @extschema@._session_open(text, text, boolean, timestamptz) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._session_open(text, text, boolean, timestamptz) IS 'Internal: the locked row of an open session and the moment of the call, or error 22023 for an unknown or ended one.';

-- Every case of touch_session at a given moment (NULL: the clock).  The C
-- function _touch_session (below) handles the common one, an active session
-- not near its idle timeout, itself, and hands this one every other: the
-- touches that may re-admit an idle session, and unknown or ended sessions.
CREATE FUNCTION @extschema@._touch_session_admit(org_id text, conversation_id text, at timestamptz)
RETURNS @extschema@.session_status
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE CALLED ON NULL INPUT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	o		record := @extschema@._session_open(org_id, conversation_id, true, at);
	s		@extschema@.sessions := o.s;
	now_	timestamptz := o.at;
	acc		record;
	refused	text;
	active	boolean := s.idle_until >= now_;
BEGIN
	acc := @extschema@._session_accrue(s, now_);
	s := acc.s;
	IF NOT active THEN
		-- idle: counted up to its timeout; re-admitted as begin_session would
		refused := @extschema@._session_admission(org_id, conversation_id, acc.lim, now_);
	END IF;
	IF refused IS NULL THEN
		s.last_active_at := greatest(s.last_active_at, now_);
		s.idle_until := s.last_active_at + pg_catalog.make_interval(secs => s.idle_timeout);
		IF NOT active THEN
			s.accrued_to := now_;
		END IF;
	END IF;
	UPDATE @extschema@.sessions x
	   SET last_active_at = s.last_active_at, accrued_to = s.accrued_to,
		   idle_until = s.idle_until, duration_seconds = s.duration_seconds
	 WHERE x.org_id = s.org_id AND x.conversation_id = s.conversation_id;
	RETURN @extschema@._session_status(org_id, conversation_id, s, acc.lim, now_, refused);
END $$;
REVOKE ALL ON FUNCTION @extschema@._touch_session_admit(text, text, timestamptz) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._touch_session_admit(text, text, timestamptz) IS 'Internal: every case of touch_session at a given moment, or at the clock (NULL), in PL/pgSQL; _touch_session hands it those that may re-admit an idle session, and unknown or ended sessions.';

-- touch_session at a given moment (NULL: the clock).  In C: a touch of an
-- active session takes the org's session lock shared, its row, records the
-- active time as record_usage does and updates the row; the rest goes to
-- _touch_session_admit.
CREATE FUNCTION @extschema@._touch_session(org_id text, conversation_id text, at timestamptz)
RETURNS @extschema@.session_status
AS 'MODULE_PATHNAME', 'tiermeter_touch_session'
LANGUAGE C VOLATILE PARALLEL UNSAFE CALLED ON NULL INPUT;
REVOKE ALL ON FUNCTION @extschema@._touch_session(text, text, timestamptz) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._touch_session(text, text, timestamptz) IS 'Internal: touch_session at a given moment (tests), or at the clock (NULL).';

-- begin_session at a given moment (NULL: the clock once the org's admission
-- lock is held).
CREATE FUNCTION @extschema@._begin_session(org_id text, conversation_id text, user_id text, at timestamptz)
RETURNS @extschema@.session_status
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE CALLED ON NULL INPUT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	s		@extschema@.sessions;
	lim		@extschema@.limit_status;
	refused	text;
	tmo		integer;
	existed	boolean;
BEGIN
	PERFORM @extschema@._ensure_org(org_id);
	PERFORM @extschema@._require_id(conversation_id, 'conversation_id');
	IF user_id IS NOT NULL THEN
		PERFORM @extschema@._require_id(user_id, 'user_id');
	END IF;
	IF NOT isfinite(at) THEN
		RAISE EXCEPTION 'tiermeter: at must be a finite timestamp' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	tmo := @extschema@._idle_timeout();
	-- admissions of one org one at a time, never beside a touch; then the
	-- row, seen afresh
	PERFORM @extschema@._session_lock(org_id, coalesce(at, clock_timestamp()));
	at := coalesce(at, clock_timestamp());
	SELECT * INTO s FROM @extschema@.sessions x
	 WHERE x.org_id = _begin_session.org_id AND x.conversation_id = _begin_session.conversation_id
	   FOR UPDATE;
	existed := FOUND;
	IF existed AND s.ended_at IS NULL THEN
		-- begun already: its status if active, a touch's re-admission if idle
		IF s.idle_until >= at THEN
			RETURN @extschema@._session_status(org_id, conversation_id, s,
				@extschema@.check_org_limits(org_id, 'conversation_seconds'), at, NULL);
		END IF;
		RETURN @extschema@._touch_session_admit(org_id, conversation_id, at);
	END IF;
	lim := @extschema@.check_org_limits(org_id, 'conversation_seconds');
	refused := @extschema@._session_admission(org_id, conversation_id, lim, at);
	IF refused IS NULL AND existed AND
	   s.duration_seconds >= (@extschema@._session_limits(org_id)).max_session_seconds THEN
		-- an ended conversation that already had its length
		refused := 'session_limit_exceeded';
	END IF;
	IF refused IS NOT NULL THEN
		-- nothing is created (an ended session stays ended)
		RETURN @extschema@._session_status(org_id, conversation_id, s, lim, at, refused);
	END IF;
	IF existed THEN
		-- an ended conversation begun again: its duration goes on
		UPDATE @extschema@.sessions x
		   SET ended_at = NULL, last_active_at = at, accrued_to = at, idle_timeout = tmo,
			   idle_until = at + pg_catalog.make_interval(secs => tmo),
			   user_id = coalesce(_begin_session.user_id, x.user_id)
		 WHERE x.org_id = s.org_id AND x.conversation_id = s.conversation_id
		RETURNING * INTO s;
	ELSE
		INSERT INTO @extschema@.sessions AS x
			(org_id, conversation_id, user_id, started_at, last_active_at, accrued_to,
			 idle_timeout, idle_until)
		VALUES (org_id, conversation_id, user_id, at, at, at, tmo, at + pg_catalog.make_interval(secs => tmo))
		RETURNING * INTO s;
	END IF;
	RETURN @extschema@._session_status(org_id, conversation_id, s, lim, at, NULL);
END $$;
REVOKE ALL ON FUNCTION @extschema@._begin_session(text, text, text, timestamptz) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._begin_session(text, text, text, timestamptz) IS 'Internal: begin_session at a given moment (tests), or at the clock (NULL).';

-- end_session at a given moment (NULL: the clock).
CREATE FUNCTION @extschema@._end_session(org_id text, conversation_id text, at timestamptz)
RETURNS @extschema@.session_status
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE CALLED ON NULL INPUT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	o		record := @extschema@._session_open(org_id, conversation_id, false, at);
	s		@extschema@.sessions := o.s;
	now_	timestamptz := o.at;
	acc		record;
BEGIN
	acc := @extschema@._session_accrue(s, now_);
	s := acc.s;
	IF s.idle_until >= now_ THEN
		s.last_active_at := greatest(s.last_active_at, now_);
	END IF;
	s.ended_at := greatest(now_, s.started_at);
	UPDATE @extschema@.sessions x
	   SET last_active_at = s.last_active_at, accrued_to = s.accrued_to,
		   duration_seconds = s.duration_seconds, ended_at = s.ended_at
	 WHERE x.org_id = s.org_id AND x.conversation_id = s.conversation_id;
	RETURN @extschema@._session_status(org_id, conversation_id, s, acc.lim, now_, NULL);
END $$;
REVOKE ALL ON FUNCTION @extschema@._end_session(text, text, timestamptz) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._end_session(text, text, timestamptz) IS 'Internal: end_session at a given moment (tests), or at the clock (NULL).';

-- check_session_limits at a given moment (NULL: the clock): writes nothing.
CREATE FUNCTION @extschema@._check_session_limits(org_id text, conversation_id text, at timestamptz)
RETURNS @extschema@.session_status
LANGUAGE plpgsql VOLATILE PARALLEL RESTRICTED CALLED ON NULL INPUT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	s		@extschema@.sessions;
	lim		@extschema@.limit_status;
	refused	text;
BEGIN
	PERFORM @extschema@._require_id(org_id, 'org_id');
	PERFORM @extschema@._require_id(conversation_id, 'conversation_id');
	IF NOT isfinite(at) THEN
		RAISE EXCEPTION 'tiermeter: at must be a finite timestamp' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	at := coalesce(at, clock_timestamp());
	lim := @extschema@.check_org_limits(org_id, 'conversation_seconds');
	SELECT * INTO s FROM @extschema@.sessions x
	 WHERE x.org_id = _check_session_limits.org_id
	   AND x.conversation_id = _check_session_limits.conversation_id;
	IF s.org_id IS NOT NULL AND s.ended_at IS NULL THEN
		-- the active time a touch now would add, not recorded
		s.duration_seconds := s.duration_seconds + @extschema@._session_accrual(s, at);
	END IF;
	IF s.org_id IS NULL OR s.ended_at IS NOT NULL OR s.idle_until < at THEN
		-- not active: would begin_session (or a touch) admit it?
		refused := @extschema@._session_admission(org_id, conversation_id, lim, at);
	END IF;
	RETURN @extschema@._session_status(org_id, conversation_id, s, lim, at, refused);
END $$;
REVOKE ALL ON FUNCTION @extschema@._check_session_limits(text, text, timestamptz) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@._check_session_limits(text, text, timestamptz) IS 'Internal: check_session_limits at a given moment (tests), or at the clock (NULL).';

CREATE FUNCTION @extschema@.begin_session(org_id text, conversation_id text, user_id text DEFAULT NULL)
RETURNS @extschema@.session_status
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE CALLED ON NULL INPUT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	RETURN @extschema@._begin_session(org_id, conversation_id, user_id, NULL);
END $$;
REVOKE ALL ON FUNCTION @extschema@.begin_session(text, text, text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.begin_session(text, text, text) IS 'Admits a conversation unless the monthly quota is spent (limit_exceeded) or the org has max_active_sessions active sessions (too_many_active_sessions); then nothing is created. Idempotent.';

-- (C, like record_usage: its queries run as the schema's owner, fully
-- qualified, whatever the caller's search_path)
CREATE FUNCTION @extschema@.touch_session(org_id text, conversation_id text)
RETURNS @extschema@.session_status
AS 'MODULE_PATHNAME', 'tiermeter_touch_session'
LANGUAGE C VOLATILE PARALLEL UNSAFE CALLED ON NULL INPUT;
REVOKE ALL ON FUNCTION @extschema@.touch_session(text, text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.touch_session(text, text) IS 'Adds the active time since the last touch (at most tiermeter.idle_timeout) to the session and to conversation_seconds usage; an idle session is re-admitted as begin_session would.';

CREATE FUNCTION @extschema@.end_session(org_id text, conversation_id text)
RETURNS @extschema@.session_status
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE CALLED ON NULL INPUT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	RETURN @extschema@._end_session(org_id, conversation_id, NULL);
END $$;
REVOKE ALL ON FUNCTION @extschema@.end_session(text, text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.end_session(text, text) IS 'Ends a session: a last touch, then its slot is free.';

CREATE FUNCTION @extschema@.check_session_limits(org_id text, conversation_id text)
RETURNS @extschema@.session_status
LANGUAGE plpgsql VOLATILE PARALLEL RESTRICTED CALLED ON NULL INPUT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	RETURN @extschema@._check_session_limits(org_id, conversation_id, NULL);
END $$;
REVOKE ALL ON FUNCTION @extschema@.check_session_limits(text, text) FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.check_session_limits(text, text) IS 'Read-only: the session''s status now (with the active time a touch would add), or whether begin_session would admit it.';

-- rollover moves every org's stored period once a month: with room left in
-- each page, its updates are HOT (no new index entries), as are Stripe's.
-- (Pages written before this only get the room as they are rewritten.)
ALTER TABLE @extschema@.orgs SET (fillfactor = 50);

-- rollover also ends the sessions idle by now (at the moment they went
-- idle, counting their time up to then, as a touch or end_session would).
CREATE OR REPLACE FUNCTION @extschema@.rollover(as_of timestamptz DEFAULT now()) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	moved	bigint;
	s		@extschema@.sessions;
	k		record;
	acc		record;
	cutoff	timestamptz;
BEGIN
	IF as_of IS NULL OR NOT isfinite(as_of) THEN
		RAISE EXCEPTION 'tiermeter: as_of must be a finite timestamp'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- one runner at a time: a second one waits, then finds nothing to move
	PERFORM pg_advisory_xact_lock(hashtext('tiermeter'), 1);
	-- limit events of prepared transactions committed where nobody announced
	-- them (a COMMIT PREPARED in a session without the library)
	PERFORM @extschema@._announce_events();
	-- housekeeping only: every function already answers from the period
	-- containing now(), whether or not this ever runs
	-- (two calls of the C function cost less than a subquery for each row)
	UPDATE @extschema@.orgs o
	   SET period_start = (@extschema@.period_bounds(o.billing_anchor, as_of, o.period_start, o.period_end)).period_start,
		   period_end = (@extschema@.period_bounds(o.billing_anchor, as_of, o.period_start, o.period_end)).period_end,
		   updated_at = now()
	 WHERE o.period_end <= as_of;
	GET DIAGNOSTICS moved = ROW_COUNT;
	-- idle sessions are not active whether or not this runs; ending them
	-- keeps the index of open sessions small.  Idle by now, whatever as_of
	-- (which may be in the future): their time counts up to when they went
	-- idle, as a touch would count it; a busy session is left to its caller
	-- (one row at a time: Citus locks rows of one shard per statement only)
	cutoff := least(as_of, clock_timestamp());
	FOR k IN SELECT x.org_id, x.conversation_id FROM @extschema@.sessions x
			  WHERE x.ended_at IS NULL AND x.idle_until < cutoff
	LOOP
		SELECT * INTO s FROM @extschema@.sessions x
		 WHERE x.org_id = k.org_id AND x.conversation_id = k.conversation_id
		   AND x.ended_at IS NULL AND x.idle_until < cutoff
		   FOR UPDATE SKIP LOCKED;
		CONTINUE WHEN NOT FOUND;
		acc := @extschema@._session_accrue(s, s.idle_until);
		UPDATE @extschema@.sessions x
		   SET accrued_to = (acc.s).accrued_to, duration_seconds = (acc.s).duration_seconds,
			   ended_at = x.idle_until
		 WHERE x.org_id = s.org_id AND x.conversation_id = s.conversation_id;
	END LOOP;
	RETURN moved;
END $$;
COMMENT ON FUNCTION @extschema@.rollover(timestamptz) IS 'Moves every org whose stored period ended by as_of to the period containing as_of, ends the sessions idle by now (counting their time up to then), and announces limit events of prepared transactions nobody announced; returns how many orgs moved. Housekeeping: limits never depend on it. One runner at a time.';

------------------------------------------------------------------------------
-- Analysts' views (docs/reference.md, "Views"): from the tables, not the
-- cache, as the functions' answers.
------------------------------------------------------------------------------

-- The current period of every org and feature: what check_org_limits
-- answers, for all of them at once.
CREATE VIEW @extschema@.org_usage AS
SELECT o.org_id, o.tier_id AS tier, f.feature, o.ps AS period_start, o.pe AS period_end,
	   coalesce(u.used, 0)::bigint AS used, q.quota,
	   CASE WHEN q.quota IS NOT NULL THEN greatest(q.quota - coalesce(u.used, 0), 0) END AS remaining,
	   CASE WHEN q.quota IS NULL THEN 0.00::numeric
			WHEN q.quota = 0 THEN 100.00::numeric
			-- round(100 * used / quota, 2), half up, exactly; in hundredths
			-- it saturates at the end of bigint, as check_org_limits does
			ELSE round(least(div(coalesce(u.used, 0)::numeric * 20000 + q.quota, 2::numeric * q.quota),
							 9223372036854775807) * 0.01, 2)
	   END AS percent_used
  FROM (SELECT x.org_id, x.tier_id, (x.p).period_start AS ps, (x.p).period_end AS pe
		  FROM (SELECT o.org_id, o.tier_id,
					   @extschema@.period_bounds(o.billing_anchor, now(), o.period_start, o.period_end) AS p
				  FROM @extschema@.orgs o) x) o
 CROSS JOIN @extschema@.features f
  -- usage and grants summed per org and feature over each org's period, then
  -- joined by org: on a Citus cluster each part runs on the org's worker
  LEFT JOIN (
	SELECT l.org_id, l.feature,
		   least(greatest(sum(l.amount), -9223372036854775808), 9223372036854775807)::bigint AS used
	  FROM @extschema@.usage_log l
	  JOIN @extschema@.orgs o ON o.org_id = l.org_id
	  JOIN @extschema@.features f ON f.feature = l.feature
	 WHERE f.kind = 'gauge'
		OR (l.occurred_at >= (@extschema@.period_bounds(o.billing_anchor, now(), o.period_start, o.period_end)).period_start
			AND l.occurred_at < (@extschema@.period_bounds(o.billing_anchor, now(), o.period_start, o.period_end)).period_end)
	 GROUP BY l.org_id, l.feature) u ON u.org_id = o.org_id AND u.feature = f.feature
  LEFT JOIN (
	SELECT g.org_id, g.feature, sum(g.amount) AS granted
	  FROM @extschema@.usage_grants g
	  JOIN @extschema@.orgs o ON o.org_id = g.org_id
	 WHERE g.granted_at >= (@extschema@.period_bounds(o.billing_anchor, now(), o.period_start, o.period_end)).period_start
	   AND g.granted_at < (@extschema@.period_bounds(o.billing_anchor, now(), o.period_start, o.period_end)).period_end
	 GROUP BY g.org_id, g.feature) g ON g.org_id = o.org_id AND g.feature = f.feature
  LEFT JOIN @extschema@.org_quotas oq ON oq.org_id = o.org_id AND oq.feature = f.feature
  LEFT JOIN @extschema@.tier_quotas tq ON tq.tier_id = o.tier_id AND tq.feature = f.feature
 CROSS JOIN LATERAL (
	SELECT CASE WHEN CASE WHEN oq.org_id IS NOT NULL THEN oq.quota IS NULL
						  ELSE tq.tier_id IS NOT NULL AND tq.quota IS NULL END THEN NULL
				ELSE least(CASE WHEN oq.org_id IS NOT NULL THEN oq.quota ELSE coalesce(tq.quota, 0) END
						   + coalesce(g.granted, 0), 9223372036854775807)::bigint
		   END AS quota) q;
REVOKE ALL ON @extschema@.org_usage FROM PUBLIC;
COMMENT ON VIEW @extschema@.org_usage IS 'The current period of every org and feature: used, quota (NULL = unlimited), remaining and percent_used, as check_org_limits answers them, from the tables.';

-- Per tier and feature: how many orgs, their usage this period, how many
-- are at their limit.
CREATE VIEW @extschema@.tier_summary AS
SELECT t.tier_id AS tier, f.feature, count(u.org_id) AS orgs,
	   coalesce(sum(u.used), 0)::numeric AS total_used,
	   round(avg(u.percent_used) FILTER (WHERE u.quota IS DISTINCT FROM 0), 2) AS avg_percent_used,
	   count(u.org_id) FILTER (WHERE u.quota > 0 AND u.used >= u.quota) AS orgs_at_limit
  FROM @extschema@.tiers t
 CROSS JOIN @extschema@.features f
  LEFT JOIN @extschema@.org_usage u ON u.tier = t.tier_id AND u.feature = f.feature
 GROUP BY t.tier_id, t.rank, f.feature;
REVOKE ALL ON @extschema@.tier_summary FROM PUBLIC;
COMMENT ON VIEW @extschema@.tier_summary IS 'Per tier and feature: orgs on the tier, their total usage this period, the average percent_used of the orgs whose quota includes the feature (unlimited counts as 0), and how many are at or past a quota above 0.';

-- Orgs at or past the lowest warning threshold (below 100) of a feature
-- their tier includes.
CREATE VIEW @extschema@.orgs_near_limit AS
SELECT u.org_id, u.tier, u.feature, u.used, u.quota, u.percent_used
  FROM @extschema@.org_usage u
 WHERE u.quota > 0
   AND u.percent_used >= (SELECT min(a.percent) FROM @extschema@.alert_thresholds a WHERE a.percent < 100);
REVOKE ALL ON @extschema@.orgs_near_limit FROM PUBLIC;
COMMENT ON VIEW @extschema@.orgs_near_limit IS 'Orgs whose usage of a feature their tier includes (quota > 0) is at or past the lowest alert threshold below 100 this period.';

-- One row per org, period feature and period: every period with usage,
-- closed or open, and the open one of every org and period feature.
CREATE VIEW @extschema@.usage_history AS
WITH periods AS (
	SELECT l.org_id, l.feature, p.period_start, p.period_end, sum(l.amount) AS used
	  FROM @extschema@.usage_log l
	  JOIN @extschema@.orgs o ON o.org_id = l.org_id
	  JOIN @extschema@.features f ON f.feature = l.feature AND f.kind = 'period'
	 CROSS JOIN LATERAL @extschema@.period_bounds(o.billing_anchor, l.occurred_at, o.period_start, o.period_end) p
	 GROUP BY l.org_id, l.feature, p.period_start, p.period_end
	UNION ALL
	SELECT u.org_id, u.feature, u.period_start, u.period_end, 0
	  FROM @extschema@.org_usage u
	  JOIN @extschema@.features f ON f.feature = u.feature AND f.kind = 'period'
), h AS (
	SELECT org_id, feature, period_start, period_end,
		   least(sum(used), 9223372036854775807)::bigint AS used
	  FROM periods
	 GROUP BY org_id, feature, period_start, period_end
), granted AS (
	SELECT g.org_id, g.feature, p.period_start, sum(g.amount) AS amount
	  FROM @extschema@.usage_grants g
	  JOIN @extschema@.orgs o ON o.org_id = g.org_id
	 CROSS JOIN LATERAL @extschema@.period_bounds(o.billing_anchor, g.granted_at, o.period_start, o.period_end) p
	 GROUP BY g.org_id, g.feature, p.period_start
), tiered AS (
	-- the tier at the period's end (or now): the last tier change before it,
	-- else the tier the first change after it left, else the org's tier
	-- (h is read once, so that a filter on org_id reaches the ledger's index)
	SELECT h.org_id, h.feature, h.period_start, h.period_end, h.used,
		   coalesce((array_agg(e.payload->>'to' ORDER BY e.created_at DESC, e.id DESC)
						FILTER (WHERE e.created_at < least(h.period_end, now())))[1],
					(array_agg(e.payload->>'from' ORDER BY e.created_at, e.id)
						FILTER (WHERE e.created_at >= least(h.period_end, now())))[1],
					o.tier_id) AS tier
	  FROM h
	  JOIN @extschema@.orgs o ON o.org_id = h.org_id
	  LEFT JOIN @extschema@.limit_events e ON e.org_id = h.org_id AND e.kind = 'tier_changed'
	 GROUP BY h.org_id, h.feature, h.period_start, h.period_end, h.used, o.tier_id
)
SELECT t.org_id, t.feature, t.period_start, t.period_end, t.tier, t.used,
	   CASE WHEN CASE WHEN oq.org_id IS NOT NULL THEN oq.quota IS NULL
					  ELSE tq.tier_id IS NOT NULL AND tq.quota IS NULL END THEN NULL
			ELSE least(CASE WHEN oq.org_id IS NOT NULL THEN oq.quota ELSE coalesce(tq.quota, 0) END
					   + coalesce(gr.amount, 0), 9223372036854775807)::bigint
	   END AS quota
  FROM tiered t
  LEFT JOIN granted gr ON gr.org_id = t.org_id AND gr.feature = t.feature AND gr.period_start = t.period_start
  LEFT JOIN @extschema@.org_quotas oq ON oq.org_id = t.org_id AND oq.feature = t.feature
  LEFT JOIN @extschema@.tier_quotas tq ON tq.tier_id = t.tier AND tq.feature = t.feature;
REVOKE ALL ON @extschema@.usage_history FROM PUBLIC;
COMMENT ON VIEW @extschema@.usage_history IS 'One row per org, period feature and monthly period, closed or open: its usage, the tier the org was on at the period''s end (from tier_changed events) and that tier''s quota as configured now (with the org''s override and the period''s grants).';

------------------------------------------------------------------------------
-- Citus: distribute() spreads tiermeter's tables over a Citus cluster, run
-- once on the coordinator after CREATE EXTENSION (docs/scaling.md).
-- Configuration tables become reference tables (a copy on every node, whose
-- triggers invalidate each node's cache); the tables keyed by org are
-- distributed by org_id and co-located with orgs; the functions that take
-- an org are delegated by it, so Citus runs each call on the node that holds
-- the org, against that node's cache.  The Stripe tables, limit_events and
-- the internal tables stay local to each node.  Citus refuses tables with
-- triggers unless citus.enable_unsafe_triggers is on: tiermeter's triggers
-- on them read and write only the row at hand and the node's own cache, so
-- it is set for this transaction.  Citus cannot copy rows through triggers
-- that read other tables, and cannot propagate foreign keys with cascading
-- updates of the distribution column: the seed-tracking triggers of the
-- configuration tables (used by pg_dump and restore of a single server) are
-- dropped, and the foreign keys are dropped and added back in the forms
-- Citus supports.  The coordinator's part is one transaction; the drops on
-- the workers (run_command_on_workers commits each) are repeatable, so a
-- failed call can be run again, and a second call changes nothing.
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.distribute()
RETURNS TABLE (object text, placement text)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
SET client_min_messages = warning AS $$
DECLARE
	ref_tables	text[] := ARRAY['tiers', 'features', 'tier_quotas', 'alert_thresholds', 'stripe_prices'];
	org_tables	text[] := ARRAY['orgs', 'usage_log', 'org_quotas', 'usage_grants', 'sessions', '_session_slots'];
	local_tables text[] := ARRAY['limit_events', 'stripe_events', 'stripe_subscriptions', 'stripe_customers'];
	functions	text[] := ARRAY[
		'check_org_limits(text,text)',
		'record_usage(text,bigint,text,text,text,timestamptz)',
		'consume(text,bigint,text,text,text)',
		'begin_session(text,text,text)',
		'touch_session(text,text)',
		'end_session(text,text)',
		'check_session_limits(text,text)',
		'usage_stats(text)',
		-- admin functions; set_org_tier is not delegated: its tier_changed
		-- events stay where apply_subscription_event writes them (the
		-- coordinator), which usage_history reads
		'set_org_quota(text,text,bigint)',
		'grant_usage(text,bigint,text,text)'];
	-- the seed-tracking triggers, and the foreign keys dropped and added back
	drops		text[] := ARRAY[
		'DROP TRIGGER IF EXISTS tiers_deleted_default ON @extschema@.tiers',
		'DROP TRIGGER IF EXISTS tiers_deleted_seeds ON @extschema@.tiers',
		'DROP TRIGGER IF EXISTS tiers_truncate_deleted_seeds ON @extschema@.tiers',
		'DROP TRIGGER IF EXISTS tiers_replace_seed ON @extschema@.tiers',
		'DROP TRIGGER IF EXISTS features_deleted_seeds ON @extschema@.features',
		'DROP TRIGGER IF EXISTS features_truncate_deleted_seeds ON @extschema@.features',
		'DROP TRIGGER IF EXISTS features_replace_seed ON @extschema@.features',
		'DROP TRIGGER IF EXISTS tier_quotas_deleted_seeds ON @extschema@.tier_quotas',
		'DROP TRIGGER IF EXISTS tier_quotas_truncate_deleted_seeds ON @extschema@.tier_quotas',
		'DROP TRIGGER IF EXISTS tier_quotas_replace_seed ON @extschema@.tier_quotas',
		'DROP TRIGGER IF EXISTS alert_thresholds_deleted_seeds ON @extschema@.alert_thresholds',
		'DROP TRIGGER IF EXISTS alert_thresholds_truncate_deleted_seeds ON @extschema@.alert_thresholds',
		'DROP TRIGGER IF EXISTS alert_thresholds_replace_seed ON @extschema@.alert_thresholds',
		'ALTER TABLE @extschema@.tier_quotas DROP CONSTRAINT IF EXISTS tier_quotas_tier_id_fkey, DROP CONSTRAINT IF EXISTS tier_quotas_feature_fkey',
		'ALTER TABLE @extschema@.stripe_prices DROP CONSTRAINT IF EXISTS stripe_prices_tier_id_fkey',
		'ALTER TABLE @extschema@.orgs DROP CONSTRAINT IF EXISTS orgs_tier_id_fkey',
		'ALTER TABLE @extschema@.org_quotas DROP CONSTRAINT IF EXISTS org_quotas_org_id_fkey, DROP CONSTRAINT IF EXISTS org_quotas_feature_fkey',
		'ALTER TABLE @extschema@.usage_grants DROP CONSTRAINT IF EXISTS usage_grants_feature_fkey',
		'ALTER TABLE @extschema@.stripe_subscriptions DROP CONSTRAINT IF EXISTS stripe_subscriptions_tier_id_fkey'];
	fkeys		text[] := ARRAY[
		'tier_quotas', 'tier_quotas_tier_id_fkey', 'FOREIGN KEY (tier_id) REFERENCES @extschema@.tiers ON UPDATE CASCADE ON DELETE CASCADE',
		'tier_quotas', 'tier_quotas_feature_fkey', 'FOREIGN KEY (feature) REFERENCES @extschema@.features ON UPDATE CASCADE ON DELETE CASCADE',
		'stripe_prices', 'stripe_prices_tier_id_fkey', 'FOREIGN KEY (tier_id) REFERENCES @extschema@.tiers ON UPDATE CASCADE ON DELETE CASCADE',
		'orgs', 'orgs_tier_id_fkey', 'FOREIGN KEY (tier_id) REFERENCES @extschema@.tiers ON UPDATE CASCADE',
		'org_quotas', 'org_quotas_org_id_fkey', 'FOREIGN KEY (org_id) REFERENCES @extschema@.orgs ON DELETE CASCADE',
		'org_quotas', 'org_quotas_feature_fkey', 'FOREIGN KEY (feature) REFERENCES @extschema@.features ON UPDATE CASCADE ON DELETE CASCADE',
		'usage_grants', 'usage_grants_feature_fkey', 'FOREIGN KEY (feature) REFERENCES @extschema@.features ON UPDATE CASCADE ON DELETE CASCADE'];
	t			text;
	cmd			text;
	r			record;
	i			integer;
	done		boolean;
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
		RAISE EXCEPTION 'tiermeter: distribute() needs Citus'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'The citus extension is not installed in this database.',
				  HINT = 'On every node, put citus before tiermeter in shared_preload_libraries and run CREATE EXTENSION citus; add the workers with citus_add_node() on the coordinator, create tiermeter there, then call tiermeter.distribute() on the coordinator.';
	END IF;
	IF NOT pg_catalog.citus_is_coordinator() THEN
		RAISE EXCEPTION 'tiermeter: distribute() runs on the coordinator'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'This node is a Citus worker.',
				  HINT = 'Connect to the coordinator and call tiermeter.distribute() there.';
	END IF;
	PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
	-- foreign keys to reference tables: one connection per node
	PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);

	done := EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = '@extschema@.orgs'::regclass);
	IF NOT done THEN
		-- the workers' own tiermeter tables become hidden behind the
		-- distributed ones: refuse rows that would be lost there
		FOR r IN SELECT * FROM pg_catalog.run_command_on_workers(
				'SELECT (SELECT count(*) FROM @extschema@.orgs) + (SELECT count(*) FROM @extschema@.usage_log)'
				' + (SELECT count(*) FROM @extschema@.usage_grants) + (SELECT count(*) FROM @extschema@.org_quotas)'
				' + (SELECT count(*) FROM @extschema@.sessions) + (SELECT count(*) FROM @extschema@._session_slots)') LOOP
			IF NOT r.success THEN
				RAISE EXCEPTION 'tiermeter: worker %:% cannot be read: %', r.nodename, r.nodeport, r.result
					USING ERRCODE = 'object_not_in_prerequisite_state';
			ELSIF r.result <> '0' THEN
				RAISE EXCEPTION 'tiermeter: worker %:% holds tiermeter rows of its own', r.nodename, r.nodeport
					USING ERRCODE = 'object_not_in_prerequisite_state',
						  DETAIL = pg_catalog.format('Its tables keyed by org (orgs, usage_log, usage_grants, org_quotas, sessions) hold %s rows, which distributed tables would hide.', r.result),
						  HINT = 'Copy them to the coordinator''s tables (or delete them) on that worker first.';
			END IF;
		END LOOP;
		FOREACH cmd IN ARRAY drops LOOP
			PERFORM @extschema@._on_workers(cmd);
			EXECUTE cmd;
		END LOOP;
	END IF;

	FOREACH t IN ARRAY ref_tables LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = ('@extschema@.' || t)::regclass) THEN
			PERFORM pg_catalog.create_reference_table(('@extschema@.' || t)::regclass);
			PERFORM pg_catalog.truncate_local_data_after_distributing_table(('@extschema@.' || t)::regclass);
		END IF;
		object := '@extschema@.' || t; placement := 'reference table (a copy on every node)';
		RETURN NEXT;
	END LOOP;
	FOREACH t IN ARRAY org_tables LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = ('@extschema@.' || t)::regclass) THEN
			PERFORM pg_catalog.create_distributed_table(('@extschema@.' || t)::regclass, 'org_id',
				colocate_with => CASE WHEN t = 'orgs' THEN 'default' ELSE '@extschema@.orgs' END);
			PERFORM pg_catalog.truncate_local_data_after_distributing_table(('@extschema@.' || t)::regclass);
		END IF;
		object := '@extschema@.' || t; placement := 'distributed by org_id, co-located with @extschema@.orgs';
		RETURN NEXT;
	END LOOP;
	FOR i IN 0 .. pg_catalog.array_length(fkeys, 1) / 3 - 1 LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_constraint
						WHERE conrelid = ('@extschema@.' || fkeys[3 * i + 1])::regclass AND conname = fkeys[3 * i + 2]) THEN
			EXECUTE pg_catalog.format('ALTER TABLE @extschema@.%I ADD CONSTRAINT %I %s',
									  fkeys[3 * i + 1], fkeys[3 * i + 2], fkeys[3 * i + 3]);
		END IF;
	END LOOP;
	FOREACH t IN ARRAY local_tables LOOP
		object := '@extschema@.' || t; placement := 'local to each node';
		RETURN NEXT;
	END LOOP;
	FOREACH t IN ARRAY functions LOOP
		PERFORM pg_catalog.create_distributed_function(('@extschema@.' || t)::regprocedure, 'org_id',
			colocate_with => '@extschema@.orgs');
		object := '@extschema@.' || t; placement := 'delegated by org_id';
		RETURN NEXT;
	END LOOP;
	-- the privileges of the levels given before, on the workers too (the
	-- reader's grow: see _access_privileges)
	FOR r IN SELECT a.grantee::regrole AS grantee, a.level FROM @extschema@._access a
			  WHERE EXISTS (SELECT 1 FROM pg_roles x WHERE x.oid = a.grantee) LOOP
		PERFORM @extschema@._access_apply(format('GRANT %s ON %s %s TO %s', p.privilege, p.kind, p.object, r.grantee),
										   p.kind, p.object)
		   FROM @extschema@._access_privileges(r.level) p;
	END LOOP;
END $$;
REVOKE ALL ON FUNCTION @extschema@.distribute() FROM PUBLIC;
COMMENT ON FUNCTION @extschema@.distribute() IS 'On a Citus coordinator: makes the configuration tables reference tables, distributes the org-keyed tables by org_id (co-located), and delegates the functions that take an org to the node that holds it. Returns what went where. Without Citus, an error.';
