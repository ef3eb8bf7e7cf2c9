/* metrics.c: Prometheus text at /metrics and /healthz (libmicrohttpd). */

#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

#include "limpeza.h"
#include "probe.h"

#define MAX_SERIES 64

static const double buckets[] = { 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
	60 };
#define NBUCKETS (sizeof(buckets) / sizeof(buckets[0]))

/*
 * Everything /metrics shows. The cycle updates it from the main thread;
 * libmicrohttpd's thread reads it. One mutex guards the whole struct:
 * both sides hold it for microseconds.
 */
static struct {
	pthread_mutex_t mu;
	/*
	 * A series per store, state and reason, each label whole: a status
	 * word is a setting of up to 64 bytes, and one cut short would merge
	 * two states into one series. Series live as long as the process.
	 */
	struct {
		char *store, *state, *reason;
		double n;
	} reaped[MAX_SERIES];
	int nreaped;
	struct {
		char step[16];
		double n;
	} failed[8];
	int nfailed;
	double cycles;
	double hist[NBUCKETS];
	double hist_sum;
	double hist_count;
	double last_success; /* wall clock, for the gauge */
	long long last_success_mono; /* for /healthz */
	long long interval_ms;
	long long jobs_active; /* -1: unknown */
	int store_up; /* -1: no store */
	int leader; /* -1: no election */
	long stale_left; /* stale rows the last reaping could not end */
	double probe_ended; /* active jobs the health route ended */
} m = { .mu = PTHREAD_MUTEX_INITIALIZER,
	.jobs_active = -1,
	.store_up = -1,
	.leader = -1,
	.interval_ms = 30000 };

static struct MHD_Daemon *httpd;
static char *httpd_addr; /* what httpd listens on */

/*
 * libmicrohttpd is loaded only when metrics are on: linking it would load
 * GnuTLS and p11-kit, whose constructors cost an idle daemon a megabyte
 * or more whether or not it serves anything. MHD_SONAME is the soname of
 * the library the linker picks for -lmicrohttpd (build/probe.h).
 */

static struct {
	void *lib;
	struct MHD_Daemon *(*start)(unsigned int, uint16_t,
	    MHD_AcceptPolicyCallback, void *, MHD_AccessHandlerCallback, void *,
	    ...);
	void (*stop)(struct MHD_Daemon *);
	struct MHD_Response *(*create)(
	    size_t, void *, enum MHD_ResponseMemoryMode);
	enum MHD_Result (*header)(
	    struct MHD_Response *, const char *, const char *);
	enum MHD_Result (*queue)(
	    struct MHD_Connection *, unsigned int, struct MHD_Response *);
	void (*destroy)(struct MHD_Response *);
} mhd;

static int
mhd_load(char *err, size_t errlen)
{
	void *lib;

	if (mhd.lib != NULL)
		return 0;
	lib = dlopen(MHD_SONAME, RTLD_NOW | RTLD_LOCAL);
	if (lib == NULL) {
		snprintf(
		    err, errlen, "cannot load %s: %s", MHD_SONAME, dlerror());
		return -1;
	}
	/* POSIX guarantees data and function pointers convert. */
	*(void **)&mhd.start = dlsym(lib, "MHD_start_daemon");
	*(void **)&mhd.stop = dlsym(lib, "MHD_stop_daemon");
	*(void **)&mhd.create = dlsym(lib, "MHD_create_response_from_buffer");
	*(void **)&mhd.header = dlsym(lib, "MHD_add_response_header");
	*(void **)&mhd.queue = dlsym(lib, "MHD_queue_response");
	*(void **)&mhd.destroy = dlsym(lib, "MHD_destroy_response");
	if (mhd.start == NULL || mhd.stop == NULL || mhd.create == NULL ||
	    mhd.header == NULL || mhd.queue == NULL || mhd.destroy == NULL) {
		snprintf(err, errlen, "%s lacks a function limpeza uses",
		    MHD_SONAME);
		dlclose(lib);
		return -1;
	}
	mhd.lib = lib;
	return 0;
}

void
metrics_reaped(const char *store, const char *state, const char *reason, long n)
{
	int i;

	if (n <= 0)
		return;
	pthread_mutex_lock(&m.mu);
	for (i = 0; i < m.nreaped; i++)
		if (strcmp(m.reaped[i].store, store) == 0 &&
		    strcmp(m.reaped[i].state, state) == 0 &&
		    strcmp(m.reaped[i].reason, reason) == 0)
			break;
	if (i == m.nreaped && m.nreaped < MAX_SERIES) {
		if ((m.reaped[i].store = strdup(store)) == NULL ||
		    (m.reaped[i].state = strdup(state)) == NULL ||
		    (m.reaped[i].reason = strdup(reason)) == NULL)
			fatalx_oom();
		m.nreaped++;
	}
	if (i < MAX_SERIES)
		m.reaped[i].n += (double)n;
	pthread_mutex_unlock(&m.mu);
}

void
metrics_step_failed(const char *step)
{
	int i;

	pthread_mutex_lock(&m.mu);
	for (i = 0; i < m.nfailed; i++)
		if (strcmp(m.failed[i].step, step) == 0)
			break;
	if (i == m.nfailed && m.nfailed < 8) {
		snprintf(
		    m.failed[i].step, sizeof(m.failed[i].step), "%s", step);
		m.nfailed++;
	}
	if (i < 8)
		m.failed[i].n++;
	pthread_mutex_unlock(&m.mu);
}

void
metrics_cycle(double seconds, int ok)
{
	size_t i;

	pthread_mutex_lock(&m.mu);
	m.cycles++;
	for (i = 0; i < NBUCKETS; i++)
		if (seconds <= buckets[i])
			m.hist[i]++;
	m.hist_sum += seconds;
	m.hist_count++;
	if (ok) {
		m.last_success = now_realtime();
		m.last_success_mono = now_monotonic_ms();
	}
	pthread_mutex_unlock(&m.mu);
}

void
metrics_gauges(
    long long jobs_active, int store_up, int leader, long long interval_ms)
{
	pthread_mutex_lock(&m.mu);
	m.jobs_active = jobs_active;
	m.store_up = store_up;
	m.leader = leader;
	m.interval_ms = interval_ms;
	pthread_mutex_unlock(&m.mu);
}

/* Stale rows that another transaction held at the last reaping. */
void
metrics_stale_left(long n)
{
	pthread_mutex_lock(&m.mu);
	m.stale_left = n;
	pthread_mutex_unlock(&m.mu);
}

/* Active cache jobs a health request ended (its route writes). */
void
metrics_probe_ended(long n)
{
	pthread_mutex_lock(&m.mu);
	m.probe_ended += (double)n;
	pthread_mutex_unlock(&m.mu);
}

/* A growing text buffer for the exposition. */
struct text {
	char *buf;
	size_t len, cap;
};

static void put(struct text *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
put(struct text *t, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
		va_end(ap);
		if (n < 0)
			return;
		if ((size_t)n < t->cap - t->len) {
			t->len += (size_t)n;
			return;
		}
		t->cap = t->cap * 2 + (size_t)n;
		if ((t->buf = realloc(t->buf, t->cap)) == NULL)
			fatalx_oom();
	}
}

/*
 * A label value as the text exposition format writes it: backslash,
 * double quote and line feed escaped (\\, \", \n), every other valid
 * UTF-8 character as it is. A byte that is not part of one (a setting
 * may hold any bytes) is shown as \\xNN, as the log shows it: the
 * format's text is UTF-8.
 */
static void
put_label(struct text *t, const char *v)
{
	size_t n;

	for (; *v != '\0'; v += n) {
		n = text_char(v);
		if (n == 0) {
			put(t, "\\\\x%02x", (unsigned char)*v);
			n = 1;
		} else if (*v == '\\')
			put(t, "\\\\");
		else if (*v == '"')
			put(t, "\\\"");
		else if (*v == '\n')
			put(t, "\\n");
		else
			put(t, "%.*s", (int)n, v);
	}
}

/* The Prometheus text exposition format, version 0.0.4. */
char *
metrics_render(size_t *len)
{
	struct text t = { malloc(4096), 0, 4096 };
	size_t i;
	int k;

	if (t.buf == NULL)
		fatalx_oom();
	pthread_mutex_lock(&m.mu);
	put(&t,
	    "# HELP limpeza_jobs_reaped_total Jobs ended, or finished jobs "
	    "removed from the cache (reason retention), by store, the state "
	    "they were in, and why.\n"
	    "# TYPE limpeza_jobs_reaped_total counter\n");
	for (k = 0; k < m.nreaped; k++) {
		put(&t, "limpeza_jobs_reaped_total{store=\"");
		put_label(&t, m.reaped[k].store);
		put(&t, "\",state=\"");
		put_label(&t, m.reaped[k].state);
		put(&t, "\",reason=\"");
		put_label(&t, m.reaped[k].reason);
		put(&t, "\"} %.0f\n", m.reaped[k].n);
	}
	put(&t,
	    "# HELP limpeza_cycles_total Cleanup cycles run.\n"
	    "# TYPE limpeza_cycles_total counter\n"
	    "limpeza_cycles_total %.0f\n",
	    m.cycles);
	put(&t,
	    "# HELP limpeza_step_failures_total Failed steps, by step.\n"
	    "# TYPE limpeza_step_failures_total counter\n");
	for (k = 0; k < m.nfailed; k++)
		put(&t, "limpeza_step_failures_total{step=\"%s\"} %.0f\n",
		    m.failed[k].step, m.failed[k].n);
	put(&t,
	    "# HELP limpeza_cycle_duration_seconds Time one cycle took.\n"
	    "# TYPE limpeza_cycle_duration_seconds histogram\n");
	/* hist[] counts every cycle no longer than each bound: cumulative. */
	for (i = 0; i < NBUCKETS; i++)
		put(&t,
		    "limpeza_cycle_duration_seconds_bucket{le=\"%g\"} %.0f\n",
		    buckets[i], m.hist[i]);
	put(&t,
	    "limpeza_cycle_duration_seconds_bucket{le=\"+Inf\"} %.0f\n"
	    "limpeza_cycle_duration_seconds_sum %.6f\n"
	    "limpeza_cycle_duration_seconds_count %.0f\n",
	    m.hist_count, m.hist_sum, m.hist_count);
	put(&t,
	    "# HELP limpeza_last_success_timestamp_seconds When the last "
	    "cycle without a failed step ended.\n"
	    "# TYPE limpeza_last_success_timestamp_seconds gauge\n"
	    "limpeza_last_success_timestamp_seconds %.3f\n",
	    m.last_success);
	if (m.jobs_active >= 0)
		put(&t,
		    "# HELP limpeza_api_jobs_active jobs_active of the API's "
		    "last health answer.\n"
		    "# TYPE limpeza_api_jobs_active gauge\n"
		    "limpeza_api_jobs_active %lld\n",
		    m.jobs_active);
	if (m.store_up >= 0)
		put(&t,
		    "# HELP limpeza_store_up 1 if the job store answered in "
		    "the last cycle.\n"
		    "# TYPE limpeza_store_up gauge\n"
		    "limpeza_store_up %d\n",
		    m.store_up);
	put(&t,
	    "# HELP limpeza_health_ended_jobs_total Active cache jobs that "
	    "a health request ended (the API's health route writes).\n"
	    "# TYPE limpeza_health_ended_jobs_total counter\n"
	    "limpeza_health_ended_jobs_total %.0f\n",
	    m.probe_ended);
	put(&t,
	    "# HELP limpeza_stale_rows_left Stale rows the last reaping "
	    "could not end: another transaction holds them.\n"
	    "# TYPE limpeza_stale_rows_left gauge\n"
	    "limpeza_stale_rows_left %ld\n",
	    m.stale_left);
	if (m.leader >= 0)
		put(&t,
		    "# HELP limpeza_leader 1 if this instance reaps the "
		    "database.\n"
		    "# TYPE limpeza_leader gauge\n"
		    "limpeza_leader %d\n",
		    m.leader);
	put(&t,
	    "# HELP limpeza_build_info limpeza's version.\n"
	    "# TYPE limpeza_build_info gauge\n"
	    "limpeza_build_info{version=\"%s\"} 1\n",
	    LIMPEZA_VERSION);
	pthread_mutex_unlock(&m.mu);
	*len = t.len;
	return t.buf;
}

/* Healthy: a cycle succeeded within the last 3 intervals. */
int
metrics_healthy(void)
{
	int ok;

	pthread_mutex_lock(&m.mu);
	ok = m.last_success_mono != 0 &&
	    now_monotonic_ms() - m.last_success_mono <= 3 * m.interval_ms;
	pthread_mutex_unlock(&m.mu);
	return ok;
}

static enum MHD_Result
answer(void *cls, struct MHD_Connection *conn, const char *url,
    const char *method, const char *version, const char *upload,
    size_t *upload_len, void **con_cls)
{
	struct MHD_Response *r;
	enum MHD_Result ret;
	unsigned int status = MHD_HTTP_OK;
	const char *type = "text/plain; version=0.0.4; charset=utf-8";
	char *body;
	size_t len;

	(void)cls;
	(void)version;
	(void)upload;
	(void)upload_len;
	(void)con_cls;
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
		body = strdup("method not allowed\n");
		status = MHD_HTTP_METHOD_NOT_ALLOWED;
	} else if (strcmp(url, "/metrics") == 0)
		body = metrics_render(&len);
	else if (strcmp(url, "/healthz") == 0) {
		int ok = metrics_healthy();

		body = strdup(ok ? "ok\n"
				 : "no successful cycle within 3 "
				   "intervals\n");
		status = ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE;
	} else {
		body = strdup("not found: try /metrics or /healthz\n");
		status = MHD_HTTP_NOT_FOUND;
	}
	if (body == NULL)
		return MHD_NO;
	len = strlen(body);
	r = mhd.create(len, body, MHD_RESPMEM_MUST_FREE);
	if (r == NULL) {
		free(body);
		return MHD_NO;
	}
	mhd.header(r, "Content-Type", type);
	ret = mhd.queue(conn, status, r);
	mhd.destroy(r);
	return ret;
}

/* Serves on addr (HOST:PORT, checked by config.c) only; -1 with err set. */
int
metrics_start(const char *addr, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	unsigned int flags =
	    MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;

	/* A reload that keeps the address keeps the server. */
	if (httpd != NULL && addr != NULL && strcmp(addr, httpd_addr) == 0)
		return 0;
	metrics_stop();
	if (addr == NULL || *addr == '\0')
		return 0;
	if (mhd_load(err, errlen) == -1)
		return -1;
	if (config_parse_addr(addr, &ss, &sl) == -1) {
		snprintf(err, errlen, "bad address %s", addr);
		return -1;
	}
	if (ss.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	httpd =
	    mhd.start(flags, 0, NULL, NULL, answer, NULL, MHD_OPTION_SOCK_ADDR,
		(struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT, 16U,
		MHD_OPTION_CONNECTION_TIMEOUT, 10U, MHD_OPTION_END);
	if (httpd == NULL) {
		snprintf(err, errlen, "cannot listen on %s", addr);
		return -1;
	}
	if ((httpd_addr = strdup(addr)) == NULL)
		fatalx_oom();
	return 0;
}

void
metrics_stop(void)
{
	if (httpd != NULL)
		mhd.stop(httpd);
	httpd = NULL;
	free(httpd_addr);
	httpd_addr = NULL;
}
