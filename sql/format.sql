-- format_duration: floored to minutes; hours from one hour on.
SELECT s, tiermeter.format_duration(s)
  FROM unnest(ARRAY[0, 59, 60, 2700, 3599, 3600, 3659, 3660, 3900, 86399, 90000, 360000]::bigint[]) AS s;
SELECT tiermeter.format_duration(NULL);
SELECT tiermeter.format_duration(-1);
