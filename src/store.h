/* store.h: the job-store interface; store_pg.c, store_sqlite.c fill it. */

#ifndef STORE_H
#define STORE_H

#include "limpeza.h"

/*
 * A driver's handle starts with this header. A handle is created without
 * connecting; every operation (re)connects as needed, so a store that is
 * down at start-up or goes away later is simply retried. An operation that
 * fails returns -1 and leaves a one-line reason in err (never a password);
 * the caller decides how loudly to log it, so an outage is logged once per
 * change of state, not once per cycle.
 */
struct store {
	const struct store_ops *ops;
	const struct config *cfg;
	char err[512];
	/* The last operation was abandoned for a stop, not failed. */
	int stopped;
	/*
	 * Monotonic ms by which the current cycle's store work must end (0:
	 * none): every wait stops there, however many statements a cycle
	 * (its retention look-up included) sends to a slow database.
	 */
	long long deadline;
};

/*
 * Called for every reaped row: its kind, the status it had, its job id,
 * and its age in seconds since its created time by the store's clock (-1
 * when that time is NULL).
 */
typedef void (*store_job_fn)(
    void *, enum reap_kind, const char *, const char *, double);

/*
 * What a reaping operation (reap, force) is asked to do. With elect, a
 * store shared by several hosts reaps only while no other instance does
 * (a daemon); without it, it reaps regardless (`limpeza once`), which the
 * re-checked, row-locking statements make safe.
 */
struct store_req {
	int dry_run;
	int elect;
	store_job_fn fn;
	void *arg;
};

/* A transaction that holds stale rows, as pg_stat_activity shows it. */
#define STORE_MAX_HOLDERS 4
struct store_holder {
	long pid;
	char state[32];
	double age_s; /* since its transaction began */
	long rows;
};

struct store_counts {
	long running;
	long queued;
	long forced;
	/* Stale rows the reaping looked at and could not end. */
	long skipped;
	/* Of those, rows another transaction holds, and who holds them. */
	long held;
	struct store_holder holders[STORE_MAX_HOLDERS];
	int nholders;
};

#define STORE_MAX_STATUSES 32

struct store_stats {
	json_t
	    *by_status; /* status -> count of jobs created in the last 24 h */
	long active; /* running + queued rows */
	double oldest_s; /* age of the oldest active row, -1 if none */
	/* the same per status, by the store's clock: when each falls due */
	double oldest_running_s, oldest_queued_s;
};

/* A finished cache job's row, as retention asks about it. */
enum row_state {
	ROW_NONE, /* no row (or no answer) */
	ROW_OPEN, /* a row, not finished */
	ROW_FINISHED /* done or the error status */
};
struct store_row {
	const char *id; /* the job id: idlen bytes, any of them */
	size_t idlen;
	enum row_state state;
	double age_s; /* ROW_FINISHED: since its updated time, store's clock */
};

struct store_ops {
	const char *name;
	/* 1 if the store is shared and reap/force hold an election. */
	int elects;
	struct store *(*open)(const struct config *);
	/*
	 * Reaping and forced cleanup: 1 when done, 0 when another instance
	 * leads (asked to elect: nothing was done), -1 on failure.
	 */
	int (*reap)(
	    struct store *, const struct store_req *, struct store_counts *);
	int (*force)(
	    struct store *, const struct store_req *, struct store_counts *);
	int (*stats)(struct store *, struct store_stats *);
	/*
	 * Seconds until the first active row goes stale by the store's
	 * clock (negative if one already is): 1, or 0 if no row is active.
	 */
	int (*next_due)(struct store *, double *);
	/*
	 * Retention (SPEC §1.1): for each of n cache jobs, whether its row
	 * is finished and for how long, by the store's clock. Read-only and
	 * never elected: every host asks about its own cache file. 0, or -1
	 * with err set (then nothing is known).
	 */
	int (*finished)(struct store *, struct store_row *, size_t);
	int (*check)(struct store *, FILE *);
	void (*close)(struct store *);
};

/* store.c */
struct store *store_open(const struct config *);
void store_close(struct store *);
const char *store_kind(const struct config *);
void store_err(struct store *, const char *, ...)
    __attribute__((format(printf, 2, 3)));
int store_quote_table(const char *, char *, size_t);
void stats_add_active(
    const struct config *, struct store_stats *, const char *, long, double);
void store_check_ageless(const struct config *, FILE *, long);

/* store_sqlite.c */
extern const struct store_ops store_sqlite_ops;

/* store_pg.c */
extern const struct store_ops store_pg_ops;

#endif /* STORE_H */
