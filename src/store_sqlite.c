/* store_sqlite.c: the embedded SQLite job store (UTC text times). */

#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "store.h"

#define BUSY_TIMEOUT_MS 5000
/* SQLAlchemy writes UTC text with microseconds; so do we. */
/* A row's age in seconds since its created time, for its log line. */
#define SQL_AGE "(julianday('now') - julianday(%s)) * 86400.0"
#define SQL_NOW "strftime('%%Y-%%m-%%d %%H:%%M:%%f000', 'now')"

struct store_sqlite {
	struct store s;
	sqlite3 *db;
	char *path;
	char table[160];
	char id[70], status[70], updated[70], created[70], error[70];
};

static struct store *
sqlite_open(const struct config *cfg)
{
	struct store_sqlite *q = calloc(1, sizeof(*q));

	if (q == NULL)
		return NULL;
	/* sqlite:///rel.db is relative, sqlite:////abs.db absolute. */
	q->path = strdup(cfg->database_url + strlen("sqlite:///"));
	if (q->path == NULL) {
		free(q);
		return NULL;
	}
	store_quote_table(cfg->table, q->table, sizeof(q->table));
	snprintf(q->id, sizeof(q->id), "\"%s\"", cfg->id_column);
	snprintf(q->status, sizeof(q->status), "\"%s\"", cfg->status_column);
	snprintf(q->updated, sizeof(q->updated), "\"%s\"", cfg->updated_column);
	snprintf(q->created, sizeof(q->created), "\"%s\"", cfg->created_column);
	snprintf(q->error, sizeof(q->error), "\"%s\"", cfg->error_column);
	return &q->s;
}

static void
sqlite_close(struct store *s)
{
	struct store_sqlite *q = (struct store_sqlite *)s;

	sqlite3_close(q->db);
	free(q->path);
	free(q);
}

/* RETURNING, which reports the ids of the rows ended, came in 3.35.0. */
#define SQLITE_MIN_VERSION 3035000

/*
 * Opens the database file if not open; it must already exist. The SQLite
 * loaded at run time may be older than the one built against: it is
 * refused with a clear reason (at start, in the first cycle, and by
 * `check`), never left to fail on the first RETURNING.
 */
static int
sqlite_connect(struct store_sqlite *q)
{
	if (q->db != NULL)
		return 0;
	if (sqlite3_libversion_number() < SQLITE_MIN_VERSION) {
		store_err(&q->s,
		    "SQLite %s is too old: 3.35.0 or later is needed "
		    "(RETURNING)",
		    sqlite3_libversion());
		return -1;
	}
	if (sqlite3_open_v2(q->path, &q->db, SQLITE_OPEN_READWRITE, NULL) !=
	    SQLITE_OK) {
		store_err(&q->s, "cannot open %s: %s", q->path,
		    q->db != NULL ? sqlite3_errmsg(q->db) : "out of memory");
		sqlite3_close(q->db);
		q->db = NULL;
		return -1;
	}
	/* A writer holding the lock makes us wait, not fail. */
	sqlite3_busy_timeout(q->db, BUSY_TIMEOUT_MS);
	return 0;
}

static int
prepare(struct store_sqlite *q, const char *sql, sqlite3_stmt **st)
{
	if (sqlite_connect(q) == -1)
		return -1;
	if (sqlite3_prepare_v2(q->db, sql, -1, st, NULL) != SQLITE_OK) {
		store_err(&q->s, "%s: %s", q->path, sqlite3_errmsg(q->db));
		return -1;
	}
	return 0;
}

/* "-180.000 seconds": a julianday() modifier for an age in milliseconds. */
static void
age_modifier(long long ms, char *buf, size_t len)
{
	snprintf(
	    buf, len, "-%lld.%03lld seconds", ms / MS_PER_S, ms % MS_PER_S);
}

/*
 * Ends, in batches, the rows of one status that the condition selects,
 * giving each the error status and message and a fresh updated time. Each
 * batch is one short statement (its own transaction), so a live writer
 * waits at most one batch. With dry_run the rows are only listed.
 */
static int
end_rows(struct store_sqlite *q, const char *status, const char *cond,
    const char *mod, int dry_run, enum reap_kind kind, long *count,
    store_job_fn fn, void *arg)
{
	const struct config *cfg = q->s.cfg;
	sqlite3_stmt *st = NULL;
	char sql[1024], msg[256];
	long batch_rows;
	int rc;

	log_reap_message(cfg, kind, msg, sizeof(msg));
	if (dry_run)
		snprintf(sql, sizeof(sql),
		    "SELECT %s, " SQL_AGE " FROM %s WHERE %s = ?3 AND (%s)",
		    q->id, q->created, q->table, q->status, cond);
	else
		snprintf(sql, sizeof(sql),
		    "UPDATE %s SET %s = ?1, %s = ?2, %s = " SQL_NOW
		    " WHERE rowid IN (SELECT rowid FROM %s WHERE %s = ?3 AND "
		    "(%s) LIMIT ?5) RETURNING %s, " SQL_AGE,
		    q->table, q->status, q->error, q->updated, q->table,
		    q->status, cond, q->id, q->created);
	if (prepare(q, sql, &st) == -1)
		return -1;
	do {
		batch_rows = 0;
		sqlite3_reset(st);
		sqlite3_clear_bindings(st);
		if (!dry_run) {
			sqlite3_bind_text(
			    st, 1, cfg->error_status, -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 2, msg, -1, SQLITE_STATIC);
			sqlite3_bind_int64(st, 5, cfg->batch);
		}
		sqlite3_bind_text(st, 3, status, -1, SQLITE_STATIC);
		if (mod != NULL)
			sqlite3_bind_text(st, 4, mod, -1, SQLITE_STATIC);
		while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
			const char *id =
			    (const char *)sqlite3_column_text(st, 0);

			batch_rows++;
			if (fn != NULL)
				fn(arg, kind, status, id != NULL ? id : "",
				    sqlite3_column_type(st, 1) == SQLITE_NULL
					? -1
					: sqlite3_column_double(st, 1));
		}
		if (rc != SQLITE_DONE) {
			store_err(
			    &q->s, "%s: %s", q->path, sqlite3_errmsg(q->db));
			sqlite3_finalize(st);
			return -1;
		}
		*count += batch_rows;
	} while (!dry_run && batch_rows == cfg->batch);
	sqlite3_finalize(st);
	return 0;
}

/* A local file has one reaper: no election. */
static int
sqlite_reap(struct store *s, const struct store_req *r, struct store_counts *c)
{
	struct store_sqlite *q = (struct store_sqlite *)s;
	char cond[256], mod[64];

	/* Aged by the updated time, or the created one when that is NULL. */
	snprintf(cond, sizeof(cond),
	    "julianday(coalesce(%s, %s)) < julianday('now', ?4)", q->updated,
	    q->created);
	age_modifier(s->cfg->running_ttl, mod, sizeof(mod));
	if (end_rows(q, s->cfg->running_status, cond, mod, r->dry_run,
		REAP_RUNNING, &c->running, r->fn, r->arg) == -1)
		return -1;
	age_modifier(s->cfg->queued_ttl, mod, sizeof(mod));
	if (end_rows(q, s->cfg->queued_status, cond, mod, r->dry_run,
		REAP_QUEUED, &c->queued, r->fn, r->arg) == -1)
		return -1;
	return 1;
}

/* Forced cleanup ends every active row but those created within FORCE_MIN_AGE.
 */
static int
sqlite_force(struct store *s, const struct store_req *r, struct store_counts *c)
{
	struct store_sqlite *q = (struct store_sqlite *)s;
	char cond[256], mod[64], *m = NULL;

	if (s->cfg->force_min_age > 0) {
		snprintf(cond, sizeof(cond),
		    "julianday(coalesce(%s, %s)) < julianday('now', ?4)",
		    q->created, q->updated);
		age_modifier(s->cfg->force_min_age, mod, sizeof(mod));
		m = mod;
	} else
		snprintf(cond, sizeof(cond), "1");
	if (end_rows(q, s->cfg->running_status, cond, m, r->dry_run,
		REAP_FORCED, &c->forced, r->fn, r->arg) == -1)
		return -1;
	if (end_rows(q, s->cfg->queued_status, cond, m, r->dry_run, REAP_FORCED,
		&c->forced, r->fn, r->arg) == -1)
		return -1;
	return 1;
}

static int
sqlite_stats(struct store *s, struct store_stats *out)
{
	struct store_sqlite *q = (struct store_sqlite *)s;
	sqlite3_stmt *st = NULL;
	char sql[1024];
	int rc;

	out->active = 0;
	out->oldest_s = out->oldest_running_s = out->oldest_queued_s = -1;
	snprintf(sql, sizeof(sql),
	    "SELECT %s, count(*) FROM %s WHERE julianday(%s) >= "
	    "julianday('now', '-1 day') GROUP BY %s ORDER BY %s",
	    q->status, q->table, q->created, q->status, q->status);
	if (prepare(q, sql, &st) == -1)
		return -1;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *status = (const char *)sqlite3_column_text(st, 0);

		json_object_set_new(out->by_status,
		    status != NULL ? status : "null",
		    json_integer(sqlite3_column_int64(st, 1)));
	}
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		goto fail;

	snprintf(sql, sizeof(sql),
	    "SELECT %s, count(*), max((julianday('now') - "
	    "julianday(coalesce(%s, "
	    "%s))) * 86400.0) FROM %s WHERE %s IN (?1, ?2) GROUP BY 1",
	    q->status, q->updated, q->created, q->table, q->status);
	if (prepare(q, sql, &st) == -1)
		return -1;
	sqlite3_bind_text(st, 1, s->cfg->running_status, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, s->cfg->queued_status, -1, SQLITE_STATIC);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		stats_add_active(s->cfg, out,
		    (const char *)sqlite3_column_text(st, 0),
		    (long)sqlite3_column_int64(st, 1),
		    sqlite3_column_type(st, 2) == SQLITE_NULL
			? -1
			: sqlite3_column_double(st, 2));
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		goto fail;
	return 0;
fail:
	store_err(s, "%s: %s", q->path, sqlite3_errmsg(q->db));
	return -1;
}

static int
sqlite_next_due(struct store *s, double *secs)
{
	struct store_sqlite *q = (struct store_sqlite *)s;
	sqlite3_stmt *st = NULL;
	char sql[1024], rm[64], qm[64];
	int rc, found = 0;

	snprintf(sql, sizeof(sql),
	    "SELECT (min(julianday(coalesce(%s, %s), CASE %s WHEN ?1 THEN ?2 "
	    "ELSE ?3 END)) - julianday('now')) * 86400.0 FROM %s WHERE %s IN "
	    "(?1, ?4)",
	    q->updated, q->created, q->status, q->table, q->status);
	if (prepare(q, sql, &st) == -1)
		return -1;
	snprintf(rm, sizeof(rm), "+%lld.%03lld seconds",
	    s->cfg->running_ttl / MS_PER_S, s->cfg->running_ttl % MS_PER_S);
	snprintf(qm, sizeof(qm), "+%lld.%03lld seconds",
	    s->cfg->queued_ttl / MS_PER_S, s->cfg->queued_ttl % MS_PER_S);
	sqlite3_bind_text(st, 1, s->cfg->running_status, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, rm, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, qm, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, s->cfg->queued_status, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
		*secs = sqlite3_column_double(st, 0);
		found = 1;
	}
	sqlite3_finalize(st);
	if (rc != SQLITE_ROW) {
		store_err(s, "%s: %s", q->path, sqlite3_errmsg(q->db));
		return -1;
	}
	return found;
}

/*
 * Retention's look-up: one statement per id, reading only, on the job id
 * index. A job's row is finished when every row of its id is (done or
 * the error status, with an updated time SQLite can read), and its age
 * is the youngest one's, by SQLite's clock: UTC text, as the API writes.
 */
static int
sqlite_finished(struct store *s, struct store_row *rows, size_t n)
{
	struct store_sqlite *q = (struct store_sqlite *)s;
	sqlite3_stmt *st = NULL;
	char sql[1024];
	size_t i;

	snprintf(sql, sizeof(sql),
	    "SELECT count(*), coalesce(min(coalesce(%s IN (?2, ?3), 0) AND "
	    "julianday(%s) IS NOT NULL), 0), (julianday('now') - "
	    "max(julianday(%s))) * 86400.0 FROM %s WHERE %s = ?1",
	    q->status, q->updated, q->updated, q->table, q->id);
	if (prepare(q, sql, &st) == -1)
		return -1;
	sqlite3_bind_text(st, 2, DONE_STATUS, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, s->cfg->error_status, -1, SQLITE_STATIC);
	for (i = 0; i < n; i++) {
		rows[i].state = ROW_NONE;
		rows[i].age_s = 0;
		sqlite3_reset(st);
		sqlite3_bind_text(
		    st, 1, rows[i].id, (int)rows[i].idlen, SQLITE_STATIC);
		if (sqlite3_step(st) != SQLITE_ROW) {
			store_err(s, "%s: %s", q->path, sqlite3_errmsg(q->db));
			sqlite3_finalize(st);
			return -1;
		}
		if (sqlite3_column_int64(st, 0) == 0)
			continue;
		if (sqlite3_column_int(st, 1) == 0 ||
		    sqlite3_column_type(st, 2) == SQLITE_NULL) {
			rows[i].state = ROW_OPEN;
			continue;
		}
		rows[i].state = ROW_FINISHED;
		rows[i].age_s = sqlite3_column_double(st, 2);
	}
	sqlite3_finalize(st);
	return 0;
}

/*
 * `limpeza check` counts the active rows that have neither an updated nor
 * a created time: no age, so they are never reaped.
 */
static int
check_ageless(struct store_sqlite *q, FILE *out)
{
	const struct config *cfg = q->s.cfg;
	sqlite3_stmt *st = NULL;
	char sql[1024];
	long n;

	snprintf(sql, sizeof(sql),
	    "SELECT count(*) FROM %s WHERE %s IN (?1, ?2) AND %s IS NULL AND "
	    "%s IS NULL",
	    q->table, q->status, q->updated, q->created);
	if (prepare(q, sql, &st) == -1)
		return -1;
	sqlite3_bind_text(st, 1, cfg->running_status, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, cfg->queued_status, -1, SQLITE_STATIC);
	if (sqlite3_step(st) != SQLITE_ROW) {
		store_err(&q->s, "%s: %s", q->path, sqlite3_errmsg(q->db));
		sqlite3_finalize(st);
		return -1;
	}
	n = (long)sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	store_check_ageless(cfg, out, n);
	return 0;
}

/* Checks that the table and every configured column exist. */
static int
sqlite_check(struct store *s, FILE *out)
{
	struct store_sqlite *q = (struct store_sqlite *)s;
	const struct config *cfg = s->cfg;
	const char *want[] = { cfg->id_column, cfg->status_column,
		cfg->updated_column, cfg->created_column, cfg->error_column };
	char types[5][64] = { "", "", "", "", "" };
	int found[5] = { 0 }, ncols = 0, i, rc = 0;
	sqlite3_stmt *st = NULL;
	const char *dot = strchr(cfg->table, '.');
	char sql[256];

	if (dot != NULL)
		snprintf(sql, sizeof(sql), "PRAGMA \"%.*s\".table_info(\"%s\")",
		    (int)(dot - cfg->table), cfg->table, dot + 1);
	else
		snprintf(
		    sql, sizeof(sql), "PRAGMA table_info(\"%s\")", cfg->table);
	if (prepare(q, sql, &st) == -1)
		return -1;
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *name = (const char *)sqlite3_column_text(st, 1);
		const char *type = (const char *)sqlite3_column_text(st, 2);

		ncols++;
		for (i = 0; i < 5; i++) {
			if (name == NULL || strcmp(name, want[i]) != 0)
				continue;
			found[i] = 1;
			snprintf(types[i], sizeof(types[i]), "%s",
			    type != NULL ? type : "");
		}
	}
	sqlite3_finalize(st);
	fprintf(out, "ok: sqlite database %s (SQLite %s)\n", q->path,
	    sqlite3_libversion());
	if (ncols == 0) {
		store_err(s, "table %s not found", cfg->table);
		return -1;
	}
	for (i = 0; i < 5; i++) {
		if (found[i]) {
			fprintf(out, "ok: column %s.%s (%s)\n", cfg->table,
			    want[i], types[i]);
			continue;
		}
		fprintf(
		    out, "FAIL: column %s.%s not found\n", cfg->table, want[i]);
		rc = -1;
	}
	if (rc == -1) {
		store_err(
		    s, "table %s lacks usable configured columns", cfg->table);
		return -1;
	}
	return check_ageless(q, out);
}

const struct store_ops store_sqlite_ops = {
	.name = "sqlite",
	.elects = 0,
	.open = sqlite_open,
	.reap = sqlite_reap,
	.force = sqlite_force,
	.stats = sqlite_stats,
	.next_due = sqlite_next_due,
	.finished = sqlite_finished,
	.check = sqlite_check,
	.close = sqlite_close,
};
