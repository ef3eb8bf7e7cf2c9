/* test_dotenv.c: the dotenv dialect of env files. */

#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "dotenv.h"

struct kv {
	char keys[16][64];
	char vals[16][256];
	int n;
};

static int
collect(void *arg, const char *k, const char *v, int line)
{
	struct kv *kv = arg;

	(void)line;
	snprintf(kv->keys[kv->n], 64, "%s", k);
	snprintf(kv->vals[kv->n], 256, "%s", v);
	kv->n++;
	return 0;
}

static int
parse(const char *text, struct kv *kv, char *err)
{
	memset(kv, 0, sizeof(*kv));
	return dotenv_parse(text, strlen(text), collect, kv, err, 128);
}

static void
test_forms(void **state)
{
	struct kv kv;
	char err[128];
	const char *text = "# comment\n"
			   "\n"
			   "A=plain\n"
			   "export B=exported\n"
			   "  C = spaced  \n"
			   "D=\"double \\\"quoted\\\" \\n x\"\n"
			   "E='single $literal \\n'\n"
			   "F=value # trailing comment\n"
			   "G=pass#word\n"
			   "H=\n"
			   "I=\"multi\nline\"\r\n"
			   "J=crlf\r\n";

	(void)state;
	assert_int_equal(parse(text, &kv, err), 0);
	assert_int_equal(kv.n, 10);
	assert_string_equal(kv.keys[0], "A");
	assert_string_equal(kv.vals[0], "plain");
	assert_string_equal(kv.keys[1], "B");
	assert_string_equal(kv.vals[1], "exported");
	assert_string_equal(kv.keys[2], "C");
	assert_string_equal(kv.vals[2], "spaced");
	assert_string_equal(kv.vals[3], "double \"quoted\" \n x");
	assert_string_equal(kv.vals[4], "single $literal \\n");
	assert_string_equal(kv.vals[5], "value");
	assert_string_equal(kv.vals[6], "pass#word");
	assert_string_equal(kv.vals[7], "");
	assert_string_equal(kv.vals[8], "multi\nline");
	assert_string_equal(kv.keys[9], "J");
	assert_string_equal(kv.vals[9], "crlf");
}

static void
test_bad_lines(void **state)
{
	struct kv kv;
	char err[128];

	(void)state;
	assert_int_equal(
	    parse("A=1\nnot a line\nB=\"open\nC=3\n", &kv, err), 2);
	assert_string_equal(err, "line 2: expected KEY=value");
	assert_int_equal(kv.n, 1);
	assert_string_equal(kv.keys[0], "A");
	assert_int_equal(parse("X='a' b\nY=2", &kv, err), 1);
	assert_string_equal(err, "line 1: text after the closing quote");
	assert_int_equal(kv.n, 1);
	assert_string_equal(kv.keys[0], "Y");
	assert_int_equal(parse("1X=2\n", &kv, err), 1);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_forms),
		cmocka_unit_test(test_bad_lines),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
