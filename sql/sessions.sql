-- Conversation sessions: begin_session, touch_session, end_session,
-- check_session_limits.  Time is controlled through the internal functions
-- that take the moment (_begin_session(..., at) and so on, the owner's
-- only); the public ones pass now().  Offsets stay within a few minutes of
-- now(), so the usage lands in the current period.
SET timezone = 'UTC';
SET tiermeter.idle_timeout = 10;
-- a tier with small limits: 60 s per session, 2 active sessions, 100 s a month
INSERT INTO tiermeter.tiers (tier_id, display_name, rank, price_cents_monthly,
	max_session_seconds, max_active_sessions, is_default)
VALUES ('tiny', 'Tiny', 10, 0, 60, 2, false);
INSERT INTO tiermeter.tier_quotas VALUES ('tiny', 'conversation_seconds', 100);
SELECT tiermeter.set_org_tier('s-1', 'tiny');
CREATE TEMP TABLE clock AS SELECT date_trunc('second', now()) AS t0;
-- the moment t0 + secs
CREATE FUNCTION pg_temp.at(secs numeric) RETURNS timestamptz
LANGUAGE sql AS $$ SELECT t0 + make_interval(secs => secs) FROM clock $$;

-- begin admits; every column is filled
SELECT org_id, conversation_id, allowed, reason, active, started_at = pg_temp.at(0) AS started_t0,
       last_active_at = pg_temp.at(0) AS last_t0, duration_seconds, session_quota,
       session_remaining, active_sessions, max_active_sessions, used, quota,
       period_end = (SELECT o.period_end FROM tiermeter.orgs o WHERE o.org_id = 's-1') AS period_end_is_orgs
  FROM tiermeter._begin_session('s-1', 'a', 'u-1', pg_temp.at(0));
-- idempotent: a second begin takes no second slot
SELECT allowed, reason, active, active_sessions FROM tiermeter._begin_session('s-1', 'a', NULL, pg_temp.at(1));
SELECT allowed, reason, active, active_sessions FROM tiermeter._begin_session('s-1', 'b', NULL, pg_temp.at(1));
-- the third conversation finds both slots taken: refused, nothing created
SELECT allowed, reason, active, started_at, duration_seconds, active_sessions, max_active_sessions
  FROM tiermeter._begin_session('s-1', 'c', NULL, pg_temp.at(2));
SELECT count(*) AS c_rows FROM tiermeter.sessions WHERE org_id = 's-1' AND conversation_id = 'c';

-- touches add the active time since the last one, in whole seconds (the
-- fraction waits for the next touch), to the session and to the usage
SELECT duration_seconds, used, session_remaining FROM tiermeter._touch_session('s-1', 'a', pg_temp.at(5));
SELECT duration_seconds, used FROM tiermeter._touch_session('s-1', 'a', pg_temp.at(5.6));
SELECT duration_seconds, used FROM tiermeter._touch_session('s-1', 'a', pg_temp.at(6.2));
SELECT conversation_id, amount FROM tiermeter.usage_log WHERE org_id = 's-1' ORDER BY occurred_at, conversation_id;

-- a session idle longer than idle_timeout (10 s) is not active and frees its
-- slot: b (last touched at 1) is idle from 11, so c would be admitted at 12
-- and is at 20 (a is idle from 16.2 too)
SELECT allowed, reason, active_sessions FROM tiermeter._check_session_limits('s-1', 'c', pg_temp.at(12));
SELECT allowed, reason, active, active_sessions FROM tiermeter._begin_session('s-1', 'c', NULL, pg_temp.at(20));
-- b comes back at 25: its gap counts exactly the timeout (10 s), and it is
-- re-admitted as begin_session would (c and b: 2 slots)
SELECT allowed, reason, active, duration_seconds, used, active_sessions
  FROM tiermeter._touch_session('s-1', 'b', pg_temp.at(25));
SELECT duration_seconds, used FROM tiermeter._touch_session('s-1', 'b', pg_temp.at(26));
SELECT duration_seconds, used FROM tiermeter._touch_session('s-1', 'c', pg_temp.at(28));
-- a comes back at 30: its 10 s count, but b and c hold both slots: refused,
-- still not active; touched again it adds nothing more for that gap
SELECT allowed, reason, active, duration_seconds, used, active_sessions
  FROM tiermeter._touch_session('s-1', 'a', pg_temp.at(30));
SELECT allowed, reason, active, duration_seconds, used FROM tiermeter._touch_session('s-1', 'a', pg_temp.at(31));
-- at 40 b (idle from 36) and c (from 38) are idle: a is admitted
SELECT allowed, reason, active, duration_seconds, used, active_sessions
  FROM tiermeter._touch_session('s-1', 'a', pg_temp.at(40));

-- the session limit (60 s): a touched every 9 s reaches it at 85
SELECT duration_seconds FROM tiermeter._touch_session('s-1', 'a', pg_temp.at(49));
SELECT duration_seconds FROM tiermeter._touch_session('s-1', 'a', pg_temp.at(58));
SELECT duration_seconds FROM tiermeter._touch_session('s-1', 'a', pg_temp.at(67));
SELECT allowed, reason, duration_seconds, session_remaining
  FROM tiermeter._touch_session('s-1', 'a', pg_temp.at(76));
SELECT allowed, reason, active, duration_seconds, session_remaining, used
  FROM tiermeter._touch_session('s-1', 'a', pg_temp.at(85));

-- end: a last touch, then the slot is free
SELECT allowed, reason, active, duration_seconds, used, active_sessions
  FROM tiermeter._end_session('s-1', 'a', pg_temp.at(86));
-- touching or ending an ended or unknown session is an error
SELECT tiermeter._end_session('s-1', 'a', pg_temp.at(87));
SELECT tiermeter._touch_session('s-1', 'a', pg_temp.at(87));
SELECT tiermeter._touch_session('s-1', 'nope', pg_temp.at(87));
SELECT tiermeter.end_session('nobody', 'nope');
-- an ended conversation that had its length is not begun again
SELECT allowed, reason, active, duration_seconds, active_sessions
  FROM tiermeter._begin_session('s-1', 'a', NULL, pg_temp.at(88));
-- one that had not goes on with its duration: b (idle from 36, counted up to then)
SELECT allowed, reason, active, duration_seconds FROM tiermeter._end_session('s-1', 'b', pg_temp.at(88));
SELECT allowed, reason, active, duration_seconds, active_sessions
  FROM tiermeter._begin_session('s-1', 'b', NULL, pg_temp.at(89));
SELECT allowed, reason, active, duration_seconds FROM tiermeter._end_session('s-1', 'b', pg_temp.at(90));

-- counted only if the transaction commits
SELECT used AS used_before FROM tiermeter.check_org_limits('s-1');
BEGIN;
SELECT active, duration_seconds, used FROM tiermeter._touch_session('s-1', 'c', pg_temp.at(91));
ROLLBACK;
SELECT used AS used_after FROM tiermeter.check_org_limits('s-1');
SELECT duration_seconds, accrued_to = pg_temp.at(28) AS accrued_to_28
  FROM tiermeter.sessions WHERE org_id = 's-1' AND conversation_id = 'c';

-- the monthly quota spent: limit_exceeded, which wins over full slots
SELECT tiermeter.set_org_tier('s-6', 'tiny');
SELECT allowed FROM tiermeter._begin_session('s-6', 'x', NULL, pg_temp.at(0));
SELECT allowed FROM tiermeter._begin_session('s-6', 'y', NULL, pg_temp.at(0));
SELECT used FROM tiermeter.record_usage('s-6', 100);
SELECT allowed, reason, active, active_sessions, max_active_sessions, used, quota
  FROM tiermeter._begin_session('s-6', 'z', NULL, pg_temp.at(1));
SELECT count(*) AS z_rows FROM tiermeter.sessions WHERE org_id = 's-6' AND conversation_id = 'z';
-- a touch still counts, and says so
SELECT allowed, reason, active, duration_seconds, used FROM tiermeter._touch_session('s-6', 'x', pg_temp.at(3));

-- the idle_timeout in force at begin governs the session from then on
SELECT tiermeter.set_org_tier('s-2', 'tiny');
SET tiermeter.idle_timeout = 5;
SELECT allowed FROM tiermeter._begin_session('s-2', 'g', NULL, pg_temp.at(0));
SET tiermeter.idle_timeout = 100;
SELECT active, duration_seconds FROM tiermeter._check_session_limits('s-2', 'g', pg_temp.at(30));
SELECT active, duration_seconds FROM tiermeter._touch_session('s-2', 'g', pg_temp.at(30));
SELECT idle_timeout FROM tiermeter.sessions WHERE org_id = 's-2';
RESET tiermeter.idle_timeout;

-- check_session_limits writes nothing: a READ ONLY transaction, unknown
-- conversations (would begin_session admit them?), unknown orgs
BEGIN READ ONLY;
SELECT allowed, reason, active, duration_seconds, active_sessions, max_active_sessions
  FROM tiermeter._check_session_limits('s-2', 'g', pg_temp.at(40));
SELECT allowed, reason, active, started_at, duration_seconds, session_quota, active_sessions, max_active_sessions, used, quota
  FROM tiermeter.check_session_limits('s-new', 'x');
SELECT allowed FROM tiermeter.check_session_limits('s-2', 'h');
COMMIT;
SELECT count(*) AS s_new_orgs FROM tiermeter.orgs WHERE org_id = 's-new';

-- the public functions use now(); begin creates the org on the default tier
SELECT allowed, reason, active, duration_seconds, session_quota, max_active_sessions
  FROM tiermeter.begin_session('s-3', 'p');
SELECT allowed, reason, active_sessions FROM tiermeter.begin_session('s-3', 'q');
SELECT allowed, active, duration_seconds FROM tiermeter.touch_session('s-3', 'p');
SELECT allowed, active, active_sessions FROM tiermeter.end_session('s-3', 'p');
SELECT allowed, active_sessions FROM tiermeter.begin_session('s-3', 'q');
SELECT tier_id FROM tiermeter.orgs WHERE org_id = 's-3';

-- an unlimited tier: session_quota and session_remaining are NULL
SELECT tiermeter.set_org_tier('s-4', 'enterprise');
SELECT allowed, session_quota, session_remaining, max_active_sessions, quota
  FROM tiermeter.begin_session('s-4', 'z');

-- bad input: a clear error, nothing changed
SELECT tiermeter.begin_session(NULL, 'x');
SELECT tiermeter.begin_session('s-5', NULL);
SELECT tiermeter.begin_session('s-5', '  ');
SELECT tiermeter.begin_session('s-5', 'x', '');
SELECT tiermeter.touch_session('s-5', repeat('x', 1025));
SELECT tiermeter.check_session_limits(NULL, 'x');
SELECT tiermeter._touch_session('s-1', 'c', 'infinity');
SELECT count(*) AS s5_rows FROM tiermeter.sessions WHERE org_id = 's-5';

-- rollover ends the sessions idle by now, at the moment they went idle,
-- counting their time up to then (as a touch would): s-7's session, begun
-- an hour ago with a 10 s timeout and touched after 4 s, went idle at 14 s:
-- its 10 s after the touch count, and it ends then
SET tiermeter.idle_timeout = 10;
SELECT allowed FROM tiermeter._begin_session('s-7', 'old', NULL, now() - interval '1 hour');
SELECT duration_seconds FROM tiermeter._touch_session('s-7', 'old', now() - interval '1 hour' + interval '4 s');
RESET tiermeter.idle_timeout;
SELECT count(*) FILTER (WHERE ended_at IS NULL AND idle_until < clock_timestamp()) AS idle_open_before
  FROM tiermeter.sessions;
SELECT tiermeter.rollover() >= 0 AS ran;
SELECT count(*) FILTER (WHERE ended_at IS NULL AND idle_until < clock_timestamp()) AS idle_left_open,
       count(*) FILTER (WHERE ended_at IS NULL AND idle_until >= clock_timestamp()) > 0 AS active_left_open
  FROM tiermeter.sessions;
SELECT duration_seconds, ended_at = idle_until AS ended_when_idle
  FROM tiermeter.sessions WHERE org_id = 's-7';
SELECT tiermeter._touch_session('s-7', 'old', now());

-- A touch of an active session far from its idle timeout (5 s or more)
-- takes a way of its own, in C; every other touch, and every call of
-- _touch_session_admit, the PL/pgSQL way (counted with track_functions).
-- Both give the same status: each is tried in a subtransaction, then
-- undone.  s-8: the tiny tier (60 s per session, 100 s a month) and a 300 s
-- timeout; s-9: unlimited.
SET track_functions = 'pl';
CREATE FUNCTION pg_temp.both_ways(org text, conv text, secs numeric)
RETURNS TABLE (c_way tiermeter.session_status, in_c boolean, same boolean)
LANGUAGE plpgsql AS $$
DECLARE
	plpgsql_way	tiermeter.session_status;
	admits		bigint := coalesce(pg_stat_get_xact_function_calls(
						'tiermeter._touch_session_admit(text,text,timestamptz)'::regprocedure), 0);
BEGIN
	BEGIN
		c_way := tiermeter._touch_session(org, conv, pg_temp.at(secs));
		in_c := coalesce(pg_stat_get_xact_function_calls(
					'tiermeter._touch_session_admit(text,text,timestamptz)'::regprocedure), 0) = admits;
		RAISE EXCEPTION 'undo';
	EXCEPTION WHEN raise_exception THEN
	END;
	BEGIN
		plpgsql_way := tiermeter._touch_session_admit(org, conv, pg_temp.at(secs));
		RAISE EXCEPTION 'undo';
	EXCEPTION WHEN raise_exception THEN
	END;
	same := c_way IS NOT DISTINCT FROM plpgsql_way;
	RETURN NEXT;
END $$;
SET tiermeter.idle_timeout = 300;
SELECT tiermeter.set_org_tier('s-8', 'tiny');
SELECT tiermeter.set_org_tier('s-9', 'enterprise');
SELECT allowed FROM tiermeter._begin_session('s-8', 'x', NULL, pg_temp.at(0));
SELECT allowed FROM tiermeter._begin_session('s-8', 'y', NULL, pg_temp.at(0));
SELECT allowed FROM tiermeter._begin_session('s-9', 'x', NULL, pg_temp.at(0));
RESET tiermeter.idle_timeout;
-- mid-session; at the session's length (60 s); past the monthly quota too
-- (100 s); no time since the last touch; unlimited; near the idle timeout
-- (the PL/pgSQL way both times)
SELECT secs, (w.c_way).allowed, (w.c_way).reason, (w.c_way).active, (w.c_way).duration_seconds,
       (w.c_way).session_remaining, (w.c_way).active_sessions, (w.c_way).used, (w.c_way).quota,
       (w.c_way).last_active_at = pg_temp.at(secs) AS last_is_at, w.in_c, w.same
  FROM (VALUES (20), (70), (130), (0)) v(secs), pg_temp.both_ways('s-8', 'x', v.secs) w;
SELECT (w.c_way).allowed, (w.c_way).session_quota, (w.c_way).max_active_sessions,
       (w.c_way).duration_seconds, (w.c_way).quota, w.in_c, w.same
  FROM pg_temp.both_ways('s-9', 'x', 40) w;
SELECT (w.c_way).allowed, (w.c_way).duration_seconds, w.in_c, w.same
  FROM pg_temp.both_ways('s-8', 'y', 297) w;
-- undone: nothing was counted
SELECT sum(duration_seconds) AS durations FROM tiermeter.sessions WHERE org_id IN ('s-8', 's-9');
SELECT (tiermeter.check_org_limits('s-8')).used AS s8_used;
RESET track_functions;

-- every second of every session is in the ledger, with its conversation
SELECT s.org_id, sum(s.duration_seconds) AS durations,
       (SELECT coalesce(sum(u.amount), 0) FROM tiermeter.usage_log u
         WHERE u.org_id = s.org_id AND u.conversation_id IS NOT NULL) AS ledger
  FROM tiermeter.sessions s GROUP BY s.org_id ORDER BY s.org_id;
SELECT tiermeter.usage_stats('s-1')->'usage'->'conversations_count' AS conversations_count;
