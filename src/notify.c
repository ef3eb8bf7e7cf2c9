/* notify.c: what systemd hears from the daemon (sd_notify), or nothing. */

#include <stdint.h>
#include <time.h>

#ifdef HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "limpeza.h"

/*
 * Without libsystemd (a build without -DHAVE_SYSTEMD) every call is a
 * no-op and there is no watchdog, so the loop needs no #ifdef of its own.
 */
#ifdef HAVE_SYSTEMD
#define notify(...) sd_notifyf(0, __VA_ARGS__)
#else
#define notify(...) notify_nothing(__VA_ARGS__)

static void notify_nothing(const char *, ...)
    __attribute__((format(printf, 1, 2)));

static void
notify_nothing(const char *fmt, ...)
{
	(void)fmt;
}
#endif

/* Half the watchdog interval in ms, or 0 when systemd keeps no watchdog. */
long long
notify_watchdog_ms(void)
{
#ifdef HAVE_SYSTEMD
	uint64_t usec = 0;

	if (sd_watchdog_enabled(0, &usec) > 0)
		return (long long)(usec / 2000);
#endif
	return 0;
}

void
notify_watchdog(void)
{
	notify("WATCHDOG=1");
}

/* After a cycle: READY=1 the first time, and always its summary. */
void
notify_cycle(int first, const char *status)
{
	notify("%sSTATUS=%s", first ? "READY=1\n" : "", status);
}

/* A reload starts: systemd wants the monotonic time with RELOADING=1. */
void
notify_reloading(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	notify("RELOADING=1\nMONOTONIC_USEC=%llu",
	    (unsigned long long)ts.tv_sec * 1000000ULL +
		(unsigned long long)ts.tv_nsec / 1000ULL);
}

void
notify_reloaded(void)
{
	notify("READY=1");
}

void
notify_stopping(void)
{
	notify("STOPPING=1");
}
