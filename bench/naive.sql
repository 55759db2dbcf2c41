-- The reference a user would write instead of tiermeter (docs/benchmarks.md): plain
-- PL/pgSQL, one usage row per org, UPDATE used = used + n.
CREATE SCHEMA naive;

CREATE TABLE naive.tier_quotas (tier text, feature text, quota bigint, PRIMARY KEY (tier, feature));
INSERT INTO naive.tier_quotas VALUES
	('free', 'conversation_seconds', 3600), ('basic', 'conversation_seconds', 18000),
	('professional', 'conversation_seconds', 72000), ('enterprise', 'conversation_seconds', NULL);

CREATE TABLE naive.orgs (org_id text PRIMARY KEY, tier text NOT NULL DEFAULT 'free');
CREATE TABLE naive.usage (
	org_id text, feature text, period_start timestamptz, used bigint NOT NULL DEFAULT 0,
	PRIMARY KEY (org_id, feature, period_start));

CREATE FUNCTION naive.period_start() RETURNS timestamptz LANGUAGE sql STABLE AS
$$ SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' $$;

CREATE FUNCTION naive.check_org_limits(p_org text, p_feature text DEFAULT 'conversation_seconds')
RETURNS TABLE (allowed boolean, used bigint, quota bigint) LANGUAGE plpgsql STABLE AS $$
DECLARE
	v_tier text; v_quota bigint; v_used bigint;
BEGIN
	SELECT o.tier INTO v_tier FROM naive.orgs o WHERE o.org_id = p_org;
	SELECT q.quota INTO v_quota FROM naive.tier_quotas q
	 WHERE q.tier = coalesce(v_tier, 'free') AND q.feature = p_feature;
	SELECT u.used INTO v_used FROM naive.usage u
	 WHERE u.org_id = p_org AND u.feature = p_feature AND u.period_start = naive.period_start();
	v_used := coalesce(v_used, 0);
	RETURN QUERY SELECT v_quota IS NULL OR v_used < v_quota, v_used, v_quota;
END $$;

CREATE FUNCTION naive.record_usage(p_org text, p_amount bigint, p_feature text DEFAULT 'conversation_seconds')
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
	v_used bigint;
BEGIN
	INSERT INTO naive.orgs (org_id) VALUES (p_org) ON CONFLICT DO NOTHING;
	INSERT INTO naive.usage AS u (org_id, feature, period_start, used)
	VALUES (p_org, p_feature, naive.period_start(), p_amount)
	ON CONFLICT (org_id, feature, period_start) DO UPDATE SET used = u.used + EXCLUDED.used
	RETURNING u.used INTO v_used;
	RETURN v_used;
END $$;

-- what the naive code does for "check then record": read, compare, update
CREATE FUNCTION naive.consume(p_org text, p_amount bigint, p_feature text DEFAULT 'conversation_seconds')
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
	v_used bigint; v_quota bigint;
BEGIN
	SELECT c.used, c.quota INTO v_used, v_quota FROM naive.check_org_limits(p_org, p_feature) c;
	IF v_quota IS NOT NULL AND v_used + p_amount > v_quota THEN
		RETURN false;
	END IF;
	PERFORM naive.record_usage(p_org, p_amount, p_feature);
	RETURN true;
END $$;

-- the floor of the writes: a durable ledger that can answer per-org sums
-- cannot do less than a one-row INSERT into a table of the ledger's shape
-- with its b-tree indexes (those of tiermeter.usage_log)
CREATE TABLE naive.ledger (
	org_id text NOT NULL, feature text NOT NULL, amount bigint NOT NULL,
	occurred_at timestamptz NOT NULL, conversation_id text, idempotency_key text,
	recorded_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON naive.ledger (org_id, feature, occurred_at) INCLUDE (amount);
CREATE UNIQUE INDEX ON naive.ledger (org_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- the plain one-row INSERT reference
CREATE TABLE naive.plain_insert (org_id text, amount bigint, at timestamptz DEFAULT now());
