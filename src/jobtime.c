/* jobtime.c: a job's start_time or created_at: epoch seconds or ISO-8601. */

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jsonscan.h"
#include "limpeza.h"

/* Earlier than this is not a time a job was started at. */
#define MIN_TIME 1e9

#define MAX_TIME_TEXT 64 /* longer strings or numbers are no job time */

static long long
days_from_civil(long long y, unsigned m, unsigned d)
{
	long long era;
	unsigned yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = (unsigned)(y - era * 400);
	doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (long long)doe - 719468;
}

static int
digits(const char **p, int n, int *out)
{
	int v = 0;

	while (n-- > 0) {
		if (**p < '0' || **p > '9')
			return -1;
		v = v * 10 + (*(*p)++ - '0');
	}
	*out = v;
	return 0;
}

/*
 * The instant a local wall-clock time names. In the hour a summer time
 * ends, the clock shows the same time twice: the later of the two is
 * taken, so such a job looks younger, never older, than it is (Python's
 * isoformat() does not say which it meant). mktime() with tm_isdst -1
 * picks one by its own history, so both readings are asked for.
 */
static time_t
local_time(const struct tm *want)
{
	struct tm a = *want, b = *want;
	time_t ta, tb;
	int va, vb;

	a.tm_isdst = 0;
	b.tm_isdst = 1;
	ta = mktime(&a);
	tb = mktime(&b);
	/* A reading holds if mktime() kept the summer flag it was given. */
	va = ta != (time_t)-1 && a.tm_isdst == 0;
	vb = tb != (time_t)-1 && b.tm_isdst == 1;
	if (va && vb)
		return ta > tb ? ta : tb;
	if (va)
		return ta;
	if (vb)
		return tb;
	/* A time the clock skipped: the later reading again. */
	return ta > tb ? ta : tb;
}

/*
 * ISO-8601 as Python's isoformat() and most APIs write it:
 * YYYY-MM-DD[(T| )HH:MM[:SS[.fff]]][Z|+HH:MM|+HHMM|+HH]. A time without
 * a zone is the host's local time, as datetime.now().isoformat() writes
 * it (and as Python's timestamp() reads it back).
 */
int
jobtime_iso8601(const char *s, double *out)
{
	static const int mdays[] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30,
		31 };
	int y, mo, d, h = 0, mi = 0, sec = 0, zh = 0, zm = 0, sign = 0,
		      zone = 0;
	double frac = 0, scale = 0.1;
	const char *p = s;
	struct tm tm;
	time_t local;

	if (digits(&p, 4, &y) == -1 || *p++ != '-' ||
	    digits(&p, 2, &mo) == -1 || *p++ != '-' || digits(&p, 2, &d) == -1)
		return -1;
	if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] ||
	    (mo == 2 && d == 29 &&
		(y % 4 != 0 || (y % 100 == 0 && y % 400 != 0))))
		return -1;
	if (*p == 'T' || *p == 't' || *p == ' ') {
		p++;
		if (digits(&p, 2, &h) == -1 || *p++ != ':' ||
		    digits(&p, 2, &mi) == -1)
			return -1;
		if (*p == ':') {
			p++;
			if (digits(&p, 2, &sec) == -1)
				return -1;
			if (*p == '.' || *p == ',') {
				p++;
				if (*p < '0' || *p > '9')
					return -1;
				for (; *p >= '0' && *p <= '9'; p++) {
					frac += (*p - '0') * scale;
					scale /= 10;
				}
			}
		}
		if (h > 23 || mi > 59 || sec > 59)
			return -1;
		if (*p == 'Z') {
			p++;
			zone = 1;
		} else if (*p == '+' || *p == '-') {
			sign = *p++ == '-' ? -1 : 1;
			if (digits(&p, 2, &zh) == -1)
				return -1;
			if (*p == ':')
				p++;
			if (*p != '\0' && digits(&p, 2, &zm) == -1)
				return -1;
			if (zh > 23 || zm > 59)
				return -1;
			zone = 1;
		}
	}
	if (*p != '\0')
		return -1;
	if (zone) {
		*out = (double)(days_from_civil(y, (unsigned)mo, (unsigned)d) *
			       86400LL +
			   h * 3600LL + mi * 60LL + sec -
			   sign * (zh * 3600LL + zm * 60LL)) +
		    frac;
		return 0;
	}
	memset(&tm, 0, sizeof(tm));
	tm.tm_year = y - 1900;
	tm.tm_mon = mo - 1;
	tm.tm_mday = d;
	tm.tm_hour = h;
	tm.tm_min = mi;
	tm.tm_sec = sec;
	if ((local = local_time(&tm)) == (time_t)-1)
		return -1;
	*out = (double)local + frac;
	return 0;
}

/* Digits, or digits '.' digits: epoch seconds in a string, nothing more. */
static int
decimal(const char *s)
{
	size_t n = strspn(s, "0123456789");

	if (n == 0)
		return 0;
	if (s[n] == '.') {
		s += n + 1;
		n = strspn(s, "0123456789");
		if (n == 0)
			return 0;
	}
	return s[n] == '\0';
}

/*
 * A job's time field, given as the bytes of its JSON value: a number of
 * epoch seconds, or a string holding an ISO-8601 time or a plain decimal
 * number. Values before 2001-09-09 (10^9 s: an uptime or a monotonic
 * clock's reading, not a date), non-finite (NaN, Infinity) and absurd
 * ones count as missing: the old cleaner read a missing time as 1970 and
 * killed every new job (SPEC §8.1).
 */
int
jobtime_parse(const char *json, size_t len, double *out)
{
	char text[MAX_TIME_TEXT * 6 + 3], *copy, *end;
	size_t n;
	double t;

	if (len == 0)
		return -1;
	if (json[0] == '"') {
		if (len > sizeof(text))
			return -1;
		n = jsonscan_string(json, len, text);
		if (n > MAX_TIME_TEXT || memchr(text, '\0', n) != NULL)
			return -1;
		text[n] = '\0';
		if (jobtime_iso8601(text, &t) == -1) {
			if (!decimal(text))
				return -1;
			t = strtod(text, &end);
		}
	} else if (json[0] == '-' || (json[0] >= '0' && json[0] <= '9')) {
		/* -Infinity is no time; JSON's numbers are strtod()'s too */
		if (json[len - 1] == 'y')
			return -1;
		if ((copy = strndup(json, len)) == NULL)
			fatalx_oom();
		t = strtod(copy, &end);
		free(copy);
	} else
		return -1; /* NaN, Infinity, true, null, objects, arrays */
	if (!isfinite(t) || t < MIN_TIME || t > 1e11)
		return -1;
	*out = t;
	return 0;
}
