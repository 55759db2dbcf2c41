/*
 * tiermeter.c
 *		Module entry point and settings.
 *
 * The extension works whether or not it is in shared_preload_libraries: the
 * tables are the truth, and every function answers from them.
 */
#include "tiermeter.h"

#include "utils/guc.h"

PG_MODULE_MAGIC;

int			tm_idle_timeout = 300;

void		_PG_init(void);

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

	MarkGUCPrefixReserved("tiermeter");
}
