/*
 * tiermeter.c
 *		Module entry point and settings.
 *
 * The extension works whether or not it is in shared_preload_libraries: the
 * tables are the truth, and every function answers from them.
 */
#include "tiermeter.h"

#include "miscadmin.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

int			tm_idle_timeout = 300;

TM_FUNCTION(tiermeter_idle_timeout);

/* PostgreSQL 15's fmgr.h does not declare it, so it is exported here */
extern PGDLLEXPORT void _PG_init(void);

void
_PG_init(void)
{
	DefineCustomIntVariable("tiermeter.idle_timeout",
							"Longest gap between two touches of a session that still counts as active time.",
							"A longer gap counts exactly this many seconds, and the session stops being active.",
							&tm_idle_timeout,
							300,
							1,
							86400,
							PGC_USERSET,
							GUC_UNIT_S,
							NULL,
							NULL,
							NULL);

	if (process_shared_preload_libraries_in_progress)
	{
		DefineCustomIntVariable("tiermeter.cache_size",
								"Entries of the shared-memory counter cache (one per org and feature).",
								"When it is full, the least recently used entries are evicted.",
								&tm_cache_size,
								100000,
								16,
								INT_MAX / 1024,
								PGC_POSTMASTER,
								0,
								NULL,
								NULL,
								NULL);
		tm_cache_init();
	}
	tm_cache_register_callbacks();
	tm_notify_register_callbacks();
	tm_twophase_init();
	tm_memo_init();

	MarkGUCPrefixReserved("tiermeter");
}

/*
 * _idle_timeout(): tiermeter.idle_timeout in seconds, as an integer.  Read
 * through the library, so the setting is the checked one even before
 * anything else loaded the library in this backend.
 */
Datum
tiermeter_idle_timeout(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(tm_idle_timeout);
}
