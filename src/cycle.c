/* cycle.c: one cleanup cycle, store-agnostic, top to bottom. */

#include <sys/stat.h>

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store.h"

/* After this many failing cycles in a row, an outage is worth an alert. */
#define ALERT_AFTER 3
/*
 * Elections in a row, and for how long, that must answer otherwise before
 * the log says the role changed. Every reaping transaction elects anew:
 * daemons with work for both take turns, each losing whenever it looks
 * while another one's batch runs, which would flip the role lines at
 * every turn. A new role that holds this long is no turn.
 */
#define ROLE_HOLD 3
#define ROLE_HOLD_MS (5 * MS_PER_S)
/*
 * A daemon's cycle gives its database work (retention look-up, reaping,
 * statistics, forced cleanup) at most twice the interval, within these
 * bounds: well below the unit's WatchdogSec (120 s) however slowly a
 * database answers each statement, and never less than a large backlog
 * needs.
 */
#define CYCLE_DB_MIN_MS (10 * MS_PER_S)
#define CYCLE_DB_MAX_MS (60 * MS_PER_S)
/* A health route that ends live jobs is said at most this often. */
#define PROBE_WARN_MS (3600 * MS_PER_S)

struct cycle;
static void store_budget(struct cycle *);

/* Whether the daemon was told to stop (NULL: nobody asks). */
static int
stop_asked(int (*stop)(void))
{
	return stop != NULL && stop();
}

/* Tracks one dependency (store or API) for its log lines and alerts. */
struct outage {
	int down; /* failed at the last try */
	int streak; /* failing cycles in a row */
	int alerted; /* an alert went out for this incident */
};

/*
 * What lives from one cycle to the next: the cache reaper's memory, the
 * store handle (re-made when the settings change), the state of the store
 * and the API (so an outage is logged and alerted once per change of
 * state, not once per cycle), the last answer of the API for the report,
 * and the last summary for systemd's STATUS=.
 */
struct cycle {
	const struct config *cfg;
	struct cache *cache;
	struct store *store;
	struct outage store_out;
	struct outage api_out;
	int elect; /* a daemon: reap a shared store only while leading */
	int leading; /* the role last logged, -1 before the first answer */
	int against; /* elections in a row that answered otherwise */
	long long against_since; /* monotonic ms of the first of them */
	int dry;
	int health_asked; /* --health: a dry run requests the health URL */
	long long count;
	long long jobs_active; /* -1: unknown */
	long long db_active; /* running + queued rows this cycle, -1 unknown */
	long long reaped_total;
	/* Jobs ended at deadline wake-ups since the last closing line. */
	long due_reaped;
	/* During a forced cleanup: the id of every job it ends, once. */
	json_t *forced_ids;
	long long store_due; /* monotonic ms the first row falls due */
	/* Stale rows another transaction held at this cycle's reaping. */
	long held;
	int follower; /* this cycle's reaping: another instance leads */
	long skipped; /* steps a stop left undone (enum step bits) */
	int (*stop)(void); /* this cycle's question: stop now? */
	long long probe_warned; /* monotonic ms of the last such warning */
	/* Holders warned about, and when: once per interval each. */
	struct {
		long pid;
		long long at;
	} warned[STORE_MAX_HOLDERS * 2];
	char status[256];
};

/*
 * elect: a daemon, one of several sharing the store, which reaps it only
 * while it leads; `limpeza once` does not elect and always reaps.
 */
struct cycle *
cycle_new(const struct config *cfg, int elect)
{
	struct cycle *c = calloc(1, sizeof(*c));

	if (c == NULL)
		fatalx_oom();
	c->elect = elect;
	c->cache = cache_new();
	c->jobs_active = -1;
	c->leading = -1;
	c->store_due = LLONG_MAX;
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
	c->against = 0;
	c->store_due = LLONG_MAX;
	cache_invalidate(c->cache);
}

/*
 * A dry run is read-only: it requests the health URL (whose route may
 * write) only when asked to with --health.
 */
void
cycle_ask_health(struct cycle *c, int asked)
{
	c->health_asked = asked;
}

long long
cycle_count(const struct cycle *c)
{
	return c->count;
}

const char *
cycle_status(const struct cycle *c)
{
	return c->status;
}

static const char *
reason_name(enum reap_kind kind)
{
	return kind == REAP_RUNNING ? "orphan"
	    : kind == REAP_QUEUED   ? "expired"
				    : "forced";
}

/*
 * Each reaped row: an info line with its id and age, as the cache's jobs
 * have, and the metrics. A dry run names every row it would end, in
 * "would" words. A forced cleanup notes each id, to count jobs once.
 */
static void
db_job(void *arg, enum reap_kind kind, const char *status, const char *id,
    double age)
{
	struct cycle *c = arg;

	if (c->forced_ids != NULL)
		json_object_set_nocheck(c->forced_ids, id, json_true());
	if (c->dry) {
		log_event(LVL_INFO, EV_DB_WOULD_END, status, id);
		return;
	}
	if (age >= 0)
		log_event(LVL_INFO, EV_DB_JOB, status, id, (long)age);
	else
		log_event(LVL_INFO, EV_DB_JOB_NO_AGE, status, id);
	metrics_reaped(store_kind(c->cfg), status, reason_name(kind), 1);
}

/*
 * Records one step's outcome for a dependency: logs the first failure
 * and the recovery, and alerts after ALERT_AFTER failing cycles and on
 * the recovery that follows such an alert.
 */
static void
outage_update(struct outage *o, int ok, const char *what, const char *detail,
    enum log_event down_ev, enum log_event still_ev, enum log_event up_ev,
    const char *kind)
{
	char msg[640];

	if (ok) {
		if (o->down && up_ev != EV_COUNT)
			log_event(LVL_INFO, up_ev, kind);
		if (o->alerted) {
			snprintf(msg, sizeof(msg), "%s reachable again", what);
			alert_send(strcmp(what, "API") == 0 ? "api_recovered"
							    : "store_recovered",
			    0, msg);
		}
		memset(o, 0, sizeof(*o));
		return;
	}
	if (down_ev != EV_COUNT) {
		if (!o->down)
			log_event(LVL_ERROR, down_ev, kind, detail);
		else
			log_event(LVL_DEBUG, still_ev, kind, detail);
	}
	o->down = 1;
	if (++o->streak == ALERT_AFTER && !o->alerted) {
		snprintf(msg, sizeof(msg), "%s unreachable for %d cycles: %s",
		    what, ALERT_AFTER, detail);
		alert_send(strcmp(what, "API") == 0 ? "api_unreachable"
						    : "store_unreachable",
		    ALERT_AFTER, msg);
		o->alerted = 1;
	}
}

static void
store_result(struct cycle *c, int ok)
{
	outage_update(&c->store_out, ok, "job store", ok ? "" : c->store->err,
	    EV_DB_DOWN, EV_DB_STILL_DOWN, EV_DB_UP, store_kind(c->cfg));
	if (!ok)
		metrics_step_failed("store");
}

/* Whether this cycle's store holds an election among daemons. */
static int
store_elects(const struct cycle *c)
{
	return c->store != NULL && c->store->ops->elects && c->elect &&
	    c->cfg->leader_key != 0;
}

/*
 * Notes the outcome of an election (1 leading, 0 another instance
 * leads), which every reaping transaction holds anew. The log tells the
 * first answer, then a change once it has held ROLE_HOLD elections in a
 * row and ROLE_HOLD_MS: a follower says it once, not every cycle, and
 * daemons that take turns do not flap between the two lines.
 */
static void
store_role(struct cycle *c, int lead)
{
	long long now = now_monotonic_ms();

	if (!store_elects(c))
		return;
	if (lead == c->leading) {
		c->against = 0;
		return;
	}
	if (c->leading != -1) {
		if (c->against++ == 0)
			c->against_since = now;
		if (c->against < ROLE_HOLD ||
		    now - c->against_since < ROLE_HOLD_MS)
			return;
	}
	log_event(LVL_INFO, lead ? EV_LEADER : EV_FOLLOWER);
	c->leading = lead;
	c->against = 0;
}

/*
 * The cache step: stale jobs out of the API's cache file, and finished
 * jobs past their retention, for which the cache asks the store about
 * their rows (every host, leader or not: each prunes its own file).
 * Retention is no reaping: it counts in its own log line and metric, not
 * in the cycle's summary of ended jobs.
 */
static int
step_cache(struct cycle *c, long *reaped)
{
	struct cache_result cr;
	int rc;

	rc = cache_reap(c->cache, c->cfg, c->store, 0, c->dry, &cr);
	/* A stop during retention's look-up abandoned the pass. */
	if (c->store != NULL && c->store->stopped)
		c->skipped |= STEP_CACHE;
	if (rc == -1)
		metrics_step_failed("cache");
	*reaped += cr.reaped_running + cr.reaped_queued;
	if (!c->dry) {
		metrics_reaped("cache", c->cfg->running_status, "orphan",
		    cr.reaped_running);
		metrics_reaped("cache", c->cfg->queued_status, "expired",
		    cr.reaped_queued);
		metrics_reaped("cache", DONE_STATUS, "retention",
		    cr.retired - cr.retired_error);
		metrics_reaped("cache", c->cfg->error_status, "retention",
		    cr.retired_error);
	}
	return rc;
}

/*
 * The monotonic time secs from now. A store's age may be anything a
 * column holds: one that is not finite, or too far off to convert, is
 * never (the conversion would be undefined behaviour).
 */
static long long
due_in(double secs)
{
	if (!isfinite(secs) || secs > 1e9)
		return LLONG_MAX;
	if (secs < 0)
		secs = 0;
	return now_monotonic_ms() + (long long)(secs * MS_PER_S);
}

/* Notes when the first active row falls due, to wake up for it. */
static void
store_refresh_due(struct cycle *c)
{
	double secs;

	c->store_due = LLONG_MAX;
	if (c->store->ops->next_due != NULL &&
	    c->store->ops->next_due(c->store, &secs) == 1)
		c->store_due = due_in(secs);
}

/*
 * The same from the ages the statistics just read, which saves the store
 * another look at its active rows every cycle.
 */
static void
store_due_from_stats(struct cycle *c, const struct store_stats *st)
{
	double secs = -1, s;
	int found = 0;

	if (st->oldest_running_s >= 0) {
		secs = (double)c->cfg->running_ttl / MS_PER_S -
		    st->oldest_running_s;
		found = 1;
	}
	if (st->oldest_queued_s >= 0) {
		s = (double)c->cfg->queued_ttl / MS_PER_S - st->oldest_queued_s;
		if (!found || s < secs)
			secs = s;
		found = 1;
	}
	c->store_due = found ? due_in(secs) : LLONG_MAX;
}

/* An age for a log line: 35s, 12min, 2h. */
static void
age_words(double secs, char *buf, size_t len)
{
	long long s = secs < 0 ? 0 : (long long)secs;

	if (s >= 3600)
		snprintf(buf, len, "%lldh", s / 3600);
	else if (s >= 60)
		snprintf(buf, len, "%lldmin", s / 60);
	else
		snprintf(buf, len, "%llds", s);
}

/*
 * Stale rows the reaping could not end, another transaction holding
 * them: the cycle's closing line counts them, and a warning names each
 * holder (pid, state, age), at most once per interval per holder.
 */
static void
store_held(struct cycle *c, const struct store_counts *n)
{
	long long now = now_monotonic_ms();
	size_t i, slot, nslots = sizeof(c->warned) / sizeof(c->warned[0]);
	char age[32];
	int k;

	c->held = n->held;
	metrics_stale_left(n->held);
	for (k = 0; k < n->nholders; k++) {
		const struct store_holder *h = &n->holders[k];

		slot = 0;
		for (i = 0; i < nslots; i++) {
			if (c->warned[i].pid == h->pid)
				break;
			if (c->warned[i].at < c->warned[slot].at)
				slot = i;
		}
		if (i < nslots) {
			if (now - c->warned[i].at < c->cfg->interval)
				continue;
			slot = i;
		}
		c->warned[slot].pid = h->pid;
		c->warned[slot].at = now;
		age_words(h->age_s, age, sizeof(age));
		log_event(LVL_WARNING, EV_DB_HELD, h->rows, h->pid,
		    *h->state != '\0' ? h->state : "?", age);
	}
}

/*
 * The seed's line for the rows a reaping ended: batches a stop cut short
 * had committed theirs, and those are told too.
 */
static void
store_cleaned(struct cycle *c, const struct store_counts *n, long *reaped)
{
	char rt[32], qt[32];

	config_format_duration(c->cfg->running_ttl, rt, sizeof(rt));
	config_format_duration(c->cfg->queued_ttl, qt, sizeof(qt));
	log_event(LVL_INFO, c->dry ? EV_DB_CLEANED_WOULD : EV_DB_CLEANED, rt,
	    n->running, qt, n->queued);
	*reaped += n->running + n->queued;
}

/* The database step: reap both rules, then the 24 h statistics. */
static int
step_store(struct cycle *c, long *reaped)
{
	struct store_counts n;
	struct store_req req = { c->dry, c->elect, db_job, c };
	struct store_stats st;
	int lead;

	if (c->store == NULL)
		return 0;
	memset(&n, 0, sizeof(n));
	lead = c->store->ops->reap(c->store, &req, &n);
	if (lead == -1 && c->store->stopped) {
		if (n.running + n.queued > 0)
			store_cleaned(c, &n, reaped);
		goto stopped;
	}
	if (lead == -1)
		goto fail;
	store_role(c, lead);
	c->follower = lead == 0;
	if (lead == 1 && !c->dry)
		store_held(c, &n);
	if (lead == 1)
		store_cleaned(c, &n, reaped);
	c->store_due = LLONG_MAX;
	memset(&st, 0, sizeof(st));
	if ((st.by_status = json_object()) == NULL)
		fatalx_oom();
	if (c->store->ops->stats(c->store, &st) == -1) {
		json_decref(st.by_status);
		if (c->store->stopped)
			goto stopped;
		goto fail;
	}
	log_event(LVL_INFO, EV_DB_STATS, st.by_status);
	c->db_active = st.active;
	json_decref(st.by_status);
	/* A dry run ends nothing: deadline wake-ups would only spin. */
	if (lead == 1 && !c->dry)
		store_due_from_stats(c, &st);
	store_result(c, 1);
	return 0;
fail:
	store_result(c, 0);
	return -1;
stopped:
	/* Abandoned for a stop: no outage, a step not run. */
	c->skipped |= STEP_STORE;
	return 0;
}

/*
 * Forced cleanup: every active row (if this daemon leads) and the cache
 * file, sparing what is younger than LIMPEZA_FORCE_MIN_AGE. A job ended
 * in both counts once; the line also says how many in each. A stop
 * before it, or during its statements, leaves the rest undone (the
 * cycle's closing line names the step), but rows already committed are
 * told.
 */
static int
step_force(struct cycle *c, long long jobs, long *ended)
{
	struct store_counts n;
	struct store_req req = { c->dry, c->elect, db_job, c };
	struct cache_result cr;
	char msg[256];
	int rc = 0, lead;

	if (stop_asked(c->stop)) {
		c->skipped |= STEP_FORCE;
		return 0;
	}
	memset(&n, 0, sizeof(n));
	memset(&cr, 0, sizeof(cr));
	if ((c->forced_ids = json_object()) == NULL)
		fatalx_oom();
	cache_collect_forced(c->cache, c->forced_ids);
	if (c->store != NULL) {
		lead = c->store->ops->force(c->store, &req, &n);
		if (lead == -1 && c->store->stopped)
			c->skipped |= STEP_FORCE;
		else if (lead == -1) {
			store_result(c, 0);
			rc = -1;
		} else {
			store_role(c, lead);
			store_result(c, 1);
		}
	}
	if (!(c->skipped & STEP_FORCE) && stop_asked(c->stop))
		c->skipped |= STEP_FORCE;
	if (c->skipped & STEP_FORCE) {
		/* No cache pass; what the statements committed is told. */
	} else if (cache_reap(c->cache, c->cfg, c->store, 1, c->dry, &cr) ==
	    -1) {
		metrics_step_failed("cache");
		rc = -1;
	}
	*ended = (long)json_object_size(c->forced_ids);
	cache_collect_forced(c->cache, NULL);
	json_decref(c->forced_ids);
	c->forced_ids = NULL;
	if (!c->dry) {
		metrics_reaped("cache", c->cfg->running_status, "forced",
		    cr.forced_running);
		metrics_reaped(
		    "cache", c->cfg->queued_status, "forced", cr.forced_queued);
		metrics_reaped("cache", "other", "forced",
		    cr.forced - cr.forced_running - cr.forced_queued);
	}
	if ((c->skipped & STEP_FORCE) && *ended == 0)
		return rc;
	/* A dry run's words are "would", at info: no alert greps fire. */
	if (c->dry)
		log_event(
		    LVL_INFO, EV_FORCE_DONE_WOULD, *ended, n.forced, cr.forced);
	else
		log_event(
		    LVL_WARNING, EV_FORCE_DONE, *ended, n.forced, cr.forced);
	if (jobs >= 0)
		snprintf(msg, sizeof(msg),
		    "forced cleanup: the %s reported %lld active jobs "
		    "(threshold %lld); %ld jobs ended",
		    c->cfg->active_from == ACTIVE_DATABASE ? "database" : "API",
		    jobs, c->cfg->force_threshold, *ended);
	else
		snprintf(msg, sizeof(msg),
		    "forced cleanup requested by hand; %ld jobs ended", *ended);
	if (!c->dry)
		alert_send("forced_cleanup", *ended, msg);
	return rc;
}

/*
 * The active count from the database (LIMPEZA_ACTIVE_FROM=database): the
 * table's running + queued rows, as the statistics just read them. No URL
 * is requested.
 */
static int
step_active_db(struct cycle *c, int force, long *ended)
{
	const struct config *cfg = c->cfg;

	c->jobs_active = c->db_active;
	if (c->db_active < 0)
		return 0; /* no store, or its step failed (logged) */
	log_event(LVL_INFO, EV_ACTIVE_DB, (long)c->db_active);
	if (force || cfg->force_threshold == 0 ||
	    c->db_active <= cfg->force_threshold)
		return 0;
	if (c->dry)
		log_event(LVL_INFO, EV_FORCE_WARN_WOULD, (long)c->db_active);
	else
		log_event(LVL_WARNING, EV_FORCE_WARN, (long)c->db_active);
	return step_force(c, c->db_active, ended);
}

/*
 * Whether the health request ended live jobs: the cache file was
 * rewritten during it, and active jobs the cache step kept are now in
 * the error status with a message that is not limpeza's (Desfollow's
 * route marks every running job without start_time). Counted in a
 * metric; one warning with the remedy, at most once an hour.
 */
static void
health_side_effect(struct cycle *c, const struct stat *before)
{
	struct stat after;
	long long now;
	long n;

	if (stat(c->cfg->cache_file, &after) == -1 ||
	    (after.st_ino == before->st_ino &&
		after.st_size == before->st_size &&
		after.st_mtim.tv_sec == before->st_mtim.tv_sec &&
		after.st_mtim.tv_nsec == before->st_mtim.tv_nsec))
		return;
	if ((n = cache_ended_by_others(c->cache, c->cfg)) <= 0)
		return;
	metrics_probe_ended(n);
	now = now_monotonic_ms();
	if (c->probe_warned != 0 && now - c->probe_warned < PROBE_WARN_MS)
		return;
	c->probe_warned = now;
	log_event(LVL_WARNING, EV_HEALTH_ENDS_JOBS, n);
}

/* The API step: how many jobs are active, and a forced cleanup if too many. */
static int
step_health(struct cycle *c, int force, long *ended)
{
	const struct config *cfg = c->cfg;
	struct stat before;
	long long jobs;
	char err[512];
	int r, have;

	if (cfg->active_from == ACTIVE_DATABASE)
		return step_active_db(c, force, ended);
	if (*cfg->health_url == '\0')
		return 0;
	if (c->dry && !c->health_asked) {
		log_event(LVL_INFO, EV_HEALTH_NOT_ASKED);
		return 0;
	}
	have = *cfg->cache_file != '\0' && !c->dry &&
	    stat(cfg->cache_file, &before) == 0;
	r = health_probe(cfg, &jobs, err, sizeof(err));
	if (have && r != -2)
		health_side_effect(c, &before);
	if (r == -2) {
		c->skipped |= STEP_HEALTH;
		return 0;
	}
	if (r == -1) {
		c->jobs_active = -1;
		log_event(LVL_ERROR, EV_HEALTH_ERROR, err);
		outage_update(&c->api_out, 0, "API", err, EV_COUNT, EV_COUNT,
		    EV_COUNT, "api");
		metrics_step_failed("health");
		return -1;
	}
	outage_update(
	    &c->api_out, 1, "API", "", EV_COUNT, EV_COUNT, EV_COUNT, "api");
	c->jobs_active = jobs;
	log_event(LVL_INFO, EV_HEALTH, (long)jobs);
	if (force || cfg->force_threshold == 0 || jobs <= cfg->force_threshold)
		return 0;
	if (c->dry)
		log_event(LVL_INFO, EV_FORCE_WARN_WOULD, (long)jobs);
	else
		log_event(LVL_WARNING, EV_FORCE_WARN, (long)jobs);
	return step_force(c, jobs, ended);
}

/*
 * When the next job falls due, in the cache file or in the store (if this
 * daemon reaps it), in monotonic ms; LLONG_MAX if nothing is active. The
 * margin makes the job strictly older than its TTL when limpeza looks.
 */
long long
cycle_next_due(const struct cycle *c)
{
	long long due = cache_next_due(c->cache);

	if (c->store_due < due)
		due = c->store_due;
	return due == LLONG_MAX ? due : due + 50;
}

/*
 * Between regular cycles, at a job's deadline: the cache file and the
 * store's reaping only, without statistics, health check or report, and
 * without counting as a cycle.
 */
int
cycle_reap_due(struct cycle *c)
{
	struct store_counts n;
	struct store_req req = { 0, c->elect, db_job, c };
	long reaped = 0;
	int failed = 0, lead;

	memset(&n, 0, sizeof(n));
	c->dry = c->cfg->dry_run != 0;
	store_budget(c);
	req.dry_run = c->dry;
	if (step_cache(c, &reaped) == -1)
		failed = 1;
	/* Woken for the cache file, a row not yet due stays due. */
	if (c->store != NULL && c->store_due <= now_monotonic_ms() &&
	    !c->store_out.down) {
		lead = c->store->ops->reap(c->store, &req, &n);
		if (lead == -1 && c->store->stopped) {
			/* A stop: the loop ends next; nothing failed. */
			if (n.running + n.queued > 0)
				store_cleaned(c, &n, &reaped);
		} else if (lead == -1) {
			store_result(c, 0);
			c->store_due = LLONG_MAX;
			failed = 1;
		} else if (n.running + n.queued > 0) {
			store_role(c, lead);
			store_cleaned(c, &n, &reaped);
			store_refresh_due(c);
		} else {
			/*
			 * Nothing ended: the row is held by a writer's
			 * transaction (SKIP LOCKED), or another instance
			 * leads. Waking again soon would only spin; the next
			 * regular cycle looks again.
			 */
			store_role(c, lead);
			c->store_due = LLONG_MAX;
		}
	}
	c->reaped_total += reaped;
	/* The next cycle's closing line counts them: no "Sistema limpo". */
	c->due_reaped += reaped;
	if (reaped > 0)
		log_event(LVL_INFO, EV_DUE, reaped);
	return failed ? -1 : 0;
}

/* Whether the cycle has a health step (the API, or the database's count). */
static int
has_health(const struct cycle *c)
{
	return c->cfg->active_from == ACTIVE_DATABASE
	    ? c->store != NULL
	    : *c->cfg->health_url != '\0';
}

/* Starts the cycle's clock for the database (daemons only). */
static void
store_budget(struct cycle *c)
{
	long long b = 2 * c->cfg->interval;

	if (c->store == NULL)
		return;
	if (b < CYCLE_DB_MIN_MS)
		b = CYCLE_DB_MIN_MS;
	if (b > CYCLE_DB_MAX_MS)
		b = CYCLE_DB_MAX_MS;
	c->store->deadline = c->elect ? now_monotonic_ms() + b : 0;
}

/*
 * One whole cycle, in the order operators read it in the log: cache,
 * database, API health and forced cleanup, summary, periodic report. A
 * failing step is logged where it fails and the next step still runs;
 * the cycle then ends with a line naming the steps that failed, never
 * with "Sistema limpo". force runs the forced cleanup whatever the API
 * says (`once --force`). stop is asked between steps so SIGTERM finishes
 * the current one. Returns 0, or -1 if any step failed.
 */
int
cycle_run(struct cycle *c, int force, int (*stop)(void))
{
	const struct config *cfg = c->cfg;
	long reaped = 0, ended = 0;
	long long t0 = now_monotonic_ms();
	char when[16], api[48];
	time_t t = time(NULL);
	struct tm tm;
	long failed = 0;

	c->count++;
	c->dry = cfg->dry_run != 0;
	c->held = 0;
	c->follower = 0;
	c->db_active = -1;
	c->skipped = 0;
	c->stop = stop;
	if (c->store != NULL)
		c->store->stopped = 0;
	store_budget(c);
	localtime_r(&t, &tm);
	strftime(when, sizeof(when), "%H:%M:%S", &tm);
	log_event(LVL_INFO, EV_CYCLE, (long)c->count, when);
	log_event(LVL_INFO, EV_CYCLE_START);
	if (c->dry)
		log_event(LVL_INFO, EV_DRY_RUN);

	/*
	 * A stop between steps, or one that abandoned a step's network
	 * wait, leaves the rest undone: the closing line names them.
	 */
	if (step_cache(c, &reaped) == -1)
		failed |= STEP_CACHE;
	if (c->store != NULL && (stop_asked(stop) || c->skipped))
		c->skipped |= STEP_STORE;
	else if (step_store(c, &reaped) == -1)
		failed |= STEP_STORE;
	/* The API answered (jobs_active known) if the forced cleanup failed. */
	if (has_health(c) && (stop_asked(stop) || c->skipped))
		c->skipped |= STEP_HEALTH;
	else if (step_health(c, force, &ended) == -1)
		failed |= c->jobs_active >= 0 ? STEP_FORCE : STEP_HEALTH;
	if (force && (stop_asked(stop) || c->skipped))
		c->skipped |= STEP_FORCE;
	else if (force) {
		if (c->dry)
			log_event(LVL_INFO, EV_FORCE_REQUESTED_WOULD);
		else
			log_event(LVL_WARNING, EV_FORCE_REQUESTED);
		if (step_force(c, -1, &ended) == -1)
			failed |= STEP_FORCE;
	}

	/*
	 * A real forced cleanup comes after the reaping, so it ends what was
	 * left. A dry run's would end every active job, the stale ones the
	 * reaping already counted included: count them once.
	 */
	if (c->dry && ended > 0)
		reaped = 0;
	reaped += ended;
	c->reaped_total += reaped;
	/* What deadline wake-ups ended since the last closing line, too. */
	reaped += c->due_reaped;
	c->due_reaped = 0;
	/*
	 * Stale rows left behind a lock are no clean system; a follower
	 * does not know what the database holds, and says who cleans it.
	 */
	if (c->held > 0)
		log_event(LVL_WARNING, EV_SUMMARY_HELD, reaped, c->held);
	else if (reaped > 0)
		log_event(
		    LVL_INFO, c->dry ? EV_SUMMARY_WOULD : EV_SUMMARY, reaped);
	if (failed != 0)
		log_event(LVL_WARNING, EV_CYCLE_INCOMPLETE, failed);
	if (c->skipped != 0)
		log_event(LVL_WARNING, EV_CYCLE_STOPPED, c->skipped);
	else if (failed == 0 && reaped == 0 && c->held == 0)
		log_event(LVL_INFO, c->follower ? EV_CLEAN_FOLLOWER : EV_CLEAN);
	if (c->count % cfg->report_every == 0) {
		if (c->jobs_active >= 0 && cfg->active_from == ACTIVE_DATABASE)
			log_event(LVL_INFO, EV_REPORT_DB, (long)c->count,
			    (long)c->jobs_active);
		else if (c->jobs_active >= 0)
			log_event(LVL_INFO, EV_REPORT, (long)c->count,
			    (long)c->jobs_active);
		else
			log_event(LVL_INFO, EV_REPORT_NO_API, (long)c->count,
			    (long)c->reaped_total);
	}

	metrics_cycle((double)(now_monotonic_ms() - t0) / MS_PER_S, !failed);
	metrics_gauges(c->jobs_active,
	    c->store == NULL ? -1 : !c->store_out.down,
	    store_elects(c) ? c->leading : -1, cfg->interval);
	*api = '\0';
	if (c->jobs_active >= 0)
		snprintf(
		    api, sizeof(api), "; API: %lld active", c->jobs_active);
	snprintf(c->status, sizeof(c->status),
	    "cycle %lld at %s: %ld jobs reaped, %lld since start%s%s", c->count,
	    when, reaped, c->reaped_total, api,
	    failed ? "; a step failed" : "");
	return failed ? -1 : 0;
}
