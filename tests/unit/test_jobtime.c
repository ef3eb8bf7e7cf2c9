/*
 * test_jobtime.c: ISO-8601 offsets that are not whole hours (India
 * +05:30, Newfoundland -03:30, Nepal +05:45) count their minutes, with
 * the offset's sign, in every form the API may write them.
 */

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"

/* 2024-01-15T14:30:15Z */
#define T0 1705329015.0

static double
iso(const char *s)
{
	double t = -1;

	assert_int_equal(jobtime_iso8601(s, &t), 0);
	return t;
}

/* The same text as a JSON string value, as the cache file holds it. */
static double
json(const char *s)
{
	double t = -1;

	assert_int_equal(jobtime_parse(s, strlen(s), &t), 0);
	return t;
}

static void
test_offsets_with_minutes(void **state)
{
	(void)state;
	assert_true(iso("2024-01-15T20:00:15+05:30") == T0);
	assert_true(iso("2024-01-15T11:00:15-03:30") == T0);
	assert_true(iso("2024-01-15T20:15:15+05:45") == T0);
	assert_true(iso("2024-01-15T20:00:15+0530") == T0);
	assert_true(iso("2024-01-15T11:00:15-0330") == T0);
	assert_true(iso("2024-01-15T20:15:15.25+05:45") == T0 + 0.25);
	/* minutes alone carry the sign too */
	assert_true(iso("2024-01-15T14:00:15-00:30") == T0);
	assert_true(iso("2024-01-15T15:00:15+00:30") == T0);
	/* across midnight and the day boundary */
	assert_true(iso("2024-01-16T00:15:15+09:45") == T0);
	assert_true(iso("2024-01-15T00:00:15-14:30") == T0);
}

static void
test_offsets_with_minutes_in_the_cache_form(void **state)
{
	(void)state;
	assert_true(json("\"2024-01-15T20:00:15+05:30\"") == T0);
	assert_true(json("\"2024-01-15T11:00:15-03:30\"") == T0);
	assert_true(json("\"2024-01-15T20:15:15+05:45\"") == T0);
	assert_true(json("\"2024-01-15 20:00:15.000000+05:30\"") == T0);
}

static void
test_offset_minutes_out_of_range_are_no_time(void **state)
{
	double t;

	(void)state;
	assert_int_equal(jobtime_iso8601("2024-01-15T20:00:15+05:60", &t), -1);
	assert_int_equal(jobtime_iso8601("2024-01-15T20:00:15+05:3", &t), -1);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_offsets_with_minutes),
		cmocka_unit_test(test_offsets_with_minutes_in_the_cache_form),
		cmocka_unit_test(test_offset_minutes_out_of_range_are_no_time),
	};

	setenv("TZ", "UTC", 1);
	tzset();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
