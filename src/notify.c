/*
 * notify.c
 *		NOTIFY tiermeter for each limit event, sent by the transaction that
 *		wrote it, at its commit.
 *
 * The limit_events trigger only queues the event's id and kind.  At
 * PRE_COMMIT the queue becomes NOTIFY tiermeter payloads (PostgreSQL sends
 * them at the commit, in order, and drops them on rollback).  PostgreSQL
 * refuses to PREPARE a transaction that ran NOTIFY, so at PRE_PREPARE the
 * queue becomes rows of _unannounced instead, part of the prepared
 * transaction: they become visible at COMMIT PREPARED, and the session
 * that runs it announces them (twophase.c), or rollover() does.  Events of
 * a rolled-back subtransaction leave the queue with it.
 */
#include "tiermeter.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "commands/trigger.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

TM_FUNCTION(tiermeter_notify_trigger);

typedef struct TmNotice
{
	int64		id;
	char	   *kind;
	SubTransactionId subid;		/* dropped if this subtransaction rolls back */
} TmNotice;

/* in TopTransactionContext */
static TmNotice *tm_notices = NULL;
static int	tm_nnotices = 0;
static int	tm_maxnotices = 0;

/* Trigger, AFTER INSERT ON limit_events FOR EACH ROW: queue the event. */
Datum
tiermeter_notify_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	TupleDesc	desc;
	bool		isnull;
	Datum		id;
	char	   *kind;
	TmNotice   *n;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event) || !TRIGGER_FIRED_BY_INSERT(td->tg_event))
		elog(ERROR, "tiermeter: not called as an AFTER INSERT FOR EACH ROW trigger");
	desc = td->tg_relation->rd_att;
	id = SPI_getbinval(td->tg_trigtuple, desc, SPI_fnumber(desc, "id"), &isnull);
	if (isnull)
		return PointerGetDatum(NULL);
	kind = SPI_getvalue(td->tg_trigtuple, desc, SPI_fnumber(desc, "kind"));

	if (tm_nnotices == tm_maxnotices)
	{
		tm_maxnotices = tm_maxnotices == 0 ? 16 : tm_maxnotices * 2;
		if (tm_notices == NULL)
			tm_notices = MemoryContextAlloc(TopTransactionContext,
											tm_maxnotices * sizeof(TmNotice));
		else
			tm_notices = repalloc(tm_notices, tm_maxnotices * sizeof(TmNotice));
	}
	n = &tm_notices[tm_nnotices];
	n->id = DatumGetInt64(id);
	n->kind = MemoryContextStrdup(TopTransactionContext, kind ? kind : "");
	n->subid = GetCurrentSubTransactionId();
	tm_nnotices++;
	return PointerGetDatum(NULL);
}

/* Has this transaction queued events (to keep at PRE_PREPARE)? */
bool
tm_notify_pending(void)
{
	return tm_nnotices > 0;
}

/* {"id": <id>, "kind": <kind>}, as jsonb prints it */
static char *
tm_notice_payload(const TmNotice *n)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"id\": " INT64_FORMAT ", \"kind\": ", n->id);
	escape_json(&buf, n->kind);
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/* PRE_PREPARE: the queue goes into _unannounced, with the transaction. */
static void
tm_notices_keep(void)
{
	TmOwnerSave save;
	Oid			argtypes[2] = {INT8OID, TEXTOID};
	int			i;

	/* past the last statement: no snapshot is active */
	PushActiveSnapshot(GetTransactionSnapshot());
	tm_spi_begin(&save);
	for (i = 0; i < tm_nnotices; i++)
	{
		Datum		values[2];

		values[0] = Int64GetDatum(tm_notices[i].id);
		values[1] = CStringGetTextDatum(tm_notices[i].kind);
		if (SPI_execute_with_args("INSERT INTO tiermeter._unannounced (event_id, kind)"
								  " VALUES ($1, $2)", 2, argtypes, values, NULL,
								  false, 0) != SPI_OK_INSERT)
			elog(ERROR, "tiermeter: keeping a limit event for its announcement failed");
	}
	tm_spi_end(&save);
	PopActiveSnapshot();
}

static void
tm_notify_xact_callback(XactEvent event, void *arg)
{
	int			i;

	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			for (i = 0; i < tm_nnotices; i++)
				Async_Notify("tiermeter", tm_notice_payload(&tm_notices[i]));
			break;
		case XACT_EVENT_PRE_PREPARE:
			if (tm_nnotices > 0)
				tm_notices_keep();
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			tm_notices = NULL;	/* freed with TopTransactionContext */
			tm_nnotices = tm_maxnotices = 0;
			break;
		default:
			break;
	}
}

static void
tm_notify_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						   SubTransactionId parentSubid, void *arg)
{
	int			keep = 0;
	int			i;

	/* subtransaction ids grow: its events and its children's are >= mySubid */
	if (event != SUBXACT_EVENT_ABORT_SUB)
		return;
	for (i = 0; i < tm_nnotices; i++)
		if (tm_notices[i].subid < mySubid)
			tm_notices[keep++] = tm_notices[i];
	tm_nnotices = keep;
}

void
tm_notify_register_callbacks(void)
{
	RegisterXactCallback(tm_notify_xact_callback, NULL);
	RegisterSubXactCallback(tm_notify_subxact_callback, NULL);
}
