/* test_cache.c: timestamps, the reaper's decisions, member spans, first-sight
 * ageing. */

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clock.h"

static const struct cache_policy pol = {
	.running_ttl = 180,
	.queued_ttl = 120,
	.running = "running",
	.queued = "queued",
};

static void
test_iso8601(void **state)
{
	double t;

	(void)state;
	assert_int_equal(cache_parse_iso8601("2024-01-15T14:30:15", &t), 0);
	assert_true(t == 1705329015.0);
	assert_int_equal(cache_parse_iso8601("2024-01-15 14:30:15Z", &t), 0);
	assert_true(t == 1705329015.0);
	assert_int_equal(cache_parse_iso8601("2024-01-15T14:30:15.25", &t), 0);
	assert_true(t == 1705329015.25);
	assert_int_equal(
	    cache_parse_iso8601("2024-01-15T11:30:15-03:00", &t), 0);
	assert_true(t == 1705329015.0);
	assert_int_equal(
	    cache_parse_iso8601("2024-01-15T15:30:15+0100", &t), 0);
	assert_true(t == 1705329015.0);
	assert_int_equal(cache_parse_iso8601("2024-01-15T14:30", &t), 0);
	assert_true(t == 1705329000.0);
	assert_int_equal(cache_parse_iso8601("2024-01-15", &t), 0);
	assert_true(t == 1705276800.0);
	assert_int_equal(cache_parse_iso8601("2024-13-01T00:00:00", &t), -1);
	assert_int_equal(cache_parse_iso8601("2024-02-30T00:00:00", &t), -1);
	assert_int_equal(cache_parse_iso8601("2024-01-15T25:00:00", &t), -1);
	assert_int_equal(
	    cache_parse_iso8601("2024-01-15T14:30:15 junk", &t), -1);
	assert_int_equal(cache_parse_iso8601("yesterday", &t), -1);
	assert_int_equal(cache_parse_iso8601("", &t), -1);
}

static void
test_parse_time(void **state)
{
	json_t *v;
	double t;

	(void)state;
	v = json_integer(1732846215);
	assert_int_equal(cache_parse_time(v, &t), 0);
	assert_true(t == 1732846215.0);
	json_decref(v);
	v = json_real(1732846215.27);
	assert_int_equal(cache_parse_time(v, &t), 0);
	assert_true(t == 1732846215.27);
	json_decref(v);
	v = json_string("2024-01-15T14:30:15Z");
	assert_int_equal(cache_parse_time(v, &t), 0);
	json_decref(v);
	v = json_string("1732846215.5");
	assert_int_equal(cache_parse_time(v, &t), 0);
	assert_true(t == 1732846215.5);
	json_decref(v);
	/* Missing, zero, negative, absurd or odd types are not times. */
	assert_int_equal(cache_parse_time(NULL, &t), -1);
	v = json_integer(0);
	assert_int_equal(cache_parse_time(v, &t), -1);
	json_decref(v);
	v = json_integer(-5);
	assert_int_equal(cache_parse_time(v, &t), -1);
	json_decref(v);
	v = json_real(1e15);
	assert_int_equal(cache_parse_time(v, &t), -1);
	json_decref(v);
	v = json_null();
	assert_int_equal(cache_parse_time(v, &t), -1);
	v = json_true();
	assert_int_equal(cache_parse_time(v, &t), -1);
	v = json_string("soon");
	assert_int_equal(cache_parse_time(v, &t), -1);
	json_decref(v);
}

static enum cache_fate
decide(const char *job, const struct cache_policy *p, double first_age)
{
	json_t *j = json_loads(job, 0, NULL);
	double age;
	enum cache_fate f;

	assert_non_null(j);
	f = cache_decide(j, p, 1000000.0, first_age, &age);
	json_decref(j);
	return f;
}

static void
test_decide(void **state)
{
	struct cache_policy force = pol;

	(void)state;
	/* running: aged by start_time, strictly older than the TTL */
	assert_int_equal(
	    decide("{\"status\":\"running\",\"start_time\":999000}", &pol, 0),
	    FATE_RUNNING);
	assert_int_equal(
	    decide("{\"status\":\"running\",\"start_time\":999820}", &pol, 0),
	    FATE_KEEP);
	assert_int_equal(
	    decide("{\"status\":\"running\",\"start_time\":999819.9}", &pol, 0),
	    FATE_RUNNING);
	/* a future start_time is never stale */
	assert_int_equal(
	    decide("{\"status\":\"running\",\"start_time\":2000000}", &pol, 0),
	    FATE_KEEP);
	/* running ignores created_at: without start_time, first sight counts */
	assert_int_equal(
	    decide("{\"status\":\"running\",\"created_at\":1}", &pol, 10),
	    FATE_KEEP);
	assert_int_equal(
	    decide("{\"status\":\"running\"}", &pol, 180), FATE_KEEP);
	assert_int_equal(
	    decide("{\"status\":\"running\"}", &pol, 181), FATE_RUNNING);
	/* the old cleaner's bug: a missing time must not read as 1970 */
	assert_int_equal(
	    decide("{\"status\":\"running\",\"start_time\":null}", &pol, 0),
	    FATE_KEEP);
	/* queued: start_time, else created_at, else first sight */
	assert_int_equal(
	    decide("{\"status\":\"queued\",\"created_at\":999890}", &pol, 0),
	    FATE_KEEP);
	assert_int_equal(
	    decide("{\"status\":\"queued\",\"created_at\":999890}", &pol, 500),
	    FATE_KEEP);
	assert_int_equal(
	    decide("{\"status\":\"queued\",\"created_at\":999879}", &pol, 0),
	    FATE_QUEUED);
	assert_int_equal(decide("{\"status\":\"queued\",\"created_at\":"
				"\"1970-01-12T13:44:39Z\"}",
			     &pol, 0),
	    FATE_QUEUED);
	assert_int_equal(
	    decide("{\"status\":\"queued\"}", &pol, 121), FATE_QUEUED);
	/* other statuses and shapes are left alone */
	assert_int_equal(
	    decide("{\"status\":\"done\",\"start_time\":1}", &pol, 9999),
	    FATE_KEEP);
	assert_int_equal(
	    decide("{\"status\":\"paused\"}", &pol, 9999), FATE_KEEP);
	assert_int_equal(decide("{\"start_time\":1}", &pol, 9999), FATE_KEEP);
	assert_int_equal(decide("[1,2]", &pol, 9999), FATE_KEEP);

	/* forced: all active jobs; done jobs only with FORCE_CACHE=all */
	force.force = 1;
	assert_int_equal(
	    decide("{\"status\":\"running\",\"start_time\":999999}", &force, 0),
	    FATE_FORCED);
	assert_int_equal(decide("{\"status\":\"done\"}", &force, 0), FATE_KEEP);
	force.force_all = 1;
	assert_int_equal(
	    decide("{\"status\":\"done\"}", &force, 0), FATE_FORCED);
	/* FORCE_MIN_AGE spares young jobs */
	force.force_min_age = 100;
	assert_int_equal(
	    decide("{\"status\":\"running\",\"start_time\":999950}", &force, 0),
	    FATE_KEEP);
	assert_int_equal(
	    decide("{\"status\":\"running\",\"start_time\":999800}", &force, 0),
	    FATE_FORCED);
	assert_int_equal(
	    decide("{\"status\":\"queued\"}", &force, 5), FATE_KEEP);
}

struct spans {
	char keys[8][32];
	char vals[8][64];
	int n;
};

static const char *span_src;

/* Windows that cut the text everywhere, and the default one. */
static const size_t windows[] = { 1, 2, 3, 5, 8, 13, 64, 0 };
#define NWINDOWS (sizeof(windows) / sizeof(windows[0]))

/* cache_members() on a file holding len bytes of text. */
static int
members(const char *text, size_t len, size_t window,
    int (*cb)(void *, size_t, size_t, size_t, size_t), void *arg)
{
	int fd = memfd_create("members", 0), rc;

	assert_true(fd != -1);
	assert_int_equal(write(fd, text, len), (ssize_t)len);
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	rc = cache_members(fd, window, cb, arg);
	close(fd);
	return rc;
}

static int
span_cb(void *arg, size_t ks, size_t ke, size_t vs, size_t ve)
{
	struct spans *s = arg;

	snprintf(s->keys[s->n], 32, "%.*s", (int)(ke - ks), span_src + ks);
	snprintf(s->vals[s->n], 64, "%.*s", (int)(ve - vs), span_src + vs);
	s->n++;
	return 0;
}

/* The spans are file offsets, wherever the window cuts the file. */
static void
test_members(void **state)
{
	struct spans s;
	size_t w;

	(void)state;
	for (w = 0; w < NWINDOWS; w++) {
		s.n = 0;
		span_src = " {\"a\": {\"x\": \"}{\\\"\", \"y\": [1, {\"z\": "
			   "2}]},\n\"b\\\"q\" :-1.5e3 , \"c\":\"s\\\\\", "
			   "\"d\":true}\n";
		assert_int_equal(members(span_src, strlen(span_src), windows[w],
				     span_cb, &s),
		    0);
		assert_int_equal(s.n, 4);
		assert_string_equal(s.keys[0], "\"a\"");
		assert_string_equal(
		    s.vals[0], "{\"x\": \"}{\\\"\", \"y\": [1, {\"z\": 2}]}");
		assert_string_equal(s.keys[1], "\"b\\\"q\"");
		assert_string_equal(s.vals[1], "-1.5e3");
		assert_string_equal(s.vals[2], "\"s\\\\\"");
		assert_string_equal(s.vals[3], "true");
		s.n = 0;
		span_src = "{}";
		assert_int_equal(
		    members(span_src, 2, windows[w], span_cb, &s), 0);
		assert_int_equal(s.n, 0);
		span_src = "[1]";
		assert_int_equal(
		    members(span_src, 3, windows[w], span_cb, &s), -1);
		span_src = "{\"a\": 1} x";
		assert_int_equal(
		    members(span_src, 10, windows[w], span_cb, &s), -1);
	}
}

static int
count_cb(void *arg, size_t ks, size_t ke, size_t vs, size_t ve)
{
	(void)ks;
	(void)ke;
	(void)vs;
	(void)ve;
	(*(int *)arg)++;
	return 0;
}

/*
 * The scanner and jansson agree on text, whatever the window; 1 if both
 * accept it.
 */
static int
agree(const char *text, size_t len)
{
	json_t *j = json_loadb(text, len, JSON_ALLOW_NUL, NULL);
	int theirs = j != NULL && json_is_object(j), ours = 0, n, first = -1;
	size_t w;

	json_decref(j);
	for (w = 0; w < NWINDOWS; w++) {
		n = 0;
		ours = members(text, len, windows[w], count_cb, &n) == 0;
		if (ours != theirs)
			fail_msg("scanner (window %zu) %s, jansson %s: %.*s",
			    windows[w], ours ? "accepts" : "refuses",
			    theirs ? "accepts" : "refuses", (int)len, text);
		if (first != -1 && n != first)
			fail_msg("%d members with window %zu, %d before", n,
			    windows[w], first);
		first = n;
	}
	return ours;
}

/*
 * Strings are scanned sixteen and eight bytes at a time: each byte that
 * ends or breaks the plain run (quote, backslash, control, non-ASCII, a
 * valid or broken UTF-8 sequence) at every offset of strings long enough
 * to span several words must be seen exactly where jansson sees it.
 */
static void
test_scanner_words(void **state)
{
	static const char *const odd[] = { "\"", "\\\"", "\\n", "\\u00e9",
		"\\x", "\x01", "\x1f", "\x7f", "\x80", "\xc3\xa9", "\xc3",
		"\xed\xa0\x80", "\xf0\x9f\x98\x80", "\xff", " " };
	char text[256], pad[64];
	size_t o, k, n, accepted = 0;

	(void)state;
	memset(pad, 'a', sizeof(pad));
	for (k = 0; k < sizeof(odd) / sizeof(odd[0]); k++)
		for (o = 0; o < 40; o++) {
			n = (size_t)snprintf(text, sizeof(text),
			    "{\"k\": [\"%.*s%s%.*s\"], \"%.*s\": 1}", (int)o,
			    pad, odd[k], (int)(40 - o), pad, (int)o, pad);
			accepted += (size_t)agree(text, n);
		}
	/* the valid ones: three escapes, DEL, é, the emoji and the space */
	assert_int_equal(accepted, 7 * 40);
}

#define BIGGEST "{\"n\": 9223372036854775807}"
#define TOO_BIG "{\"n\": 9223372036854775808}"
#define HUGE_REAL "{\"n\": 1e309}"

/* Numbers: only those that can overflow are converted, with jansson's limits.
 */
static void
test_scanner_numbers(void **state)
{
	static const char *const nums[] = { "0", "-0", "123456789012345678",
		"-123456789012345678", "9223372036854775807",
		"9223372036854775808", "-9223372036854775808",
		"-9223372036854775809", "99999999999999999999", "1.5",
		"-0.25e-3", "1e308", "1e309", "-1E+400", "1e-400", "01", "1.",
		".5", "-", "1e", "1.7976931348623157e308" };
	char text[1024], digits[512];
	size_t i, n;

	(void)state;
	for (i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
		n = (size_t)snprintf(
		    text, sizeof(text), "{\"n\": %s}", nums[i]);
		agree(text, n);
	}
	/* a real with hundreds of digits and no exponent */
	for (i = 295; i < 315; i++) {
		memset(digits, '9', i);
		n = (size_t)snprintf(
		    text, sizeof(text), "{\"n\": %.*s.5}", (int)i, digits);
		agree(text, n);
	}
	assert_int_equal(agree(BIGGEST, strlen(BIGGEST)), 1);
	assert_int_equal(agree(TOO_BIG, strlen(TOO_BIG)), 0);
	assert_int_equal(agree(HUGE_REAL, strlen(HUGE_REAL)), 0);
}

static char cache_path[64];

static struct config *
cache_config(void)
{
	static struct config cfg;

	memset(&cfg, 0, sizeof(cfg));
	cfg.cache_file = cache_path;
	cfg.running_ttl = 180000;
	cfg.queued_ttl = 120000;
	cfg.running_status = "running";
	cfg.queued_status = "queued";
	cfg.error_status = "error";
	cfg.cache_action = CACHE_REMOVE;
	return &cfg;
}

/* A fresh, empty cache file at cache_path. */
static void
new_cache_file(void)
{
	snprintf(cache_path, sizeof(cache_path), "/tmp/limpeza-unit-XXXXXX");
	close(mkstemp(cache_path));
}

static void
write_file(const char *text)
{
	FILE *f = fopen(cache_path, "w");

	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static char *
read_file(void)
{
	static char buf[4096];
	FILE *f = fopen(cache_path, "r");
	size_t n;

	assert_non_null(f);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

/*
 * A job without a time is aged from the pass that first saw it, on the
 * monotonic clock: kept until its TTL has passed since then, whatever the
 * wall clock says, and a fresh start (a restart) gives it a new TTL.
 */
static void
test_first_sight(void **state)
{
	struct config *cfg = cache_config();
	struct cache *c = cache_new(), *c2;
	struct cache_result r;
	const char *text = "{\"new\": {\"status\": \"running\"}, "
			   "\"q\": {\"status\": \"queued\"}}";

	(void)state;
	log_stderr_only(LVL_ERROR, LOGF_TEXT, LANG_EN);
	new_cache_file();
	write_file(text);

	test_mono = 1000000;
	assert_int_equal(cache_reap(c, cfg, 0, 0, &r), 0);
	assert_int_equal(r.reaped_running + r.reaped_queued, 0);
	assert_int_equal(r.active, 2);

	test_now += 100000; /* the wall clock jumps: nothing changes */
	test_mono += 120000;
	assert_int_equal(cache_reap(c, cfg, 0, 0, &r), 0);
	assert_int_equal(r.reaped_running + r.reaped_queued, 0);
	assert_string_equal(read_file(), text);

	test_mono += 1; /* queued now past its 120 s */
	assert_int_equal(cache_reap(c, cfg, 0, 0, &r), 0);
	assert_int_equal(r.reaped_queued, 1);
	assert_int_equal(r.reaped_running, 0);
	assert_string_equal(
	    read_file(), "{\"new\": {\"status\": \"running\"}}");

	/* a restart forgets: the running job gets a whole TTL again */
	c2 = cache_new();
	test_mono += 60000;
	assert_int_equal(cache_reap(c2, cfg, 0, 0, &r), 0);
	assert_int_equal(r.reaped_running, 0);
	assert_int_equal(cache_reap(c, cfg, 0, 0, &r), 0);
	assert_int_equal(r.reaped_running, 1);
	assert_string_equal(read_file(), "{}");
	cache_free(c);
	cache_free(c2);
	unlink(cache_path);
}

/*
 * A repeated key keeps only its last member, as in jansson and Python,
 * escaped or not; the table that finds them must hold thousands.
 */
static void
test_duplicate_keys(void **state)
{
	struct config *cfg = cache_config();
	struct cache *c = cache_new();
	struct cache_result r;
	char *big, *p;
	int i;

	(void)state;
	new_cache_file();
	/* the stale job is the one that counts: reaped, both members go */
	write_file("{\"a\": {\"status\": \"done\"}, \"\\u0061\": {\"status\": "
		   "\"queued\", \"created_at\": 1}, \"b\": 2}");
	assert_int_equal(cache_reap(c, cfg, 0, 0, &r), 0);
	assert_int_equal(r.reaped_queued, 1);
	assert_string_equal(read_file(), "{\"b\": 2}");
	/* the stale job came first and was replaced: nothing to do */
	write_file("{\"a\": {\"status\": \"queued\", \"created_at\": 1}, "
		   "\"a\": {\"status\": \"done\"}}");
	assert_int_equal(cache_reap(c, cfg, 0, 0, &r), 0);
	assert_int_equal(r.reaped_queued, 0);
	assert_int_equal(r.rewritten, 0);

	/* 3,000 members, every key twice, the stale one always first */
	big = malloc(3000 * 64);
	assert_non_null(big);
	p = big + sprintf(big, "{");
	for (i = 0; i < 3000; i++)
		p += sprintf(p, "%s\"job%d\": {\"status\": \"%s\"%s}",
		    i ? ", " : "", i % 1500, i < 1500 ? "queued" : "done",
		    i < 1500 ? ", \"created_at\": 1" : "");
	sprintf(p, "}");
	write_file(big);
	assert_int_equal(cache_reap(c, cfg, 0, 0, &r), 0);
	assert_int_equal(r.reaped_queued, 0);
	assert_int_equal(r.active, 0);
	free(big);
	cache_free(c);
	unlink(cache_path);
}

/* The whole file at cache_path, malloc'ed. */
static char *
slurp(size_t *len)
{
	FILE *f = fopen(cache_path, "rb");
	char *buf = malloc(1 << 20);

	assert_non_null(f);
	assert_non_null(buf);
	*len = fread(buf, 1, (1 << 20) - 1, f);
	buf[*len] = '\0';
	fclose(f);
	return buf;
}

/*
 * The file is scanned through a window that slides and grows: wherever
 * it cuts a job (in a key, an escape, a number, between a value and its
 * comma), the pass decides and writes exactly what it does with the
 * whole file in view, in both actions.
 */
static void
test_window_cuts(void **state)
{
	struct config *cfg = cache_config();
	struct cache_result r;
	struct cache *c;
	char *text, *p, *want, *got;
	size_t w, len, wlen;
	int i, action;

	(void)state;
	log_stderr_only(LVL_ERROR, LOGF_TEXT, LANG_EN);
	new_cache_file();
	text = malloc(1 << 20);
	assert_non_null(text);
	p = text + sprintf(text, "{");
	for (i = 0; i < 60; i++)
		p += sprintf(p,
		    "%s\"j\\u00e9%d\" :\n{\"status\": \"%s\", "
		    "\"start_time\": %d.5e0, \"all\": [\"}{\\\"\", %d, "
		    "{\"x\": null}], \"n\": -0.25E+2}",
		    i ? (i % 7 ? ", " : " ,\n ") : "", i % 50,
		    i % 3 ? "done" : "running", i % 2 ? 1 : (int)test_now - 10,
		    i);
	sprintf(p, "}\n");
	for (action = CACHE_REMOVE; action <= CACHE_MARK; action++) {
		cfg->cache_action = action;
		want = NULL;
		wlen = 0;
		for (w = NWINDOWS; w-- > 0;) {
			write_file(text);
			cache_set_window(windows[w]);
			c = cache_new();
			assert_int_equal(cache_reap(c, cfg, 0, 0, &r), 0);
			cache_free(c);
			/* 20 running, 10 stale; two of them repeated later */
			assert_int_equal(r.reaped_running, 8);
			assert_int_equal(r.rewritten, 1);
			got = slurp(&len);
			if (want == NULL) {
				want = got;
				wlen = len;
				continue;
			}
			if (len != wlen || memcmp(got, want, len) != 0)
				fail_msg("window %zu wrote %.*s", windows[w],
				    (int)len, got);
			free(got);
		}
		free(want);
	}
	cache_set_window(0);
	free(text);
	unlink(cache_path);
}

/* mark mode keeps the job with status error and a message. */
static void
test_mark(void **state)
{
	struct config *cfg = cache_config();
	struct cache *c = cache_new();
	struct cache_result r;
	json_t *root, *job;
	char buf[256];

	(void)state;
	cfg->cache_action = CACHE_MARK;
	cfg->lang = LANG_PT;
	new_cache_file();
	snprintf(buf, sizeof(buf),
	    "{\"old\": {\"status\": \"running\", \"start_time\": %.2f, "
	    "\"count\": 4}, \"done\": {\"status\": \"done\"}}",
	    test_now - 500.25);
	write_file(buf);
	assert_int_equal(cache_reap(c, cfg, 0, 0, &r), 0);
	assert_int_equal(r.reaped_running, 1);
	root = json_loads(read_file(), 0, NULL);
	assert_non_null(root);
	job = json_object_get(root, "old");
	assert_string_equal(
	    json_string_value(json_object_get(job, "status")), "error");
	assert_string_equal(json_string_value(json_object_get(job, "error")),
	    "Job órfão - mais de 3 minutos");
	assert_int_equal(json_integer_value(json_object_get(job, "count")), 4);
	assert_true(json_real_value(json_object_get(job, "start_time")) ==
	    test_now - 500.25);
	assert_non_null(
	    strstr(read_file(), "\"done\": {\"status\": \"done\"}"));
	json_decref(root);
	/* marked jobs are no longer active: the next pass changes nothing */
	assert_int_equal(cache_reap(c, cfg, 0, 0, &r), 0);
	assert_int_equal(r.reaped_running, 0);
	assert_int_equal(r.rewritten, 0);
	cache_free(c);
	unlink(cache_path);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_iso8601),
		cmocka_unit_test(test_parse_time),
		cmocka_unit_test(test_decide),
		cmocka_unit_test(test_members),
		cmocka_unit_test(test_scanner_words),
		cmocka_unit_test(test_scanner_numbers),
		cmocka_unit_test(test_duplicate_keys),
		cmocka_unit_test(test_window_cuts),
		cmocka_unit_test(test_first_sight),
		cmocka_unit_test(test_mark),
	};

	setenv("TZ", "UTC", 1);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
