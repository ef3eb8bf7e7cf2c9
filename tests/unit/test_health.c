/* test_health.c: only an integer jobs_active in a JSON object counts. */

#include <string.h>

#include "clock.h"

static int
parse(const char *body, long long *n)
{
	char err[128];

	*n = -7;
	return health_parse(body, strlen(body), n, err, sizeof(err));
}

static void
test_health_parse(void **state)
{
	long long n;

	(void)state;
	assert_int_equal(
	    parse("{\"status\":\"healthy\",\"jobs_active\":9}", &n), 0);
	assert_int_equal(n, 9);
	assert_int_equal(parse("{\"jobs_active\":0}", &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(parse("{\"jobs_active\":\"9\"}", &n), -1);
	assert_int_equal(parse("{\"jobs_active\":9.5}", &n), -1);
	assert_int_equal(parse("{\"jobs_active\":-1}", &n), -1);
	assert_int_equal(parse("{\"jobs_active\":true}", &n), -1);
	assert_int_equal(parse("{\"jobs_active\":null}", &n), -1);
	assert_int_equal(parse("{\"status\":\"healthy\"}", &n), -1);
	assert_int_equal(parse("[9]", &n), -1);
	assert_int_equal(parse("<html>502</html>", &n), -1);
	assert_int_equal(parse("", &n), -1);
	assert_int_equal(n, -7);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_health_parse),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
