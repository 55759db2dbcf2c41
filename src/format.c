/*
 * format.c
 *		format_duration(seconds bigint) RETURNS text
 */
#include "tiermeter.h"

#include "utils/builtins.h"

TM_FUNCTION(tiermeter_format_duration);

/*
 * Seconds floored to whole minutes: '<h>h <m>m' from one hour on, else
 * '<m>m'; 'Unlimited' for NULL.
 */
Datum
tiermeter_format_duration(PG_FUNCTION_ARGS)
{
	int64		seconds;
	int64		hours;
	int64		minutes;

	if (PG_ARGISNULL(0))
		PG_RETURN_TEXT_P(cstring_to_text("Unlimited"));

	seconds = PG_GETARG_INT64(0);
	if (seconds < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("tiermeter: a duration cannot be negative"),
				 errdetail("seconds = " INT64_FORMAT, seconds)));

	hours = seconds / SECS_PER_HOUR;
	minutes = (seconds % SECS_PER_HOUR) / SECS_PER_MINUTE;

	if (hours > 0)
		PG_RETURN_TEXT_P(cstring_to_text(psprintf(INT64_FORMAT "h " INT64_FORMAT "m",
												  hours, minutes)));
	PG_RETURN_TEXT_P(cstring_to_text(psprintf(INT64_FORMAT "m", minutes)));
}
