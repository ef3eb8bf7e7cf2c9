/* clock.c: the wall clock and the monotonic clock, for every module. */

#include <signal.h>
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

/* `once` stops on SIGHUP too (a closed terminal); the daemon reloads. */
static int stop_on_hup;

void
stop_pending_hup(int on)
{
	stop_on_hup = on;
}

/*
 * Whether a stop (SIGTERM, SIGINT; SIGHUP for `once`) is waiting. The
 * daemon blocks these outside its waits (main.c), so one that came during
 * a cycle is pending: every long network wait asks this between short
 * slices (STOP_SLICE_MS), so that a stop never waits on the network.
 */
int
stop_pending(void)
{
	sigset_t set;

	if (sigpending(&set) == -1)
		return 0;
	return sigismember(&set, SIGTERM) == 1 ||
	    sigismember(&set, SIGINT) == 1 ||
	    (stop_on_hup && sigismember(&set, SIGHUP) == 1);
}
