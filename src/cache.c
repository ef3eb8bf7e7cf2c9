/* cache.c: the cache-file pass: open and lock, scan, decide, commit. */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "jsonscan.h"
#include "store.h"

#define CACHE_TRIES 5
#define MAX_STATUS 64 /* config.c's limit on a status word */

/*
 * The most members (duplicate keys included) a file may have. Each costs
 * the pass a few hundred bytes whatever its own size, so a file of
 * millions of tiny members would cost many times its size: such a file
 * is refused, left as it is, before its members cost more than this many.
 * README "The cache file" and limpeza(8) name the figure.
 */
#define CACHE_MAX_MEMBERS 100000

/*
 * The keys of a job that limpeza reads. Every other byte of the file is
 * opaque: never decoded, copied as it is (SPEC §1.1).
 */
enum field { F_STATUS, F_START, F_CREATED, F_ERROR, NFIELDS };
static const char *const field_names[NFIELDS] = { "status", "start_time",
	"created_at", "error" };

/*
 * What the reaper remembers between passes: when it first saw each active
 * job that carries no usable timestamp, keyed "status\nid", and without
 * a database each finished job, keyed "\nid", in monotonic milliseconds.
 * Only jobs present in the last pass are kept, so the map never grows
 * beyond the file. A restart forgets it, which only gives such jobs more
 * time.
 */
struct cache {
	json_t *seen;
	/*
	 * The version of the file that the last full pass read (or wrote),
	 * and when it must be read again: its first active job falls due, a
	 * finished job's retention ends, or a finished job the store could
	 * not yet vouch for is to be looked up again. Until then, a file
	 * still at that version is not even read.
	 */
	int known;
	struct stat last;
	long long next_due; /* monotonic ms; LLONG_MAX: nothing due */
	long active;
	long finished;
	off_t size;
	double oldest_since; /* wall clock start of the oldest active job */
	int retention_down; /* the store did not answer: said once */
	json_t *forced_ids; /* when set, each job a forced pass ends */
	json_t *active_ids; /* the active jobs the last pass kept */
};

/*
 * A top-level member, as file offsets: its key (quotes included) and its
 * value, and in a job that may be marked, the spans a mark rewrites.
 */
struct member {
	off_t ks, ke, vs, ve;
	off_t status_ke, status_vs, status_ve; /* its last "status" */
	off_t error_vs, error_ve; /* its last "error", if after that; or 0 */
	struct cache_job job;
	int superseded; /* a later member has the same key */
	enum row_state row; /* a finished job's row, as the store answered */
	double row_age;
	enum cache_fate fate;
	double age;
	size_t id, idlen; /* the decoded key, in scan.ids */
	int ours; /* in the error status with limpeza's own mark */
	int by_mark; /* its fate is decided as limpeza's mark */
};

/* What one pass learns from the file. */
struct scan {
	const struct config *cfg;
	struct member *m;
	size_t n, cap;
	char *ids;
	size_t ids_len, ids_cap;
	off_t size; /* the file's length */
	const struct marks *mk; /* limpeza's marks, to know its own */
	uint64_t hash[2]; /* of the bytes read (jsonscan_hash) */
	int too_many; /* more than CACHE_MAX_MEMBERS: the scan stopped */
};

static int is_mark(const struct marks *, const char *, size_t);
static int written(const struct member *, const struct config *);

static size_t window_bytes; /* 0: the scanner's default */

struct cache *
cache_new(void)
{
	struct cache *c = calloc(1, sizeof(*c));

	if (c == NULL || (c->seen = json_object()) == NULL)
		fatalx_oom();
	return c;
}

/*
 * With ids set, a forced pass notes the id of every job it ends (or would)
 * in it, so the forced cleanup counts distinct jobs across the stores;
 * NULL stops that.
 */
void
cache_collect_forced(struct cache *c, json_t *ids)
{
	c->forced_ids = ids;
}

/* Forgets the file, so the next pass reads it (new settings, new TTLs). */
void
cache_invalidate(struct cache *c)
{
	c->known = 0;
}

/*
 * When the file must be read again, in monotonic ms: its first active job
 * falls due, or a finished job's retention (LLONG_MAX if nothing is due,
 * or if the file is not known yet).
 */
long long
cache_next_due(const struct cache *c)
{
	return c->known ? c->next_due : LLONG_MAX;
}

void
cache_free(struct cache *c)
{
	if (c == NULL)
		return;
	json_decref(c->seen);
	json_decref(c->active_ids);
	free(c);
}

/* For tests: the scan window's first size, to cut jobs anywhere (0: default).
 */
void
cache_set_window(size_t n)
{
	window_bytes = n;
}

static int
job_active(enum job_state st)
{
	return st == JOB_RUNNING || st == JOB_QUEUED;
}

static int
job_finished(enum job_state st)
{
	return st == JOB_DONE || st == JOB_ERROR;
}

/*
 * How finished jobs leave the file. With a database, by their rows: the
 * API answers a finished job from its table first, so once the row is
 * finished too the cache copy is dead weight. Without one, only when the
 * operator asked for it: nothing else says the job's result was kept.
 */
enum cache_retention
cache_retention_mode(const struct config *cfg)
{
	if (cfg->cache_retention == 0)
		return RETENTION_OFF;
	if (cfg->database_url != NULL && *cfg->database_url != '\0')
		return RETENTION_ROWS;
	return cfg->cache_retention_set ? RETENTION_FIRST_SIGHT : RETENTION_OFF;
}

/*
 * Decides one job's fate. now is the host clock (the clock that wrote
 * the times); first_age is how long this job has been seen in its status,
 * used when it has no usable time, and for a finished job how long it
 * has been finished (by its row, or by first sight; < 0: not known). A
 * job is reaped only when it is strictly older than its TTL, and a
 * finished one leaves only when strictly older than its retention.
 */
enum cache_fate
cache_decide(const struct cache_job *job, const struct cache_policy *p,
    double now, double first_age, double *age)
{
	double t;

	*age = 0;
	if (job->state == JOB_OTHER)
		return p->force && p->force_all ? FATE_FORCED : FATE_KEEP;
	if (job_finished(job->state)) {
		if (p->force)
			return p->force_all ? FATE_FORCED : FATE_KEEP;
		*age = first_age;
		return p->retention > 0 && first_age > p->retention
		    ? FATE_RETIRED
		    : FATE_KEEP;
	}
	t = job->start_time;
	if (t <= 0 && job->state == JOB_QUEUED)
		t = job->created_at;
	*age = t > 0 ? now - t : first_age;
	if (p->force)
		return p->force_min_age > 0 && *age < p->force_min_age
		    ? FATE_KEEP
		    : FATE_FORCED;
	if (job->state == JOB_RUNNING && *age > p->running_ttl)
		return FATE_RUNNING;
	if (job->state == JOB_QUEUED && *age > p->queued_ttl)
		return FATE_QUEUED;
	return FATE_KEEP;
}

/* The state a status value (its JSON bytes) stands for. */
static enum job_state
status_of(const struct config *cfg, const char *v, size_t n)
{
	char decoded[6 * MAX_STATUS + 2];
	const char *s = v + 1;
	size_t len = n - 2;

	if (v[0] != '"')
		return JOB_OTHER;
	if (memchr(v, '\\', n) != NULL) {
		if (n > sizeof(decoded))
			return JOB_OTHER;
		len = jsonscan_string(v, n, decoded);
		s = decoded;
	}
	if (len == strlen(cfg->running_status) &&
	    memcmp(s, cfg->running_status, len) == 0)
		return JOB_RUNNING;
	if (len == strlen(cfg->queued_status) &&
	    memcmp(s, cfg->queued_status, len) == 0)
		return JOB_QUEUED;
	if (len == strlen(DONE_STATUS) && memcmp(s, DONE_STATUS, len) == 0)
		return JOB_DONE;
	if (len == strlen(cfg->error_status) &&
	    memcmp(s, cfg->error_status, len) == 0)
		return JOB_ERROR;
	return JOB_OTHER;
}

/*
 * A job's deciding fields, while its bytes are in the scan window: the
 * status, and for an active job its times and where a mark would go.
 */
static void
read_job(const struct config *cfg, struct member *m,
    const struct jsonscan_member *jm)
{
	const struct jsonscan_field *f = jm->field;
	const char *b = jm->bytes;

	m->job.state = status_of(cfg, b + f[F_STATUS].value_start,
	    f[F_STATUS].value_end - f[F_STATUS].value_start);
	if (!job_active(m->job.state))
		return;
	if (f[F_START].value_end != 0)
		(void)jobtime_parse(b + f[F_START].value_start,
		    f[F_START].value_end - f[F_START].value_start,
		    &m->job.start_time);
	if (f[F_CREATED].value_end != 0)
		(void)jobtime_parse(b + f[F_CREATED].value_start,
		    f[F_CREATED].value_end - f[F_CREATED].value_start,
		    &m->job.created_at);
	m->status_ke = jm->off + (off_t)f[F_STATUS].key_end;
	m->status_vs = jm->off + (off_t)f[F_STATUS].value_start;
	m->status_ve = jm->off + (off_t)f[F_STATUS].value_end;
	/* Python keeps the last "error": a mark must be it. */
	if (f[F_ERROR].value_end != 0 &&
	    f[F_ERROR].key_start > f[F_STATUS].key_start) {
		m->error_vs = jm->off + (off_t)f[F_ERROR].value_start;
		m->error_ve = jm->off + (off_t)f[F_ERROR].value_end;
	}
}

/* The scanner's callback: one member, its key kept, its job read. */
static int
on_member(void *arg, const struct jsonscan_member *jm)
{
	struct scan *s = arg;
	struct member *m;
	size_t cap;

	if (s->n == CACHE_MAX_MEMBERS) {
		s->too_many = 1;
		return -1;
	}
	if (s->n == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 256;
		if ((s->m = realloc(s->m, s->cap * sizeof(*s->m))) == NULL)
			fatalx_oom();
	}
	if (s->ids == NULL || s->ids_len + jm->key_len > s->ids_cap) {
		for (cap = s->ids_cap ? s->ids_cap : 65536;
		     cap < s->ids_len + jm->key_len; cap *= 2)
			;
		if ((s->ids = realloc(s->ids, cap)) == NULL)
			fatalx_oom();
		s->ids_cap = cap;
	}
	m = &s->m[s->n++];
	memset(m, 0, sizeof(*m));
	m->ks = jm->off;
	m->ke = jm->off + (off_t)jm->key_end;
	m->vs = jm->off + (off_t)jm->value_start;
	m->ve = jm->off + (off_t)jm->len;
	memcpy(s->ids + s->ids_len, jm->key, jm->key_len);
	m->id = s->ids_len;
	m->idlen = jm->key_len;
	s->ids_len += jm->key_len;
	if (jm->object && jm->field[F_STATUS].value_end != 0)
		read_job(s->cfg, m, jm);
	if (m->job.state == JOB_ERROR && jm->field[F_ERROR].value_end != 0)
		m->ours =
		    is_mark(s->mk, jm->bytes + jm->field[F_ERROR].value_start,
			jm->field[F_ERROR].value_end -
			    jm->field[F_ERROR].value_start);
	return 0;
}

/*
 * Scans the file open as fd. Returns 0 with its members in s, 1 if it was
 * caught mid-write (read it again), -1 if it is left alone (logged).
 */
static int
scan_file(int fd, const char *path, const struct stat *st, struct scan *s)
{
	struct jsonscan js = { fd, window_bytes, field_names, NFIELDS,
		on_member, s, 0, 0, NULL, 0, { 0, 0 } };
	char msg[128];
	long line, col;

	switch (jsonscan_file(&js)) {
	case JSONSCAN_OBJECT:
		s->size = js.size;
		s->hash[0] = js.hash[0];
		s->hash[1] = js.hash[1];
		return 0;
	case JSONSCAN_INVALID:
		if (safefile_settling(fd, st))
			return 1;
		jsonscan_position(fd, js.err_at, &line, &col);
		log_event(LVL_ERROR, EV_CACHE_INVALID, path, line, col, js.err);
		return -1;
	case JSONSCAN_OTHER:
		jsonscan_position(fd, js.value_at, &line, &col);
		log_event(LVL_ERROR, EV_CACHE_NOT_OBJECT, path, line, col);
		return -1;
	case JSONSCAN_FAILED:
		break;
	}
	if (s->too_many) {
		snprintf(msg, sizeof(msg),
		    "more than %d members, limpeza's limit (see limpeza(8)): "
		    "the file is left as it is",
		    CACHE_MAX_MEMBERS);
		log_event(LVL_ERROR, EV_CACHE_ERROR, path, msg);
		return -1;
	}
	log_event(LVL_ERROR, EV_CACHE_ERROR, path, strerror(errno));
	return -1;
}

static void
scan_free(struct scan *s)
{
	free(s->m);
	free(s->ids);
	memset(s, 0, sizeof(*s));
}

/* FNV-1a: the keys are job ids, short and already spread out. */
static size_t
id_hash(const char *p, size_t n)
{
	uint64_t h = 14695981039346656037ULL;

	while (n-- > 0)
		h = (h ^ (unsigned char)*p++) * 1099511628211ULL;
	return (size_t)h;
}

/*
 * Marks the members whose key a later member repeats: Python keeps only
 * the last. The table holds member indices, so a file of 20,000 jobs
 * costs one allocation, not 20,000.
 */
static void
find_superseded(struct scan *s)
{
	size_t i, h, mask, size = 16, *slot;

	while (size < s->n * 2)
		size *= 2;
	mask = size - 1;
	if ((slot = malloc(size * sizeof(*slot))) == NULL)
		fatalx_oom();
	memset(slot, 0xff, size * sizeof(*slot));
	for (i = 0; i < s->n; i++) {
		struct member *m = &s->m[i];
		const char *id = s->ids + m->id;

		for (h = id_hash(id, m->idlen) & mask; slot[h] != SIZE_MAX;
		     h = (h + 1) & mask) {
			struct member *o = &s->m[slot[h]];

			if (o->idlen == m->idlen &&
			    memcmp(s->ids + o->id, id, m->idlen) == 0) {
				o->superseded = 1;
				break;
			}
		}
		slot[h] = i;
	}
	free(slot);
}

/*
 * How long an active job without a usable time has been seen in its
 * status, or a finished job seen finished, in seconds: 0 at first sight.
 * Noted in seen, the next pass's memory, keyed "status\nid" ("\nid" for
 * a finished job, done or error alike: no status word is empty).
 */
static double
first_sight(const struct cache *c, const struct config *cfg,
    const struct scan *s, const struct member *m, long long mono, json_t *seen)
{
	const char *status = m->job.state == JOB_RUNNING ? cfg->running_status
	    : m->job.state == JOB_QUEUED		 ? cfg->queued_status
							 : "";
	size_t sl = strlen(status), skl = sl + 1 + m->idlen;
	double age = 0;
	json_t *first;
	char *sk;

	if ((sk = malloc(skl)) == NULL)
		fatalx_oom();
	memcpy(sk, status, sl);
	sk[sl] = '\n';
	memcpy(sk + sl + 1, s->ids + m->id, m->idlen);
	first = json_object_getn(c->seen, sk, skl);
	if (first != NULL) {
		age = (double)(mono - json_integer_value(first)) / MS_PER_S;
		json_object_setn_nocheck(seen, sk, skl, first);
	} else
		json_object_setn_new_nocheck(seen, sk, skl, json_integer(mono));
	free(sk);
	return age;
}

/*
 * The look-up step of retention, between scan and decide: one question to
 * the store about every finished job in the file (the store asks in
 * bounded chunks), whose answers decide takes as they are: a row finished
 * for how long by the database's clock, or no row, or a row still active.
 * A store that cannot answer leaves every answer "not known", so nothing
 * leaves the file for retention, and that is said once until it answers;
 * the step has failed all the same (-1). A stop during the question is no
 * such failure (1): the pass is abandoned, and the cycle names the step
 * it left undone.
 */
static int
lookup_rows(struct cache *c, struct store *st, struct scan *s)
{
	struct store_row *rows;
	size_t i, n = 0, k;

	for (i = 0; i < s->n; i++)
		if (!s->m[i].superseded && job_finished(s->m[i].job.state))
			n++;
	if (n == 0)
		return 0;
	if ((rows = calloc(n, sizeof(*rows))) == NULL)
		fatalx_oom();
	for (i = 0, k = 0; i < s->n; i++)
		if (!s->m[i].superseded && job_finished(s->m[i].job.state)) {
			rows[k].id = s->ids + s->m[i].id;
			rows[k++].idlen = s->m[i].idlen;
		}
	if (st->ops->finished(st, rows, n) == -1) {
		free(rows);
		if (st->stopped)
			return 1;
		if (!c->retention_down)
			log_event(LVL_WARNING, EV_CACHE_RETENTION_DOWN,
			    st->ops->name, st->err);
		c->retention_down = 1;
		return -1;
	}
	c->retention_down = 0;
	for (i = 0, k = 0; i < s->n; i++)
		if (!s->m[i].superseded && job_finished(s->m[i].job.state)) {
			s->m[i].row = rows[k].state;
			s->m[i].row_age = rows[k++].age_s;
		}
	free(rows);
	return 0;
}

/*
 * How long a finished job has been finished, for retention, or -1 if that
 * is not known: by its row's updated time on the store's clock with a
 * database (no row, a row still active, no answer: not known), else by
 * how long limpeza has seen it finished.
 */
static double
finished_age(const struct cache *c, const struct config *cfg,
    const struct scan *s, const struct member *m, enum cache_retention mode,
    long long mono, json_t *seen)
{
	switch (mode) {
	case RETENTION_ROWS:
		return m->row == ROW_FINISHED ? m->row_age : -1;
	case RETENTION_FIRST_SIGHT:
		return first_sight(c, cfg, s, m, mono, seen);
	case RETENTION_OFF:
		break;
	}
	return -1;
}

/* The policy of one pass; retention has no part in a forced cleanup. */
static void
policy_init(struct cache_policy *pol, const struct config *cfg, int force,
    enum cache_retention mode)
{
	memset(pol, 0, sizeof(*pol));
	pol->running_ttl = (double)cfg->running_ttl / MS_PER_S;
	pol->queued_ttl = (double)cfg->queued_ttl / MS_PER_S;
	pol->force = force;
	pol->force_all = cfg->force_cache == FORCE_ALL;
	pol->force_min_age = (double)cfg->force_min_age / MS_PER_S;
	if (mode != RETENTION_OFF && !force)
		pol->retention = (double)cfg->cache_retention / MS_PER_S;
	if (!force)
		pol->mark_retention = (double)cfg->cache_retention / MS_PER_S;
}

/*
 * A job limpeza marked that no row vouches for: without a database, or
 * when the store answered that it has no row. Its mark is all it holds,
 * so it leaves LIMPEZA_CACHE_RETENTION after the mark (from first sight
 * after a restart), or it would stay for ever.
 */
static int
mark_unvouched(const struct cache *c, enum cache_retention mode,
    const struct cache_policy *pol, const struct member *m)
{
	if (!m->ours || pol->mark_retention <= 0)
		return 0;
	if (mode != RETENTION_ROWS)
		return 1;
	return pol->retention > 0 && !c->retention_down && m->row == ROW_NONE;
}

/*
 * Decides every member, one at a time: its own bytes and, for an active
 * job without a usable time, how long limpeza has seen it; for a finished
 * one, how long it has been finished.
 */
static void
decide_all(struct cache *c, const struct config *cfg,
    const struct cache_policy *pol, enum cache_retention mode, struct scan *s,
    json_t *seen)
{
	double now = now_realtime(), first_age;
	long long mono = now_monotonic_ms();
	size_t i;

	for (i = 0; i < s->n; i++) {
		struct member *m = &s->m[i];

		if (m->superseded)
			continue;
		if (mark_unvouched(c, mode, pol, m)) {
			m->by_mark = 1;
			m->age = first_sight(c, cfg, s, m, mono, seen);
			m->fate = m->age > pol->mark_retention ? FATE_RETIRED
							       : FATE_KEEP;
			continue;
		}
		if (job_active(m->job.state))
			first_age = first_sight(c, cfg, s, m, mono, seen);
		else if (job_finished(m->job.state) && pol->retention > 0)
			first_age =
			    finished_age(c, cfg, s, m, mode, mono, seen);
		else {
			/*
			 * A forced pass judges no retention, but the finished
			 * jobs it keeps keep their first-sight clocks: the
			 * next pass goes on from them.
			 */
			if (job_finished(m->job.state) &&
			    mode == RETENTION_FIRST_SIGHT)
				(void)first_sight(c, cfg, s, m, mono, seen);
			first_age = -1;
		}
		m->fate = cache_decide(&m->job, pol, now, first_age, &m->age);
	}
}

/*
 * The pass's figures: active jobs left and the oldest of them, finished
 * jobs, and when the file must be read again: the first active job falls
 * due, or a kept finished job's retention ends. One the store could not
 * vouch for (no row, or not finished yet) is looked up again a retention
 * later: its row cannot have been finished for longer by then, so it
 * still leaves on time, and an unchanged file is not read every cycle for
 * it. Returns how many members change.
 */
static long
tally(const struct scan *s, const struct config *cfg,
    const struct cache_policy *pol, struct cache_result *res,
    long long *next_due)
{
	long long due, mono = now_monotonic_ms();
	long changes = 0;
	double ttl, left, ret;
	size_t i;

	res->active = 0;
	res->oldest_s = -1;
	res->finished = 0;
	*next_due = LLONG_MAX;
	for (i = 0; i < s->n; i++) {
		const struct member *m = &s->m[i];

		if (m->superseded)
			continue;
		if (job_finished(m->job.state))
			res->finished++;
		if (m->fate != FATE_KEEP) {
			changes++;
			/* A job marked now leaves a retention later. */
			due = mono +
			    (long long)(pol->mark_retention * MS_PER_S) + 1;
			if (written(m, cfg) && pol->mark_retention > 0 &&
			    due < *next_due)
				*next_due = due;
			continue;
		}
		ret = m->by_mark ? pol->mark_retention : pol->retention;
		if (job_finished(m->job.state) && ret > 0) {
			left = (m->age >= 0 ? ret - m->age : ret) * MS_PER_S;
			/* rounded up: at its due time it is past retention */
			due = mono + (long long)left;
			if ((double)(long long)left < left)
				due++;
			if (due < *next_due)
				*next_due = due;
			continue;
		}
		if (!job_active(m->job.state))
			continue;
		res->active++;
		if (m->age > res->oldest_s)
			res->oldest_s = m->age;
		ttl = (double)(m->job.state == JOB_RUNNING ? cfg->running_ttl
							   : cfg->queued_ttl) /
		    MS_PER_S;
		due = mono + (long long)((ttl - m->age) * MS_PER_S);
		if (due < *next_due)
			*next_due = due;
	}
	return changes;
}

/* What marking splices into a job, JSON-encoded once per pass. */
struct marks {
	char *status; /* the error status */
	char *msg[3]; /* the message, by reap kind */
};

#define ERROR_KEY ", \"error\""

/* s as a JSON string in ASCII, as json.dump writes by default. */
static char *
quoted(const char *s)
{
	json_t *v = json_string(s);
	char *text;

	if (v == NULL) /* not UTF-8: a setting's bytes, shown as '?' */
		v = json_string("?");
	text = json_dumps(v, JSON_ENCODE_ANY | JSON_ENSURE_ASCII);
	json_decref(v);
	if (text == NULL)
		fatalx_oom();
	return text;
}

static void
marks_init(struct marks *mk, const struct config *cfg)
{
	static const enum reap_kind kinds[3] = { REAP_RUNNING, REAP_QUEUED,
		REAP_FORCED };
	char msg[256];
	int k;

	mk->status = quoted(cfg->error_status);
	for (k = 0; k < 3; k++) {
		log_reap_message(cfg, kinds[k], msg, sizeof(msg));
		mk->msg[k] = quoted(msg);
	}
}

/* Whether an "error" value's bytes are one of limpeza's marks. */
static int
is_mark(const struct marks *mk, const char *v, size_t n)
{
	int k;

	if (mk == NULL)
		return 0;
	for (k = 0; k < 3; k++)
		if (strlen(mk->msg[k]) == n && memcmp(mk->msg[k], v, n) == 0)
			return 1;
	return 0;
}

/*
 * Jobs this pass marked are seen in the error status from now on: their
 * retention counts from the mark.
 */
static void
note_marks(const struct scan *s, const struct config *cfg, json_t *seen)
{
	long long mono = now_monotonic_ms();
	size_t i;
	char *sk;

	for (i = 0; i < s->n; i++) {
		const struct member *m = &s->m[i];

		if (m->fate == FATE_KEEP || m->fate == FATE_RETIRED ||
		    !written(m, cfg))
			continue;
		if ((sk = malloc(m->idlen + 1)) == NULL)
			fatalx_oom();
		sk[0] = '\n';
		memcpy(sk + 1, s->ids + m->id, m->idlen);
		json_object_setn_new_nocheck(
		    seen, sk, m->idlen + 1, json_integer(mono));
		free(sk);
	}
}

static void
marks_free(struct marks *mk)
{
	int k;

	free(mk->status);
	for (k = 0; k < 3; k++)
		free(mk->msg[k]);
}

/*
 * Is the member in the new file? Kept jobs are, and in mark mode reaped
 * active jobs too (marked); the rest go (finished jobs past their
 * retention among them), and so does every member whose key a later one
 * repeats.
 */
static int
written(const struct member *m, const struct config *cfg)
{
	if (m->superseded)
		return 0;
	if (m->fate == FATE_KEEP)
		return 1;
	/* Only active jobs are marked: retention removes in mark mode too. */
	return cfg->cache_action == CACHE_MARK && job_active(m->job.state);
}

/*
 * A marked job: its own bytes with the status value replaced and an
 * "error" member set (its value replaced, or a member added after the
 * status, with the file's own key separator).
 */
static void
put_marked(struct safefile_out *o, const struct member *m, const char *status,
    const char *msg)
{
	safefile_put(o, NULL, m->ks, (size_t)(m->status_vs - m->ks));
	safefile_put(o, status, 0, strlen(status));
	if (m->error_ve == 0) {
		safefile_put(o, ERROR_KEY, 0, strlen(ERROR_KEY));
		safefile_put(o, NULL, m->status_ke,
		    (size_t)(m->status_vs - m->status_ke));
		safefile_put(o, msg, 0, strlen(msg));
		safefile_put(
		    o, NULL, m->status_ve, (size_t)(m->ve - m->status_ve));
		return;
	}
	safefile_put(
	    o, NULL, m->status_ve, (size_t)(m->error_vs - m->status_ve));
	safefile_put(o, msg, 0, strlen(msg));
	safefile_put(o, NULL, m->error_ve, (size_t)(m->ve - m->error_ve));
}

/*
 * The new file, as pieces of the old one: what precedes the first member
 * ('{' and white space), each member written with the separator that
 * followed the one before it, and what follows the last member. With
 * nothing left out, that is the old file byte for byte.
 */
static void
build_output(const struct scan *s, const struct config *cfg,
    const struct marks *mk, struct safefile_out *o)
{
	const struct member *m, *prev = NULL, *last = &s->m[s->n - 1];
	size_t i;

	safefile_put(o, NULL, 0, (size_t)s->m[0].ks);
	for (i = 0; i < s->n; i++) {
		m = &s->m[i];
		if (!written(m, cfg))
			continue;
		if (prev != NULL)
			safefile_put(
			    o, NULL, prev->ve, (size_t)(prev[1].ks - prev->ve));
		if (m->fate == FATE_KEEP)
			safefile_put(o, NULL, m->ks, (size_t)(m->ve - m->ks));
		else
			put_marked(o, m, mk->status,
			    mk->msg[m->fate == FATE_RUNNING  ? 0
				    : m->fate == FATE_QUEUED ? 1
							     : 2]);
		prev = m;
	}
	safefile_put(o, NULL, last->ve, (size_t)(s->size - last->ve));
}

/*
 * The pass's log: a line per job it ends, then a count; finished jobs
 * that leave for retention are counted in a line of their own (their ids
 * at debug level; a dry run names each at info level).
 */
static void
log_reaped(const struct scan *s, const struct config *cfg,
    enum cache_retention mode, int dry_run, json_t *ids,
    struct cache_result *res)
{
	char ret[32];
	size_t i;

	for (i = 0; i < s->n; i++) {
		const struct member *m = &s->m[i];
		char *id;

		if (m->superseded || m->fate == FATE_KEEP)
			continue;
		if ((id = strndup(s->ids + m->id, m->idlen)) == NULL)
			fatalx_oom();
		switch (m->fate) {
		case FATE_RUNNING:
			log_event(LVL_INFO,
			    dry_run ? EV_CACHE_WOULD_ORPHAN : EV_CACHE_ORPHAN,
			    id, (long)m->age);
			res->reaped_running++;
			break;
		case FATE_QUEUED:
			log_event(LVL_INFO,
			    dry_run ? EV_CACHE_WOULD_QUEUED : EV_CACHE_QUEUED,
			    id);
			res->reaped_queued++;
			break;
		case FATE_FORCED:
			log_event(LVL_INFO,
			    dry_run ? EV_CACHE_WOULD_FORCE : EV_CACHE_FORCED,
			    id);
			res->forced++;
			if (ids != NULL)
				json_object_setn_nocheck(
				    ids, s->ids + m->id, m->idlen, json_true());
			if (m->job.state == JOB_RUNNING)
				res->forced_running++;
			else if (m->job.state == JOB_QUEUED)
				res->forced_queued++;
			break;
		case FATE_RETIRED:
			log_event(dry_run ? LVL_INFO : LVL_DEBUG,
			    dry_run ? EV_CACHE_WOULD_RETIRE_JOB
				    : EV_CACHE_RETIRED_JOB,
			    id, (long)m->age);
			res->retired++;
			if (m->job.state == JOB_ERROR)
				res->retired_error++;
			if (m->by_mark)
				res->retired_marked++;
			break;
		case FATE_KEEP:
			break;
		}
		free(id);
	}
	if (res->reaped_running + res->reaped_queued > 0)
		log_event(LVL_INFO,
		    dry_run				  ? EV_CACHE_WOULD_CLEAN
			: cfg->cache_action == CACHE_MARK ? EV_CACHE_MARKED
							  : EV_CACHE_CLEANED,
		    res->reaped_running + res->reaped_queued);
	if (res->retired == 0)
		return;
	config_format_duration(cfg->cache_retention, ret, sizeof(ret));
	if (dry_run)
		log_event(LVL_INFO, EV_CACHE_WOULD_RETIRE, res->retired, ret);
	else if (res->retired == res->retired_marked)
		;
	else if (mode == RETENTION_ROWS)
		log_event(LVL_INFO, EV_CACHE_RETIRED,
		    res->retired - res->retired_marked);
	else
		log_event(LVL_INFO, EV_CACHE_RETIRED_SEEN,
		    res->retired - res->retired_marked, ret);
	if (!dry_run && res->retired_marked > 0)
		log_event(LVL_INFO, EV_CACHE_RETIRED_MARKED,
		    res->retired_marked, ret);
}

/* The ids of the active jobs a pass keeps. */
static json_t *
kept_active(const struct scan *s)
{
	json_t *ids = json_object();
	size_t i;

	if (ids == NULL)
		fatalx_oom();
	for (i = 0; i < s->n; i++) {
		const struct member *m = &s->m[i];

		if (!m->superseded && m->fate == FATE_KEEP &&
		    job_active(m->job.state))
			json_object_setn_nocheck(
			    ids, s->ids + m->id, m->idlen, json_true());
	}
	return ids;
}

/*
 * After another process rewrote the file (the API's health route, say):
 * how many of the active jobs the last pass kept are now in the error
 * status with a message that is not limpeza's. The file is read without
 * its lock and changes nothing. Returns the count, or -1 when it cannot
 * be read whole (caught mid-write, say).
 */
long
cache_ended_by_others(struct cache *c, const struct config *cfg)
{
	struct scan s = { cfg, NULL, 0, 0, NULL, 0, 0, 0, NULL, { 0, 0 }, 0 };
	struct marks mk = { NULL, { NULL, NULL, NULL } };
	struct stat st;
	long n = -1;
	size_t i;
	int fd;

	if (c->active_ids == NULL || json_object_size(c->active_ids) == 0)
		return 0;
	if ((fd = open(cfg->cache_file, O_RDONLY | O_CLOEXEC)) == -1)
		return -1;
	marks_init(&mk, cfg);
	s.mk = &mk;
	if (fstat(fd, &st) == 0 &&
	    scan_file(fd, cfg->cache_file, &st, &s) == 0) {
		find_superseded(&s);
		n = 0;
		for (i = 0; i < s.n; i++) {
			const struct member *m = &s.m[i];

			if (!m->superseded && m->job.state == JOB_ERROR &&
			    !m->ours &&
			    json_object_getn(
				c->active_ids, s.ids + m->id, m->idlen) != NULL)
				n++;
		}
	}
	scan_free(&s);
	marks_free(&mk);
	close(fd);
	return n;
}

/*
 * One pass over the file, in five steps: open and lock, scan, look up
 * (retention's question to the store), decide, commit. Returns 0 when
 * done (whether or not anything changed), 1 when the file changed
 * underneath and the pass must be retried, -1 on an error that was
 * logged.
 */
static int
cache_pass(struct cache *c, const struct config *cfg, struct store *store,
    int force, int dry_run, struct cache_result *res)
{
	const char *path = cfg->cache_file;
	enum cache_retention mode = cache_retention_mode(cfg);
	struct scan s = { cfg, NULL, 0, 0, NULL, 0, 0, 0, NULL, { 0, 0 }, 0 };
	struct safefile_out out = { NULL, 0, 0 };
	struct marks mk = { NULL, { NULL, NULL, NULL } };
	struct cache_policy pol;
	struct stat st, written_st;
	const struct stat *version = &st;
	json_t *seen = NULL;
	long long next_due;
	long changes;
	char err[512];
	int fd, rc = -1, r;

	/* Open and lock: the version read is the one that stays known. */
	r = safefile_open(path, &fd, &st, err, sizeof(err));
	if (r == -1 && errno == ENOENT) {
		log_event(LVL_DEBUG, EV_CACHE_MISSING, path);
		return 0;
	}
	if (r == -1)
		log_event(LVL_ERROR, EV_CACHE_ERROR, path, err);
	if (r != 0)
		return r;
	if (!dry_run)
		safefile_remove_leftovers(path);

	/* Scan: every member, and what decides each job's fate. */
	marks_init(&mk, cfg);
	s.mk = &mk;
	if ((r = scan_file(fd, path, &st, &s)) != 0) {
		rc = r;
		goto done;
	}

	find_superseded(&s);

	/*
	 * Look up: whether the database holds each finished job as finished,
	 * and since when. It runs under the file's lock, as the scan and
	 * the commit do: one short read-only statement per chunk of ids.
	 */
	policy_init(&pol, cfg, force, mode);
	if (pol.retention > 0 && mode == RETENTION_ROWS && store != NULL &&
	    (r = lookup_rows(c, store, &s)) != 0) {
		if (r == 1) {
			rc = 0; /* a stop: nothing written, store->stopped tells
				 */
			goto done;
		}
		res->lookup_failed = 1;
	}

	/* Decide. */
	if ((seen = json_object()) == NULL)
		fatalx_oom();
	decide_all(c, cfg, &pol, mode, &s, seen);
	changes = tally(&s, cfg, &pol, res, &next_due);

	/* Commit: a new file only if something changes. */
	if (changes > 0 && !dry_run) {
		build_output(&s, cfg, &mk, &out);
		r = safefile_replace(
		    path, fd, &st, s.hash, &out, &written_st, err, sizeof(err));
		if (r == 1) {
			rc = 1;
			goto done;
		}
		if (r == -1) {
			log_event(LVL_ERROR, EV_CACHE_ERROR, path, err);
			goto done;
		}
		res->rewritten = 1;
		note_marks(&s, cfg, seen);
		version = &written_st;
	}
	if (changes > 0)
		log_reaped(&s, cfg, mode, dry_run, c->forced_ids, res);
	json_decref(c->seen);
	c->seen = seen;
	seen = NULL;
	json_decref(c->active_ids);
	c->active_ids = kept_active(&s);
	/*
	 * A dry run leaves its reapable jobs in place, and a failed look-up
	 * its finished ones unasked: read it again.
	 */
	c->known = !force && !(dry_run && changes > 0) && !res->lookup_failed;
	c->last = *version;
	c->next_due = next_due;
	c->active = res->active;
	c->finished = res->finished - (res->rewritten ? res->retired : 0);
	c->size = res->size = version->st_size;
	c->oldest_since = now_realtime() - res->oldest_s;
	rc = 0;
done:
	json_decref(seen);
	scan_free(&s);
	safefile_out_free(&out);
	marks_free(&mk);
	close(fd);
	return rc;
}

/*
 * Reaps the cache file: stale jobs (or, with force, active ones, and all
 * jobs when LIMPEZA_FORCE_CACHE=all), and finished jobs past their
 * retention, asking store (NULL: none) about their rows. A file that
 * changes while it is being cleaned is read again, a few times at most.
 */
int
cache_reap(struct cache *c, const struct config *cfg, struct store *store,
    int force, int dry_run, struct cache_result *res)
{
	struct stat now;
	int try, r;

	memset(res, 0, sizeof(*res));
	res->oldest_s = -1;
	if (cfg->cache_file == NULL || *cfg->cache_file == '\0')
		return 0;
	/* Nothing changed and nothing is due: no need to read 50 MB. */
	if (!force && c->known && lstat(cfg->cache_file, &now) == 0 &&
	    safefile_same_version(&c->last, &now) &&
	    now_monotonic_ms() < c->next_due) {
		res->active = c->active;
		res->finished = c->finished;
		res->size = c->size;
		res->oldest_s =
		    c->active > 0 ? now_realtime() - c->oldest_since : -1;
		log_event(LVL_DEBUG, EV_CACHE_UNCHANGED, cfg->cache_file);
		return 0;
	}
	c->known = 0;
	for (try = 0; try < CACHE_TRIES; try++) {
		memset(res, 0, sizeof(*res));
		res->oldest_s = -1;
		r = cache_pass(c, cfg, store, force, dry_run, res);
		/*
		 * Retention's look-up failed: the pass did the rest. One
		 * abandoned for a stop is no failure: the cycle ends stopped.
		 */
		if (r == 0 && res->lookup_failed && !store->stopped)
			return -1;
		if (r != 1)
			return r;
		log_event(LVL_DEBUG, EV_CACHE_CHANGED, cfg->cache_file);
	}
	/* A failed step: the stale jobs are still there. */
	log_event(LVL_WARNING, EV_CACHE_GAVE_UP, cfg->cache_file);
	return -1;
}
