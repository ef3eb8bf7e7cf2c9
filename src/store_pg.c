/* store_pg.c: the PostgreSQL job store (libpq): batched, no session state. */

#include <sys/socket.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "store.h"

/*
 * limpeza's own bound on a connection: libpq's connect_timeout bounds
 * only its blocking connect, and a URL's connect_timeout=0 makes that
 * wait for ever. A shorter connect_timeout is honoured (connect_ms()).
 */
#define CONNECT_TIMEOUT_MS (10 * MS_PER_S)
#define STATEMENT_TIMEOUT "30s"
#define LOCK_TIMEOUT "2s"
/* Rows one look at the stale rows returns at most. */
#define LOOK_ROWS 50000
/* The client gives up a little after the server should have. */
#define CLIENT_TIMEOUT_MS (35 * MS_PER_S)
#define BACKOFF_MIN_MS (1 * MS_PER_S)
#define BACKOFF_MAX_MS (30 * MS_PER_S)
/* How long a stop waits for the server to take its cancel request. */
#define CANCEL_WAIT_MS 300
/* end_batch(): another instance took the leader's lock meanwhile. */
#define BATCH_LOST (-2)
/*
 * What a transaction's statements need, for that transaction only; and
 * its name in pg_stat_activity, which a pooler would carry from a
 * session's start to the API's clients.
 */
#define SET_LOCAL                                     \
	"SELECT set_config('TimeZone', $1, true), "   \
	"set_config('statement_timeout', $2, true), " \
	"set_config('lock_timeout', $3, true), "      \
	"set_config('application_name', 'limpeza', true)"

/*
 * One persistent connection, which may be a transaction pooler's
 * (PgBouncer, Supavisor): so nothing limpeza needs lives in the server
 * session. Each operation is one or more explicit transactions that set
 * what their statements need with SET LOCAL (struct setup) and, when they
 * reap for a daemon, take the leader's lock for that transaction alone;
 * a transaction's statements go in one round trip where they can
 * (pg_run(), pg_read()).
 * After a failure the connection is re-made no sooner than next_try,
 * with a backoff that doubles up to BACKOFF_MAX_MS, so a database that
 * is down is not hammered every cycle. The identifiers are quoted once,
 * here, and every statement and `limpeza check` use these same names.
 */
struct store_pg {
	struct store s;
	PGconn *conn;
	char *password; /* only to scrub it from libpq's messages */
	/* Why libpq cannot be used, if it cannot. */
	char libpq_err[256];
	long long next_try;
	long long backoff;
	long long connect_ms; /* a connection's bound (connect_timeout) */
	char table[160];
	char id[80], status[80], updated[80], created[80], error[80];
	/* The id column's type for retention (enum id_kind), per connection. */
	int id_kind;
	/* The URL's one host name, which limpeza resolves itself, or "". */
	char resolve[256];
};

/*
 * How long a connection may take by the URL's connect_timeout, as libpq
 * reads it (at least 2 s; 0 or less for ever), and never more than
 * CONNECT_TIMEOUT_MS. It bounds the whole connect, every host included.
 */
static long long
connect_ms(const char *val)
{
	char *end;
	long v;

	if (val == NULL)
		return CONNECT_TIMEOUT_MS;
	errno = 0;
	v = strtol(val, &end, 10);
	if (errno != 0 || end == val || v <= 0 ||
	    v >= CONNECT_TIMEOUT_MS / MS_PER_S)
		return CONNECT_TIMEOUT_MS;
	return (v < 2 ? 2 : v) * (long long)MS_PER_S;
}

/*
 * Whether the URL's host is one name that libpq would resolve itself,
 * synchronously, inside PQconnectStartParams() (libpq 15): a resolver
 * that does not answer would then hold a stop. Not a list of hosts, a
 * socket directory or an address.
 */
static int
pg_needs_lookup(const char *host)
{
	unsigned char a[sizeof(struct in6_addr)];

	return host != NULL && *host != '\0' && *host != '/' && *host != '@' &&
	    strchr(host, ',') == NULL && strlen(host) < 256 &&
	    inet_pton(AF_INET, host, a) != 1 &&
	    inet_pton(AF_INET6, host, a) != 1;
}

static int
pg_env_set(const char *name)
{
	const char *v = getenv(name);

	return v != NULL && *v != '\0';
}

/*
 * An address given (hostaddr), a service (its file may give one), or a
 * list of ports: libpq is left to it.
 */
static int
pg_libpq_addr(const PQconninfoOption *o)
{
	if (o->val == NULL)
		return 0;
	if (strcmp(o->keyword, "hostaddr") == 0 ||
	    strcmp(o->keyword, "service") == 0)
		return *o->val != '\0';
	return strcmp(o->keyword, "port") == 0 && strchr(o->val, ',') != NULL;
}

static struct store *
pg_open(const struct config *cfg)
{
	struct store_pg *p = calloc(1, sizeof(*p));
	PQconninfoOption *opts, *o;

	if (p == NULL)
		return NULL;
	p->backoff = BACKOFF_MIN_MS;
	p->connect_ms = CONNECT_TIMEOUT_MS;
	/* config.c allows plain identifiers only: quoting is all it takes. */
	store_quote_table(cfg->table, p->table, sizeof(p->table));
	snprintf(p->id, sizeof(p->id), "\"%s\"", cfg->id_column);
	snprintf(p->status, sizeof(p->status), "\"%s\"", cfg->status_column);
	snprintf(p->updated, sizeof(p->updated), "\"%s\"", cfg->updated_column);
	snprintf(p->created, sizeof(p->created), "\"%s\"", cfg->created_column);
	snprintf(p->error, sizeof(p->error), "\"%s\"", cfg->error_column);
	/* Without libpq every operation fails with this reason. */
	if (libs_pq(p->libpq_err, sizeof(p->libpq_err)) == -1)
		return &p->s;
	/* libpq's message would quote the text, password and all. */
	if ((opts = PQconninfoParse(cfg->database_url, NULL)) == NULL) {
		snprintf(p->libpq_err, sizeof(p->libpq_err),
		    "libpq cannot parse DATABASE_URL");
		return &p->s;
	}
	for (o = opts; o->keyword != NULL; o++)
		if (strcmp(o->keyword, "password") == 0 && o->val != NULL &&
		    *o->val != '\0')
			p->password = strdup(o->val);
		else if (strcmp(o->keyword, "connect_timeout") == 0)
			p->connect_ms = connect_ms(o->val);
	for (o = opts; o->keyword != NULL; o++)
		if (strcmp(o->keyword, "host") == 0 && pg_needs_lookup(o->val))
			snprintf(p->resolve, sizeof(p->resolve), "%s", o->val);
	for (o = opts; o->keyword != NULL; o++)
		if (pg_libpq_addr(o))
			*p->resolve = '\0';
	/* An address pinned outside the URL (PGHOSTADDR, a service file)
	 * is libpq's to use: a hostaddr of ours would override it. */
	if (pg_env_set("PGHOSTADDR") || pg_env_set("PGSERVICE"))
		*p->resolve = '\0';
	PQconninfoFree(opts);
	return &p->s;
}

static void
pg_disconnect(struct store_pg *p)
{
	PQfinish(p->conn);
	p->conn = NULL;
	p->id_kind = 0;
}

static void
pg_close(struct store *s)
{
	struct store_pg *p = (struct store_pg *)s;

	pg_disconnect(p);
	free(p->password);
	free(p);
}

/* Records an error, with the password (if libpq quoted it) masked. */
static void
pg_err(struct store_pg *p, const char *what, const char *msg)
{
	char *at;

	store_err(&p->s, "%s: %s", what, msg != NULL ? msg : "unknown error");
	if (p->password == NULL || strlen(p->password) < 3)
		return;
	while ((at = strstr(p->s.err, p->password)) != NULL) {
		size_t pl = strlen(p->password);

		memmove(at + 3, at + pl, strlen(at + pl) + 1);
		memcpy(at, "***", 3);
	}
}

static void
pg_failed_connection(struct store_pg *p)
{
	pg_disconnect(p);
	p->next_try = now_monotonic_ms() + p->backoff;
	p->backoff *= 2;
	if (p->backoff > BACKOFF_MAX_MS)
		p->backoff = BACKOFF_MAX_MS;
}

/*
 * Starts fn(arg) in a detached thread that the caller waits for in
 * slices on cv (on the monotonic clock), so that a stop never waits on
 * it: libpq's cancel and getaddrinfo() have no timeout of their own.
 */
static int
helper_start(
    pthread_mutex_t *mu, pthread_cond_t *cv, void *(*fn)(void *), void *arg)
{
	pthread_condattr_t ca;
	pthread_attr_t at;
	pthread_t t;
	int r;

	pthread_mutex_init(mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(cv, &ca);
	pthread_condattr_destroy(&ca);
	pthread_attr_init(&at);
	pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
	r = pthread_create(&t, &at, fn, arg);
	pthread_attr_destroy(&at);
	return r;
}

/*
 * A cancel request in flight. PQcancel() opens a connection of its own
 * and waits, without a timeout, until the server closes it (libpq 15 has
 * no asynchronous cancel): a server that accepts and never answers would
 * hold a stop for ever. So it runs in a thread of its own, which the stop
 * waits for at most CANCEL_WAIT_MS; whichever of the two leaves last
 * frees this.
 */
struct cancel {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	PGcancel *cn;
	int done;
	int refs;
};

static void
cancel_release(struct cancel *k)
{
	int last;

	pthread_mutex_lock(&k->mu);
	last = --k->refs == 0;
	pthread_mutex_unlock(&k->mu);
	if (!last)
		return;
	PQfreeCancel(k->cn);
	pthread_cond_destroy(&k->cv);
	pthread_mutex_destroy(&k->mu);
	free(k);
}

static void *
cancel_run(void *arg)
{
	struct cancel *k = arg;
	char why[256];

	(void)PQcancel(k->cn, why, sizeof(why));
	pthread_mutex_lock(&k->mu);
	k->done = 1;
	pthread_cond_signal(&k->cv);
	pthread_mutex_unlock(&k->mu);
	cancel_release(k);
	return NULL;
}

/*
 * Asks the server to cancel conn's statement, waiting for the request to
 * be taken at most CANCEL_WAIT_MS. Returns 1 if it was, 0 if not (or it
 * could not be sent).
 */
static int
cancel_bounded(PGconn *conn)
{
	struct cancel *k;
	struct timespec until;
	int done, r;

	if ((k = calloc(1, sizeof(*k))) == NULL)
		fatalx_oom();
	if ((k->cn = PQgetCancel(conn)) == NULL) {
		free(k);
		return 0;
	}
	k->refs = 2; /* before the thread can release its own */
	r = helper_start(&k->mu, &k->cv, cancel_run, k);
	if (r != 0) {
		k->refs = 1;
		cancel_release(k);
		return 0;
	}
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_nsec += (CANCEL_WAIT_MS % MS_PER_S) * 1000000L;
	until.tv_sec += CANCEL_WAIT_MS / MS_PER_S + until.tv_nsec / 1000000000L;
	until.tv_nsec %= 1000000000L;
	pthread_mutex_lock(&k->mu);
	while (!k->done &&
	    pthread_cond_timedwait(&k->cv, &k->mu, &until) != ETIMEDOUT)
		;
	done = k->done;
	pthread_mutex_unlock(&k->mu);
	cancel_release(k);
	return done;
}

/*
 * A stop while a statement is in flight: the server is asked to cancel
 * it (a batch's COMMIT travels with its UPDATE, which would otherwise
 * commit once its row lock came free, unlogged), and the connection is
 * dropped. The request is waited for CANCEL_WAIT_MS at most: past that
 * the stop goes on, and a statement the server never heard about may
 * still finish there. A connect in progress is just dropped.
 */
static void
pg_stopped(struct store_pg *p)
{
	if (PQstatus(p->conn) == CONNECTION_OK && !cancel_bounded(p->conn))
		store_err(&p->s,
		    "abandoned for a stop (the server did not take the "
		    "cancel request within %d ms)",
		    CANCEL_WAIT_MS);
	else
		store_err(&p->s, "abandoned for a stop");
	p->s.stopped = 1;
	pg_disconnect(p);
}

/* One statement and its parameters. */
struct stmt {
	const char *sql;
	int n;
	const char *const *params;
};

/* A wait's deadline, ms from now, within the cycle's (store.deadline). */
static long long
cycle_cap(const struct store_pg *p, long long ms)
{
	long long d = now_monotonic_ms() + ms;

	return p->s.deadline != 0 && p->s.deadline < d ? p->s.deadline : d;
}

/*
 * Waits until the connection's socket is ready for events or deadline
 * passes: 1, 0 at the deadline, -1 if poll() fails, -2 when a stop is
 * pending (asked every STOP_SLICE_MS).
 */
static int
pg_poll(PGconn *conn, short events, long long deadline)
{
	struct pollfd pfd;
	long long left;
	int r;

	pfd.fd = PQsocket(conn);
	pfd.events = events;
	if (pfd.fd < 0) {
		errno = EBADF;
		return -1;
	}
	for (;;) {
		if (stop_pending())
			return -2;
		left = deadline - now_monotonic_ms();
		if (left <= 0)
			return 0;
		r = poll(&pfd, 1,
		    (int)(left > STOP_SLICE_MS ? STOP_SLICE_MS : left));
		if (r > 0)
			return 1;
		if (r == -1 && errno != EINTR)
			return -1;
	}
}

/*
 * Sends what libpq still holds and waits until it has the next result
 * whole (or none is coming), at most until deadline: 0, or -1 with the
 * error recorded and the connection dropped. The connection is
 * non-blocking (pg_connect()): a peer that stops reading a large batch
 * cannot hold limpeza any more than one that never answers, which
 * statement_timeout alone cannot help against.
 */
static int
pg_wait(struct store_pg *p, long long deadline)
{
	int unsent, r;

	for (;;) {
		/* What was read already first: the connection may end after. */
		if (!PQisBusy(p->conn))
			return 0;
		if ((unsent = PQflush(p->conn)) == -1)
			goto broken;
		if (!PQconsumeInput(p->conn))
			goto broken;
		if (!PQisBusy(p->conn))
			return 0;
		r = pg_poll(
		    p->conn, unsent ? POLLIN | POLLOUT : POLLIN, deadline);
		if (r == -2) {
			pg_stopped(p);
			return -1;
		}
		if (r == 0 && deadline == p->s.deadline) {
			store_err(&p->s,
			    "the cycle's time for the database "
			    "is up");
			pg_failed_connection(p);
			return -1;
		}
		if (r == 0) {
			store_err(&p->s,
			    unsent ? "the database took nothing more of what "
				     "was sent within %llds"
				   : "no answer from the database within %llds",
			    CLIENT_TIMEOUT_MS / MS_PER_S);
			pg_failed_connection(p);
			return -1;
		}
		if (r == -1) {
			store_err(&p->s, "connection lost: poll: %s",
			    strerror(errno));
			pg_failed_connection(p);
			return -1;
		}
	}
broken:
	pg_err(p, "connection lost", PQerrorMessage(p->conn));
	pg_failed_connection(p);
	return -1;
}

/*
 * Sends n statements in one round trip (libpq's pipeline mode, one Sync:
 * no server-side prepared statement, only the unnamed one of each) and
 * waits at most CLIENT_TIMEOUT_MS for all their answers. Fills res[i]
 * with each statement's result, for the caller to PQclear(), and returns
 * 0; or -1 with the first error recorded and no result kept. A broken or
 * hung connection is dropped. After an error inside a transaction, the
 * caller rolls it back (pg_abort()). With whole, when the connection is
 * lost after the first statements' answers came back whole and fine,
 * their results are kept all the same and *whole says how many: a COMMIT
 * among them did happen, whatever was lost after it.
 */
static int
pg_run(
    struct store_pg *p, int n, const struct stmt *q, PGresult **res, int *whole)
{
	long long deadline = cycle_cap(p, CLIENT_TIMEOUT_MS);
	PGresult *r;
	ExecStatusType st;
	int i, done = 0, bad = -1;

	for (i = 0; i < n; i++)
		res[i] = NULL;
	if (whole != NULL)
		*whole = 0;
	if (!PQenterPipelineMode(p->conn))
		goto broken;
	for (i = 0; i < n; i++)
		if (!PQsendQueryParams(p->conn, q[i].sql, q[i].n, NULL,
			q[i].params, NULL, NULL, 0))
			goto broken;
	if (!PQpipelineSync(p->conn))
		goto broken;
	/* Each statement's results end with a NULL; then the Sync's. */
	for (;;) {
		if (pg_wait(p, deadline) == -1)
			goto dropped;
		r = PQgetResult(p->conn);
		if (done == n) {
			if (r == NULL ||
			    PQresultStatus(r) != PGRES_PIPELINE_SYNC) {
				PQclear(r);
				goto broken;
			}
			PQclear(r);
			break;
		}
		if (r == NULL) {
			done++;
			continue;
		}
		PQclear(res[done]);
		res[done] = r;
		st = PQresultStatus(r);
		if (bad == -1 && st != PGRES_COMMAND_OK &&
		    st != PGRES_TUPLES_OK)
			bad = done;
	}
	if (!PQexitPipelineMode(p->conn))
		goto broken;
	if (bad == -1)
		return 0;
	pg_err(p, "query failed", PQresultErrorMessage(res[bad]));
	for (i = 0; i < n; i++) {
		PQclear(res[i]);
		res[i] = NULL;
	}
	if (PQstatus(p->conn) == CONNECTION_BAD)
		pg_failed_connection(p);
	return -1;
broken:
	pg_err(p, "connection lost", PQerrorMessage(p->conn));
	pg_failed_connection(p);
dropped:
	if (whole != NULL && bad == -1)
		*whole = done;
	for (i = whole != NULL ? *whole : 0; i < n; i++) {
		PQclear(res[i]);
		res[i] = NULL;
	}
	return -1;
}

/* One statement: its result, or NULL with the error recorded. */
static PGresult *
pg_exec(struct store_pg *p, const char *sql, int n, const char *const *vals)
{
	struct stmt q = { sql, n, vals };
	PGresult *res;

	return pg_run(p, 1, &q, &res, NULL) == 0 ? res : NULL;
}

/* Addresses of one name limpeza passes on to libpq, at most. */
#define LOOKUP_ADDRS 8

/*
 * A host name being resolved in a thread of its own (getaddrinfo() has
 * no timeout and no cancel), which the connect waits for in slices,
 * asking for a stop between them; whichever of the two leaves last frees
 * this.
 */
struct lookup {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	char host[256];
	int done;
	int refs;
	int rc; /* getaddrinfo()'s */
	int n;
	char addr[LOOKUP_ADDRS][INET6_ADDRSTRLEN];
};

static void
lookup_release(struct lookup *k)
{
	int last;

	pthread_mutex_lock(&k->mu);
	last = --k->refs == 0;
	pthread_mutex_unlock(&k->mu);
	if (!last)
		return;
	pthread_cond_destroy(&k->cv);
	pthread_mutex_destroy(&k->mu);
	free(k);
}

static void *
lookup_run(void *arg)
{
	struct lookup *k = arg;
	struct addrinfo hints, *res = NULL, *ai;
	char a[INET6_ADDRSTRLEN];
	int rc, n = 0;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	rc = getaddrinfo(k->host, NULL, &hints, &res);
	pthread_mutex_lock(&k->mu);
	for (ai = rc == 0 ? res : NULL; ai != NULL && n < LOOKUP_ADDRS;
	     ai = ai->ai_next)
		if (getnameinfo(ai->ai_addr, ai->ai_addrlen, a, sizeof(a), NULL,
			0, NI_NUMERICHOST) == 0)
			memcpy(k->addr[n++], a, sizeof(a));
	k->rc = rc == 0 && n == 0 ? EAI_NONAME : rc;
	k->n = n;
	k->done = 1;
	pthread_cond_signal(&k->cv);
	pthread_mutex_unlock(&k->mu);
	if (res != NULL)
		freeaddrinfo(res);
	lookup_release(k);
	return NULL;
}

/*
 * Resolves p->resolve before deadline, asking for a stop every
 * STOP_SLICE_MS, into host (the name once per address) and hostaddr
 * (the addresses), for libpq to try in turn as it would have. Returns 0,
 * or -1 with the error recorded (a stop: pg_stopped()).
 */
static int
pg_lookup(struct store_pg *p, long long deadline, char *host, size_t hl,
    char *hostaddr, size_t al)
{
	struct lookup *k;
	struct timespec until;
	long long left;
	int i, r, done = 0;

	if ((k = calloc(1, sizeof(*k))) == NULL)
		fatalx_oom();
	snprintf(k->host, sizeof(k->host), "%s", p->resolve);
	k->refs = 2; /* before the thread can release its own */
	r = helper_start(&k->mu, &k->cv, lookup_run, k);
	if (r != 0) {
		k->refs = 1;
		lookup_release(k);
		store_err(
		    &p->s, "cannot connect: no thread for the name look-up");
		pg_failed_connection(p);
		return -1;
	}
	for (;;) {
		if (stop_pending()) {
			lookup_release(k);
			pg_stopped(p);
			return -1;
		}
		left = deadline - now_monotonic_ms();
		if (left <= 0)
			break;
		if (left > STOP_SLICE_MS)
			left = STOP_SLICE_MS;
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_nsec += (left % MS_PER_S) * 1000000L;
		until.tv_sec += left / MS_PER_S + until.tv_nsec / 1000000000L;
		until.tv_nsec %= 1000000000L;
		pthread_mutex_lock(&k->mu);
		if (!k->done)
			(void)pthread_cond_timedwait(&k->cv, &k->mu, &until);
		done = k->done;
		pthread_mutex_unlock(&k->mu);
		if (done)
			break;
	}
	if (!done) {
		lookup_release(k);
		store_err(&p->s,
		    "cannot connect: no answer from the name server for \"%s\" "
		    "within %llds",
		    p->resolve, p->connect_ms / MS_PER_S);
		pg_failed_connection(p);
		return -1;
	}
	if (k->rc != 0) {
		store_err(&p->s,
		    "cannot connect: could not translate host name \"%s\" to "
		    "address: %s",
		    p->resolve, gai_strerror(k->rc));
		lookup_release(k);
		pg_failed_connection(p);
		return -1;
	}
	*host = *hostaddr = '\0';
	for (i = 0; i < k->n; i++) {
		snprintf(host + strlen(host), hl - strlen(host), "%s%s",
		    i > 0 ? "," : "", p->resolve);
		snprintf(hostaddr + strlen(hostaddr), al - strlen(hostaddr),
		    "%s%s", i > 0 ? "," : "", k->addr[i]);
	}
	lookup_release(k);
	return 0;
}

/*
 * Connects if needed, not before the backoff allows, within the URL's
 * connect_timeout up to CONNECT_TIMEOUT_MS (p->connect_ms; libpq's steps
 * driven by PQconnectPoll()), and leaves the connection non-blocking.
 */
static int
pg_connect(struct store_pg *p)
{
	const struct config *cfg = p->s.cfg;
	static char host[LOOKUP_ADDRS * 257], addrs[LOOKUP_ADDRS * 47];
	const char *kw[] = { "dbname", "host", "hostaddr", NULL };
	const char *val[] = { cfg->database_url, host, addrs, NULL };
	long long now = now_monotonic_ms(), deadline;
	PostgresPollingStatusType st;
	int r;

	if (p->conn != NULL)
		return 0;
	if (*p->libpq_err != '\0') {
		store_err(&p->s, "%s", p->libpq_err);
		return -1;
	}
	/* Within the backoff, the last reason stands in s.err. */
	if (now < p->next_try)
		return -1;
	deadline = cycle_cap(p, p->connect_ms);
	/* libpq would resolve the name itself, without a bound. */
	if (*p->resolve != '\0' &&
	    pg_lookup(p, deadline, host, sizeof(host), addrs, sizeof(addrs)) ==
		-1)
		return -1;
	if (*p->resolve == '\0')
		kw[1] = NULL;
	if ((p->conn = PQconnectStartParams(kw, val, 1)) == NULL)
		fatalx_oom();
	/* Before the first PQconnectPoll(), libpq waits to write. */
	st = PQstatus(p->conn) == CONNECTION_BAD ? PGRES_POLLING_FAILED
						 : PGRES_POLLING_WRITING;
	while (st != PGRES_POLLING_OK) {
		if (st == PGRES_POLLING_FAILED)
			goto fail;
		r = pg_poll(p->conn,
		    st == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline);
		if (r == -2) {
			pg_stopped(p);
			return -1;
		}
		if (r == 0) {
			store_err(&p->s,
			    "cannot connect: no answer from the database "
			    "within %llds",
			    p->connect_ms / MS_PER_S);
			pg_failed_connection(p);
			return -1;
		}
		if (r == -1) {
			store_err(
			    &p->s, "cannot connect: poll: %s", strerror(errno));
			pg_failed_connection(p);
			return -1;
		}
		st = PQconnectPoll(p->conn);
	}
	if (PQsetnonblocking(p->conn, 1) == -1)
		goto fail;
	p->backoff = BACKOFF_MIN_MS;
	*p->s.err = '\0';
	return 0;
fail:
	pg_err(p, "cannot connect", PQerrorMessage(p->conn));
	pg_failed_connection(p);
	return -1;
}

/*
 * Ends a transaction that failed, keeping the reason already recorded.
 * A connection that cannot even roll back is dropped.
 */
static void
pg_abort(struct store_pg *p)
{
	char why[sizeof(p->s.err)];
	PGresult *res;

	if (p->conn == NULL || PQtransactionStatus(p->conn) == PQTRANS_IDLE)
		return;
	memcpy(why, p->s.err, sizeof(why));
	if ((res = pg_exec(p, "ROLLBACK", 0, NULL)) != NULL)
		PQclear(res);
	else if (p->conn != NULL)
		pg_failed_connection(p);
	memcpy(p->s.err, why, sizeof(why));
}

static int
pg_commit(struct store_pg *p)
{
	PGresult *res = pg_exec(p, "COMMIT", 0, NULL);

	if (res == NULL) {
		pg_abort(p);
		return -1;
	}
	PQclear(res);
	return 0;
}

/*
 * The statement that opens each transaction's work: it sets, for that
 * transaction alone (SET LOCAL), the zone naive timestamps are read in
 * and the statement and lock timeouts, as parameters; when electing (and
 * a leader key is set) it also tries the leader's lock, which the end of
 * the transaction releases. So through a pooler no setting and no lock
 * is left on a server connection that the API's queries get next, and a
 * leader that dies is replaced at once.
 */
struct setup {
	char key[32];
	const char *params[4];
	int elect;
	struct stmt q;
};

static void
setup_init(struct store_pg *p, int elect, struct setup *u)
{
	const struct config *cfg = p->s.cfg;

	u->elect = elect && cfg->leader_key != 0;
	snprintf(u->key, sizeof(u->key), "%lld", cfg->leader_key);
	u->params[0] = cfg->db_timezone;
	u->params[1] = STATEMENT_TIMEOUT;
	u->params[2] = LOCK_TIMEOUT;
	u->params[3] = u->key;
	u->q.sql = SET_LOCAL;
	u->q.n = 3;
	if (u->elect) {
		u->q.sql = SET_LOCAL ", pg_try_advisory_xact_lock($4::bigint)";
		u->q.n = 4;
	}
	u->q.params = u->params;
}

/* 1 if this transaction may go on: it leads, or it does not elect. */
static int
setup_led(const struct setup *u, const PGresult *res)
{
	int led = !u->elect || strcmp(PQgetvalue(res, 0, 4), "t") == 0;

	return led;
}

/*
 * Opens a transaction (BEGIN and the setup, one round trip). Returns 1
 * in the transaction, 0 when another instance holds the leader's lock
 * (the transaction is closed again), -1.
 */
static int
pg_begin(struct store_pg *p, int elect)
{
	struct setup u;
	struct stmt q[2];
	PGresult *res[2];
	int led;

	if (pg_connect(p) == -1)
		return -1;
	setup_init(p, elect, &u);
	q[0] = (struct stmt){ "BEGIN", 0, NULL };
	q[1] = u.q;
	if (pg_run(p, 2, q, res, NULL) == -1) {
		pg_abort(p);
		return -1;
	}
	led = setup_led(&u, res[1]);
	PQclear(res[0]);
	PQclear(res[1]);
	if (!led) {
		pg_abort(p);
		return 0;
	}
	return 1;
}

#define READ_MAX 2

/*
 * Reads in one transaction and one round trip: BEGIN, the setup, the n
 * statements, COMMIT. Fills res with their results (the caller clears
 * them) and returns 1; 0 when another instance holds the leader's lock
 * (what was read is dropped; it took no lock); -1.
 */
static int
pg_read(
    struct store_pg *p, int elect, int n, const struct stmt *q, PGresult **res)
{
	struct stmt all[READ_MAX + 3];
	PGresult *r[READ_MAX + 3];
	struct setup u;
	int i, led;

	if (n > READ_MAX) {
		store_err(&p->s, "internal error: %d statements to read", n);
		return -1;
	}
	if (pg_connect(p) == -1)
		return -1;
	setup_init(p, elect, &u);
	all[0] = (struct stmt){ "BEGIN", 0, NULL };
	all[1] = u.q;
	for (i = 0; i < n; i++)
		all[i + 2] = q[i];
	all[n + 2] = (struct stmt){ "COMMIT", 0, NULL };
	if (pg_run(p, n + 3, all, r, NULL) == -1) {
		pg_abort(p);
		return -1;
	}
	led = setup_led(&u, r[1]);
	PQclear(r[0]);
	PQclear(r[1]);
	PQclear(r[n + 2]);
	for (i = 0; i < n; i++) {
		res[i] = led ? r[i + 2] : NULL;
		if (!led)
			PQclear(r[i + 2]);
	}
	return led;
}

/* Statements that depend on each other's answers, in one transaction. */
static int
pg_in_tx(struct store_pg *p, int (*fn)(struct store_pg *, void *), void *arg)
{
	int rc;

	if (pg_begin(p, 0) == -1)
		return -1;
	rc = fn(p, arg);
	if (rc == -1) {
		pg_abort(p);
		return -1;
	}
	if (pg_commit(p) == -1)
		return -1;
	return rc;
}

/*
 * A row's age for its log line, seconds since its created time: NULL
 * when that is NULL or infinite (subtracting infinity is an error).
 */
#define PG_AGE(t)                                                        \
	"CASE WHEN isfinite(" t "%s) THEN extract(epoch FROM now() - " t \
	"%s)::float8 END"

/* Where the rows a batch ended are counted and told. */
struct ending {
	struct store_counts *c;
	enum reap_kind kind;
	const char *status;
	int by_rule; /* the rule is each row's second column: running? */
	int age_col; /* the column of the row's age (seconds, or NULL) */
	const struct store_req *req;
};

static void
count_kind(struct store_counts *c, enum reap_kind kind)
{
	if (kind == REAP_RUNNING)
		c->running++;
	else if (kind == REAP_QUEUED)
		c->queued++;
	else
		c->forced++;
}

/* Counts and tells the rows a committed batch (or a dry look) ended. */
static void
tell_rows(struct store_pg *p, PGresult *res, const struct ending *e)
{
	const struct config *cfg = p->s.cfg;
	enum reap_kind kind;
	const char *status;
	int i;

	for (i = 0; i < PQntuples(res); i++) {
		kind = e->kind;
		status = e->status;
		if (e->by_rule && *PQgetvalue(res, i, 1) == 't') {
			kind = REAP_RUNNING;
			status = cfg->running_status;
		} else if (e->by_rule) {
			kind = REAP_QUEUED;
			status = cfg->queued_status;
		}
		count_kind(e->c, kind);
		if (e->req->fn != NULL)
			e->req->fn(e->req->arg, kind, status,
			    PQgetvalue(res, i, 0),
			    PQgetisnull(res, i, e->age_col)
				? -1
				: strtod(PQgetvalue(res, i, e->age_col), NULL));
	}
}

/*
 * One batch, one transaction: ends the rows among the addresses in
 * params that its statement re-checks, then counts them once committed.
 * The time logged is how long its row locks were held: from the
 * statement to the commit. Returns how many, BATCH_LOST if another
 * instance leads now, or -1.
 */
static int
end_batch(struct store_pg *p, const char *sql, const char *const *params,
    int nparams, const struct ending *e)
{
	struct stmt q[2] = { { sql, nparams, params }, { "COMMIT", 0, NULL } };
	PGresult *res[2];
	long long t0;
	int rows, r, whole;

	if ((r = pg_begin(p, e->req->elect)) != 1)
		return r == 0 ? BATCH_LOST : -1;
	/* The commit goes with the statement: the locks last one trip. */
	t0 = now_monotonic_ms();
	/*
	 * Once the server has confirmed the COMMIT, the rows ended: they are
	 * counted and told even if the connection went before the last
	 * answer (the lost connection stays recorded, and the next
	 * statement reports it).
	 */
	if (pg_run(p, 2, q, res, &whole) == -1 && whole < 2) {
		/* The UPDATE's answer may have come whole before the drop. */
		PQclear(res[0]);
		PQclear(res[1]);
		pg_abort(p);
		return -1;
	}
	rows = PQntuples(res[0]);
	log_event(LVL_DEBUG, EV_DB_BATCH, (long)rows,
	    (long)(now_monotonic_ms() - t0));
	tell_rows(p, res[0], e);
	PQclear(res[0]);
	PQclear(res[1]);
	return rows;
}

/*
 * The statements of end_by_address(), in SQL fragments: the rows the
 * look selects and those a batch locks (unqualified columns), the
 * re-check and SET of the UPDATE (t. columns), what it returns, and the
 * parameter number of the look's limit, which is also the batch's
 * addresses.
 */
struct by_address {
	const char *look_where;
	const char *where;
	const char *recheck;
	const char *set;
	const char *returning;
	int addr;
};

/*
 * Ends rows in two steps. A look without locks finds their addresses
 * (ctid): one step down an index, or one scan of a table without it,
 * however long the backlog. Then batches of LIMPEZA_BATCH addresses,
 * each one statement in its own short transaction, lock the rows (FOR
 * UPDATE SKIP LOCKED, a TID scan) and re-check them on their current
 * versions: a batch holds its locks for milliseconds even where no index
 * serves the look, and a row that got a heartbeat or finished in between
 * is not touched. A row updated between the look and its batch is left
 * to the next look. Each transaction, look or batch, takes the leader's
 * lock when asked to elect; when another instance has it, the reaping
 * stops there. Returns 1, 0 if another instance led from the start, -1.
 */
static int
end_by_address(struct store_pg *p, const struct by_address *q,
    const char **params, int nparams, const struct ending *e)
{
	const struct config *cfg = p->s.cfg;
	char look[3072], sql[6144], limit[32], *tids = NULL;
	PGresult *found = NULL;
	struct stmt lq;
	long long t0, max_look;
	int i, j, n, rows, ended, r, rc = -1, addr = q->addr - 1, looks = 0;
	size_t len, cap;

	snprintf(look, sizeof(look),
	    "SELECT ctid FROM %s WHERE %s LIMIT $%d::int", p->table,
	    q->look_where, q->addr);
	snprintf(sql, sizeof(sql),
	    "UPDATE %s t SET %s WHERE t.ctid = ANY (ARRAY(SELECT ctid FROM %s "
	    "WHERE ctid = ANY ($%d::tid[]) AND %s FOR UPDATE SKIP LOCKED)) AND "
	    "%s RETURNING %s",
	    p->table, q->set, p->table, q->addr, q->where, q->recheck,
	    q->returning);
	/* A look's addresses stay under a few MB whatever the batch. */
	max_look = cfg->batch < LOOK_ROWS ? LOOK_ROWS / cfg->batch * cfg->batch
					  : cfg->batch;
	snprintf(limit, sizeof(limit), "%lld", max_look);
	/* "(4294967295,65535)" quoted, and a comma: at most 21 bytes each. */
	cap = (size_t)cfg->batch * 21 + 3;
	do {
		params[addr] = limit;
		t0 = now_monotonic_ms();
		/* The look takes the parameters up to its limit. */
		lq = (struct stmt){ look, addr + 1, params };
		if ((r = pg_read(p, e->req->elect, 1, &lq, &found)) != 1) {
			rc = r == -1 ? -1 : looks > 0;
			goto fail;
		}
		looks++;
		n = PQntuples(found);
		log_event(LVL_DEBUG, EV_DB_LOOK, (long)n,
		    (long)(now_monotonic_ms() - t0));
		ended = 0;
		if (n > 0 && tids == NULL && (tids = malloc(cap)) == NULL)
			fatalx_oom();
		for (i = 0; i < n; i += (int)cfg->batch) {
			len = 0;
			tids[len++] = '{';
			for (j = i; j < n && j < i + cfg->batch; j++)
				len += (size_t)snprintf(tids + len, cap - len,
				    "%s\"%s\"", j > i ? "," : "",
				    PQgetvalue(found, j, 0));
			tids[len++] = '}';
			tids[len] = '\0';
			params[addr] = tids;
			rows = end_batch(p, sql, params, nparams, e);
			if (rows == BATCH_LOST) {
				rc = 1;
				goto fail;
			}
			if (rows == -1)
				goto fail;
			ended += rows;
		}
		/* The look's rows a batch skipped: locked, or changed. */
		e->c->skipped = n - ended;
		PQclear(found);
		found = NULL;
		/* A full look may have left more; one that ended none, stop. */
	} while (n == max_look && ended > 0);
	rc = 1;
fail:
	/* The caller's array must not keep our buffers' addresses. */
	params[addr] = NULL;
	PQclear(found);
	free(tids);
	return rc;
}

/*
 * Ends the rows of one status that cond selects (the forced cleanup), or
 * in a dry run lists them. $1 status, $2 age (cond), $3 look limit or
 * addresses, $4 error status, $5 message. Returns 1, 0 if another
 * instance leads, -1.
 */
static int
end_rows(struct store_pg *p, const char *status, const char *cond,
    long long age_ms, enum reap_kind kind, struct store_counts *c,
    const struct store_req *req)
{
	const struct config *cfg = p->s.cfg;
	char sql[2048], where[1024], recheck[1024], set[512], ret[512];
	char age[64], msg[256];
	const char *params[5] = { status, age, NULL, cfg->error_status, msg };
	struct ending e = { c, kind, status, 0, 1, req };
	struct by_address by = { where, where, recheck, set, ret, 3 };
	struct stmt q;
	PGresult *res;
	int r;

	log_reap_message(cfg, kind, msg, sizeof(msg));
	snprintf(age, sizeof(age), "%lld milliseconds", age_ms);
	snprintf(where, sizeof(where), "%s = $1 AND %s", p->status, cond);
	if (req->dry_run) {
		snprintf(sql, sizeof(sql),
		    "SELECT %s, " PG_AGE("") " FROM %s WHERE %s", p->id,
		    p->created, p->created, p->table, where);
		q = (struct stmt){ sql, 2, params };
		if ((r = pg_read(p, req->elect, 1, &q, &res)) != 1)
			return r;
		tell_rows(p, res, &e);
		PQclear(res);
		return 1;
	}
	snprintf(recheck, sizeof(recheck), "t.%s = $1 AND %s", p->status, cond);
	snprintf(set, sizeof(set), "%s = $4, %s = $5, %s = now()", p->status,
	    p->error, p->updated);
	snprintf(ret, sizeof(ret), "t.%s, " PG_AGE("t."), p->id, p->created,
	    p->created);
	return end_by_address(p, &by, params, 5, &e);
}

/*
 * Who holds the stale rows a reaping skipped: the transactions whose id
 * is a stale row's xmax (a row lock, or an update in flight), as
 * pg_stat_activity shows them. Read-only, not elected, and asked only
 * when a batch skipped rows. Returns 1, or -1.
 */
static int
stale_holders(struct store_pg *p, const char *stale, const char **params,
    struct store_counts *c)
{
	char sql[4096];
	struct stmt q;
	PGresult *res;
	int i, n;

	snprintf(sql, sizeof(sql),
	    "SELECT a.pid, coalesce(a.state, ''), extract(epoch FROM now() - "
	    "coalesce(a.xact_start, now()))::float8, count(*) FROM (SELECT "
	    "xmax AS x FROM %s WHERE %s) s JOIN pg_stat_activity a ON "
	    "a.backend_xid = s.x WHERE a.pid <> pg_backend_pid() GROUP BY 1, "
	    "2, 3 ORDER BY 4 DESC",
	    p->table, stale);
	q = (struct stmt){ sql, 4, params };
	if (pg_read(p, 0, 1, &q, &res) != 1)
		return -1;
	c->held = 0;
	c->nholders = 0;
	n = PQntuples(res);
	for (i = 0; i < n; i++) {
		long rows = strtol(PQgetvalue(res, i, 3), NULL, 10);
		struct store_holder *h;

		c->held += rows;
		if (c->nholders == STORE_MAX_HOLDERS)
			continue;
		h = &c->holders[c->nholders++];
		h->pid = strtol(PQgetvalue(res, i, 0), NULL, 10);
		snprintf(
		    h->state, sizeof(h->state), "%s", PQgetvalue(res, i, 1));
		h->age_s = strtod(PQgetvalue(res, i, 2), NULL);
		h->rows = rows;
	}
	PQclear(res);
	return 1;
}

/*
 * Both rules in one look and one stream of batches: a cycle with nothing
 * stale costs one statement, not two. The message written tells which
 * rule ended each row. $1 running, $2 its TTL, $3 queued, $4 its TTL, $5
 * look limit or addresses, $6 error status, $7 and $8 the two messages.
 */
static int
end_stale_rows(
    struct store_pg *p, const struct store_req *req, struct store_counts *c)
{
	const struct config *cfg = p->s.cfg;
	char look[2560], stale[1536], stale_t[1536], set[512], ret[512];
	char rt[64], qt[64], mr[256], mq[256], at[256], at_t[256];
	const char *params[8] = { cfg->running_status, rt, cfg->queued_status,
		qt, NULL, cfg->error_status, mr, mq };
	struct ending e = { c, REAP_RUNNING, NULL, 1, 2, req };
	struct by_address q = { look, stale, stale_t, set, ret, 5 };
	int r;

	log_reap_message(cfg, REAP_RUNNING, mr, sizeof(mr));
	log_reap_message(cfg, REAP_QUEUED, mq, sizeof(mq));
	snprintf(rt, sizeof(rt), "%lld milliseconds", cfg->running_ttl);
	snprintf(qt, sizeof(qt), "%lld milliseconds", cfg->queued_ttl);
	/*
	 * A row is aged by its updated time, or by its created time when that
	 * is NULL; with neither it has no age. '-infinity' is no age either
	 * (PostgreSQL takes it in any timestamp).
	 */
	snprintf(at, sizeof(at), "coalesce(%s, %s)", p->updated, p->created);
	snprintf(
	    at_t, sizeof(at_t), "coalesce(t.%s, t.%s)", p->updated, p->created);
	snprintf(stale, sizeof(stale),
	    "(isfinite(%s) AND ((%s = $1 AND %s < now() - $2::interval) OR "
	    "(%s = $3 AND %s < now() - $4::interval)))",
	    at, p->status, at, p->status, at);
	snprintf(stale_t, sizeof(stale_t),
	    "(isfinite(%s) AND ((t.%s = $1 AND %s < now() - $2::interval) "
	    "OR (t.%s = $3 AND %s < now() - $4::interval)))",
	    at_t, p->status, at_t, p->status, at_t);
	/*
	 * The bound on the smaller TTL lets the index serve the OR: its
	 * updated times, and its NULL ones.
	 */
	snprintf(look, sizeof(look),
	    "%s IN ($1, $3) AND (%s < now() - least($2::interval, "
	    "$4::interval) OR (%s IS NULL AND %s < now() - least($2::interval, "
	    "$4::interval))) AND %s",
	    p->status, p->updated, p->updated, p->created, stale);
	snprintf(set, sizeof(set),
	    "%s = $6, %s = CASE WHEN t.%s = $1 THEN $7 ELSE $8 END, %s = now()",
	    p->status, p->error, p->status, p->updated);
	snprintf(ret, sizeof(ret), "t.%s, t.%s = $7, " PG_AGE("t."), p->id,
	    p->error, p->created, p->created);
	r = end_by_address(p, &q, params, 8, &e);
	if (r == 1 && c->skipped > 0)
		r = stale_holders(p, look, params, c);
	return r;
}

static int
pg_reap(struct store *s, const struct store_req *req, struct store_counts *c)
{
	struct store_pg *p = (struct store_pg *)s;
	char cond[768];
	int r;

	if (!req->dry_run)
		return end_stale_rows(p, req, c);
	/* As end_stale_rows() ages rows, the index serving the look. */
	snprintf(cond, sizeof(cond),
	    "(%s < now() - $2::interval OR (%s IS NULL AND %s < now() - "
	    "$2::interval)) AND isfinite(coalesce(%s, %s))",
	    p->updated, p->updated, p->created, p->updated, p->created);
	r = end_rows(p, s->cfg->running_status, cond, s->cfg->running_ttl,
	    REAP_RUNNING, c, req);
	if (r != 1)
		return r;
	r = end_rows(p, s->cfg->queued_status, cond, s->cfg->queued_ttl,
	    REAP_QUEUED, c, req);
	return r == -1 ? -1 : 1;
}

/* Every active row but those created within LIMPEZA_FORCE_MIN_AGE. */
static int
pg_force(struct store *s, const struct store_req *req, struct store_counts *c)
{
	struct store_pg *p = (struct store_pg *)s;
	char cond[256];
	int r;

	snprintf(cond, sizeof(cond),
	    "($2::interval = interval '0' OR coalesce(%s, %s) < now() - "
	    "$2::interval)",
	    p->created, p->updated);
	r = end_rows(p, s->cfg->running_status, cond, s->cfg->force_min_age,
	    REAP_FORCED, c, req);
	if (r != 1)
		return r;
	r = end_rows(p, s->cfg->queued_status, cond, s->cfg->force_min_age,
	    REAP_FORCED, c, req);
	return r == -1 ? -1 : 1;
}

static int
pg_stats(struct store *s, struct store_stats *out)
{
	struct store_pg *p = (struct store_pg *)s;
	const struct config *cfg = s->cfg;
	const char *params[] = { cfg->running_status, cfg->queued_status };
	char by_status[1024], active[2048];
	struct stmt q[2] = { { by_status, 0, NULL }, { active, 2, params } };
	PGresult *res[2];
	int i;

	out->active = 0;
	out->oldest_s = out->oldest_running_s = out->oldest_queued_s = -1;
	snprintf(by_status, sizeof(by_status),
	    "SELECT %s, count(*) FROM %s WHERE %s >= now() - interval "
	    "'24 hours' GROUP BY 1 ORDER BY 1",
	    p->status, p->table, p->created);
	/*
	 * One look at the active rows gives the counts and the deadlines.
	 * An infinite time is no age: now() minus it fails on PostgreSQL 15.
	 */
	snprintf(active, sizeof(active),
	    "SELECT %s, count(*), extract(epoch FROM now() - min(coalesce(%s, "
	    "%s)) FILTER (WHERE isfinite(coalesce(%s, %s)))) FROM %s WHERE %s "
	    "IN ($1, $2) GROUP BY 1",
	    p->status, p->updated, p->created, p->updated, p->created, p->table,
	    p->status);
	if (pg_read(p, 0, 2, q, res) == -1)
		return -1;
	for (i = 0; i < PQntuples(res[0]); i++)
		json_object_set_new(out->by_status,
		    PQgetisnull(res[0], i, 0) ? "null"
					      : PQgetvalue(res[0], i, 0),
		    json_integer(strtoll(PQgetvalue(res[0], i, 1), NULL, 10)));
	for (i = 0; i < PQntuples(res[1]); i++)
		stats_add_active(cfg, out, PQgetvalue(res[1], i, 0),
		    strtol(PQgetvalue(res[1], i, 1), NULL, 10),
		    PQgetisnull(res[1], i, 2)
			? -1
			: strtod(PQgetvalue(res[1], i, 2), NULL));
	PQclear(res[0]);
	PQclear(res[1]);
	return 0;
}

static int
pg_next_due(struct store *s, double *secs)
{
	struct store_pg *p = (struct store_pg *)s;
	const struct config *cfg = s->cfg;
	char sql[3072], rt[64], qt[64];
	const char *params[] = { cfg->running_status, rt, cfg->queued_status,
		qt };
	struct stmt q = { sql, 4, params };
	PGresult *res;
	int found;

	snprintf(rt, sizeof(rt), "%lld milliseconds", cfg->running_ttl);
	snprintf(qt, sizeof(qt), "%lld milliseconds", cfg->queued_ttl);
	/*
	 * Each min() is one step down the index limpeza check recommends;
	 * rows without an updated time are aged by their created time.
	 */
	snprintf(sql, sizeof(sql),
	    "SELECT extract(epoch FROM least((SELECT min(%s) FROM %s WHERE "
	    "%s = $1 AND isfinite(%s)) + $2::interval, (SELECT min(%s) FROM %s "
	    "WHERE %s = $1 AND %s IS NULL AND isfinite(%s)) + $2::interval, "
	    "(SELECT min(%s) FROM %s WHERE %s = $3 AND isfinite(%s)) + "
	    "$4::interval, (SELECT min(%s) FROM %s WHERE %s = $3 AND %s IS "
	    "NULL AND isfinite(%s)) + $4::interval) - now())",
	    p->updated, p->table, p->status, p->updated, p->created, p->table,
	    p->status, p->updated, p->created, p->updated, p->table, p->status,
	    p->updated, p->created, p->table, p->status, p->updated,
	    p->created);
	if (pg_read(p, 0, 1, &q, &res) == -1)
		return -1;
	found = !PQgetisnull(res, 0, 0);
	if (found)
		*secs = strtod(PQgetvalue(res, 0, 0), NULL);
	PQclear(res);
	return found;
}

/* Ids per retention look-up statement, and at most about this many bytes. */
#define FINISHED_IDS 1000
#define FINISHED_BYTES ((size_t)256 * 1024)

/*
 * Whether an id can be a text value at all: valid UTF-8 (jansson's
 * check) without NUL. Any other id has no row, and in the array it would
 * fail the whole statement.
 */
static int
pg_text_ok(const char *id, size_t len)
{
	json_t *v;

	if (memchr(id, '\0', len) != NULL ||
	    (v = json_stringn(id, len)) == NULL)
		return 0;
	json_decref(v);
	return 1;
}

/* A text[] literal being built: "{", elements, "}". */
struct array {
	char *p;
	size_t len, cap;
};

static void
array_reserve(struct array *a, size_t more)
{
	if (a->len + more <= a->cap)
		return;
	a->cap = (a->len + more) * 2;
	if ((a->p = realloc(a->p, a->cap)) == NULL)
		fatalx_oom();
}

/* One element, quoted, with " and \ escaped. */
static void
array_put(struct array *a, const char *id, size_t n)
{
	size_t i;

	array_reserve(a, 2 * n + 4);
	if (a->len > 1)
		a->p[a->len++] = ',';
	a->p[a->len++] = '"';
	for (i = 0; i < n; i++) {
		if (id[i] == '"' || id[i] == '\\')
			a->p[a->len++] = '\\';
		a->p[a->len++] = id[i];
	}
	a->p[a->len++] = '"';
}

/*
 * How retention compares the cache's ids with the id column, by the
 * column's type: as text on a text or varchar column; as the column's own
 * type on a uuid or integer one, so that its index serves the look-up, with
 * each id checked here first (one the type cannot read has no row, and in
 * the array it would fail the whole statement); and on any other type as
 * the column's text form, which serves no index but cannot fail.
 */
enum id_kind { ID_UNKNOWN, ID_TEXT, ID_UUID, ID_INT, ID_OTHER };

/* The PostgreSQL type oids (pg_type.dat) the look-up compares natively. */
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_TEXT 25
#define OID_VARCHAR 1043
#define OID_UUID 2950

static int
pg_id_kind(struct store_pg *p)
{
	const char *params[] = { p->table, p->s.cfg->id_column };
	struct stmt q = { "SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype "
			  "ELSE t.oid END::int8 FROM pg_attribute a JOIN "
			  "pg_type t ON t.oid = a.atttypid WHERE a.attrelid = "
			  "$1::regclass AND a.attname = $2 AND a.attnum > 0 "
			  "AND NOT a.attisdropped",
		2, params };
	PGresult *res;
	long oid;

	if (p->id_kind != ID_UNKNOWN && p->conn != NULL)
		return 0;
	if (pg_read(p, 0, 1, &q, &res) != 1)
		return -1;
	if (PQntuples(res) != 1) {
		PQclear(res);
		store_err(&p->s, "column %s.%s not found", p->s.cfg->table,
		    p->s.cfg->id_column);
		return -1;
	}
	oid = strtol(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	if (oid == OID_TEXT || oid == OID_VARCHAR)
		p->id_kind = ID_TEXT;
	else if (oid == OID_UUID)
		p->id_kind = ID_UUID;
	else if (oid == OID_INT2 || oid == OID_INT4 || oid == OID_INT8)
		p->id_kind = ID_INT;
	else
		p->id_kind = ID_OTHER;
	return 0;
}

static int
hexdigit(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
	    (c >= 'A' && c <= 'F');
}

/*
 * Whether PostgreSQL's uuid input reads the id (uuid.c, string_to_uuid):
 * 32 hex digits, a '-' allowed after any group of four but the last, the
 * whole optionally in braces.
 */
static int
uuid_ok(const char *id, size_t len)
{
	size_t i = 0, d;
	int braces = len > 0 && id[0] == '{';

	if (braces) {
		if (id[len - 1] != '}')
			return 0;
		i = 1;
		len--;
	}
	for (d = 0; d < 32; d++) {
		if (i >= len || !hexdigit(id[i]))
			return 0;
		i++;
		if (d % 4 == 3 && d < 31 && i < len && id[i] == '-')
			i++;
	}
	return i == len;
}

/* An id as a bigint in canonical form, or -1 if it is none. */
static int
int_id(const char *id, size_t len, char *buf, size_t bufl)
{
	char digits[32], *end;
	long long v;

	if (len == 0 || len >= sizeof(digits) || memchr(id, '\0', len) != NULL)
		return -1;
	memcpy(digits, id, len);
	digits[len] = '\0';
	if (!(digits[0] == '-' || digits[0] == '+' ||
		(digits[0] >= '0' && digits[0] <= '9')))
		return -1;
	errno = 0;
	v = strtoll(digits, &end, 10);
	if (errno != 0 || *end != '\0' || end == digits ||
	    !(end[-1] >= '0' && end[-1] <= '9'))
		return -1;
	snprintf(buf, bufl, "%lld", v);
	return 0;
}

/*
 * Retention's look-up: one read-only statement per chunk of ids, each in
 * a short transaction with the session-free setup (its zone reads naive
 * times), not elected: every host asks about its own cache file. A job's
 * row is finished when every row of its id is (done or the error status,
 * with an updated time), and its age is the youngest one's, by now() of
 * the database. $1 the ids, $2 and $3 the finished statuses.
 */
static int
pg_finished(struct store *s, struct store_row *rows, size_t n)
{
	struct store_pg *p = (struct store_pg *)s;
	const char *params[3] = { NULL, DONE_STATUS, s->cfg->error_status };
	struct array ids = { NULL, 0, 0 };
	char sql[1024], num[32];
	struct stmt look = { sql, 3, params };
	size_t i, next, k, cnt, *at;
	PGresult *found;
	int j, ok, rc = -1;

	for (i = 0; i < n; i++) {
		rows[i].state = ROW_NONE;
		rows[i].age_s = 0;
	}
	if (n == 0)
		return 0;
	if (pg_id_kind(p) == -1)
		return -1;
	snprintf(sql, sizeof(sql),
	    "SELECT c.i, bool_and(coalesce(t.%s IN ($2, $3), false) AND "
	    "coalesce(isfinite(t.%s), false)), extract(epoch FROM now() - "
	    "max(t.%s) FILTER (WHERE isfinite(t.%s))) FROM "
	    "unnest($1::%s[]) WITH ORDINALITY AS c(id, i) JOIN %s t ON "
	    "t.%s%s = c.id GROUP BY c.i",
	    p->status, p->updated, p->updated, p->updated,
	    p->id_kind == ID_UUID      ? "uuid"
		: p->id_kind == ID_INT ? "int8"
				       : "text",
	    p->table, p->id, p->id_kind == ID_OTHER ? "::text" : "");
	if ((at = calloc(FINISHED_IDS, sizeof(*at))) == NULL)
		fatalx_oom();
	for (next = 0; next < n;) {
		ids.len = 0;
		array_reserve(&ids, 2);
		ids.p[ids.len++] = '{';
		for (cnt = 0;
		     next < n && cnt < FINISHED_IDS && ids.len < FINISHED_BYTES;
		     next++) {
			const char *id = rows[next].id;
			size_t len = rows[next].idlen;

			if (p->id_kind == ID_INT) {
				ok = int_id(id, len, num, sizeof(num)) == 0;
				if (ok) {
					id = num;
					len = strlen(num);
				}
			} else if (p->id_kind == ID_UUID)
				ok = uuid_ok(id, len);
			else
				ok = pg_text_ok(id, len);
			if (ok) {
				array_put(&ids, id, len);
				at[cnt++] = next;
			}
		}
		if (cnt == 0)
			continue;
		array_reserve(&ids, 2);
		ids.p[ids.len++] = '}';
		ids.p[ids.len] = '\0';
		params[0] = ids.p;
		if (pg_read(p, 0, 1, &look, &found) != 1)
			goto fail;
		for (j = 0; j < PQntuples(found); j++) {
			k = strtoul(PQgetvalue(found, j, 0), NULL, 10) - 1;
			if (k >= cnt)
				continue;
			if (*PQgetvalue(found, j, 1) != 't' ||
			    PQgetisnull(found, j, 2)) {
				rows[at[k]].state = ROW_OPEN;
				continue;
			}
			rows[at[k]].state = ROW_FINISHED;
			rows[at[k]].age_s =
			    strtod(PQgetvalue(found, j, 2), NULL);
		}
		PQclear(found);
	}
	rc = 0;
fail:
	/* The column's type is read again after a failure: it may change. */
	if (rc == -1)
		p->id_kind = ID_UNKNOWN;
	free(ids.p);
	free(at);
	return rc;
}

static int
is_text_type(const char *t)
{
	return strcmp(t, "text") == 0 ||
	    strncmp(t, "character varying", 17) == 0 ||
	    strncmp(t, "character", 9) == 0 || strcmp(t, "uuid") == 0;
}

/* An id column's types: text ones, uuid, or integers (pg_id_kind()). */
static int
is_id_type(const char *t)
{
	return is_text_type(t) || strcmp(t, "integer") == 0 ||
	    strcmp(t, "bigint") == 0 || strcmp(t, "smallint") == 0;
}

static int
is_time_type(const char *t)
{
	return strncmp(t, "timestamp", 9) == 0;
}

/*
 * `limpeza check` counts the active rows that have neither an updated nor
 * a created time: no age, so they are never reaped.
 */
static int
check_ageless(struct store_pg *p, FILE *out)
{
	const struct config *cfg = p->s.cfg;
	const char *params[] = { cfg->running_status, cfg->queued_status };
	char sql[1024];
	PGresult *res;
	long n;

	snprintf(sql, sizeof(sql),
	    "SELECT count(*) FROM %s WHERE %s IN ($1, $2) AND %s IS NULL AND "
	    "%s IS NULL",
	    p->table, p->status, p->updated, p->created);
	if ((res = pg_exec(p, sql, 2, params)) == NULL)
		return -1;
	n = strtol(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	store_check_ageless(cfg, out, n);
	return 0;
}

/*
 * `limpeza check`: the server, its zone, the table and the type of each
 * configured column, and whether an index serves the reaping query (an
 * index on (status, updated) or on updated restricted to active rows).
 */
static int
check_in_tx(struct store_pg *p, void *arg)
{
	struct store *s = &p->s;
	const struct config *cfg = s->cfg;
	FILE *out = arg;
	const char *want[] = { cfg->id_column, cfg->status_column,
		cfg->updated_column, cfg->created_column, cfg->error_column };
	const char *kind[] = { "id", "text", "time", "time", "text" };
	/* The name as the reaping statements spell it, quotes and all. */
	const char *params[] = { p->table };
	PGresult *res;
	int i, j, rc = 0, served = 0, stats_served = 0;
	char tname[64];
	long off;

	res = pg_exec(p,
	    "SELECT split_part(current_setting('server_version'), ' ', 1), "
	    "(SELECT reset_val FROM pg_settings WHERE name = 'TimeZone'), "
	    "current_setting('TimeZone'), to_regclass($1) IS NOT NULL, "
	    "extract(timezone FROM now())::int",
	    1, params);
	if (res == NULL)
		return -1;
	/* The offset PostgreSQL applies now, as an operator can check it. */
	off = strtol(PQgetvalue(res, 0, 4), NULL, 10);
	fprintf(out,
	    "ok: postgresql %s, server zone %s, session zone %s "
	    "(UTC%c%02ld:%02ld), in which naive timestamps are read\n",
	    PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2),
	    off < 0 ? '-' : '+', labs(off) / 3600, labs(off) % 3600 / 60);
	if (strcmp(PQgetvalue(res, 0, 3), "t") != 0) {
		PQclear(res);
		store_err(s, "table %s not found", cfg->table);
		return -1;
	}
	PQclear(res);

	res = pg_exec(p,
	    "SELECT attname, format_type(atttypid, atttypmod) FROM "
	    "pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND "
	    "NOT attisdropped",
	    1, params);
	if (res == NULL)
		return -1;
	for (i = 0; i < 5; i++) {
		*tname = '\0';
		for (j = 0; j < PQntuples(res); j++)
			if (strcmp(PQgetvalue(res, j, 0), want[i]) == 0)
				snprintf(tname, sizeof(tname), "%s",
				    PQgetvalue(res, j, 1));
		if (*tname == '\0') {
			fprintf(out, "FAIL: column %s.%s not found\n",
			    cfg->table, want[i]);
			rc = -1;
		} else if (strcmp(kind[i], "id") == 0  ? !is_id_type(tname)
			: strcmp(kind[i], "text") == 0 ? !is_text_type(tname)
						       : !is_time_type(tname)) {
			fprintf(out, "FAIL: column %s.%s is %s, expected %s\n",
			    cfg->table, want[i], tname,
			    strcmp(kind[i], "id") == 0
				? "a text, uuid or integer type"
				: strcmp(kind[i], "text") == 0 ? "a text type"
							       : "a timestamp");
			rc = -1;
		} else
			fprintf(out, "ok: column %s.%s (%s)\n", cfg->table,
			    want[i], tname);
	}
	PQclear(res);
	if (rc == -1) {
		store_err(
		    s, "table %s lacks usable configured columns", cfg->table);
		return -1;
	}
	if (check_ageless(p, out) == -1)
		return -1;

	/* Key columns of each valid index, in order, and its predicate. */
	res = pg_exec(p,
	    "SELECT i.indexrelid::regclass, "
	    "(SELECT array_agg(a.attname ORDER BY k.n) FROM unnest(i.indkey) "
	    "WITH ORDINALITY k(attnum, n) JOIN pg_attribute a ON a.attrelid "
	    "= i.indrelid AND a.attnum = k.attnum)::text[] AS cols, "
	    "coalesce(pg_get_expr(i.indpred, i.indrelid), '') FROM pg_index i "
	    "WHERE i.indrelid = $1::regclass AND i.indisvalid",
	    1, params);
	if (res == NULL)
		return -1;
	for (i = 0; i < PQntuples(res); i++) {
		const char *cols = PQgetvalue(res, i, 1);
		const char *pred = PQgetvalue(res, i, 2);
		char a[160], b[160];

		snprintf(a, sizeof(a), "{%s", cfg->created_column);
		if (!stats_served && strncmp(cols, a, strlen(a)) == 0 &&
		    (cols[strlen(a)] == '}' || cols[strlen(a)] == ',') &&
		    *pred == '\0') {
			stats_served = 1;
			fprintf(out,
			    "ok: index %s serves the 24 h statistics\n",
			    PQgetvalue(res, i, 0));
		}
		if (served)
			continue;
		snprintf(a, sizeof(a), "{%s,%s", cfg->status_column,
		    cfg->updated_column);
		snprintf(b, sizeof(b), "{%s", cfg->updated_column);
		if (strncmp(cols, a, strlen(a)) == 0 ||
		    (strncmp(cols, b, strlen(b)) == 0 &&
			(cols[strlen(b)] == '}' || cols[strlen(b)] == ',') &&
			strstr(pred, cfg->status_column) != NULL)) {
			served = 1;
			fprintf(out, "ok: index %s serves the reaping query\n",
			    PQgetvalue(res, i, 0));
		}
	}
	PQclear(res);
	if (!served) {
		char *run = PQescapeLiteral(
		    p->conn, cfg->running_status, strlen(cfg->running_status));
		char *que = PQescapeLiteral(
		    p->conn, cfg->queued_status, strlen(cfg->queued_status));

		if (run == NULL || que == NULL)
			fatalx_oom();
		fprintf(out,
		    "advice: no index serves the reaping query; on a large "
		    "table add one (it does not block writers):\n"
		    "  CREATE INDEX CONCURRENTLY ix_%s_active_%s ON %s (%s) "
		    "WHERE %s IN (%s, %s);\n",
		    strchr(cfg->table, '.') ? strchr(cfg->table, '.') + 1
					    : cfg->table,
		    cfg->updated_column, p->table, p->updated, p->status, run,
		    que);
		PQfreemem(run);
		PQfreemem(que);
	}
	if (!stats_served)
		fprintf(out,
		    "advice: no index serves the 24 h statistics of each "
		    "cycle; on a large table add one:\n"
		    "  CREATE INDEX CONCURRENTLY ix_%s_%s ON %s (%s);\n",
		    strchr(cfg->table, '.') ? strchr(cfg->table, '.') + 1
					    : cfg->table,
		    cfg->created_column, p->table, p->created);
	return 0;
}

/*
 * Whether PostgreSQL knows the zone of LIMPEZA_DB_TIMEZONE (config.c let
 * through names only): every transaction would fail on one it does not.
 */
static int
check_zone(struct store_pg *p)
{
	const char *params[] = { p->s.cfg->db_timezone };
	PGresult *res;
	int known;

	res = pg_exec(p,
	    "SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE lower(name) "
	    "= lower($1))",
	    1, params);
	if (res == NULL)
		return -1;
	known = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	PQclear(res);
	if (!known) {
		store_err(&p->s,
		    "PostgreSQL does not know the zone '%s' "
		    "(LIMPEZA_DB_TIMEZONE): use a name of its "
		    "pg_timezone_names, such as UTC or America/Sao_Paulo",
		    p->s.cfg->db_timezone);
		return -1;
	}
	return 0;
}

static int
pg_check(struct store *s, FILE *out)
{
	struct store_pg *p = (struct store_pg *)s;

	if (pg_connect(p) == -1 || check_zone(p) == -1)
		return -1;
	return pg_in_tx(p, check_in_tx, out);
}

const struct store_ops store_pg_ops = {
	.name = "postgresql",
	.elects = 1,
	.open = pg_open,
	.reap = pg_reap,
	.force = pg_force,
	.stats = pg_stats,
	.next_due = pg_next_due,
	.finished = pg_finished,
	.check = pg_check,
	.close = pg_close,
};
