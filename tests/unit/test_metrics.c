/* test_metrics.c: the Prometheus text's label values (issue 23 item 5). */

#include <stdlib.h>
#include <string.h>

#include "clock.h"

/* The exposition's limpeza_jobs_reaped_total lines, in order. */
static char *
reaped_lines(void)
{
	char *text, *out, *line, *next;
	size_t len;

	text = metrics_render(&len);
	assert_non_null(text);
	assert_int_equal(strlen(text), len);
	out = calloc(1, len + 1);
	assert_non_null(out);
	for (line = text; *line != '\0'; line = next) {
		next = strchr(line, '\n');
		assert_non_null(next);
		next++;
		if (strncmp(line, "limpeza_jobs_reaped_total{", 26) == 0)
			strncat(out, line, (size_t)(next - line));
	}
	free(text);
	return out;
}

/*
 * Backslash, double quote and line feed are escaped as the text format
 * requires; a byte that is not UTF-8 shows as \xNN (its backslash
 * escaped); every other character passes as it is.
 */
static void
test_label_escaped(void **state)
{
	char *lines;

	(void)state;
	metrics_reaped("cache", "a\\b\"c\nd\xff \xc3\xa7", "orphan", 2);
	lines = reaped_lines();
	assert_string_equal(lines,
	    "limpeza_jobs_reaped_total{store=\"cache\",state=\"a\\\\b\\\"c\\nd"
	    "\\\\xff \xc3\xa7\",reason=\"orphan\"} 2\n");
	free(lines);
}

/*
 * Two status words of 64 bytes that differ only in their last byte are
 * two series, each counted on its own, each label whole.
 */
static void
test_long_states_not_merged(void **state)
{
	char a[65], b[65], want[512], *lines;

	(void)state;
	memset(a, 'w', 64);
	a[64] = '\0';
	memcpy(b, a, sizeof(b));
	b[63] = 'x';
	metrics_reaped("sqlite", a, "forced", 1);
	metrics_reaped("sqlite", b, "forced", 3);
	metrics_reaped("sqlite", a, "forced", 1);
	lines = reaped_lines();
	snprintf(want, sizeof(want),
	    "limpeza_jobs_reaped_total{store=\"sqlite\",state=\"%s\","
	    "reason=\"forced\"} 2\n"
	    "limpeza_jobs_reaped_total{store=\"sqlite\",state=\"%s\","
	    "reason=\"forced\"} 3\n",
	    a, b);
	assert_non_null(strstr(lines, want));
	free(lines);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_label_escaped),
		cmocka_unit_test(test_long_states_not_merged),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
