/* cycle.c: one cleanup cycle, store-agnostic, top to bottom. */

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store.h"

/*
 * What lives from one cycle to the next: the cache reaper's memory, the
 * store handle (re-made when the settings change), whether the store was
 * down at the last try (so an outage is logged once per change of state),
 * and the last answer of the API for the periodic report.
 */
struct cycle {
	const struct config *cfg;
	struct cache *cache;
	struct store *store;
	int store_down;
	int leading; /* last answer of the election, -1 before the first */
	long long count;
	long long jobs_active; /* -1: unknown */
	long long reaped_total;
};

struct cycle *
cycle_new(const struct config *cfg)
{
	struct cycle *c = calloc(1, sizeof(*c));

	if (c == NULL)
		fatalx_oom();
	c->cache = cache_new();
	c->jobs_active = -1;
	c->leading = -1;
	cycle_set_config(c, cfg);
	return c;
}

void
cycle_free(struct cycle *c)
{
	if (c == NULL)
		return;
	store_close(c->store);
	cache_free(c->cache);
	free(c);
}

/* A new configuration may name another store: the handle is re-made. */
void
cycle_set_config(struct cycle *c, const struct config *cfg)
{
	store_close(c->store);
	c->cfg = cfg;
	c->store = store_open(cfg);
	c->leading = -1;
}

long long
cycle_count(const struct cycle *c)
{
	return c->count;
}

static void
log_db_job(void *arg, enum reap_kind kind, const char *id)
{
	(void)arg;
	log_event(LVL_DEBUG, EV_DB_JOB,
	    kind == REAP_RUNNING      ? "running"
		: kind == REAP_QUEUED ? "queued"
				      : "forced",
	    id);
}

/* Logs a store failure loudly only when the store was up before. */
static void
store_failed(struct cycle *c)
{
	const char *kind = store_kind(c->cfg);

	if (!c->store_down)
		log_event(LVL_ERROR, EV_DB_DOWN, kind, c->store->err);
	else
		log_event(LVL_DEBUG, EV_DB_STILL_DOWN, kind, c->store->err);
	c->store_down = 1;
}

static void
store_ok(struct cycle *c)
{
	if (c->store_down)
		log_event(LVL_INFO, EV_DB_UP, store_kind(c->cfg));
	c->store_down = 0;
}

/*
 * Asks the store whether this daemon leads; says so in the log when that
 * changes, so followers log once, not every cycle.
 */
static int
store_lead(struct cycle *c)
{
	int lead;

	if (c->store->ops->lead == NULL)
		return 1;
	lead = c->store->ops->lead(c->store);
	if (lead != -1 && lead != c->leading)
		log_event(LVL_INFO, lead ? EV_LEADER : EV_FOLLOWER);
	if (lead != -1)
		c->leading = lead;
	return lead;
}

/* The database step: reap both rules, then the 24 h statistics. */
static int
step_store(struct cycle *c, int dry_run, long *reaped)
{
	const struct config *cfg = c->cfg;
	struct store_counts n = { 0, 0, 0 };
	struct store_stats st;
	char rt[32], qt[32];
	int lead;

	if (c->store == NULL)
		return 0;
	lead = store_lead(c);
	if (lead == -1)
		goto fail;
	if (lead == 1) {
		if (c->store->ops->reap(
			c->store, dry_run, &n, log_db_job, NULL) == -1)
			goto fail;
		config_format_duration(cfg->running_ttl, rt, sizeof(rt));
		config_format_duration(cfg->queued_ttl, qt, sizeof(qt));
		log_event(LVL_INFO, EV_DB_CLEANED, rt, n.running, qt, n.queued);
		*reaped += n.running + n.queued;
	}
	memset(&st, 0, sizeof(st));
	if ((st.by_status = json_object()) == NULL)
		fatalx_oom();
	if (c->store->ops->stats(c->store, &st) == -1) {
		json_decref(st.by_status);
		goto fail;
	}
	log_event(LVL_INFO, EV_DB_STATS, st.by_status);
	json_decref(st.by_status);
	store_ok(c);
	return 0;
fail:
	store_failed(c);
	return -1;
}

/*
 * Forced cleanup: every active row (if this daemon leads) and the cache
 * file, sparing what is younger than LIMPEZA_FORCE_MIN_AGE.
 */
static int
step_force(struct cycle *c, int dry_run, long *ended)
{
	struct store_counts n = { 0, 0, 0 };
	struct cache_result cr;
	int rc = 0, lead;

	if (c->store != NULL) {
		lead = store_lead(c);
		if (lead == -1 ||
		    (lead == 1 &&
			c->store->ops->force(
			    c->store, dry_run, &n, log_db_job, NULL) == -1)) {
			store_failed(c);
			rc = -1;
		} else
			store_ok(c);
	}
	if (cache_reap(c->cache, c->cfg, 1, dry_run, &cr) == -1)
		rc = -1;
	*ended = n.forced + cr.forced;
	log_event(LVL_WARNING, EV_FORCE_DONE, *ended);
	return rc;
}

/*
 * One whole cycle, in the order operators read it in the log: cache,
 * database, API health and forced cleanup, summary, periodic report. A
 * failing step is logged where it fails and the next step still runs.
 * force runs the forced cleanup whatever the API says (`once --force`).
 * stop is checked between steps so SIGTERM finishes the current one.
 * Returns 0, or -1 if any step failed.
 */
int
cycle_run(struct cycle *c, int force, volatile sig_atomic_t *stop)
{
	const struct config *cfg = c->cfg;
	struct cache_result cr;
	long reaped = 0, ended = 0;
	long long jobs;
	char when[16], err[512];
	time_t t = time(NULL);
	struct tm tm;
	int failed = 0, dry = cfg->dry_run != 0;

	c->count++;
	localtime_r(&t, &tm);
	strftime(when, sizeof(when), "%H:%M:%S", &tm);
	log_event(LVL_INFO, EV_CYCLE, (long)c->count, when);
	log_event(LVL_INFO, EV_CYCLE_START);
	if (dry)
		log_event(LVL_INFO, EV_DRY_RUN);

	if (cache_reap(c->cache, cfg, 0, dry, &cr) == -1)
		failed = 1;
	reaped += cr.reaped_running + cr.reaped_queued;

	if (!*stop && step_store(c, dry, &reaped) == -1)
		failed = 1;

	if (!*stop && *cfg->health_url != '\0') {
		if (health_probe(cfg, &jobs, err, sizeof(err)) == 0) {
			c->jobs_active = jobs;
			log_event(LVL_INFO, EV_HEALTH, (long)jobs);
			if (!force && cfg->force_threshold > 0 &&
			    jobs > cfg->force_threshold) {
				log_event(
				    LVL_WARNING, EV_FORCE_WARN, (long)jobs);
				if (step_force(c, dry, &ended) == -1)
					failed = 1;
			}
		} else {
			c->jobs_active = -1;
			log_event(LVL_ERROR, EV_HEALTH_ERROR, err);
			failed = 1;
		}
	}
	if (!*stop && force) {
		log_event(LVL_WARNING, EV_FORCE_REQUESTED);
		if (step_force(c, dry, &ended) == -1)
			failed = 1;
	}

	reaped += ended;
	c->reaped_total += reaped;
	if (reaped > 0)
		log_event(LVL_INFO, EV_SUMMARY, reaped);
	else
		log_event(LVL_INFO, EV_CLEAN);
	if (c->count % cfg->report_every == 0) {
		if (c->jobs_active >= 0)
			log_event(LVL_INFO, EV_REPORT, (long)c->count,
			    (long)c->jobs_active);
		else
			log_event(LVL_INFO, EV_REPORT_NO_API, (long)c->count,
			    (long)c->reaped_total);
	}
	return failed ? -1 : 0;
}
