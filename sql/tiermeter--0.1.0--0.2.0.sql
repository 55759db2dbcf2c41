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
