-- tiermeter 0.1.0: per-organization usage limits by subscription tier.
-- docs/reference.md is the contract; docs/design.md explains the tables.

\echo Use "CREATE EXTENSION tiermeter" to load this file. \quit

-- The schema is created by CREATE EXTENSION (schema = tiermeter in the control
-- file).  Nothing here is granted to PUBLIC.
REVOKE ALL ON SCHEMA @extschema@ FROM PUBLIC;

------------------------------------------------------------------------------
-- Configuration (docs/reference.md, "Configuration tables"): ordinary, editable data, dumped by pg_dump.
------------------------------------------------------------------------------

CREATE TABLE @extschema@.tiers (
	tier_id				text PRIMARY KEY CHECK (tier_id <> ''),
	display_name		text NOT NULL,
	rank				integer NOT NULL UNIQUE,
	price_cents_monthly	integer NOT NULL DEFAULT 0 CHECK (price_cents_monthly >= 0),
	max_session_seconds	bigint CHECK (max_session_seconds >= 0),
	max_active_sessions	integer CHECK (max_active_sessions >= 0),
	is_default			boolean NOT NULL DEFAULT false
);
-- at most one default tier; at least one is checked at commit (below)
CREATE UNIQUE INDEX tiers_one_default ON @extschema@.tiers ((true)) WHERE is_default;

CREATE TABLE @extschema@.features (
	feature		text PRIMARY KEY CHECK (feature <> ''),
	kind		text NOT NULL CHECK (kind IN ('period', 'gauge')),
	unit		text,
	description	text
);

CREATE TABLE @extschema@.tier_quotas (
	tier_id	text NOT NULL REFERENCES @extschema@.tiers ON UPDATE CASCADE ON DELETE CASCADE,
	feature	text NOT NULL REFERENCES @extschema@.features ON UPDATE CASCADE ON DELETE CASCADE,
	quota	bigint CHECK (quota >= 0),
	PRIMARY KEY (tier_id, feature)
);

CREATE TABLE @extschema@.stripe_prices (
	price_id	text PRIMARY KEY CHECK (price_id <> ''),
	tier_id		text NOT NULL REFERENCES @extschema@.tiers ON UPDATE CASCADE ON DELETE CASCADE
);

CREATE TABLE @extschema@.alert_thresholds (
	percent	integer PRIMARY KEY CHECK (percent > 0)
);

-- Exactly one default tier, checked when the editing transaction commits.
CREATE FUNCTION @extschema@._check_default_tier() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF (SELECT count(*) FROM @extschema@.tiers WHERE is_default) <> 1 THEN
		RAISE EXCEPTION 'tiermeter: there must be exactly one default tier'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Set is_default = true on one row of tiermeter.tiers.';
	END IF;
	RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER tiers_exactly_one_default
	AFTER INSERT OR UPDATE OR DELETE ON @extschema@.tiers
	DEFERRABLE INITIALLY DEFERRED
	FOR EACH ROW EXECUTE FUNCTION @extschema@._check_default_tier();

------------------------------------------------------------------------------
-- Organizations and their per-org settings.
------------------------------------------------------------------------------

CREATE TABLE @extschema@.orgs (
	org_id					text PRIMARY KEY CHECK (org_id <> ''),
	tier_id					text NOT NULL REFERENCES @extschema@.tiers ON UPDATE CASCADE,
	billing_anchor			timestamptz NOT NULL,
	period_start			timestamptz NOT NULL,
	period_end				timestamptz NOT NULL,
	stripe_customer_id		text,
	stripe_subscription_id	text,
	created_at				timestamptz NOT NULL DEFAULT now(),
	updated_at				timestamptz NOT NULL DEFAULT now(),
	CHECK (period_end > period_start)
);

CREATE TABLE @extschema@.org_quotas (
	org_id	text NOT NULL REFERENCES @extschema@.orgs ON UPDATE CASCADE ON DELETE CASCADE,
	feature	text NOT NULL REFERENCES @extschema@.features ON UPDATE CASCADE ON DELETE CASCADE,
	quota	bigint CHECK (quota >= 0),
	PRIMARY KEY (org_id, feature)
);

CREATE TABLE @extschema@.usage_grants (
	org_id		text NOT NULL,
	feature		text NOT NULL REFERENCES @extschema@.features ON UPDATE CASCADE ON DELETE CASCADE,
	amount		bigint NOT NULL CHECK (amount > 0),
	reason		text,
	granted_at	timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_grants_org ON @extschema@.usage_grants (org_id, feature, granted_at);

------------------------------------------------------------------------------
-- The usage ledger: the durable truth.  Append-only, one row per recorded
-- amount, no row lock shared between writers of one org (docs/design.md).
------------------------------------------------------------------------------

CREATE TABLE @extschema@.usage_log (
	org_id			text NOT NULL,
	feature			text NOT NULL,
	amount			bigint NOT NULL,
	occurred_at		timestamptz NOT NULL,
	conversation_id	text,
	idempotency_key	text,
	recorded_at		timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_log_org_feature_time
	ON @extschema@.usage_log (org_id, feature, occurred_at) INCLUDE (amount);
CREATE UNIQUE INDEX usage_log_idempotency
	ON @extschema@.usage_log (org_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE @extschema@.limit_events (
	id				bigserial PRIMARY KEY,
	org_id			text NOT NULL,
	kind			text NOT NULL CHECK (kind IN ('threshold_reached', 'tier_changed', 'stripe_unmapped')),
	feature			text,
	threshold		integer,
	period_start	timestamptz,
	payload			jsonb NOT NULL DEFAULT '{}',
	created_at		timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX limit_events_org ON @extschema@.limit_events (org_id, created_at);
CREATE UNIQUE INDEX limit_events_threshold_once
	ON @extschema@.limit_events (org_id, feature, period_start, threshold)
	WHERE kind = 'threshold_reached';

-- Every limit event is also sent as NOTIFY tiermeter, <json>.
CREATE FUNCTION @extschema@._notify_limit_event() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	PERFORM pg_notify('tiermeter', to_jsonb(NEW)::text);
	RETURN NULL;
END $$;
CREATE TRIGGER limit_events_notify AFTER INSERT ON @extschema@.limit_events
	FOR EACH ROW EXECUTE FUNCTION @extschema@._notify_limit_event();

------------------------------------------------------------------------------
-- The seeded catalog (docs/reference.md, "Configuration tables").
------------------------------------------------------------------------------

INSERT INTO @extschema@.tiers
	(tier_id, display_name, rank, price_cents_monthly, max_session_seconds, max_active_sessions, is_default)
VALUES
	('free',         'Free',         0,     0, 1800,    1, true),
	('basic',        'Basic',        1,  2900, 3600,    3, false),
	('professional', 'Professional', 2,  9900, 7200,   10, false),
	('enterprise',   'Enterprise',   3, 49900, NULL, NULL, false);

INSERT INTO @extschema@.features (feature, kind, unit, description) VALUES
	('conversation_seconds', 'period', 's',     'AI conversation time per billing period'),
	('users',                'gauge',  'users', 'users in the organization'),
	('pages',                'gauge',  'pages', 'stored pages'),
	('documents',            'gauge',  'documents', 'stored documents'),
	('spreadsheets',         'gauge',  'spreadsheets', 'stored spreadsheets'),
	('web_scrapes',          'period', 'scrapes', 'single-page web scrapes per billing period'),
	('multipage_scrapes',    'period', 'scrapes', 'multi-page web scrapes per billing period'),
	('reports',              'period', 'reports', 'generated reports per billing period'),
	('images',               'period', 'images', 'generated images per billing period'),
	('api_access',           'gauge',  'boolean', 'API access: quota 0 = no, unlimited = yes');

INSERT INTO @extschema@.tier_quotas (tier_id, feature, quota)
SELECT t.tier_id, q.feature, CASE t.tier_id
		WHEN 'free' THEN q.free WHEN 'basic' THEN q.basic
		WHEN 'professional' THEN q.professional ELSE q.enterprise END
FROM (VALUES
	('conversation_seconds', 3600, 18000, 72000, NULL),
	('users',                   1,     3,    10, NULL),
	('pages',                  50,   500,  2000, NULL),
	('documents',               5,    50,   200, NULL),
	('spreadsheets',            0,    10,    20, NULL),
	('web_scrapes',             0,    50,   200, NULL),
	('multipage_scrapes',       0,     0,    10,   50),
	('reports',                 0,     0,     5,   20),
	('images',                  0,   100,   500, NULL),
	('api_access',              0,     0,  NULL, NULL)
) AS q(feature, free, basic, professional, enterprise)
CROSS JOIN @extschema@.tiers t;

INSERT INTO @extschema@.alert_thresholds (percent) VALUES (80), (100);

-- pg_dump keeps the config tables whole; a restore runs CREATE EXTENSION
-- (which seeds them) and then loads the dumped rows.  So that the dumped
-- rows win instead of colliding, inserting a row whose key is held by an
-- untouched seeded row replaces that row.  The seeded rows are remembered
-- here (extension data, recreated by CREATE EXTENSION, never dumped).
CREATE TABLE @extschema@._seeds (
	tbl		text NOT NULL,
	row_data jsonb NOT NULL,
	PRIMARY KEY (tbl, row_data)
);
INSERT INTO @extschema@._seeds
SELECT 'tiers', to_jsonb(t) FROM @extschema@.tiers t
UNION ALL SELECT 'features', to_jsonb(f) FROM @extschema@.features f
UNION ALL SELECT 'tier_quotas', to_jsonb(q) FROM @extschema@.tier_quotas q
UNION ALL SELECT 'alert_thresholds', to_jsonb(a) FROM @extschema@.alert_thresholds a;

CREATE FUNCTION @extschema@._replace_seed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	newj		jsonb := to_jsonb(NEW);
	key_sql		text;
	set_sql		text;
	existing	jsonb;
BEGIN
	-- TG_ARGV: the key columns
	SELECT string_agg(format('t.%I::text = ($1->>%L)', k, k), ' AND ')
	  INTO key_sql FROM unnest(TG_ARGV) AS k;
	EXECUTE format('SELECT to_jsonb(t) FROM %I.%I t WHERE %s', TG_TABLE_SCHEMA, TG_TABLE_NAME, key_sql)
	   INTO existing USING newj;
	IF existing IS NULL OR NOT EXISTS (
			SELECT 1 FROM @extschema@._seeds s WHERE s.tbl = TG_TABLE_NAME AND s.row_data = existing) THEN
		RETURN NEW;				-- no row, or one the user made: the usual rules
	END IF;
	SELECT string_agg(format('%I = r.%I', c, c), ', ')
	  INTO set_sql FROM jsonb_object_keys(newj) AS c;
	EXECUTE format('UPDATE %I.%I t SET %s FROM jsonb_populate_record(NULL::%I.%I, $1) r WHERE %s',
				   TG_TABLE_SCHEMA, TG_TABLE_NAME, set_sql, TG_TABLE_SCHEMA, TG_TABLE_NAME, key_sql)
	   USING newj;
	RETURN NULL;
END $$;
CREATE TRIGGER tiers_replace_seed BEFORE INSERT ON @extschema@.tiers
	FOR EACH ROW EXECUTE FUNCTION @extschema@._replace_seed('tier_id');
CREATE TRIGGER features_replace_seed BEFORE INSERT ON @extschema@.features
	FOR EACH ROW EXECUTE FUNCTION @extschema@._replace_seed('feature');
CREATE TRIGGER tier_quotas_replace_seed BEFORE INSERT ON @extschema@.tier_quotas
	FOR EACH ROW EXECUTE FUNCTION @extschema@._replace_seed('tier_id', 'feature');
CREATE TRIGGER alert_thresholds_replace_seed BEFORE INSERT ON @extschema@.alert_thresholds
	FOR EACH ROW EXECUTE FUNCTION @extschema@._replace_seed('percent');

SELECT pg_catalog.pg_extension_config_dump('@extschema@.tiers', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.features', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.tier_quotas', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.stripe_prices', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.alert_thresholds', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.orgs', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.org_quotas', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.usage_grants', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.usage_log', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.limit_events', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.limit_events_id_seq', '');

------------------------------------------------------------------------------
-- Result type (docs/reference.md, "Result type limit_status").
------------------------------------------------------------------------------

CREATE TYPE @extschema@.limit_status AS (
	org_id			text,
	tier			text,
	feature			text,
	allowed			boolean,
	reason			text,
	used			bigint,
	quota			bigint,
	remaining		bigint,
	percent_used	numeric,
	warning			boolean,
	unlimited		boolean,
	period_start	timestamptz,
	period_end		timestamptz
);

------------------------------------------------------------------------------
-- Functions in C (src/).
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.period_bounds(
	anchor timestamptz, at timestamptz,
	stored_start timestamptz DEFAULT NULL, stored_end timestamptz DEFAULT NULL,
	OUT period_start timestamptz, OUT period_end timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'tiermeter_period_bounds'
LANGUAGE C IMMUTABLE PARALLEL SAFE;

CREATE FUNCTION @extschema@.format_duration(seconds bigint) RETURNS text
AS 'MODULE_PATHNAME', 'tiermeter_format_duration'
LANGUAGE C IMMUTABLE PARALLEL SAFE;

CREATE FUNCTION @extschema@.check_org_limits(
	org_id text, feature text DEFAULT 'conversation_seconds')
RETURNS @extschema@.limit_status
AS 'MODULE_PATHNAME', 'tiermeter_check_org_limits'
LANGUAGE C STABLE CALLED ON NULL INPUT;

CREATE FUNCTION @extschema@.record_usage(
	org_id text, amount bigint, feature text DEFAULT 'conversation_seconds',
	conversation_id text DEFAULT NULL, idempotency_key text DEFAULT NULL,
	occurred_at timestamptz DEFAULT NULL)
RETURNS @extschema@.limit_status
AS 'MODULE_PATHNAME', 'tiermeter_record_usage'
LANGUAGE C VOLATILE CALLED ON NULL INPUT;

CREATE FUNCTION @extschema@.consume(
	org_id text, amount bigint, feature text DEFAULT 'conversation_seconds',
	conversation_id text DEFAULT NULL, idempotency_key text DEFAULT NULL)
RETURNS @extschema@.limit_status
AS 'MODULE_PATHNAME', 'tiermeter_consume'
LANGUAGE C VOLATILE CALLED ON NULL INPUT;

CREATE FUNCTION @extschema@.verify_stripe_signature(
	payload text, signature_header text, secret text,
	tolerance_seconds integer DEFAULT 300, at timestamptz DEFAULT now())
RETURNS boolean
AS 'MODULE_PATHNAME', 'tiermeter_verify_stripe_signature'
LANGUAGE C STABLE CALLED ON NULL INPUT;

-- Internal helpers shared by the admin functions below.
CREATE FUNCTION @extschema@._ensure_org(org_id text) RETURNS void
AS 'MODULE_PATHNAME', 'tiermeter_ensure_org'
LANGUAGE C VOLATILE CALLED ON NULL INPUT;

CREATE FUNCTION @extschema@._require_feature(feature text) RETURNS text
AS 'MODULE_PATHNAME', 'tiermeter_require_feature'
LANGUAGE C STABLE CALLED ON NULL INPUT;

CREATE FUNCTION @extschema@._require_tier(tier_id text) RETURNS void
AS 'MODULE_PATHNAME', 'tiermeter_require_tier'
LANGUAGE C STABLE CALLED ON NULL INPUT;

CREATE FUNCTION @extschema@._require_amount(amount bigint, feature text, is_gauge boolean) RETURNS void
AS 'MODULE_PATHNAME', 'tiermeter_require_amount'
LANGUAGE C IMMUTABLE CALLED ON NULL INPUT;

------------------------------------------------------------------------------
-- Admin functions (SQL; SECURITY DEFINER with a pinned search_path).
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.set_org_tier(org_id text, tier_id text) RETURNS void
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	old_tier text;
BEGIN
	PERFORM @extschema@._require_tier(tier_id);
	PERFORM @extschema@._ensure_org(org_id);
	SELECT o.tier_id INTO old_tier FROM @extschema@.orgs o
		WHERE o.org_id = set_org_tier.org_id FOR UPDATE;
	IF old_tier IS DISTINCT FROM set_org_tier.tier_id THEN
		UPDATE @extschema@.orgs o SET tier_id = set_org_tier.tier_id, updated_at = now()
			WHERE o.org_id = set_org_tier.org_id;
		INSERT INTO @extschema@.limit_events (org_id, kind, payload)
		VALUES (set_org_tier.org_id, 'tier_changed',
				jsonb_build_object('from', old_tier, 'to', set_org_tier.tier_id,
								   'source', 'set_org_tier'));
	END IF;
END $$;

CREATE FUNCTION @extschema@.set_org_quota(org_id text, feature text, quota bigint) RETURNS void
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	PERFORM @extschema@._require_feature(feature);
	IF quota < 0 OR quota > 1000000000000 THEN
		RAISE EXCEPTION 'tiermeter: quota must be between 0 and 10^12, or NULL for unlimited'
			USING ERRCODE = 'invalid_parameter_value', DETAIL = format('quota = %s', quota);
	END IF;
	PERFORM @extschema@._ensure_org(org_id);
	INSERT INTO @extschema@.org_quotas AS q (org_id, feature, quota)
	VALUES (set_org_quota.org_id, set_org_quota.feature, set_org_quota.quota)
	ON CONFLICT ON CONSTRAINT org_quotas_pkey DO UPDATE SET quota = EXCLUDED.quota;
END $$;

CREATE FUNCTION @extschema@.grant_usage(
	org_id text, amount bigint, feature text DEFAULT 'conversation_seconds',
	reason text DEFAULT NULL)
RETURNS @extschema@.limit_status
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF @extschema@._require_feature(feature) <> 'period' THEN
		RAISE EXCEPTION 'tiermeter: grants apply to period features only'
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('"%s" is a gauge.', feature),
				  HINT = 'Use tiermeter.set_org_quota() to raise a gauge''s limit.';
	END IF;
	PERFORM @extschema@._require_amount(amount, feature, false);
	IF amount = 0 THEN
		RAISE EXCEPTION 'tiermeter: a grant must be positive'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM @extschema@._ensure_org(org_id);
	INSERT INTO @extschema@.usage_grants (org_id, feature, amount, reason)
	VALUES (grant_usage.org_id, grant_usage.feature, grant_usage.amount, grant_usage.reason);
	RETURN @extschema@.check_org_limits(org_id, feature);
END $$;

------------------------------------------------------------------------------
-- Reporting (docs/reference.md, usage_stats).
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.usage_stats(org_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE CALLED ON NULL INPUT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	s		@extschema@.limit_status;
	t		@extschema@.tiers;
	n		bigint;
BEGIN
	-- validates the id; an unknown org is answered as new, nothing written
	s := @extschema@.check_org_limits(org_id, 'conversation_seconds');
	SELECT * INTO t FROM @extschema@.tiers x WHERE x.tier_id = s.tier;
	SELECT count(DISTINCT u.conversation_id) INTO n
	  FROM @extschema@.usage_log u
	 WHERE u.org_id = usage_stats.org_id AND u.feature = 'conversation_seconds'
	   AND u.conversation_id IS NOT NULL
	   AND u.occurred_at >= s.period_start AND u.occurred_at < s.period_end;
	RETURN jsonb_build_object(
		'organization_id', s.org_id,
		'tier', jsonb_build_object(
			'tier_id', t.tier_id,
			'name', t.display_name,
			'price_monthly_cents', t.price_cents_monthly,
			'max_session_seconds', t.max_session_seconds,
			'max_active_sessions', t.max_active_sessions),
		'current_period', jsonb_build_object('start', s.period_start, 'end', s.period_end),
		'usage', jsonb_build_object(
			'used_seconds', s.used,
			'used_formatted', @extschema@.format_duration(s.used),
			'limit_seconds', s.quota,
			'limit_formatted', @extschema@.format_duration(s.quota),
			'remaining_seconds', s.remaining,
			'remaining_formatted', @extschema@.format_duration(s.remaining),
			'percentage_used', s.percent_used,
			'conversations_count', n),
		'status', jsonb_build_object(
			'allowed', s.allowed,
			'show_warning', s.warning,
			'unlimited', s.unlimited));
END $$;

------------------------------------------------------------------------------
-- Maintenance (docs/reference.md, rollover and schedule_rollover).
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.rollover(as_of timestamptz DEFAULT now()) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	moved	bigint;
BEGIN
	IF as_of IS NULL OR NOT isfinite(as_of) THEN
		RAISE EXCEPTION 'tiermeter: as_of must be a finite timestamp'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- one runner at a time: a second one waits, then finds nothing to move
	PERFORM pg_advisory_xact_lock(hashtext('tiermeter'), 1);
	-- housekeeping only: every function already answers from the period
	-- containing now(), whether or not this ever runs
	UPDATE @extschema@.orgs o
	   SET (period_start, period_end) =
			   (SELECT p.period_start, p.period_end
				  FROM @extschema@.period_bounds(o.billing_anchor, as_of, o.period_start, o.period_end) p),
		   updated_at = now()
	 WHERE o.period_end <= as_of;
	GET DIAGNOSTICS moved = ROW_COUNT;
	RETURN moved;
END $$;

CREATE FUNCTION @extschema@.schedule_rollover(schedule text DEFAULT '*/5 * * * *') RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	job		bigint;
BEGIN
	IF schedule IS NULL OR schedule = '' THEN
		RAISE EXCEPTION 'tiermeter: schedule must not be empty'
			USING ERRCODE = 'invalid_parameter_value', HINT = 'A cron expression, e.g. ''*/5 * * * *''.';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') THEN
		RAISE EXCEPTION 'tiermeter: pg_cron is not installed in this database'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Add pg_cron to shared_preload_libraries, run CREATE EXTENSION pg_cron in the database named by cron.database_name, and call tiermeter.schedule_rollover() there; or run SELECT tiermeter.rollover() from any scheduler.';
	END IF;
	EXECUTE 'SELECT cron.schedule($1, $2, $3)' INTO job
		USING 'tiermeter-rollover', schedule, 'SELECT tiermeter.rollover()';
	RETURN job;
END $$;

------------------------------------------------------------------------------
-- Stripe subscription events (docs/stripe.md).
------------------------------------------------------------------------------

-- Every event received, forever: the idempotency key and the audit trail.
CREATE TABLE @extschema@.stripe_events (
	event_id		text PRIMARY KEY,
	type			text NOT NULL,
	created			timestamptz NOT NULL,
	org_id			text,
	subscription_id	text,
	customer_id		text,
	outcome			text CHECK (outcome IN ('applied', 'stale', 'ignored', 'unmapped')),
	received_at		timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_events_org ON @extschema@.stripe_events (org_id, created);

-- Per subscription, the last applied event: the order of events.
CREATE TABLE @extschema@.stripe_subscriptions (
	subscription_id	text PRIMARY KEY,
	org_id			text,
	last_created	timestamptz NOT NULL,
	last_event_id	text
);

SELECT pg_catalog.pg_extension_config_dump('@extschema@.stripe_events', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.stripe_subscriptions', '');

CREATE FUNCTION @extschema@._stripe_time(v jsonb) RETURNS timestamptz
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
	SELECT CASE WHEN jsonb_typeof(v) = 'number' THEN to_timestamp((v #>> '{}')::double precision) END
$$;

CREATE FUNCTION @extschema@._stripe_malformed(what text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	RAISE EXCEPTION 'tiermeter: malformed Stripe event: %', what
		USING ERRCODE = 'invalid_parameter_value',
			  HINT = 'Pass the webhook body as received: an Event object with id, type, created and data.object.';
END $$;

CREATE FUNCTION @extschema@.apply_subscription_event(event jsonb) RETURNS text
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	v_id		text;
	v_type		text;
	v_created	timestamptz;
	v_obj		jsonb;
	v_meta		jsonb;
	v_item		jsonb;
	v_sub		text;
	v_customer	text;
	v_org		text;
	v_status	text;
	v_tier		text;
	v_old_tier	text;
	v_ps		timestamptz;
	v_pe		timestamptz;
	v_anchor	timestamptz;
	v_last		timestamptz;
	v_outcome	text;
	v_why		text;
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
	IF jsonb_typeof(event->'type') IS DISTINCT FROM 'string' OR event->>'type' = '' THEN
		PERFORM @extschema@._stripe_malformed('no type');
	END IF;
	IF jsonb_typeof(event->'data'->'object') IS DISTINCT FROM 'object' THEN
		PERFORM @extschema@._stripe_malformed('no data.object');
	END IF;
	v_created := @extschema@._stripe_time(event->'created');
	IF v_created IS NULL THEN
		PERFORM @extschema@._stripe_malformed('no created timestamp');
	END IF;
	v_id := event->>'id';
	v_type := event->>'type';
	v_obj := event->'data'->'object';

	-- the period: on the first item (API 2025-03-31 and later), else on the
	-- subscription (older API versions); checked before anything is written
	v_item := v_obj->'items'->'data'->0;
	IF jsonb_typeof(v_item->'current_period_start') = 'number' THEN
		v_ps := @extschema@._stripe_time(v_item->'current_period_start');
		v_pe := @extschema@._stripe_time(v_item->'current_period_end');
	ELSE
		v_ps := @extschema@._stripe_time(v_obj->'current_period_start');
		v_pe := @extschema@._stripe_time(v_obj->'current_period_end');
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
	v_anchor := @extschema@._stripe_time(v_obj->'billing_cycle_anchor');

	-- idempotent by event id, forever: claim it (a concurrent twin waits here)
	INSERT INTO @extschema@.stripe_events (event_id, type, created)
	VALUES (v_id, v_type, v_created)
	ON CONFLICT (event_id) DO NOTHING;
	IF NOT FOUND THEN
		RETURN 'duplicate';
	END IF;

	v_sub := CASE WHEN v_obj->>'object' = 'subscription' THEN v_obj->>'id' END;
	v_customer := CASE jsonb_typeof(v_obj->'customer')
		WHEN 'string' THEN v_obj->>'customer'
		WHEN 'object' THEN v_obj->'customer'->>'id' END;
	v_meta := CASE WHEN jsonb_typeof(v_obj->'metadata') = 'object' THEN v_obj->'metadata' ELSE '{}' END;
	v_status := v_obj->>'status';

	<<decide>>
	BEGIN
		IF v_type NOT IN ('customer.subscription.created', 'customer.subscription.updated',
						  'customer.subscription.deleted', 'customer.subscription.paused',
						  'customer.subscription.resumed') THEN
			v_outcome := 'ignored';
			EXIT decide;
		END IF;

		-- the org: metadata, else the org that holds this customer
		v_org := coalesce(nullif(v_meta->>'organizationId', ''), nullif(v_meta->>'org_id', ''));
		IF v_org IS NULL AND v_customer IS NOT NULL THEN
			SELECT o.org_id INTO v_org FROM @extschema@.orgs o
			 WHERE o.stripe_customer_id = v_customer;
		END IF;
		IF v_org IS NULL THEN
			v_outcome := 'unmapped';
			v_why := 'no organizationId or org_id in metadata, and no org holds the customer';
			EXIT decide;
		END IF;

		-- the tier, from the status
		IF v_type = 'customer.subscription.deleted'
		   OR v_status IN ('canceled', 'unpaid', 'incomplete_expired', 'paused') THEN
			SELECT t.tier_id INTO v_tier FROM @extschema@.tiers t WHERE t.is_default;
		ELSIF v_status IN ('active', 'trialing', 'past_due') THEN
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
		ELSE
			-- incomplete (or a status we do not know): nothing changes yet
			v_outcome := 'ignored';
			EXIT decide;
		END IF;

		-- the order of events, per subscription
		IF v_sub IS NOT NULL THEN
			INSERT INTO @extschema@.stripe_subscriptions (subscription_id, org_id, last_created)
			VALUES (v_sub, v_org, '-infinity')
			ON CONFLICT (subscription_id) DO NOTHING;
			SELECT s.last_created INTO v_last FROM @extschema@.stripe_subscriptions s
			 WHERE s.subscription_id = v_sub FOR UPDATE;
			IF v_created < v_last THEN
				v_outcome := 'stale';
				EXIT decide;
			END IF;
			UPDATE @extschema@.stripe_subscriptions s
			   SET org_id = v_org, last_created = v_created, last_event_id = v_id
			 WHERE s.subscription_id = v_sub;
		END IF;

		-- apply: usage is never touched
		PERFORM @extschema@._ensure_org(v_org);
		SELECT o.tier_id INTO v_old_tier FROM @extschema@.orgs o WHERE o.org_id = v_org FOR UPDATE;
		IF v_customer IS NOT NULL THEN
			-- a customer id maps to at most one org: the latest to claim it
			UPDATE @extschema@.orgs o SET stripe_customer_id = NULL, updated_at = now()
			 WHERE o.stripe_customer_id = v_customer AND o.org_id <> v_org;
		END IF;
		UPDATE @extschema@.orgs o
		   SET tier_id = v_tier,
			   stripe_customer_id = coalesce(v_customer, o.stripe_customer_id),
			   stripe_subscription_id = coalesce(v_sub, o.stripe_subscription_id),
			   billing_anchor = coalesce(v_anchor, o.billing_anchor),
			   period_start = coalesce(v_ps, o.period_start),
			   period_end = coalesce(v_pe, o.period_end),
			   updated_at = now()
		 WHERE o.org_id = v_org;
		IF v_old_tier IS DISTINCT FROM v_tier THEN
			INSERT INTO @extschema@.limit_events (org_id, kind, payload)
			VALUES (v_org, 'tier_changed',
					jsonb_build_object('from', v_old_tier, 'to', v_tier, 'source', 'stripe',
									   'event_id', v_id, 'status', v_status));
		END IF;
		v_outcome := 'applied';
	END;

	IF v_outcome = 'unmapped' THEN
		INSERT INTO @extschema@.limit_events (org_id, kind, payload)
		VALUES (coalesce(v_org, ''), 'stripe_unmapped',
				jsonb_build_object('event_id', v_id, 'type', v_type, 'customer', v_customer,
								   'subscription', v_sub, 'reason', v_why));
	END IF;
	UPDATE @extschema@.stripe_events e
	   SET outcome = v_outcome, org_id = v_org, subscription_id = v_sub, customer_id = v_customer
	 WHERE e.event_id = v_id;
	RETURN v_outcome;
END $$;

------------------------------------------------------------------------------
-- The shared-memory cache (src/cache.c) learns of config changes at commit.
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@._invalidate() RETURNS trigger
AS 'MODULE_PATHNAME', 'tiermeter_invalidate_trigger' LANGUAGE C;
CREATE FUNCTION @extschema@._invalidate_database() RETURNS void
AS 'MODULE_PATHNAME', 'tiermeter_invalidate_database' LANGUAGE C;

-- config tables: any change invalidates every org
CREATE TRIGGER tiers_invalidate AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.tiers
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._invalidate();
CREATE TRIGGER features_invalidate AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.features
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._invalidate();
CREATE TRIGGER tier_quotas_invalidate AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.tier_quotas
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._invalidate();
CREATE TRIGGER alert_thresholds_invalidate AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.alert_thresholds
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._invalidate();
-- per-org tables: a change invalidates that org (new orgs and new usage
-- rows need nothing: the functions that write them update the cache)
-- an org update invalidates unless it only moved the stored period forward
-- to the period its old settings already gave (rollover, a Stripe renewal)
CREATE TRIGGER orgs_invalidate AFTER UPDATE ON @extschema@.orgs
	FOR EACH ROW
	WHEN (OLD.org_id IS DISTINCT FROM NEW.org_id
		  OR OLD.tier_id IS DISTINCT FROM NEW.tier_id
		  OR OLD.billing_anchor IS DISTINCT FROM NEW.billing_anchor
		  OR NEW.period_start < OLD.period_end
		  OR (@extschema@.period_bounds(OLD.billing_anchor, NEW.period_start,
										 OLD.period_start, OLD.period_end)).period_start
			 IS DISTINCT FROM NEW.period_start
		  OR (@extschema@.period_bounds(OLD.billing_anchor, NEW.period_start,
										 OLD.period_start, OLD.period_end)).period_end
			 IS DISTINCT FROM NEW.period_end)
	EXECUTE FUNCTION @extschema@._invalidate();
CREATE TRIGGER orgs_delete_invalidate AFTER DELETE ON @extschema@.orgs
	FOR EACH ROW EXECUTE FUNCTION @extschema@._invalidate();
CREATE TRIGGER org_quotas_invalidate AFTER INSERT OR UPDATE OR DELETE ON @extschema@.org_quotas
	FOR EACH ROW EXECUTE FUNCTION @extschema@._invalidate();
CREATE TRIGGER usage_grants_invalidate AFTER INSERT OR UPDATE OR DELETE ON @extschema@.usage_grants
	FOR EACH ROW EXECUTE FUNCTION @extschema@._invalidate();
CREATE TRIGGER usage_log_invalidate AFTER UPDATE OR DELETE ON @extschema@.usage_log
	FOR EACH ROW EXECUTE FUNCTION @extschema@._invalidate();
CREATE TRIGGER orgs_truncate_invalidate AFTER TRUNCATE ON @extschema@.orgs
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._invalidate();
CREATE TRIGGER org_quotas_truncate_invalidate AFTER TRUNCATE ON @extschema@.org_quotas
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._invalidate();
CREATE TRIGGER usage_grants_truncate_invalidate AFTER TRUNCATE ON @extschema@.usage_grants
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._invalidate();
CREATE TRIGGER usage_log_truncate_invalidate AFTER TRUNCATE ON @extschema@.usage_log
	FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._invalidate();

-- entries left from an earlier install in this database are stale
SELECT @extschema@._invalidate_database();

------------------------------------------------------------------------------
-- Nothing is granted to PUBLIC.
------------------------------------------------------------------------------

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA @extschema@ FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA @extschema@ FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA @extschema@ FROM PUBLIC;
REVOKE ALL ON TYPE @extschema@.limit_status FROM PUBLIC;

------------------------------------------------------------------------------
-- Comments.
------------------------------------------------------------------------------

COMMENT ON SCHEMA @extschema@ IS 'tiermeter: per-organization usage limits by subscription tier';
COMMENT ON TABLE @extschema@.tiers IS 'Subscription tiers (plans), ordered by rank; NULL limits are unlimited; exactly one is the default.';
COMMENT ON TABLE @extschema@.features IS 'Metered features: kind period counts per billing period, kind gauge is a level that never resets.';
COMMENT ON TABLE @extschema@.tier_quotas IS 'Quota of each feature per tier; NULL is unlimited; a missing row means not included (0).';
COMMENT ON TABLE @extschema@.stripe_prices IS 'Stripe price ids or lookup keys mapped to tiers.';
COMMENT ON TABLE @extschema@.alert_thresholds IS 'Usage percentages that raise warnings and threshold events.';
COMMENT ON TABLE @extschema@.orgs IS 'Organizations: tier, billing anchor, stored current period and Stripe ids. Created on first sight.';
COMMENT ON TABLE @extschema@.org_quotas IS 'Per-org quota overrides of the tier quota; NULL is unlimited.';
COMMENT ON TABLE @extschema@.usage_grants IS 'Extra quota granted to an org for the period that contains granted_at.';
COMMENT ON TABLE @extschema@.usage_log IS 'Append-only usage ledger, the durable truth: usage counts in the period that contains occurred_at.';
COMMENT ON TABLE @extschema@.limit_events IS 'Events for admins and listeners (threshold_reached, tier_changed, stripe_unmapped); each insert sends NOTIFY tiermeter.';
COMMENT ON TYPE @extschema@.limit_status IS 'Result of check_org_limits, record_usage, consume and grant_usage.';
COMMENT ON TABLE @extschema@._seeds IS 'The seeded config rows as CREATE EXTENSION made them: a restored row replaces its untouched seed.';
COMMENT ON FUNCTION @extschema@._replace_seed() IS 'Trigger: inserting a row whose key an untouched seeded row holds replaces it (so pg_restore keeps edited config).';
COMMENT ON FUNCTION @extschema@._check_default_tier() IS 'Constraint trigger: exactly one default tier.';
COMMENT ON FUNCTION @extschema@._notify_limit_event() IS 'Trigger: sends NOTIFY tiermeter with the new limit event as JSON.';
COMMENT ON FUNCTION @extschema@.period_bounds(timestamptz, timestamptz, timestamptz, timestamptz) IS 'The billing period that contains "at" for an anchor (monthly, day clamped to month end, UTC), honouring a stored current period.';
COMMENT ON FUNCTION @extschema@.format_duration(bigint) IS 'Seconds as ''<h>h <m>m'' or ''<m>m'' (floored to minutes); ''Unlimited'' for NULL.';
COMMENT ON FUNCTION @extschema@.check_org_limits(text, text) IS 'Read-only: the limit status of one org and feature in the current period.';
COMMENT ON FUNCTION @extschema@.record_usage(text, bigint, text, text, text, timestamptz) IS 'Records usage that happened (even past the quota) and returns the status after it; idempotent by (org_id, idempotency_key).';
COMMENT ON FUNCTION @extschema@.consume(text, bigint, text, text, text) IS 'Records usage only if it stays within the quota; allowed says whether it was recorded.';
COMMENT ON FUNCTION @extschema@.verify_stripe_signature(text, text, text, integer, timestamptz) IS 'Stripe webhook signature check: some v1 = hex(HMAC-SHA256(secret, t.payload)), in constant time, and |at - t| <= tolerance; a malformed header is false.';
COMMENT ON FUNCTION @extschema@.usage_stats(text) IS 'The conversation-time usage of one org in its current period, shaped as a usage endpoint returns it (read-only).';
COMMENT ON FUNCTION @extschema@.rollover(timestamptz) IS 'Moves every org whose stored period ended by as_of to the period containing as_of; returns how many. Housekeeping: limits never depend on it. One runner at a time.';
COMMENT ON FUNCTION @extschema@.schedule_rollover(text) IS 'Registers the pg_cron job tiermeter-rollover running tiermeter.rollover(); returns the job id.';
COMMENT ON TABLE @extschema@.stripe_events IS 'Every Stripe event received (id, type, created, org, outcome, received time): the idempotency key and the audit trail.';
COMMENT ON TABLE @extschema@.stripe_subscriptions IS 'Per Stripe subscription, the last applied event: older events are stale.';
COMMENT ON FUNCTION @extschema@._stripe_time(jsonb) IS 'Internal: a Stripe unix timestamp as timestamptz (NULL unless a number).';
COMMENT ON FUNCTION @extschema@._stripe_malformed(text) IS 'Internal: raises the error for a malformed Stripe event.';
COMMENT ON FUNCTION @extschema@.apply_subscription_event(jsonb) IS 'Applies a Stripe customer.subscription.* event: applied, duplicate, stale, ignored or unmapped; usage is never touched.';
COMMENT ON FUNCTION @extschema@._ensure_org(text) IS 'Internal: validates an org id and creates the org on the default tier if unknown.';
COMMENT ON FUNCTION @extschema@._require_feature(text) IS 'Internal: errors unless the feature exists; returns its kind.';
COMMENT ON FUNCTION @extschema@._require_tier(text) IS 'Internal: errors unless the tier exists.';
COMMENT ON FUNCTION @extschema@._require_amount(bigint, text, boolean) IS 'Internal: errors unless the amount is valid for a feature of that kind.';
COMMENT ON FUNCTION @extschema@._invalidate() IS 'Trigger: tells the shared-memory cache at commit which orgs (or all) changed.';
COMMENT ON FUNCTION @extschema@._invalidate_database() IS 'Internal: drops every cache entry of this database when the transaction commits.';
COMMENT ON FUNCTION @extschema@.set_org_tier(text, text) IS 'Moves an org to a tier at once; usage is kept; writes a tier_changed event.';
COMMENT ON FUNCTION @extschema@.set_org_quota(text, text, bigint) IS 'Overrides the tier quota of one feature for one org (NULL = unlimited).';
COMMENT ON FUNCTION @extschema@.grant_usage(text, bigint, text, text) IS 'Grants extra quota of a period feature for the current period.';
