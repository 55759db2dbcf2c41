/*
 * relnames.c
 *		tiermeter's own tables and indexes, found by name in the tiermeter
 *		schema and opened the way the parser opens a name: the relation a
 *		query naming it would read or write, even if another session renamed
 *		it, or the schema, a moment before.
 *
 * The C paths that read or write the tables without the executor (scan.c's
 * builds, ledger.c's rows) would otherwise look the oid up, keep it for the
 * backend, and open it: a rename committed between the lookup and the
 * lock, or a schema renamed (which invalidates none of its tables), would
 * send them to the old relation.  Here the oid is kept until a relcache
 * invalidation of the relation (or of everything) or any change to a
 * schema; the lock's first acquisition in a transaction reads the
 * invalidations, and if one arrived the name is looked up again, as
 * RangeVarGetRelidExtended retries.
 */
#include "tiermeter.h"

#include "access/relation.h"
#include "catalog/namespace.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

/* the names a backend has opened, for the invalidation callbacks */
static TmRelName *tm_relnames = NULL;
static bool tm_relnames_registered = false;

static void
tm_relnames_relcache(Datum arg, Oid relid)
{
	TmRelName  *r;

	for (r = tm_relnames; r != NULL; r = r->next)
		if (!OidIsValid(relid) || r->relid == relid)
			r->valid = false;
}

/* a schema renamed, dropped or made: every name is looked up again */
static void
tm_relnames_schema(Datum arg, int cacheid, uint32 hashvalue)
{
	TmRelName  *r;

	for (r = tm_relnames; r != NULL; r = r->next)
		r->valid = false;
}

/*
 * Opens the relation named ref->name in the tiermeter schema with lockmode,
 * or returns NULL if there is none (nothing locked then).  The caller checks
 * its kind and shape.
 */
Relation
tm_relname_open(TmRelName *ref, LOCKMODE lockmode)
{
	int			tries;

	if (!tm_relnames_registered)
	{
		CacheRegisterRelcacheCallback(tm_relnames_relcache, (Datum) 0);
		CacheRegisterSyscacheCallback(NAMESPACEOID, tm_relnames_schema, (Datum) 0);
		tm_relnames_registered = true;
	}
	if (!ref->listed)
	{
		ref->next = tm_relnames;
		tm_relnames = ref;
		ref->listed = true;
	}

	/* a few rounds of DDL racing the lock, then the caller's query decides */
	for (tries = 0; tries < 10; tries++)
	{
		Relation	rel;

		if (!ref->valid || !OidIsValid(ref->relid))
		{
			ref->valid = true;	/* an invalidation from here on looks again */
			ref->relid = InvalidOid;	/* an error on the way: looked up again */
			ref->nsp = get_namespace_oid("tiermeter", true);
			if (OidIsValid(ref->nsp))
				ref->relid = get_relname_relid(ref->name, ref->nsp);
			if (!OidIsValid(ref->relid))
			{
				/* not there: looked up again at the next call (a CREATE) */
				ref->valid = false;
				return NULL;
			}
		}
		/* the lock's first acquisition in this transaction reads invalidations */
		rel = try_relation_open(ref->relid, lockmode);
		if (rel == NULL)
		{
			ref->valid = false; /* dropped since the lookup */
			continue;
		}
		if (ref->valid && RelationGetNamespace(rel) == ref->nsp &&
			strcmp(RelationGetRelationName(rel), ref->name) == 0)
			return rel;
		/* renamed, moved or its schema changed since the lookup */
		relation_close(rel, lockmode);
		ref->valid = false;
	}
	return NULL;
}
