-- pgTAP: every function's volatility and parallel safety (docs/design.md,
-- "Volatility and parallel safety"), and a function added without a
-- decision about them fails here.
BEGIN;
SELECT plan(2);

CREATE TEMP TABLE marked (fn text, volatility "char", parallel "char");
INSERT INTO marked VALUES
	-- reads shared counters other commits change, and the caller's own
	-- uncommitted usage: volatile, kept in the leader process
	('check_org_limits(text,text)', 'v', 'r'),
	('usage_stats(text)', 'v', 'r'),
	-- the cache's statistics: shared memory, the same from any process
	('cache_stats()', 'v', 's'),
	-- read-only session answers: they call check_org_limits
	('check_session_limits(text,text)', 'v', 'r'),
	('_check_session_limits(text,text,timestamp with time zone)', 'v', 'r'),
	('_session_status(text,text,sessions,limit_status,timestamp with time zone,text)', 's', 'r'),
	('_session_admission(text,text,limit_status,timestamp with time zone)', 's', 'r'),
	-- session table reads
	('_session_limits(text)', 's', 's'),
	('_active_sessions(text,timestamp with time zone,text)', 's', 's'),
	('_idle_timeout()', 's', 's'),
	('_require_id(text,text)', 'i', 's'),
	('_session_accrual(sessions,timestamp with time zone)', 'i', 's'),
	-- pure functions of their arguments
	('format_duration(bigint)', 'i', 's'),
	('period_bounds(timestamp with time zone,timestamp with time zone,timestamp with time zone,timestamp with time zone)', 'i', 's'),
	('verify_stripe_signature(text,text,text,integer,timestamp with time zone)', 'i', 's'),
	('_require_amount(bigint,text,boolean)', 'i', 's'),
	('_stripe_ts(jsonb,text)', 'i', 's'),
	('_stripe_require_id(text,text)', 'i', 's'),
	('_access_privileges(text)', 's', 's'),
	('_distributed()', 's', 's'),
	('_on_workers(text)', 'v', 'u'),
	('_access_apply(text,text,text)', 'v', 'u'),
	-- catalog reads: the access level checks
	('_access_held(regrole,text)', 's', 's'),
	('_access_require(regrole,text)', 'v', 'u'),
	-- lookups as the extension's owner, in the leader
	('_require_feature(text)', 's', 'r'),
	('_require_tier(text)', 's', 'r'),
	-- writers: volatile, never in a parallel worker
	('record_usage(text,bigint,text,text,text,timestamp with time zone)', 'v', 'u'),
	('consume(text,bigint,text,text,text)', 'v', 'u'),
	('set_org_tier(text,text)', 'v', 'u'),
	('set_org_quota(text,text,bigint)', 'v', 'u'),
	('grant_usage(text,bigint,text,text)', 'v', 'u'),
	('apply_subscription_event(jsonb)', 'v', 'u'),
	('rollover(timestamp with time zone)', 'v', 'u'),
	('schedule_rollover(text)', 'v', 'u'),
	('distribute()', 'v', 'u'),
	('_ensure_org(text)', 'v', 'u'),
	('_invalidate_database()', 'v', 'u'),
	('_stripe_malformed(text)', 'v', 'u'),
	('link_stripe_customer(text,text)', 'v', 'u'),
	('link_stripe_subscription(text,text)', 'v', 'u'),
	('reapply_stripe_events()', 'v', 'u'),
	('_stripe_event(jsonb,text)', 'v', 'u'),
	('_stripe_link(text,text,text,text,text)', 'v', 'u'),
	('_stripe_lock(text,text)', 'v', 'u'),
	('_stripe_recompute(text,text,jsonb)', 'v', 'u'),
	('_stripe_reapply(text,text,text)', 'v', 'u'),
	('grant_access(regrole,text)', 'v', 'u'),
	('revoke_access(regrole,text)', 'v', 'u'),
	('cache_stats_reset()', 'v', 'u'),
	('begin_session(text,text,text)', 'v', 'u'),
	('touch_session(text,text)', 'v', 'u'),
	('end_session(text,text)', 'v', 'u'),
	('_begin_session(text,text,text,timestamp with time zone)', 'v', 'u'),
	('_touch_session(text,text,timestamp with time zone)', 'v', 'u'),
	('_touch_session_admit(text,text,timestamp with time zone)', 'v', 'u'),
	('_end_session(text,text,timestamp with time zone)', 'v', 'u'),
	('_session_open(text,text,boolean,timestamp with time zone)', 'v', 'u'),
	('_session_lock(text,timestamp with time zone)', 'v', 'u'),
	('_session_accrue(sessions,timestamp with time zone)', 'v', 'u'),
	('_announce_events()', 'v', 'u'),
	('_undo_visits()', 'v', 'u'),
	-- trigger functions
	('_invalidate()', 'v', 'u'),
	('_invalidate_insert()', 'v', 'u'),
	('_check_default_tier()', 'v', 'u'),
	('_notify_limit_event()', 'v', 'u'),
	('_replace_seed()', 'v', 'u'),
	('_track_deleted_seeds()', 'v', 'u'),
	('_apply_deleted_seed()', 'v', 'u'),
	('_drop_deleted_default()', 'v', 'u'),
	('_refuse_feature_rename()', 'v', 'u');

SELECT set_eq(
	$$SELECT replace(p.oid::regprocedure::text, 'tiermeter.', '') FROM pg_proc p
	   WHERE p.pronamespace = 'tiermeter'::regnamespace$$,
	$$SELECT fn FROM marked$$,
	'every function of the schema has a decided volatility and parallel safety');

SELECT results_eq(
	$$SELECT replace(p.oid::regprocedure::text, 'tiermeter.', ''), p.provolatile, p.proparallel
	    FROM pg_proc p JOIN marked m ON m.fn = replace(p.oid::regprocedure::text, 'tiermeter.', '')
	   WHERE p.pronamespace = 'tiermeter'::regnamespace ORDER BY 1$$,
	$$SELECT fn, volatility, parallel FROM marked ORDER BY 1$$,
	'volatility and parallel safety as decided');

SELECT * FROM finish();
ROLLBACK;
