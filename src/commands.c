/* commands.c: what an operator runs by hand: check and stats. */

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mask.h"
#include "store.h"

/* Whether finished jobs leave the cache file, and why (SPEC §1.1). */
static void
check_retention(const struct config *cfg)
{
	char ret[32];

	config_format_duration(cfg->cache_retention, ret, sizeof(ret));
	switch (cache_retention_mode(cfg)) {
	case RETENTION_ROWS:
		printf(
		    "ok: cache retention %s: a finished job leaves the cache "
		    "file once its row in the database has been finished "
		    "for %s\n",
		    ret, ret);
		break;
	case RETENTION_FIRST_SIGHT:
		printf("ok: cache retention %s without a database "
		       "(LIMPEZA_CACHE_RETENTION set): a finished job leaves "
		       "the cache file %s after limpeza first saw it "
		       "finished\n",
		    ret, ret);
		break;
	case RETENTION_OFF:
		if (cfg->cache_retention == 0)
			printf(
			    "ok: cache retention off "
			    "(LIMPEZA_CACHE_RETENTION=0): finished jobs stay "
			    "in the cache file\n");
		else
			printf(
			    "ok: cache retention off: no database to "
			    "confirm finished jobs and LIMPEZA_CACHE_RETENTION "
			    "not set; finished jobs stay in the cache file\n");
		break;
	}
}

static int
check_cache(const struct config *cfg, struct store *store)
{
	struct cache_result cr;
	struct cache *c;
	struct stat st;
	char dir[4096], *slash;
	int rc;

	if (*cfg->cache_file == '\0') {
		printf("ok: cache step disabled\n");
		return 0;
	}
	snprintf(dir, sizeof(dir), "%s", cfg->cache_file);
	slash = strrchr(dir, '/');
	if (slash == NULL)
		strcpy(dir, ".");
	else if (slash == dir)
		slash[1] = '\0';
	else
		*slash = '\0';
	if (access(dir, W_OK) == -1) {
		printf("FAIL: cache directory %s: %s (the file cannot be "
		       "replaced)\n",
		    dir, strerror(errno));
		return -1;
	}
	if (lstat(cfg->cache_file, &st) == -1) {
		printf("warning: cache file %s: %s (it appears when the API "
		       "writes it)\n",
		    cfg->cache_file, strerror(errno));
		return 0;
	}
	c = cache_new();
	rc = cache_reap(c, cfg, store, 0, 1, &cr);
	cache_free(c);
	if (cr.lookup_failed) {
		printf("FAIL: cache file %s: retention cannot ask the database "
		       "about its %ld finished jobs: %s\n",
		    cfg->cache_file, cr.finished, store->err);
		return -1;
	}
	if (rc == -1) {
		printf("FAIL: cache file %s cannot be cleaned (see the error "
		       "above)\n",
		    cfg->cache_file);
		return -1;
	}
	printf("ok: cache file %s: %ld active jobs, %ld stale, %ld finished "
	       "(%ld past retention)\n",
	    cfg->cache_file, cr.active, cr.reaped_running + cr.reaped_queued,
	    cr.finished, cr.retired);
	return 0;
}

/*
 * The health URL, only when asked (--health): some APIs' health routes
 * write (Desfollow's marks every running job as an error and rewrites
 * its cache file), and check and stats are read-only. 0 answered, -1
 * failed, 1 disabled, 2 not asked.
 */
static int
check_health(const struct config *cfg, int asked, long long *jobs, char *err,
    size_t errlen)
{
	if (*cfg->health_url == '\0')
		return 1;
	if (!asked)
		return 2;
	return health_probe(cfg, jobs, err, errlen);
}

#define NOT_ASKED                                                         \
	"not asked (read-only: some APIs' health routes write; --health " \
	"asks it)"

/* `limpeza check`: is this configuration usable on this host right now? */
int
cmd_check(struct config *cfg, int health)
{
	struct store *s;
	long long jobs;
	char err[512], api[512];
	int failed = 0, i, r;

	printf("ok: configuration is valid\n");
	config_print(cfg, stdout);
	for (i = 0; i < cfg->nwarnings; i++)
		printf("warning: %s\n", cfg->warnings[i]);

	s = store_open(cfg);
	if (s == NULL)
		printf("warning: DATABASE_URL is not set: the database step is "
		       "skipped\n");
	else {
		fflush(stdout);
		if (s->ops->check(s, stdout) == -1) {
			printf("FAIL: database: %s\n", s->err);
			failed = 1;
		}
	}

	if (*cfg->cache_file != '\0')
		check_retention(cfg);
	if (check_cache(cfg, s) == -1)
		failed = 1;
	store_close(s);

	r = check_health(cfg, health, &jobs, err, sizeof(err));
	mask_http(cfg->health_url, 1, api, sizeof(api));
	if (r == 1)
		printf("ok: health check disabled\n");
	else if (r == 2)
		printf("ok: health URL %s " NOT_ASKED "\n", api);
	else if (r == 0)
		printf(
		    "ok: health URL %s answers: %lld jobs active\n", api, jobs);
	else {
		printf("FAIL: health URL %s: %s\n", api, err);
		failed = 1;
	}
	printf("%s\n", failed ? "check FAILED" : "check passed");
	return failed;
}

/* How retention works here, by enum cache_retention: stable words. */
static const char *const retention_names[] = { "off", "rows", "first_sight" };

/* An age in seconds: JSON has no infinity, so one that is not finite is
 * null. */
static json_t *
seconds_json(double secs)
{
	json_t *v = isfinite(secs) ? json_real(secs) : json_null();

	if (v == NULL)
		fatalx_oom();
	return v;
}

/* `limpeza stats`: jobs per status and what is active, for a person or a
 * script. */
int
cmd_stats(struct config *cfg, int as_json, int health)
{
	struct store_stats st = { NULL, 0, -1, -1, -1 };
	struct cache_result cr = { 0 };
	struct cache *c;
	struct store *s = NULL;
	json_t *out, *db, *ca, *api;
	json_error_t e1, e2, e3;
	long long jobs = 0;
	char err[512];
	int failed = 0, r;

	out = json_object();
	if (out == NULL || (st.by_status = json_object()) == NULL)
		fatalx_oom();

	if (*cfg->database_url == '\0')
		db = json_null();
	else if ((s = store_open(cfg)) == NULL || s->ops->stats(s, &st) == -1) {
		db = json_pack_ex(&e1, 0, "{s:o}", "error",
		    text_json(s != NULL ? s->err : ""));
		failed = 1;
	} else
		db = json_pack_ex(&e1, 0, "{s:s, s:O, s:I, s:o}", "store",
		    s->ops->name, "by_status_24h", st.by_status, "active",
		    (json_int_t)st.active, "oldest_active_s",
		    seconds_json(st.oldest_s));

	/* A dry pass: what retention would remove asks the store too. */
	c = cache_new();
	if (*cfg->cache_file == '\0')
		ca = json_null();
	else if (cache_reap(c, cfg, s, 0, 1, &cr) == -1) {
		ca = json_pack_ex(&e2, 0, "{s:o, s:s}", "path",
		    text_json(cfg->cache_file), "error",
		    cr.lookup_failed ? "retention cannot ask the database"
				     : "cannot read the cache file");
		failed = 1;
	} else
		ca = json_pack_ex(&e2, 0,
		    "{s:o, s:I, s:I, s:I, s:o, s:I, s:I, s:s}", "path",
		    text_json(cfg->cache_file), "size_bytes",
		    (json_int_t)cr.size, "active", (json_int_t)cr.active,
		    "stale",
		    (json_int_t)cr.reaped_running +
			(json_int_t)cr.reaped_queued,
		    "oldest_active_s", seconds_json(cr.oldest_s), "finished",
		    (json_int_t)cr.finished, "retention_would_remove",
		    (json_int_t)cr.retired, "retention",
		    retention_names[cache_retention_mode(cfg)]);
	cache_free(c);
	store_close(s);

	r = check_health(cfg, health, &jobs, err, sizeof(err));
	if (r == 1)
		api = json_null();
	else if (r == 2)
		api = json_pack("{s:b}", "asked", 0);
	else if (r == 0)
		api = json_pack_ex(
		    &e3, 0, "{s:I}", "jobs_active", (json_int_t)jobs);
	else {
		api = json_pack_ex(&e3, 0, "{s:o}", "error", text_json(err));
		failed = 1;
	}
	/* jansson fails here only on a bug of ours: said, never "out of
	 * memory". */
	if (db == NULL || ca == NULL || api == NULL) {
		fprintf(stderr, "limpeza: stats: cannot build the JSON: %s\n",
		    db == NULL	     ? e1.text
			: ca == NULL ? e2.text
				     : e3.text);
		json_decref(db);
		json_decref(ca);
		json_decref(api);
		json_decref(st.by_status);
		json_decref(out);
		return 1;
	}
	json_object_set_new(out, "database", db);
	json_object_set_new(out, "cache", ca);
	json_object_set_new(out, "api", api);

	if (as_json) {
		json_dumpf(out, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		putchar('\n');
	} else {
		char *by = json_dumps(json_object_get(db, "by_status_24h"),
		    JSON_COMPACT | JSON_PRESERVE_ORDER);

		if (json_is_null(db))
			printf("database: not configured\n");
		else if (json_object_get(db, "error") != NULL)
			printf("database: error: %s\n",
			    json_string_value(json_object_get(db, "error")));
		else
			printf("database (%s): jobs per status (24 h): %s\n"
			       "database: active jobs: %ld, oldest: %.0fs\n",
			    store_kind(cfg), by != NULL ? by : "{}", st.active,
			    st.oldest_s);
		free(by);
		if (json_is_null(ca))
			printf("cache: disabled\n");
		else if (json_object_get(ca, "error") != NULL)
			printf(
			    "cache: error: cannot read %s\n", cfg->cache_file);
		else
			printf("cache: active jobs: %ld (+%ld stale), oldest: "
			       "%.0fs\n"
			       "cache: %lld bytes, finished jobs: %ld, "
			       "retention (%s) would remove: %ld\n",
			    cr.active, cr.reaped_running + cr.reaped_queued,
			    cr.oldest_s, (long long)cr.size, cr.finished,
			    retention_names[cache_retention_mode(cfg)],
			    cr.retired);
		if (json_is_null(api))
			printf("api: health check disabled\n");
		else if (r == 2)
			printf("api: " NOT_ASKED "\n");
		else if (json_object_get(api, "error") != NULL)
			printf("api: error: %s\n",
			    json_string_value(json_object_get(api, "error")));
		else
			printf("api: %lld jobs active\n", jobs);
	}
	json_decref(st.by_status);
	json_decref(out);
	return failed;
}
