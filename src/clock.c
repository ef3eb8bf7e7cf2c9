/* clock.c: the wall clock and the monotonic clock, for every module. */

#include <time.h>

#include "limpeza.h"

/* Seconds since the epoch: the clock the API wrote its job times with. */
double
now_realtime(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Milliseconds on a clock that never jumps: deadlines and intervals. */
long long
now_monotonic_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * MS_PER_S + ts.tv_nsec / 1000000;
}
