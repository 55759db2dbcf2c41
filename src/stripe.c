/*
 * stripe.c
 *		verify_stripe_signature(payload, signature_header, secret,
 *								tolerance_seconds, at) RETURNS boolean
 *
 * Stripe signs a webhook with the header
 *		Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...][,v0=<hex>]
 * where each v1 is hex(HMAC-SHA256(secret, "<t>.<payload>")).  The
 * signature is valid iff some v1 matches (compared in constant time) and
 * |at - t| <= tolerance.  A malformed header is false, not an error.  The
 * HMAC is PostgreSQL's own (common/hmac.h, OpenSSL underneath).
 */
#include "tiermeter.h"

#include "common/cryptohash.h"
#include "common/hmac.h"
#include "common/sha2.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

TM_FUNCTION(tiermeter_verify_stripe_signature);

#define TM_SIG_HEX_LEN	(PG_SHA256_DIGEST_LENGTH * 2)

static int
tm_hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes 64 hex digits into 32 bytes; false if it is not that. */
static bool
tm_unhex_sha256(const char *s, size_t len, uint8 *out)
{
	size_t		i;

	if (len != TM_SIG_HEX_LEN)
		return false;
	for (i = 0; i < PG_SHA256_DIGEST_LENGTH; i++)
	{
		int			hi = tm_hexval(s[2 * i]);
		int			lo = tm_hexval(s[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return false;
		out[i] = (uint8) ((hi << 4) | lo);
	}
	return true;
}

/* Constant-time comparison of two digests. */
static bool
tm_digest_equal(const uint8 *a, const uint8 *b)
{
	uint8		diff = 0;
	int			i;

	for (i = 0; i < PG_SHA256_DIGEST_LENGTH; i++)
		diff |= a[i] ^ b[i];
	return diff == 0;
}

static void
tm_hmac_sha256(const char *key, size_t keylen, const char *t, size_t tlen,
			   const char *payload, size_t plen, uint8 *out)
{
	pg_hmac_ctx *ctx = pg_hmac_create(PG_SHA256);

	if (ctx == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("tiermeter: out of memory")));
	if (pg_hmac_init(ctx, (const uint8 *) key, keylen) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) t, tlen) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) ".", 1) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) payload, plen) < 0 ||
		pg_hmac_final(ctx, out, PG_SHA256_DIGEST_LENGTH) < 0)
	{
		const char *err = pg_hmac_error(ctx);

		pg_hmac_free(ctx);
		elog(ERROR, "tiermeter: HMAC-SHA256 failed: %s", err);
	}
	pg_hmac_free(ctx);
}

Datum
tiermeter_verify_stripe_signature(PG_FUNCTION_ARGS)
{
	text	   *payload;
	char	   *header;
	text	   *secret;
	int32		tolerance;
	TimestampTz at;
	char	   *item;
	char	   *save = NULL;
	const char *t_str = NULL;
	size_t		t_len = 0;
	int64		t = 0;
	int64		at_unix;
	uint8		expected[PG_SHA256_DIGEST_LENGTH];
	uint8		given[PG_SHA256_DIGEST_LENGTH];
	bool		computed = false;
	bool		match = false;
	char	   *v1s[64];
	size_t		v1lens[64];
	int			nv1 = 0;
	int			i;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tiermeter: payload must not be NULL")));
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tiermeter: secret must not be NULL")));
	payload = PG_GETARG_TEXT_PP(0);
	secret = PG_GETARG_TEXT_PP(2);
	if (VARSIZE_ANY_EXHDR(secret) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tiermeter: secret must not be empty"),
				 errhint("Use the endpoint's signing secret, whsec_...")));
	tolerance = PG_ARGISNULL(3) ? 300 : PG_GETARG_INT32(3);
	if (tolerance < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tiermeter: tolerance_seconds must not be negative")));
	at = PG_ARGISNULL(4) ? GetCurrentTransactionStartTimestamp() : PG_GETARG_TIMESTAMPTZ(4);
	if (TIMESTAMP_NOT_FINITE(at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tiermeter: at must be finite")));

	/* a missing or malformed header is simply not a valid signature */
	if (PG_ARGISNULL(1))
		PG_RETURN_BOOL(false);
	header = text_to_cstring(PG_GETARG_TEXT_PP(1));

	for (item = strtok_r(header, ",", &save); item != NULL; item = strtok_r(NULL, ",", &save))
	{
		char	   *eq;
		char	   *k;
		char	   *v;
		size_t		vlen;

		while (*item == ' ')
			item++;
		eq = strchr(item, '=');
		if (eq == NULL)
			PG_RETURN_BOOL(false);
		*eq = '\0';
		k = item;
		v = eq + 1;
		vlen = strlen(v);
		while (vlen > 0 && v[vlen - 1] == ' ')
			v[--vlen] = '\0';

		if (strcmp(k, "t") == 0)
		{
			char	   *end;

			if (t_str != NULL || vlen == 0 || vlen > 18 || strspn(v, "0123456789") != vlen)
				PG_RETURN_BOOL(false);
			t = strtoll(v, &end, 10);
			t_str = v;
			t_len = vlen;
		}
		else if (strcmp(k, "v1") == 0)
		{
			if (nv1 < lengthof(v1s))
			{
				v1s[nv1] = v;
				v1lens[nv1] = vlen;
				nv1++;
			}
		}
		/* v0 and any other scheme are ignored */
	}
	if (t_str == NULL || nv1 == 0)
		PG_RETURN_BOOL(false);

	/* check every v1, so that the time taken does not tell which matched */
	for (i = 0; i < nv1; i++)
	{
		if (!tm_unhex_sha256(v1s[i], v1lens[i], given))
			continue;
		if (!computed)
		{
			tm_hmac_sha256(VARDATA_ANY(secret), VARSIZE_ANY_EXHDR(secret),
						   t_str, t_len,
						   VARDATA_ANY(payload), VARSIZE_ANY_EXHDR(payload),
						   expected);
			computed = true;
		}
		if (tm_digest_equal(expected, given))
			match = true;
	}

	at_unix = at / USECS_PER_SEC +
		(int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY;
	if (at % USECS_PER_SEC < 0)
		at_unix--;				/* floor for instants before 2000 */
	PG_RETURN_BOOL(match && Abs(at_unix - t) <= (int64) tolerance);
}
