/*
 * tiermeter.h
 *		Shared declarations of the tiermeter extension.
 *
 * One concern per C file:
 *	tiermeter.c	module entry, GUCs
 *	period.c	billing period arithmetic (anchored months, UTC)
 *	catalog.c	SPI plumbing: saved plans, running as the extension owner,
 *				the org/feature/quota lookup, argument validation
 *	status.c	building a limit_status value
 *	limits.c	check_org_limits
 *	usage.c		record_usage, consume
 *	ledger.c	their ledger row, written without SPI when the table is as
 *				installed
 *	cache.c		the shared-memory counter cache: the shared table, the hit
 *				path; its other parts share the private cache.h:
 *				cache_build.c (building an entry), cache_local.c (what
 *				this transaction recorded, applied at commit),
 *				cache_reserve.c (consume's reservations), cache_inval.c
 *				(invalidation of config), cache_config.c (each backend's
 *				copy of the config tables, for builds)
 *	alerts.c	threshold_reached events, once per org, feature, period and
 *				threshold
 *	session.c	touch_session's common case (the rest is PL/pgSQL)
 *	stripe.c	verify_stripe_signature
 *	format.c	format_duration
 */
#ifndef TIERMETER_H
#define TIERMETER_H

/*
 * The library is built with -fvisibility=hidden: only the symbols that
 * PostgreSQL looks up (Pg_magic_func, _PG_init, the SQL-callable functions
 * and their pg_finfo_ records, all declared PGDLLEXPORT) are exported.
 * PostgreSQL 16 defines PGDLLEXPORT this way itself; 15 leaves it empty, so
 * it is defined here, before postgres.h.
 */
#if !defined(PGDLLEXPORT) && defined(__GNUC__)
#define PGDLLEXPORT __attribute__((visibility("default")))
#endif

#include "postgres.h"

#include "common/int.h"
#include "datatype/timestamp.h"
#include "executor/spi.h"
#include "fmgr.h"

/*
 * Declares a SQL-callable C function.  PostgreSQL 15's PG_FUNCTION_INFO_V1
 * exports only the pg_finfo_ record, not the function (16 does both).
 */
#define TM_FUNCTION(funcname) \
	extern PGDLLEXPORT Datum funcname(PG_FUNCTION_ARGS); \
	PG_FUNCTION_INFO_V1(funcname)

/* ids (org, feature, tier, conversation, idempotency key) are bounded */
#define TM_MAX_ID_BYTES	1024

/* amounts and quotas are bounded by 10^12 (docs/reference.md, "Errors") */
#define TM_MAX_AMOUNT	INT64CONST(1000000000000)

/*
 * Sums of usage saturate at the ends of bigint instead of wrapping: an
 * unlimited org recording 10^12 nine million times reads 9223372036854775807,
 * never a negative number (docs/reference.md, "Result type limit_status").
 */
static inline int64
tm_add_sat(int64 a, int64 b)
{
	int64		r;

	if (pg_add_s64_overflow(a, b, &r))
		return b > 0 ? PG_INT64_MAX : PG_INT64_MIN;
	return r;
}

/*
 * A sum at an end of bigint may stand for a larger one (the ledger's sum is
 * exact, and saturates only when read): adding to it is not exact.  So a
 * cache entry never holds such a sum, a transaction whose own amount reaches
 * one has its org answered from the tables, and a call whose answer is one
 * sums the ledger again after its insert.
 */
static inline bool
tm_at_bound(int64 v)
{
	return v == PG_INT64_MAX || v == PG_INT64_MIN;
}

/* usage may be dated at most this far ahead of now() */
#define TM_MAX_FUTURE_USECS	(5 * 60 * USECS_PER_SEC)

/* GUCs (tiermeter.c, cache.c) */
extern int	tm_idle_timeout;
extern int	tm_cache_size;

/* period.c */
typedef struct TmPeriod
{
	TimestampTz start;
	TimestampTz end;
} TmPeriod;

extern TimestampTz tm_month_start_utc(TimestampTz t);
extern TimestampTz tm_add_months_utc(TimestampTz anchor, int months);
extern TmPeriod tm_period_containing(TimestampTz anchor, TimestampTz at,
									 bool has_stored, TimestampTz stored_start,
									 TimestampTz stored_end);

/* catalog.c */
typedef enum TmPlanId
{
	TM_PLAN_LOOKUP,
	TM_PLAN_SUMS,
	TM_PLAN_CREATE_ORG,
	TM_PLAN_INSERT_USAGE,
	TM_PLAN_INSERT_USAGE_RULES,
	TM_PLAN_INSERT_USAGE_KEYED,
	TM_PLAN_KEY_EXISTS,
	TM_PLAN_GRANTS,
	TM_PLAN_ALERTED,
	TM_PLAN_INSERT_ALERT,
	TM_PLAN_SESSION_TOUCH,
	TM_PLAN_CFG_FEATURES,
	TM_PLAN_CFG_TIERS,
	TM_PLAN_CFG_QUOTAS,
	TM_PLAN_CFG_THRESHOLDS,
	TM_PLAN_ORG_SUMS,
	TM_PLAN_SESSION_ADMIT,
	TM_NUM_PLANS
} TmPlanId;

/* alert thresholds that get threshold_reached events: the lowest ones */
#define TM_MAX_THRESHOLDS	8

/* What one call needs to know about an org and a feature. */
typedef struct TmOrgFeature
{
	char	   *org_id;			/* palloc'd in the caller's context */
	char	   *feature;
	char	   *tier_id;
	bool		org_exists;
	bool		is_gauge;
	TimestampTz anchor;			/* billing anchor */
	TmPeriod	stored;			/* the org's stored current period */
	bool		unlimited;
	int64		base_quota;		/* tier quota or override, when !unlimited */
	bool		has_warning;	/* is there a threshold below 100? */
	int32		warning_percent;
	TmPeriod	period;			/* the period containing now() */
	int			nthresholds;	/* alert_thresholds, lowest first */
	int32		thresholds[TM_MAX_THRESHOLDS];
	bool		alerted_known;	/* alerted is known (from the cache) */
	uint32		alerted;		/* bit i: thresholds[i]'s event of this
								 * period is committed */
	int64		max_session_seconds;	/* the tier's session limits, -1 when */
	int32		max_active_sessions;	/* unlimited (NULL) */
} TmOrgFeature;

/* Usage and grants summed for one org, feature and period. */
typedef struct TmSums
{
	int64		used;
	int64		granted;
	int64		reserved;		/* held by other sessions' uncommitted consume calls */
} TmSums;

typedef struct TmOwnerSave
{
	Oid			save_userid;
	int			save_sec_context;
} TmOwnerSave;

extern bool tm_own_write;
extern int	tm_own_write_depth;
extern int	tm_trigger_depth(void);
extern uint64 tm_foreign_rows;

extern void tm_spi_begin(TmOwnerSave *save);
extern int	tm_execute_own_write(TmPlanId id, Datum *values, const char *nulls);
extern void tm_spi_end(TmOwnerSave *save);
extern SPIPlanPtr tm_plan(TmPlanId id);

extern char *tm_arg_id(FunctionCallInfo fcinfo, int argno, const char *what);
extern char *tm_arg_text_or_null(FunctionCallInfo fcinfo, int argno, const char *what);
extern void tm_check_amount(int64 amount, bool is_gauge, const char *feature);
extern void tm_lookup(TmOrgFeature *of, const char *org_id, const char *feature,
					  Snapshot snapshot, MemoryContext result_cxt);
extern bool tm_ensure_org(TmOrgFeature *of);
extern Snapshot tm_latest_snapshot(void);
extern TmSums tm_sums(const TmOrgFeature *of, Snapshot snapshot, bool read_only);
extern int64 tm_grants(const TmOrgFeature *of, Snapshot snapshot);

/* status.c */
typedef enum TmReason
{
	TM_REASON_AUTO,				/* derive allowed/reason from used vs quota */
	TM_REASON_RECORDED,			/* consume recorded it: allowed, no reason */
	TM_REASON_REFUSED			/* consume refused it: not allowed */
} TmReason;

extern Datum tm_status_datum(FunctionCallInfo fcinfo, const TmOrgFeature *of,
							 const TmSums *sums, TmReason mode);
extern TupleDesc tm_result_desc(FunctionCallInfo fcinfo, const char *type, const Oid *types,
								int natts, int natts_old);
extern bool tm_limit_allowed(const TmOrgFeature *of, const TmSums *sums, int64 *quota);

/* limits.c, usage.c: for the other C functions */
extern void tm_check_limits(const char *org_id, const char *feature, TmOrgFeature *of,
							TmSums *sums, MemoryContext cxt);
extern void tm_record_usage(const char *org_id, int64 amount, const char *feature,
							const char *conversation_id, TimestampTz occurred_at,
							TmOrgFeature *of, TmSums *sums, MemoryContext cxt);

/* cache.c: the shared-memory counter cache */
#define TM_KEY_LEN 64			/* longer org ids and features are not cached */

typedef struct TmCacheKey
{
	Oid			dbid;
	char		org_id[TM_KEY_LEN];
	char		feature[TM_KEY_LEN];
} TmCacheKey;

typedef enum TmReserve
{
	TM_RESERVE_OK,
	TM_RESERVE_REFUSED,
	TM_RESERVE_MISS
} TmReserve;

extern void tm_cache_init(void);
extern void tm_cache_register_callbacks(void);
extern bool tm_cache_enabled(void);
extern bool tm_cache_bypass(const char *org_id);
extern bool tm_cache_key(TmCacheKey *key, const char *org_id, const char *feature,
						 uint32 *hash);
extern bool tm_cache_get(const TmCacheKey *key, uint32 hash, const char *org_id,
						 const char *feature, TmOrgFeature *of, TmSums *sums,
						 MemoryContext cxt);
extern bool tm_cache_admit(const TmCacheKey *key, uint32 hash);
extern bool tm_cache_big_transaction(void);
extern void tm_cache_org_changed(const char *org_id, bool usage);
extern bool tm_cache_build(const TmCacheKey *key, uint32 hash, const char *org_id,
						   const char *feature, TmOrgFeature *of, TmSums *sums,
						   MemoryContext cxt, bool may_enter);
extern TmReserve tm_cache_reserve(const TmCacheKey *key, uint32 hash, int64 amount,
								  const TmOrgFeature *of, TmSums *sums);
extern bool tm_cache_reserve_fallback(const TmCacheKey *key, uint32 hash, int64 amount);
extern void tm_cache_unreserve(const TmCacheKey *key, uint32 hash, int64 amount);
extern void tm_cache_note(const TmCacheKey *key, uint32 hash, const TmOrgFeature *of,
						  int64 amount, TimestampTz occurred_at, bool created_org);
extern int64 tm_cache_reserved_by_others(const TmCacheKey *key, uint32 hash);
extern void tm_cache_note_alerted(const TmCacheKey *key, uint32 hash, TimestampTz ps,
								  const int32 *percents, int n);
extern uint32 tm_cache_own_alerted(const TmCacheKey *key, const TmOrgFeature *of);
extern uint64 tm_cache_undo_visits(void);

/* cache_twophase.c: the cache and prepared transactions */
extern bool tm_cache_prepared_bypass(const char *org_id);
extern bool tm_cache_prepared_events(const char *gid);
extern void tm_cache_prepared_resolve(void);

/* citus.c: an org's rows on another node of a Citus cluster */
extern bool tm_org_elsewhere(const char *org_id);
extern bool tm_tables_distributed(void);
extern void tm_require_org_here(const char *org_id, const char *func, const char *what);

/* relnames.c: tiermeter's tables and indexes opened by name */
typedef struct TmRelName
{
	const char *name;			/* in the tiermeter schema */
	Oid			nsp;			/* as last looked up */
	Oid			relid;			/* as last looked up; InvalidOid: none */
	bool		valid;			/* false: look the name up again */
	bool		listed;			/* in the callbacks' list */
	struct TmRelName *next;
} TmRelName;

#define TM_RELNAME(n)	{(n), InvalidOid, InvalidOid, false, false, NULL}

extern Relation tm_relname_open(TmRelName *ref, LOCKMODE lockmode);

/* scan.c: an org's rows read from the indexes, for builds */
typedef struct TmScanOrg
{
	bool		org_exists;
	char	   *tier_id;		/* the org's, when it exists */
	TimestampTz anchor;			/* the org's, else the month_start given */
	TmPeriod	stored;			/* the org's stored period, when it exists */
	TmPeriod	period;			/* the period containing now */
	bool		has_override;
	bool		override_unlimited;
	int64		override_quota;
	int64		used;
	int64		granted;
} TmScanOrg;

extern void tm_scan_lock_tables(void);
extern bool tm_scan_org_sums(const char *org_id, const char *feature, bool is_gauge,
							 TimestampTz now, TimestampTz month_start,
							 Snapshot snapshot, TmScanOrg *r);

/* ledger.c: a ledger row written without SPI */
extern bool tm_ledger_has_rules(void);
extern bool tm_ledger_insert(const char *org_id, const char *feature, int64 amount,
							 TimestampTz occurred_at, const char *conversation_id);

/* memo.c: the table path's sums, remembered within a transaction */
extern void tm_memo_own_row(const char *org_id, const char *feature, TimestampTz at,
							int64 amount, bool tracked);
extern void tm_memo_forget(void);
extern void tm_memo_init(void);
extern bool tm_memo_get(const TmOrgFeature *of, Snapshot snap, TmSums *sums);
extern void tm_memo_put(const TmOrgFeature *of, Snapshot snap, const TmSums *sums);

/* twophase.c: PREPARE TRANSACTION, COMMIT and ROLLBACK PREPARED */
extern void tm_twophase_init(void);
extern const char *tm_twophase_gid(void);

/* notify.c: NOTIFY tiermeter for limit events, at commit */
extern void tm_notify_register_callbacks(void);
extern bool tm_notify_pending(void);

/* usage.c: the table path's lock of an (org, feature) */
extern void tm_lock_org_feature_ids(const char *org_id, const char *feature);

/* alerts.c: threshold_reached events */
extern uint32 tm_alerted_mask(const TmOrgFeature *of, Snapshot snapshot);
extern uint32 tm_alerted_for_build(const TmOrgFeature *of, int64 used, int64 granted,
								   Snapshot snapshot);
extern void tm_alert(TmOrgFeature *of, const TmSums *sums, const TmCacheKey *key,
					 uint32 hash, bool cached);

#endif							/* TIERMETER_H */
