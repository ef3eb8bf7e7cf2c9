/* clock.h: a clock the unit tests set, standing in for main.c's. */

#ifndef TEST_CLOCK_H
#define TEST_CLOCK_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "limpeza.h"

static double test_now = 1700000000.0;
static long long test_mono = 1000000;

double
now_realtime(void)
{
	return test_now;
}

long long
now_monotonic_ms(void)
{
	return test_mono;
}

int
stop_pending(void)
{
	return 0;
}

#endif
