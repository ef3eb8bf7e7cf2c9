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
};

/* Called for every reaped row: its kind, the status it had, its job id. */
typedef void (*store_job_fn)(
    void *, enum reap_kind, const char *, const char *);

struct store_counts {
	long running;
	long queued;
	long forced;
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

struct store_ops {
	const char *name;
	struct store *(*open)(const struct config *);
	/* 1 when this daemon may reap the database, 0 when another one leads.
	 */
	int (*lead)(struct store *);
	int (*reap)(
	    struct store *, int, struct store_counts *, store_job_fn, void *);
	int (*force)(
	    struct store *, int, struct store_counts *, store_job_fn, void *);
	int (*stats)(struct store *, struct store_stats *);
	/*
	 * Seconds until the first active row goes stale by the store's
	 * clock (negative if one already is): 1, or 0 if no row is active.
	 */
	int (*next_due)(struct store *, double *);
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

/* store_sqlite.c */
extern const struct store_ops store_sqlite_ops;

/* store_pg.c */
extern const struct store_ops store_pg_ops;

#endif /* STORE_H */
