/* main.c: command line, start-up, daemon loop, signals, check, stats. */

#include <errno.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#define notify(...) sd_notifyf(0, __VA_ARGS__)
#else
#define notify(...) ((void)0)
#define sd_watchdog_enabled(u, p) 0
#endif

#include "store.h"

enum command { CMD_RUN, CMD_ONCE, CMD_CHECK, CMD_STATS };

/* Deadline wake-ups between cycles are at least this far apart. */
#define DUE_SPACING_MS 250

static volatile sig_atomic_t sig_stop;
static volatile sig_atomic_t sig_reload;
static volatile sig_atomic_t sig_cycle;

double
now_realtime(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

long long
now_monotonic_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * MS_PER_S + ts.tv_nsec / 1000000;
}

static void
on_signal(int sig)
{
	if (sig == SIGTERM || sig == SIGINT)
		sig_stop = 1;
	else if (sig == SIGHUP)
		sig_reload = 1;
	else if (sig == SIGUSR1)
		sig_cycle = 1;
}

static void
usage_error(const char *fmt, const char *arg)
{
	fprintf(stderr, "limpeza: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "; see limpeza --help\n");
	exit(2);
}

static void
log_startup(const struct config *cfg)
{
	char rt[32], iv[32], db[512];
	int i;

	config_format_duration(cfg->running_ttl, rt, sizeof(rt));
	config_format_duration(cfg->interval, iv, sizeof(iv));
	config_mask_url(cfg->database_url, db, sizeof(db));
	log_event(LVL_INFO, EV_START);
	log_event(LVL_INFO, EV_CONFIG, rt, iv);
	log_event(LVL_INFO, EV_CONFIG_DETAIL,
	    *cfg->cache_file != '\0' ? cfg->cache_file : "-",
	    *db != '\0' ? db : "-",
	    *cfg->health_url != '\0' ? cfg->health_url : "-");
	for (i = 0; i < cfg->nwarnings; i++)
		log_event(LVL_WARNING, EV_CONFIG_WARNING, cfg->warnings[i]);
	if (*cfg->database_url == '\0')
		log_event(LVL_WARNING, EV_NO_DATABASE);
}

/* Metrics and alerts follow the settings; a failure to listen is logged. */
static void
start_services(const struct config *cfg)
{
	char err[256];

	if (metrics_start(cfg->metrics_addr, err, sizeof(err)) == -1)
		log_event(LVL_ERROR, EV_METRICS_ERROR, err);
	if (alert_start(cfg->alert_webhook) == -1)
		log_event(
		    LVL_WARNING, EV_ALERT_FAILED, "cannot start a thread");
}

/*
 * SIGHUP: settings are read again from the same sources. A bad new
 * configuration is refused with one line and the old one stays in force;
 * the log file is reopened either way (logrotate relies on it).
 */
static struct config *
reload(struct config *cfg, const struct config_args *args, struct cycle *cy)
{
	struct config *ncfg;
	struct timespec ts;
	char err[512];
	int i;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	notify("RELOADING=1\nMONOTONIC_USEC=%llu",
	    (unsigned long long)ts.tv_sec * 1000000ULL +
		(unsigned long long)ts.tv_nsec / 1000ULL);
	ncfg = calloc(1, sizeof(*ncfg));
	if (ncfg == NULL)
		fatalx_oom();
	if (config_load(ncfg, args, err, sizeof(err)) == -1) {
		free(ncfg);
		log_reopen();
		log_event(LVL_ERROR, EV_RELOAD_FAILED, err);
		notify("READY=1");
		return cfg;
	}
	log_setup(ncfg);
	cycle_set_config(cy, ncfg);
	config_free(cfg);
	free(cfg);
	log_event(LVL_INFO, EV_RELOAD);
	for (i = 0; i < ncfg->nwarnings; i++)
		log_event(LVL_WARNING, EV_CONFIG_WARNING, ncfg->warnings[i]);
	start_services(ncfg);
	notify("READY=1");
	return ncfg;
}

/*
 * The daemon loop. Signals are blocked except while waiting in ppoll(),
 * so a signal that arrives just before the wait still ends it at once.
 * Cycles are scheduled on the monotonic clock: interval after the start
 * of a good cycle, error backoff after the end of a failed one. The
 * watchdog is fed on every pass of the loop, so systemd restarts the
 * daemon only when the loop itself is stuck.
 */
static int
cmd_run(struct config *cfg, const struct config_args *args)
{
	struct sigaction sa;
	sigset_t block, orig;
	struct timespec ts;
	struct cycle *cy;
	long long next, start, wait, wd_ms = 0, due, last_due = 0;
	uint64_t wd_usec = 0;
	int ready = 0;
	char bo[32];

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGHUP);
	sigaddset(&block, SIGUSR1);
	if (sd_watchdog_enabled(0, &wd_usec) > 0)
		wd_ms = (long long)(wd_usec / 2000);

	log_startup(cfg);
	start_services(cfg);
	cy = cycle_new(cfg, 1);
	next = now_monotonic_ms();
	for (;;) {
		if (wd_ms > 0)
			notify("WATCHDOG=1");
		sigprocmask(SIG_BLOCK, &block, &orig);
		if (sig_stop) {
			sigprocmask(SIG_SETMASK, &orig, NULL);
			break;
		}
		if (sig_reload) {
			sig_reload = 0;
			cfg = reload(cfg, args, cy);
		}
		if (sig_cycle) {
			sig_cycle = 0;
			log_event(LVL_INFO, EV_SIGNAL_CYCLE);
			next = now_monotonic_ms();
		}
		/* A job's deadline may come before the next cycle. */
		due = cycle_next_due(cy);
		if (due < last_due + DUE_SPACING_MS)
			due = last_due + DUE_SPACING_MS;
		wait = (due < next ? due : next) - now_monotonic_ms();
		if (wait > 0) {
			if (wd_ms > 0 && wait > wd_ms)
				wait = wd_ms;
			ts.tv_sec = wait / MS_PER_S;
			ts.tv_nsec = (wait % MS_PER_S) * 1000000;
			ppoll(NULL, 0, &ts, &orig);
			sigprocmask(SIG_SETMASK, &orig, NULL);
			continue;
		}
		sigprocmask(SIG_SETMASK, &orig, NULL);

		start = now_monotonic_ms();
		if (start < next) {
			last_due = start;
			cycle_reap_due(cy);
			continue;
		}
		if (cycle_run(cy, 0, &sig_stop) == 0) {
			next = start + cfg->interval;
		} else {
			next = now_monotonic_ms() + cfg->error_backoff;
			config_format_duration(
			    cfg->error_backoff, bo, sizeof(bo));
			log_event(LVL_WARNING, EV_CYCLE_FAILED,
			    (long)cycle_count(cy), bo);
		}
		notify(
		    "%sSTATUS=%s", ready ? "" : "READY=1\n", cycle_status(cy));
		ready = 1;
		/* A cycle's buffers (a 50 MB cache) go back to the system. */
		malloc_trim(0);
	}
	notify("STOPPING=1");
	log_event(LVL_INFO, EV_STOP);
	metrics_stop();
	alert_stop();
	cycle_free(cy);
	config_free(cfg);
	free(cfg);
	return 0;
}

static int
cmd_once(struct config *cfg, int force)
{
	struct cycle *cy = cycle_new(cfg, 0);
	int rc;

	alert_start(cfg->alert_webhook);
	rc = cycle_run(cy, force, &sig_stop);
	alert_stop();
	cycle_free(cy);
	return rc == 0 ? 0 : 1;
}

static int
check_cache(const struct config *cfg)
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
	rc = cache_reap(c, cfg, 0, 1, &cr);
	cache_free(c);
	if (rc == -1) {
		printf("FAIL: cache file %s cannot be cleaned (see the error "
		       "above)\n",
		    cfg->cache_file);
		return -1;
	}
	printf("ok: cache file %s: %ld active jobs, %ld stale\n",
	    cfg->cache_file, cr.active, cr.reaped_running + cr.reaped_queued);
	return 0;
}

static int
check_health(
    const struct config *cfg, long long *jobs, char *err, size_t errlen)
{
	if (*cfg->health_url == '\0')
		return 1;
	return health_probe(cfg, jobs, err, errlen);
}

/* `limpeza check`: is this configuration usable on this host right now? */
static int
cmd_check(struct config *cfg)
{
	struct store *s;
	long long jobs;
	char err[512];
	int failed = 0, i, r;

	printf("ok: configuration is valid\n");
	config_print(cfg, stdout);
	for (i = 0; i < cfg->nwarnings; i++)
		printf("warning: %s\n", cfg->warnings[i]);

	if (*cfg->database_url == '\0')
		printf("warning: DATABASE_URL is not set: the database step is "
		       "skipped\n");
	else {
		s = store_open(cfg);
		fflush(stdout);
		if (s->ops->check(s, stdout) == -1) {
			printf("FAIL: database: %s\n", s->err);
			failed = 1;
		}
		store_close(s);
	}

	if (check_cache(cfg) == -1)
		failed = 1;

	r = check_health(cfg, &jobs, err, sizeof(err));
	if (r == 1)
		printf("ok: health check disabled\n");
	else if (r == 0)
		printf("ok: health URL %s answers: %lld jobs active\n",
		    cfg->health_url, jobs);
	else {
		printf("FAIL: health URL %s: %s\n", cfg->health_url, err);
		failed = 1;
	}
	printf("%s\n", failed ? "check FAILED" : "check passed");
	return failed;
}

/* `limpeza stats`: jobs per status and what is active, for a person or a
 * script. */
static int
cmd_stats(struct config *cfg, int as_json)
{
	struct store_stats st = { NULL, 0, -1, -1, -1 };
	struct cache_result cr = { 0 };
	struct cache *c;
	struct store *s = NULL;
	json_t *out, *db, *ca, *api;
	long long jobs = 0;
	char err[512];
	int failed = 0, r;

	out = json_object();
	if (out == NULL || (st.by_status = json_object()) == NULL)
		fatalx_oom();

	if (*cfg->database_url == '\0')
		db = json_null();
	else if ((s = store_open(cfg)) == NULL || s->ops->stats(s, &st) == -1) {
		db = json_pack("{s:s}", "error", s != NULL ? s->err : "");
		failed = 1;
	} else
		db = json_pack("{s:s, s:O, s:i, s:f}", "store", s->ops->name,
		    "by_status_24h", st.by_status, "active",
		    (json_int_t)st.active, "oldest_active_s", st.oldest_s);
	store_close(s);

	c = cache_new();
	if (*cfg->cache_file == '\0')
		ca = json_null();
	else if (cache_reap(c, cfg, 0, 1, &cr) == -1) {
		ca = json_pack("{s:s, s:s}", "path", cfg->cache_file, "error",
		    "cannot read the cache file");
		failed = 1;
	} else
		ca = json_pack("{s:s, s:i, s:i, s:f}", "path", cfg->cache_file,
		    "active", (json_int_t)cr.active, "stale",
		    (json_int_t)cr.reaped_running +
			(json_int_t)cr.reaped_queued,
		    "oldest_active_s", cr.oldest_s);
	cache_free(c);

	r = check_health(cfg, &jobs, err, sizeof(err));
	if (r == 1)
		api = json_null();
	else if (r == 0)
		api = json_pack("{s:I}", "jobs_active", (json_int_t)jobs);
	else {
		api = json_pack("{s:s}", "error", err);
		failed = 1;
	}
	if (db == NULL || ca == NULL || api == NULL)
		fatalx_oom();
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
			       "%.0fs\n",
			    cr.active, cr.reaped_running + cr.reaped_queued,
			    cr.oldest_s);
		if (json_is_null(api))
			printf("api: health check disabled\n");
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

int
main(int argc, char *argv[])
{
	struct config_args args;
	struct config *cfg;
	enum command cmd = CMD_RUN;
	int i, r, have_cmd = 0, force = 0, as_json = 0, rc;
	char err[512];

	if (config_args_init(&args) == -1)
		fatalx_oom();
	for (i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			config_print_help(stdout);
			goto done;
		}
		if (strcmp(a, "--version") == 0 || strcmp(a, "-V") == 0) {
			printf("limpeza %s\n", LIMPEZA_VERSION);
			goto done;
		}
		if (strcmp(a, "--man-settings") == 0) {
			config_print_man(stdout);
			goto done;
		}
		if (strcmp(a, "--force") == 0) {
			force = 1;
			continue;
		}
		if (strcmp(a, "--json") == 0) {
			as_json = 1;
			continue;
		}
		if (a[0] == '-') {
			r = config_parse_option(
			    &args, argc, argv, &i, err, sizeof(err));
			if (r == -1)
				usage_error("%s", err);
			if (r == 0)
				usage_error("unknown option '%s'", a);
			continue;
		}
		if (have_cmd)
			usage_error("unexpected argument '%s'", a);
		have_cmd = 1;
		if (strcmp(a, "run") == 0)
			cmd = CMD_RUN;
		else if (strcmp(a, "once") == 0)
			cmd = CMD_ONCE;
		else if (strcmp(a, "check") == 0)
			cmd = CMD_CHECK;
		else if (strcmp(a, "stats") == 0)
			cmd = CMD_STATS;
		else
			usage_error("unknown command '%s' (run, once, check, "
				    "stats)",
			    a);
	}
	if (force && cmd != CMD_ONCE)
		usage_error("%s", "--force goes with 'once'");
	if (as_json && cmd != CMD_STATS)
		usage_error("%s", "--json goes with 'stats'");

	cfg = calloc(1, sizeof(*cfg));
	if (cfg == NULL)
		fatalx_oom();
	if (config_load(cfg, &args, err, sizeof(err)) == -1) {
		fprintf(stderr, "limpeza: %s\n", err);
		free(cfg);
		config_args_free(&args);
		return 2;
	}
	/* A file size limit must fail the write (EFBIG), not kill us. */
	signal(SIGXFSZ, SIG_IGN);

	switch (cmd) {
	case CMD_RUN:
		log_setup(cfg);
		rc = cmd_run(cfg, &args);
		cfg = NULL;
		break;
	case CMD_ONCE:
		log_setup(cfg);
		rc = cmd_once(cfg, force);
		break;
	case CMD_CHECK:
		log_stderr_only(LVL_ERROR, LOGF_TEXT, (enum lang)cfg->lang);
		rc = cmd_check(cfg);
		break;
	default:
		log_stderr_only(LVL_ERROR, LOGF_TEXT, (enum lang)cfg->lang);
		rc = cmd_stats(cfg, as_json);
		break;
	}
	if (cfg != NULL) {
		config_free(cfg);
		free(cfg);
	}
	log_close();
	config_args_free(&args);
	return rc;
done:
	config_args_free(&args);
	return 0;
}
