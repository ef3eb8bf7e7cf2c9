/* main.c: command line, start-up order, the daemon loop, signal flags. */

#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "limpeza.h"
#include "mask.h"

enum command { CMD_RUN, CMD_ONCE, CMD_CHECK, CMD_STATS };

/* Deadline wake-ups between cycles are at least this far apart. */
#define DUE_SPACING_MS 250
/* From a stop signal to the exit, alerts included (SPEC §3: 1 s). */
#define STOP_BUDGET_MS 1000

static volatile sig_atomic_t sig_stop;
static volatile sig_atomic_t sig_reload;
static volatile sig_atomic_t sig_cycle;

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

/*
 * The daemon's signals are taken by the main thread alone, and only
 * while it waits in ppoll(): they are blocked before any thread starts,
 * so every thread (the alert worker, libmicrohttpd's, libcurl's resolver
 * threads) inherits the block, and the kernel can hand them to nobody
 * else. A signal that arrives during a cycle or a reload stays pending
 * and ends the next wait at once. wait_mask is the mask ppoll() waits
 * with: the one before, without these four.
 */
static sigset_t wait_mask;

static void
signals_block(void)
{
	struct sigaction sa;
	sigset_t block;
	const int sigs[] = { SIGTERM, SIGINT, SIGHUP, SIGUSR1 };
	size_t i;

	sigemptyset(&block);
	for (i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaddset(&block, sigs[i]);
	pthread_sigmask(SIG_BLOCK, &block, &wait_mask);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sa.sa_flags = SA_RESTART;
	sigfillset(&sa.sa_mask);
	for (i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
		sigdelset(&wait_mask, sigs[i]);
		sigaction(sigs[i], &sa, NULL);
	}
	signal(SIGPIPE, SIG_IGN);
}

/* Waits up to ms for a signal; handlers run here, in the main thread. */
static void
signals_wait(long long ms)
{
	struct timespec ts;

	ts.tv_sec = ms / MS_PER_S;
	ts.tv_nsec = (ms % MS_PER_S) * 1000000;
	ppoll(NULL, 0, &ts, &wait_mask);
}

/* Between a cycle's steps: takes a pending SIGTERM without waiting. */
static int
stop_requested(void)
{
	signals_wait(0);
	return sig_stop;
}

static void
usage_error(const char *fmt, const char *arg)
{
	fprintf(stderr, "limpeza: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "; see limpeza --help\n");
	exit(2);
}

/*
 * A mistyped option or a stray argument may be a database URL: it is
 * named, never shown (--databse-url=postgresql://u:pw@... says only
 * --databse-url).
 */
static const char *
shown_arg(const char *a, char *buf, size_t len)
{
	if (a[0] == '-') {
		snprintf(buf, len, "%.*s", (int)strcspn(a, "="), a);
		if (strchr(a, '=') != NULL)
			snprintf(buf + strlen(buf), len - strlen(buf), "=...");
	} else if (strpbrk(a, ":@=") != NULL)
		/* A URL or key=value pair put where a command goes (a stray
		 * space in ExecStart=) would reach the journal on every
		 * restart: a webhook's path or a token as its user is as
		 * secret as a password. */
		snprintf(buf, len, "(not shown: it may hold a secret)");
	else
		snprintf(buf, len, "%s", a);
	return buf;
}

static void
log_startup(const struct config *cfg)
{
	char rt[32], iv[32], db[512], api[512], words[64];
	int i;

	config_format_duration(cfg->running_ttl, rt, sizeof(rt));
	config_format_duration(cfg->interval, iv, sizeof(iv));
	mask_dburl(cfg->database_url, db, sizeof(db));
	mask_http(cfg->health_url, 1, api, sizeof(api));
	log_banner_ttl(cfg, words, sizeof(words));
	log_event(LVL_INFO, EV_START, words);
	log_event(LVL_INFO, EV_CONFIG, rt, iv);
	log_event(LVL_INFO, EV_CONFIG_DETAIL,
	    *cfg->cache_file != '\0' ? cfg->cache_file : "-",
	    *db != '\0' ? db : "-", *api != '\0' ? api : "-");
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
 * SIGHUP: settings are read again from the same sources, the env files
 * included (the unit names its settings file with --env-file, so that
 * `systemctl reload` applies a changed file). A bad new configuration is
 * refused with one line and the old one stays in force; the log file is
 * reopened either way (logrotate relies on it). Nothing here waits on
 * the network: the alert worker keeps running and takes the new URL.
 */
static struct config *
reload(struct config *cfg, const struct config_args *args, struct cycle *cy)
{
	struct config *ncfg;
	char err[512], rt[32], iv[32];
	int i;

	notify_reloading();
	ncfg = calloc(1, sizeof(*ncfg));
	if (ncfg == NULL)
		fatalx_oom();
	if (config_load(ncfg, args, err, sizeof(err)) == -1) {
		free(ncfg);
		log_reopen();
		log_event(LVL_ERROR, EV_RELOAD_FAILED, err);
		notify_reloaded();
		return cfg;
	}
	log_setup(ncfg);
	cycle_set_config(cy, ncfg);
	config_free(cfg);
	free(cfg);
	log_event(LVL_INFO, EV_RELOAD);
	config_format_duration(ncfg->running_ttl, rt, sizeof(rt));
	config_format_duration(ncfg->interval, iv, sizeof(iv));
	log_event(LVL_INFO, EV_CONFIG, rt, iv);
	for (i = 0; i < ncfg->nwarnings; i++)
		log_event(LVL_WARNING, EV_CONFIG_WARNING, ncfg->warnings[i]);
	start_services(ncfg);
	notify_reloaded();
	return ncfg;
}

/*
 * The daemon loop. Signals stay blocked (signals_block()) except while
 * waiting in ppoll(), so one that arrives just before the wait still ends
 * it at once. Cycles are scheduled on the monotonic clock: interval after
 * the start of a good cycle, error backoff after the end of a failed one.
 * The watchdog is fed on every pass of the loop, so systemd restarts the
 * daemon only when the loop itself is stuck. On stop, what the alert
 * worker still has to send gets what is left of STOP_BUDGET_MS.
 */
static int
cmd_run(struct config *cfg, const struct config_args *args, int health)
{
	struct cycle *cy;
	long long next, start, wait, wd_ms, due, last_due = 0, stopped;
	int ready = 0;
	char bo[32];

	wd_ms = notify_watchdog_ms();
	log_startup(cfg);
	start_services(cfg);
	cy = cycle_new(cfg, 1);
	cycle_ask_health(cy, health);
	next = now_monotonic_ms();
	for (;;) {
		if (wd_ms > 0)
			notify_watchdog();
		/*
		 * A stop that abandoned a step's network wait is still
		 * pending: a cycle that outlasted its interval must not start
		 * the next one (or a deadline's reaping) before it is taken.
		 */
		if (sig_stop || stop_pending())
			break;
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
			signals_wait(wait);
			continue;
		}

		start = now_monotonic_ms();
		if (start < next) {
			last_due = start;
			cycle_reap_due(cy);
			continue;
		}
		if (cycle_run(cy, 0, stop_requested) == 0) {
			next = start + cfg->interval;
		} else {
			next = now_monotonic_ms() + cfg->error_backoff;
			config_format_duration(
			    cfg->error_backoff, bo, sizeof(bo));
			log_event(LVL_WARNING, EV_CYCLE_FAILED,
			    (long)cycle_count(cy), bo);
		}
		notify_cycle(!ready, cycle_status(cy));
		ready = 1;
		/* A cycle's buffers (a 50 MB cache) go back to the system. */
		malloc_trim(0);
	}
	stopped = now_monotonic_ms();
	notify_stopping();
	log_event(LVL_INFO, EV_STOP);
	metrics_stop();
	alert_stop(STOP_BUDGET_MS - (now_monotonic_ms() - stopped));
	cycle_free(cy);
	config_free(cfg);
	free(cfg);
	return 0;
}

/*
 * For `once`, SIGINT, SIGTERM and SIGHUP (a closed terminal) all stop:
 * like the daemon's, they are taken between steps, so a rewrite of the
 * cache file is finished (or given up) cleanly, never cut mid-swap.
 */
static int
once_stop_requested(void)
{
	signals_wait(0);
	return sig_stop || sig_reload;
}

/* One cycle; the alerts it queued get the time one post may take. */
static int
cmd_once(struct config *cfg, int force, int health)
{
	struct cycle *cy = cycle_new(cfg, 0);
	int rc;

	cycle_ask_health(cy, health);
	stop_pending_hup(1);
	alert_start(cfg->alert_webhook);
	rc = cycle_run(cy, force, once_stop_requested);
	/* One that came during the last step is pending still: take it. */
	if (once_stop_requested())
		rc = -1;
	alert_stop(ALERT_TIMEOUT_MS + MS_PER_S);
	cycle_free(cy);
	return rc == 0 ? 0 : 1;
}

int
main(int argc, char *argv[])
{
	struct config_args args;
	struct config *cfg;
	enum command cmd = CMD_RUN;
	int i, r, have_cmd = 0, force = 0, as_json = 0, health = 0, rc;
	char err[512], shown[512];

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
		if (strcmp(a, "--health") == 0) {
			health = 1;
			continue;
		}
		if (a[0] == '-') {
			r = config_parse_option(
			    &args, argc, argv, &i, err, sizeof(err));
			if (r == -1)
				usage_error("%s", err);
			if (r == 0)
				usage_error("unknown option '%s'",
				    shown_arg(a, shown, sizeof(shown)));
			continue;
		}
		if (have_cmd)
			usage_error("unexpected argument '%s'",
			    shown_arg(a, shown, sizeof(shown)));
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
			    shown_arg(a, shown, sizeof(shown)));
	}
	if (force && cmd != CMD_ONCE)
		usage_error("%s", "--force goes with 'once'");
	if (as_json && cmd != CMD_STATS)
		usage_error("%s", "--json goes with 'stats'");

	/* Before any thread exists, so that every thread inherits it. */
	if (cmd == CMD_RUN || cmd == CMD_ONCE)
		signals_block();

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
		rc = cmd_run(cfg, &args, health);
		cfg = NULL;
		break;
	case CMD_ONCE:
		log_setup(cfg);
		rc = cmd_once(cfg, force, health);
		break;
	case CMD_CHECK:
		log_stderr_only(LVL_ERROR, LOGF_TEXT, (enum lang)cfg->lang);
		rc = cmd_check(cfg, health);
		break;
	default:
		log_stderr_only(LVL_ERROR, LOGF_TEXT, (enum lang)cfg->lang);
		rc = cmd_stats(cfg, as_json, health);
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
