/* test_cache.c: job times, the reaper's decisions, first-sight ageing, whole
 * passes: windows, duplicates, opaque values, marks. */

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clock.h"
#include "store.h"

static const struct cache_policy pol = {
	.running_ttl = 180,
	.queued_ttl = 120,
};

static void
test_iso8601(void **state)
{
	double t;

	(void)state;
	/* main() sets TZ=UTC: a zone-less time is local, here UTC */
	assert_int_equal(jobtime_iso8601("2024-01-15T14:30:15", &t), 0);
	assert_true(t == 1705329015.0);
	assert_int_equal(jobtime_iso8601("2024-01-15 14:30:15Z", &t), 0);
	assert_true(t == 1705329015.0);
	assert_int_equal(jobtime_iso8601("2024-01-15T14:30:15.25", &t), 0);
	assert_true(t == 1705329015.25);
	assert_int_equal(jobtime_iso8601("2024-01-15T11:30:15-03:00", &t), 0);
	assert_true(t == 1705329015.0);
	assert_int_equal(jobtime_iso8601("2024-01-15T15:30:15+0100", &t), 0);
	assert_true(t == 1705329015.0);
	assert_int_equal(jobtime_iso8601("2024-01-15T17:30:15+03", &t), 0);
	assert_true(t == 1705329015.0);
	assert_int_equal(jobtime_iso8601("2024-01-15T14:30", &t), 0);
	assert_true(t == 1705329000.0);
	assert_int_equal(jobtime_iso8601("2024-01-15", &t), 0);
	assert_true(t == 1705276800.0);
	assert_int_equal(jobtime_iso8601("2024-02-29", &t), 0);
	/* what Python's fromisoformat() refuses too */
	assert_int_equal(jobtime_iso8601("2023-02-29", &t), -1);
	assert_int_equal(jobtime_iso8601("2024-13-01T00:00:00", &t), -1);
	assert_int_equal(jobtime_iso8601("2024-02-30T00:00:00", &t), -1);
	assert_int_equal(jobtime_iso8601("2024-01-15T25:00:00", &t), -1);
	assert_int_equal(jobtime_iso8601("2024-01-15T14:30:60", &t), -1);
	assert_int_equal(jobtime_iso8601("2024-01-15T14:30:15 junk", &t), -1);
	assert_int_equal(jobtime_iso8601("yesterday", &t), -1);
	assert_int_equal(jobtime_iso8601("", &t), -1);
}

/*
 * A time without a zone is the host's local time, as Python's
 * datetime.now().isoformat() writes it: in Sao Paulo (UTC-3, no summer
 * time since 2019) three hours later than the same digits in UTC, and in
 * Berlin one or two, by the date's own rules.
 */
static void
test_iso8601_local(void **state)
{
	double t;

	(void)state;
	setenv("TZ", "America/Sao_Paulo", 1);
	tzset();
	assert_int_equal(jobtime_iso8601("2024-01-15T11:30:15.5", &t), 0);
	assert_true(t == 1705329015.5);
	assert_int_equal(jobtime_iso8601("2024-01-15T11:30:15-03:00", &t), 0);
	assert_true(t == 1705329015.0);
	assert_int_equal(jobtime_iso8601("2024-01-15T14:30:15Z", &t), 0);
	assert_true(t == 1705329015.0);
	setenv("TZ", "Europe/Berlin", 1);
	tzset();
	assert_int_equal(jobtime_iso8601("2024-01-15T15:30:15", &t), 0);
	assert_true(t == 1705329015.0);
	assert_int_equal(jobtime_iso8601("2024-07-15T16:30:15", &t), 0);
	assert_true(t == 1721053815.0);
	/*
	 * When summer time ends the clock shows 01:30:30 twice: the later
	 * instant (EST, 06:30:30Z) is taken, whatever was parsed before, so a
	 * job written in the repeated hour never looks an hour older.
	 */
	setenv("TZ", "America/New_York", 1);
	tzset();
	assert_int_equal(jobtime_iso8601("2024-07-01T12:00:00", &t), 0);
	assert_int_equal(jobtime_iso8601("2024-11-03T01:30:30", &t), 0);
	assert_true(t == 1730615430.0);
	assert_int_equal(jobtime_iso8601("2024-12-01T12:00:00", &t), 0);
	assert_int_equal(jobtime_iso8601("2024-11-03T01:30:30", &t), 0);
	assert_true(t == 1730615430.0);
	setenv("TZ", "UTC", 1);
	tzset();
}

/* jobtime_parse() on the bytes of a JSON value. */
static int
parse(const char *json, double *t)
{
	return jobtime_parse(json, strlen(json), t);
}

static void
test_parse_time(void **state)
{
	double t;

	(void)state;
	assert_int_equal(parse("1732846215", &t), 0);
	assert_true(t == 1732846215.0);
	assert_int_equal(parse("1732846215.27", &t), 0);
	assert_true(t == 1732846215.27);
	assert_int_equal(parse("1.73284621527e9", &t), 0);
	assert_true(t == 1732846215.27);
	/* an uptime or a monotonic reading is no date: aged from first
	 * sight, not reaped at once as a job of 1970 */
	assert_int_equal(parse("5", &t), -1);
	assert_int_equal(parse("12345.6", &t), -1);
	assert_int_equal(parse("999999999", &t), -1);
	assert_int_equal(parse("1000000000", &t), 0);
	assert_int_equal(parse("\"2024-01-15T14:30:15Z\"", &t), 0);
	assert_true(t == 1705329015.0);
	assert_int_equal(parse("\"2024-01-15T14:30:15\\u005a\"", &t), 0);
	assert_true(t == 1705329015.0);
	assert_int_equal(parse("\"1732846215.5\"", &t), 0);
	assert_true(t == 1732846215.5);
	assert_int_equal(parse("\"1732846215\"", &t), 0);
	/* a long fraction is still a number */
	assert_int_equal(
	    parse("1732846215.0000000000000000000000000000000000000"
		  "00000000000000000000000000000000000001",
		&t),
	    0);
	assert_true(t == 1732846215.0);
	/* Missing, zero, negative, absurd or odd values are not times. */
	assert_int_equal(parse("", &t), -1);
	assert_int_equal(parse("0", &t), -1);
	assert_int_equal(parse("-5", &t), -1);
	assert_int_equal(parse("-0.0", &t), -1);
	assert_int_equal(parse("1e15", &t), -1);
	assert_int_equal(parse("1606938044258990275541962092341162602522202993"
			       "782792835301376",
			     &t),
	    -1);
	assert_int_equal(parse("1e400", &t), -1);
	assert_int_equal(parse("NaN", &t), -1);
	assert_int_equal(parse("Infinity", &t), -1);
	assert_int_equal(parse("-Infinity", &t), -1);
	assert_int_equal(parse("null", &t), -1);
	assert_int_equal(parse("true", &t), -1);
	assert_int_equal(parse("[1732846215]", &t), -1);
	assert_int_equal(parse("{\"t\": 1732846215}", &t), -1);
	assert_int_equal(parse("\"soon\"", &t), -1);
	assert_int_equal(parse("\"\"", &t), -1);
	assert_int_equal(parse("\"\\ud83d\"", &t), -1);
	assert_int_equal(parse("\" 1732846215\"", &t), -1);
	assert_int_equal(parse("\"0x1p30\"", &t), -1);
	assert_int_equal(parse("\"inf\"", &t), -1);
	assert_int_equal(parse("\"1e9\"", &t), -1);
	assert_int_equal(parse("\"1732846215.\"", &t), -1);
	assert_int_equal(parse("\"1732846215\\u0000\"", &t), -1);
}

static enum cache_fate
decide(enum job_state state, double start, double created,
    const struct cache_policy *p, double first_age)
{
	struct cache_job job = { state, start, created };
	double age;

	return cache_decide(&job, p, 1000000.0, first_age, &age);
}

static void
test_decide(void **state)
{
	struct cache_policy force = pol;

	(void)state;
	/* running: aged by start_time, strictly older than the TTL */
	assert_int_equal(decide(JOB_RUNNING, 999000, 0, &pol, 0), FATE_RUNNING);
	assert_int_equal(decide(JOB_RUNNING, 999820, 0, &pol, 0), FATE_KEEP);
	assert_int_equal(
	    decide(JOB_RUNNING, 999819.9, 0, &pol, 0), FATE_RUNNING);
	/* a future start_time is never stale */
	assert_int_equal(decide(JOB_RUNNING, 2000000, 0, &pol, 0), FATE_KEEP);
	/* running ignores created_at: without start_time, first sight counts */
	assert_int_equal(decide(JOB_RUNNING, 0, 1, &pol, 10), FATE_KEEP);
	assert_int_equal(decide(JOB_RUNNING, 0, 0, &pol, 180), FATE_KEEP);
	assert_int_equal(decide(JOB_RUNNING, 0, 0, &pol, 181), FATE_RUNNING);
	/* queued: start_time, else created_at, else first sight */
	assert_int_equal(decide(JOB_QUEUED, 0, 999890, &pol, 0), FATE_KEEP);
	assert_int_equal(decide(JOB_QUEUED, 0, 999890, &pol, 500), FATE_KEEP);
	assert_int_equal(decide(JOB_QUEUED, 0, 999879, &pol, 0), FATE_QUEUED);
	assert_int_equal(decide(JOB_QUEUED, 999990, 1, &pol, 0), FATE_KEEP);
	assert_int_equal(decide(JOB_QUEUED, 0, 0, &pol, 121), FATE_QUEUED);
	/* other statuses and shapes are left alone */
	assert_int_equal(decide(JOB_OTHER, 1, 1, &pol, 9999), FATE_KEEP);

	/* forced: all active jobs; others only with FORCE_CACHE=all */
	force.force = 1;
	assert_int_equal(
	    decide(JOB_RUNNING, 999999, 0, &force, 0), FATE_FORCED);
	assert_int_equal(decide(JOB_OTHER, 0, 0, &force, 0), FATE_KEEP);
	force.force_all = 1;
	assert_int_equal(decide(JOB_OTHER, 0, 0, &force, 0), FATE_FORCED);
	/* FORCE_MIN_AGE spares young jobs */
	force.force_min_age = 100;
	assert_int_equal(decide(JOB_RUNNING, 999950, 0, &force, 0), FATE_KEEP);
	assert_int_equal(
	    decide(JOB_RUNNING, 999800, 0, &force, 0), FATE_FORCED);
	assert_int_equal(decide(JOB_QUEUED, 0, 0, &force, 5), FATE_KEEP);
}

/*
 * A finished job leaves only when strictly older than the retention, by
 * the age it is given (its row's, or first sight's); an unknown age
 * (< 0) or a retention of 0 keeps it; a forced cleanup takes finished
 * jobs only with FORCE_CACHE=all, and never for retention.
 */
static void
test_decide_retention(void **state)
{
	struct cache_policy p = pol;

	(void)state;
	p.retention = 3600;
	assert_int_equal(decide(JOB_DONE, 0, 0, &p, 3600.5), FATE_RETIRED);
	assert_int_equal(decide(JOB_ERROR, 0, 0, &p, 3600.5), FATE_RETIRED);
	assert_int_equal(decide(JOB_DONE, 0, 0, &p, 3600), FATE_KEEP);
	assert_int_equal(decide(JOB_DONE, 0, 0, &p, -1), FATE_KEEP);
	/* its own times say nothing about when it finished */
	assert_int_equal(decide(JOB_DONE, 1, 1, &p, 10), FATE_KEEP);
	assert_int_equal(decide(JOB_OTHER, 0, 0, &p, 99999), FATE_KEEP);
	p.retention = 0;
	assert_int_equal(decide(JOB_DONE, 0, 0, &p, 99999), FATE_KEEP);
	p.retention = 3600;
	p.force = 1;
	assert_int_equal(decide(JOB_DONE, 0, 0, &p, 99999), FATE_KEEP);
	p.force_all = 1;
	assert_int_equal(decide(JOB_ERROR, 0, 0, &p, 0), FATE_FORCED);
}

/* Windows that cut the text everywhere, and the default one. */
static const size_t windows[] = { 1, 2, 3, 5, 8, 13, 64, 0 };
#define NWINDOWS (sizeof(windows) / sizeof(windows[0]))

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
	assert_int_equal(cache_reap(c, cfg, NULL, 0, 0, &r), 0);
	assert_int_equal(r.reaped_running + r.reaped_queued, 0);
	assert_int_equal(r.active, 2);

	test_now += 100000; /* the wall clock jumps: nothing changes */
	test_mono += 120000;
	assert_int_equal(cache_reap(c, cfg, NULL, 0, 0, &r), 0);
	assert_int_equal(r.reaped_running + r.reaped_queued, 0);
	assert_string_equal(read_file(), text);

	test_mono += 1; /* queued now past its 120 s */
	assert_int_equal(cache_reap(c, cfg, NULL, 0, 0, &r), 0);
	assert_int_equal(r.reaped_queued, 1);
	assert_int_equal(r.reaped_running, 0);
	assert_string_equal(
	    read_file(), "{\"new\": {\"status\": \"running\"}}");

	/* a restart forgets: the running job gets a whole TTL again */
	c2 = cache_new();
	test_mono += 60000;
	assert_int_equal(cache_reap(c2, cfg, NULL, 0, 0, &r), 0);
	assert_int_equal(r.reaped_running, 0);
	assert_int_equal(cache_reap(c, cfg, NULL, 0, 0, &r), 0);
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
		   "\"queued\", \"created_at\": 1000000000}, \"b\": 2}");
	assert_int_equal(cache_reap(c, cfg, NULL, 0, 0, &r), 0);
	assert_int_equal(r.reaped_queued, 1);
	assert_string_equal(read_file(), "{\"b\": 2}");
	/* the stale job came first and was replaced: nothing to do */
	write_file(
	    "{\"a\": {\"status\": \"queued\", \"created_at\": 1000000000}, "
	    "\"a\": {\"status\": \"done\"}}");
	assert_int_equal(cache_reap(c, cfg, NULL, 0, 0, &r), 0);
	assert_int_equal(r.reaped_queued, 0);
	assert_int_equal(r.rewritten, 0);

	/* 3,000 members, every key twice, the stale one always first */
	big = malloc(3000 * 64);
	assert_non_null(big);
	p = big + sprintf(big, "{");
	for (i = 0; i < 3000; i++)
		p += sprintf(p, "%s\"job%d\": {\"status\": \"%s\"%s}",
		    i ? ", " : "", i % 1500, i < 1500 ? "queued" : "done",
		    i < 1500 ? ", \"created_at\": 1000000000" : "");
	sprintf(p, "}");
	write_file(big);
	assert_int_equal(cache_reap(c, cfg, NULL, 0, 0, &r), 0);
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

#define MARK_RUNNING                                                           \
	"\"status\": \"error\", \"error\": \"Job \\u00F3rf\\u00E3o - mais de " \
	"3 minutos\""

/*
 * The file is scanned through a window that slides and grows: wherever
 * it cuts a job (in a key, an escape, a number, between a value and its
 * comma), the pass writes exactly the expected text, in both actions:
 * the kept members byte for byte, each with the separator that followed
 * it, the marked ones with their status spliced.
 */
static void
test_window_cuts(void **state)
{
	struct config *cfg = cache_config();
	struct cache_result r;
	struct cache *c;
	char *text, *want[2], *p, *q[2], *got, member[256];
	const char *sep;
	size_t w, len;
	int i, action, stale, last;

	(void)state;
	log_stderr_only(LVL_ERROR, LOGF_TEXT, LANG_EN);
	new_cache_file();
	text = malloc(1 << 20);
	want[0] = malloc(1 << 20);
	want[1] = malloc(1 << 20);
	assert_non_null(text);
	assert_non_null(want[0]);
	assert_non_null(want[1]);
	p = text + sprintf(text, "{");
	q[0] = want[0] + sprintf(want[0], "{");
	q[1] = want[1] + sprintf(want[1], "{");
	/*
	 * 60 jobs, ids j\u00e90..j\u00e949 and again j\u00e90..j\u00e99:
	 * the first ten are replaced by their repeats, so they go. Every
	 * third job runs, every other one since 2001: stale.
	 */
	for (i = 0; i < 60; i++) {
		sep = i % 7 ? ", " : " ,\n ";
		stale = i % 3 == 0 && i % 2 == 1;
		snprintf(member, sizeof(member),
		    "\"j\\u00e9%d\" :\n{\"status\": \"%s\", "
		    "\"start_time\": %d.5e0, \"all\": [\"}{\\\"\", %d, "
		    "{\"x\": null}], \"n\": -0.25E+2}",
		    i % 50, i % 3 ? "done" : "running",
		    i % 2 ? 1000000000 : (int)test_now - 10, i);
		p += sprintf(p, "%s%s", i ? sep : "", member);
		if (i < 10)
			continue;
		/* the separator that followed the last member written */
		last = i == 10 ? -1 : i - 1;
		while (last >= 10 && last % 3 == 0 && last % 2 == 1)
			last--;
		if (!stale)
			q[0] += sprintf(q[0], "%s%s",
			    last < 10		 ? ""
				: (last + 1) % 7 ? ", "
						 : " ,\n ",
			    member);
		q[1] += sprintf(q[1], "%s", i > 10 ? sep : "");
		if (stale) {
			char *at = strstr(member, "\"status\": \"running\"");

			assert_non_null(at);
			q[1] += sprintf(q[1], "%.*s%s%s", (int)(at - member),
			    member, MARK_RUNNING,
			    at + strlen("\"status\": \"running\""));
		} else
			q[1] += sprintf(q[1], "%s", member);
	}
	sprintf(p, "}\n");
	sprintf(q[0], "}\n");
	sprintf(q[1], "}\n");
	for (action = CACHE_REMOVE; action <= CACHE_MARK; action++) {
		cfg->cache_action = action;
		for (w = 0; w < NWINDOWS; w++) {
			write_file(text);
			cache_set_window(windows[w]);
			c = cache_new();
			assert_int_equal(cache_reap(c, cfg, NULL, 0, 0, &r), 0);
			cache_free(c);
			/* 20 running, 10 stale, two of those replaced */
			assert_int_equal(r.reaped_running, 8);
			assert_int_equal(r.rewritten, 1);
			got = slurp(&len);
			if (len != strlen(want[action]) ||
			    memcmp(got, want[action], len) != 0)
				fail_msg("window %zu, action %d wrote\n%.*s\n"
					 "instead of\n%s",
				    windows[w], action, (int)len, got,
				    want[action]);
			free(got);
		}
	}
	cache_set_window(0);
	free(text);
	free(want[0]);
	free(want[1]);
	unlink(cache_path);
}

/*
 * What Python writes and jansson refuses stays opaque: NaN, Infinity,
 * integers past 64 bits, lone surrogates, ensure_ascii=False text, any
 * separators. The stale job goes; the rest is the file byte for byte.
 */
static void
test_opaque_values(void **state)
{
	struct config *cfg = cache_config();
	struct cache *c = cache_new();
	struct cache_result r;
	char buf[1024];

	(void)state;
	new_cache_file();
	snprintf(buf, sizeof(buf),
	    "{\n\t\"d\":{\"status\":\"done\",\"n\":[NaN,Infinity,-Infinity,"
	    "1606938044258990275541962092341162602522202993782792835301376,"
	    "1e400]} ,\r\n\"\\ud83d\" : {\"status\" : \"running\", "
	    "\"start_time\" : NaN, \"name\": \"Jo\xc3\xa3o \\ud83d\"},"
	    "\"old\": {\"status\": \"running\", \"start_time\": %.0f, "
	    "\"x\": -Infinity},\"q\":{\"status\":\"queued\","
	    "\"created_at\":Infinity}\n}\n",
	    test_now - 999);
	write_file(buf);
	assert_int_equal(cache_reap(c, cfg, NULL, 0, 0, &r), 0);
	assert_int_equal(r.reaped_running, 1);
	assert_int_equal(r.active, 2);
	assert_string_equal(read_file(),
	    "{\n\t\"d\":{\"status\":\"done\",\"n\":[NaN,Infinity,-Infinity,"
	    "1606938044258990275541962092341162602522202993782792835301376,"
	    "1e400]} ,\r\n\"\\ud83d\" : {\"status\" : \"running\", "
	    "\"start_time\" : NaN, \"name\": \"Jo\xc3\xa3o \\ud83d\"},"
	    "\"q\":{\"status\":\"queued\",\"created_at\":Infinity}\n}\n");
	cache_free(c);
	unlink(cache_path);
}

/*
 * Mark mode splices "status": "error" and the message into the job's own
 * bytes: everything else in it stays (a NaN too), an "error" member the
 * job had after its status is the one set, and fresh active jobs are
 * kept as they are.
 */
static void
test_mark(void **state)
{
	struct config *cfg = cache_config();
	struct cache *c = cache_new();
	struct cache_result r;
	char buf[1024], want[1024];

	(void)state;
	cfg->cache_action = CACHE_MARK;
	cfg->lang = LANG_PT;
	new_cache_file();
	snprintf(buf, sizeof(buf),
	    "{\"old\": {\"status\": \"running\", \"start_time\": %.2f, "
	    "\"count\": NaN}, \"fresh\": {\"status\": \"running\", "
	    "\"start_time\": %.2f}, \"new-q\": {\"status\": \"queued\"}, "
	    "\"q\":{\"error\":null,\"status\":\"queued\",\"created_at\":"
	    "1000000000,"
	    "\"error\":0,\"status\":\"queued\",\"error\":[1]}, "
	    "\"done\": {\"status\": \"done\"}}",
	    test_now - 500.25, test_now - 5);
	snprintf(want, sizeof(want),
	    "{\"old\": {%s, \"start_time\": %.2f, \"count\": NaN}, "
	    "\"fresh\": {\"status\": \"running\", \"start_time\": %.2f}, "
	    "\"new-q\": {\"status\": \"queued\"}, "
	    "\"q\":{\"error\":null,\"status\":\"queued\",\"created_at\":"
	    "1000000000,"
	    "\"error\":0,\"status\":\"error\",\"error\":\"Job queued expirado "
	    "- mais de 2 minutos\"}, \"done\": {\"status\": \"done\"}}",
	    MARK_RUNNING, test_now - 500.25, test_now - 5);
	write_file(buf);
	assert_int_equal(cache_reap(c, cfg, NULL, 0, 0, &r), 0);
	assert_int_equal(r.reaped_running, 1);
	assert_int_equal(r.reaped_queued, 1);
	assert_string_equal(read_file(), want);
	/* marked jobs are no longer active: the next pass changes nothing */
	assert_int_equal(cache_reap(c, cfg, NULL, 0, 0, &r), 0);
	assert_int_equal(r.reaped_running + r.reaped_queued, 0);
	assert_int_equal(r.rewritten, 0);
	assert_int_equal(r.active, 2);
	cache_free(c);
	unlink(cache_path);
}

/*
 * A store whose rows the test sets: for each id, no row, an open row, or
 * a row finished at a time of the test's monotonic clock, which is then
 * the store's clock; it counts the look-ups, and can be down.
 */
struct fake_row {
	const char *id;
	enum row_state state;
	long long finished_at; /* test_mono ms */
};
static struct fake_row fake_rows[8];
static int fake_lookups, fake_down;

static int
fake_finished(struct store *s, struct store_row *rows, size_t n)
{
	size_t i, k;

	fake_lookups++;
	if (fake_down) {
		store_err(s, "connection refused");
		return -1;
	}
	for (i = 0; i < n; i++) {
		rows[i].state = ROW_NONE;
		for (k = 0; k < 8 && fake_rows[k].id != NULL; k++) {
			if (strlen(fake_rows[k].id) != rows[i].idlen ||
			    memcmp(fake_rows[k].id, rows[i].id,
				rows[i].idlen) != 0)
				continue;
			rows[i].state = fake_rows[k].state;
			rows[i].age_s =
			    (double)(test_mono - fake_rows[k].finished_at) /
			    MS_PER_S;
		}
	}
	return 0;
}

static const struct store_ops fake_ops = { .name = "fake",
	.finished = fake_finished };

static void
fake_row(int k, const char *id, enum row_state st, long long finished_at)
{
	fake_rows[k].id = id;
	fake_rows[k].state = st;
	fake_rows[k].finished_at = finished_at;
}

/*
 * The set-up of the retention tests: a database configured (the fake
 * store answers), retention ms, a fresh cache file holding text.
 */
static void
retention_setup(struct config *cfg, long long retention, const char *text)
{
	log_stderr_only(LVL_ERROR, LOGF_TEXT, LANG_EN);
	cfg->database_url = "sqlite:///fake.db";
	cfg->cache_retention = retention;
	new_cache_file();
	write_file(text);
	memset(fake_rows, 0, sizeof(fake_rows));
	fake_lookups = fake_down = 0;
}

/*
 * With a database, a finished job leaves once its row has been finished
 * for longer than the retention, by the store's clock: not before, and
 * not when the row is missing or still open. The unchanged file is not
 * read again until something is due: a young row's retention end (then
 * exactly), or a retention after the last look for a job the store could
 * not yet vouch for, which still leaves on time.
 */
static void
test_retention_rows(void **state)
{
	struct config *cfg = cache_config();
	struct store st = { &fake_ops, cfg, "", 0, 0 };
	struct cache *c = cache_new();
	struct cache_result r;
	long long t0;

	(void)state;
	retention_setup(cfg, 3600000,
	    "{\"old\": {\"status\": \"done\"}, \"young\": {\"status\": "
	    "\"error\"}, \"norow\": {\"status\": \"done\"}, \"open\": "
	    "{\"status\": \"done\"}, \"q\": {\"status\": \"queued\"}}");
	t0 = test_mono = 100000000;
	fake_row(0, "old", ROW_FINISHED, t0 - 3600001);
	fake_row(1, "young", ROW_FINISHED, t0 - 100000);
	fake_row(2, "open", ROW_OPEN, 0);

	assert_int_equal(cache_reap(c, cfg, &st, 0, 0, &r), 0);
	assert_int_equal(fake_lookups, 1);
	assert_int_equal(r.finished, 4);
	assert_int_equal(r.retired, 1);
	assert_int_equal(r.reaped_queued, 0);
	assert_string_equal(read_file(),
	    "{\"young\": {\"status\": \"error\"}, \"norow\": {\"status\": "
	    "\"done\"}, \"open\": {\"status\": \"done\"}, \"q\": "
	    "{\"status\": \"queued\"}}");
	/* due: the queued job (120 s of first sight) comes first */
	assert_int_equal(cache_next_due(c), t0 + 120000);

	/* the queued job goes; then the young row's end is the next due */
	write_file("{\"young\": {\"status\": \"error\"}, \"norow\": "
		   "{\"status\": \"done\"}, \"open\": {\"status\": "
		   "\"done\"}}");
	assert_int_equal(cache_reap(c, cfg, &st, 0, 0, &r), 0);
	assert_int_equal(fake_lookups, 2);
	assert_int_equal(cache_next_due(c), t0 + 3500000);

	/* unchanged, nothing due: not read, the store not asked */
	test_mono = t0 + 3499999;
	assert_int_equal(cache_reap(c, cfg, &st, 0, 0, &r), 0);
	assert_int_equal(fake_lookups, 2);
	assert_int_equal(r.finished, 3);

	/* the rows of "norow" and "open" finish meanwhile: still young */
	fake_row(2, "open", ROW_FINISHED, t0 + 3000000);
	fake_row(3, "norow", ROW_FINISHED, t0 + 3400000);
	test_mono = t0 + 3500001;
	assert_int_equal(cache_reap(c, cfg, &st, 0, 0, &r), 0);
	assert_int_equal(fake_lookups, 3);
	assert_int_equal(r.retired, 1);
	assert_string_equal(read_file(),
	    "{\"norow\": {\"status\": \"done\"}, \"open\": {\"status\": "
	    "\"done\"}}");
	/* each leaves exactly when its row's retention ends */
	assert_int_equal(cache_next_due(c), t0 + 3000000 + 3600000);
	test_mono = t0 + 6600001;
	assert_int_equal(cache_reap(c, cfg, &st, 0, 0, &r), 0);
	assert_int_equal(r.retired, 1);
	assert_string_equal(read_file(), "{\"norow\": {\"status\": \"done\"}}");
	assert_int_equal(cache_next_due(c), t0 + 3400000 + 3600000);
	test_mono = t0 + 7000001;
	assert_int_equal(cache_reap(c, cfg, &st, 0, 0, &r), 0);
	assert_string_equal(read_file(), "{}");
	assert_int_equal(cache_next_due(c), LLONG_MAX);
	cache_free(c);
	unlink(cache_path);
}

/*
 * A job without a row, and one whose row is still open, are looked up
 * again a retention after the last look, not sooner (an unchanged file
 * is not read every cycle for them) and not never: a row that finishes
 * before that look still gets its whole retention and no more.
 */
static void
test_retention_pending(void **state)
{
	struct config *cfg = cache_config();
	struct store st = { &fake_ops, cfg, "", 0, 0 };
	struct cache *c = cache_new();
	struct cache_result r;
	long long t0;

	(void)state;
	retention_setup(cfg, 600000, "{\"a\": {\"status\": \"done\"}}");
	t0 = test_mono = 200000000;
	assert_int_equal(cache_reap(c, cfg, &st, 0, 0, &r), 0);
	assert_int_equal(fake_lookups, 1);
	assert_int_equal(cache_next_due(c), t0 + 600000);
	/* its row appears and finishes; until the look-up, not read */
	fake_row(0, "a", ROW_FINISHED, t0 + 1000);
	test_mono = t0 + 599999;
	assert_int_equal(cache_reap(c, cfg, &st, 0, 0, &r), 0);
	assert_int_equal(fake_lookups, 1);
	test_mono = t0 + 600000;
	assert_int_equal(cache_reap(c, cfg, &st, 0, 0, &r), 0);
	assert_int_equal(fake_lookups, 2);
	assert_int_equal(r.retired, 0);
	assert_int_equal(cache_next_due(c), t0 + 601000);
	test_mono = t0 + 601001;
	assert_int_equal(cache_reap(c, cfg, &st, 0, 0, &r), 0);
	assert_int_equal(r.retired, 1);
	assert_string_equal(read_file(), "{}");

	/*
	 * a store that cannot answer: nothing leaves, the step fails, and
	 * the next pass reads the file and asks again
	 */
	write_file("{\"a\": {\"status\": \"done\"}}");
	fake_down = 1;
	assert_int_equal(cache_reap(c, cfg, &st, 0, 0, &r), -1);
	assert_int_equal(r.lookup_failed, 1);
	assert_int_equal(r.retired, 0);
	assert_string_equal(read_file(), "{\"a\": {\"status\": \"done\"}}");
	assert_true(cache_next_due(c) == LLONG_MAX);
	fake_down = 0;
	assert_int_equal(cache_reap(c, cfg, &st, 0, 0, &r), 0);
	assert_int_equal(r.lookup_failed, 0);
	assert_int_equal(r.retired, 1);
	cache_free(c);
	unlink(cache_path);
}

/*
 * Without a database, retention applies only when it was set: a finished
 * job then leaves once limpeza has seen it finished for longer (first
 * sight, on the monotonic clock; a restart starts again), and the file
 * is due exactly then. Left at its default, nothing leaves, ever.
 */
static void
test_retention_first_sight(void **state)
{
	struct config *cfg = cache_config();
	struct cache *c = cache_new(), *c2;
	struct cache_result r;
	long long t0;

	(void)state;
	log_stderr_only(LVL_ERROR, LOGF_TEXT, LANG_EN);
	cfg->cache_retention = 10000;
	new_cache_file();
	write_file("{\"d\": {\"status\": \"done\"}, \"e\": {\"status\": "
		   "\"error\"}, \"x\": {\"status\": \"other\"}}");

	/* not set explicitly: no first-sight ageing at all */
	t0 = test_mono = 300000000;
	assert_int_equal(cache_retention_mode(cfg), RETENTION_OFF);
	assert_int_equal(cache_reap(c, cfg, NULL, 0, 0, &r), 0);
	assert_int_equal(cache_next_due(c), LLONG_MAX);
	test_mono += 86400000;
	cache_invalidate(c);
	assert_int_equal(cache_reap(c, cfg, NULL, 0, 0, &r), 0);
	assert_int_equal(r.retired, 0);
	assert_int_equal(r.finished, 2);

	cfg->cache_retention_set = 1;
	assert_int_equal(cache_retention_mode(cfg), RETENTION_FIRST_SIGHT);
	cache_invalidate(c);
	t0 = test_mono;
	assert_int_equal(cache_reap(c, cfg, NULL, 0, 0, &r), 0);
	assert_int_equal(r.retired, 0);
	assert_int_equal(cache_next_due(c), t0 + 10000);
	test_mono = t0 + 10000;
	assert_int_equal(cache_reap(c, cfg, NULL, 0, 0, &r), 0);
	assert_int_equal(r.retired, 0);
	/* a restart forgets: the job gets its whole retention again */
	c2 = cache_new();
	assert_int_equal(cache_reap(c2, cfg, NULL, 0, 0, &r), 0);
	test_mono = t0 + 10001;
	assert_int_equal(cache_reap(c, cfg, NULL, 0, 0, &r), 0);
	assert_int_equal(r.retired, 2);
	assert_string_equal(read_file(), "{\"x\": {\"status\": \"other\"}}");
	write_file("{\"d\": {\"status\": \"done\"}}");
	assert_int_equal(cache_reap(c2, cfg, NULL, 0, 0, &r), 0);
	assert_int_equal(r.retired, 0);
	cache_free(c);
	cache_free(c2);
	unlink(cache_path);
}

/*
 * A forced cleanup between two passes keeps the first-sight clocks of the
 * finished jobs it leaves in place: they still leave a retention after
 * limpeza first saw them, not a retention after the forced pass.
 */
static void
test_forced_pass_keeps_first_sight_clocks(void **state)
{
	struct config *cfg = cache_config();
	struct cache *c = cache_new();
	struct cache_result r;
	long long t0;

	(void)state;
	log_stderr_only(LVL_ERROR, LOGF_TEXT, LANG_EN);
	cfg->cache_retention = 10000;
	cfg->cache_retention_set = 1;
	cfg->force_cache = FORCE_ACTIVE;
	new_cache_file();
	write_file("{\"d\": {\"status\": \"done\"}, \"x\": {\"status\": "
		   "\"other\"}}");
	t0 = test_mono = 500000000;
	assert_int_equal(cache_reap(c, cfg, NULL, 0, 0, &r), 0);
	assert_int_equal(r.retired, 0);
	test_mono = t0 + 5000;
	assert_int_equal(cache_reap(c, cfg, NULL, 1, 0, &r), 0);
	assert_int_equal(r.retired, 0);
	assert_int_equal(r.finished, 1);
	test_mono = t0 + 10001;
	cache_invalidate(c);
	assert_int_equal(cache_reap(c, cfg, NULL, 0, 0, &r), 0);
	assert_int_equal(r.retired, 1);
	assert_string_equal(read_file(), "{\"x\": {\"status\": \"other\"}}");
	cache_free(c);
	unlink(cache_path);
}

/*
 * Retention removes in mark mode too (a finished job is not marked), and
 * a dry run only counts what it would remove.
 */
static void
test_retention_mark_and_dry_run(void **state)
{
	struct config *cfg = cache_config();
	struct store st = { &fake_ops, cfg, "", 0, 0 };
	struct cache *c = cache_new();
	struct cache_result r;
	const char *text = "{\"old\": {\"status\": \"done\", \"n\": NaN}, "
			   "\"keep\": {\"status\": \"done\"}}";

	(void)state;
	cfg->cache_action = CACHE_MARK;
	retention_setup(cfg, 1000, text);
	test_mono = 400000000;
	fake_row(0, "old", ROW_FINISHED, test_mono - 5000);
	assert_int_equal(cache_reap(c, cfg, &st, 0, 1, &r), 0);
	assert_int_equal(r.retired, 1);
	assert_int_equal(r.rewritten, 0);
	assert_string_equal(read_file(), text);
	assert_int_equal(cache_reap(c, cfg, &st, 0, 0, &r), 0);
	assert_int_equal(r.retired, 1);
	assert_string_equal(read_file(), "{\"keep\": {\"status\": \"done\"}}");
	cache_free(c);
	unlink(cache_path);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_iso8601),
		cmocka_unit_test(test_iso8601_local),
		cmocka_unit_test(test_parse_time),
		cmocka_unit_test(test_decide),
		cmocka_unit_test(test_duplicate_keys),
		cmocka_unit_test(test_window_cuts),
		cmocka_unit_test(test_opaque_values),
		cmocka_unit_test(test_first_sight),
		cmocka_unit_test(test_mark),
		cmocka_unit_test(test_decide_retention),
		cmocka_unit_test(test_retention_rows),
		cmocka_unit_test(test_retention_pending),
		cmocka_unit_test(test_retention_first_sight),
		cmocka_unit_test(test_forced_pass_keeps_first_sight_clocks),
		cmocka_unit_test(test_retention_mark_and_dry_run),
	};

	setenv("TZ", "UTC", 1);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
