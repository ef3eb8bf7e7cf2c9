/* alert.c: JSON alerts POSTed to LIMPEZA_ALERT_WEBHOOK from a worker thread. */

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "limpeza.h"

#define ALERT_QUEUE 16

/*
 * Alerts are queued and sent by one thread, so a slow or dead webhook
 * never holds a cycle up: the cycle only copies a few hundred bytes into
 * the queue. A full queue drops the alert, with a log line.
 *
 * Nothing the main thread does waits on the webhook either. A reload
 * hands the running worker its new URL. A stop gives the worker a
 * deadline: posts started after it get only the time left, and when it
 * passes, the post in flight is cut (its socket is shut down, which ends
 * libcurl's wait at once) and what is still queued is dropped and
 * counted. sock is the socket of the post in flight, -1 if none; it is
 * opened and closed through the callbacks below, under mu, so the main
 * thread never shuts down a descriptor that was closed and reused.
 */
static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv; /* wakes the worker */
	pthread_cond_t done; /* the worker has ended */
	pthread_t thread;
	int running;
	int stop;
	int finished;
	int cut; /* the deadline passed: abort what is in flight */
	long long deadline; /* monotonic ms, once stopping */
	long dropped; /* posts cut short */
	int sock;
	char *url;
	char *queue[ALERT_QUEUE];
	int head, n;
} a = { .mu = PTHREAD_MUTEX_INITIALIZER,
	.cv = PTHREAD_COND_INITIALIZER,
	.sock = -1 };

static size_t
discard(char *data, size_t size, size_t nmemb, void *arg)
{
	(void)data;
	(void)arg;
	return size * nmemb;
}

/* A new socket for the post: refused once the post is to be cut. */
static int
sock_opened(void *arg, curl_socket_t fd, curlsocktype purpose)
{
	int rc;

	(void)arg;
	(void)purpose;
	pthread_mutex_lock(&a.mu);
	a.sock = fd;
	rc = a.cut ? CURL_SOCKOPT_ERROR : CURL_SOCKOPT_OK;
	pthread_mutex_unlock(&a.mu);
	return rc;
}

static int
sock_close(void *arg, curl_socket_t fd)
{
	(void)arg;
	pthread_mutex_lock(&a.mu);
	if (a.sock == fd)
		a.sock = -1;
	close(fd);
	pthread_mutex_unlock(&a.mu);
	return 0;
}

/* While resolving or between sockets: a non-zero answer aborts. */
static int
progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
    curl_off_t ulnow)
{
	int cut;

	(void)arg;
	(void)dltotal;
	(void)dlnow;
	(void)ultotal;
	(void)ulnow;
	pthread_mutex_lock(&a.mu);
	cut = a.cut;
	pthread_mutex_unlock(&a.mu);
	return cut;
}

/*
 * Sets one option that the post relies on; an option this libcurl does
 * not know (too old) fails the post loudly instead of being dropped.
 */
#define OPT(h, opt, val, err) \
	health_curl_opt(curl_easy_setopt(h, opt, val), #opt, err, sizeof(err))

static void
post(const char *url, const char *body, long timeout_ms)
{
	struct curl_slist *hdr = NULL;
	char cerr[CURL_ERROR_SIZE] = "", err[CURL_ERROR_SIZE + 128] = "";
	long status = 0;
	CURLcode cc;
	CURL *h;
	int cut;

	if ((h = curl_easy_init()) == NULL)
		return;
	hdr = curl_slist_append(hdr, "Content-Type: application/json");
	if (hdr == NULL || OPT(h, CURLOPT_URL, url, err) == -1 ||
	    OPT(h, CURLOPT_PROTOCOLS_STR, "http,https", err) == -1 ||
	    OPT(h, CURLOPT_HTTPHEADER, hdr, err) == -1 ||
	    OPT(h, CURLOPT_POSTFIELDS, body, err) == -1 ||
	    OPT(h, CURLOPT_TIMEOUT_MS, timeout_ms, err) == -1 ||
	    OPT(h, CURLOPT_NOSIGNAL, 1L, err) == -1 ||
	    OPT(h, CURLOPT_WRITEFUNCTION, discard, err) == -1 ||
	    OPT(h, CURLOPT_ERRORBUFFER, cerr, err) == -1 ||
	    OPT(h, CURLOPT_SOCKOPTFUNCTION, sock_opened, err) == -1 ||
	    OPT(h, CURLOPT_CLOSESOCKETFUNCTION, sock_close, err) == -1 ||
	    OPT(h, CURLOPT_XFERINFOFUNCTION, progress, err) == -1 ||
	    OPT(h, CURLOPT_NOPROGRESS, 0L, err) == -1) {
		if (*err == '\0')
			snprintf(err, sizeof(err), "out of memory");
		log_event(LVL_WARNING, EV_ALERT_FAILED, err);
		goto done;
	}
	/* Only a name for the server's logs: no need to check it. */
	(void)curl_easy_setopt(
	    h, CURLOPT_USERAGENT, "limpeza/" LIMPEZA_VERSION);
	/* A stop does not join a resolver thread stuck on a name look-up. */
	(void)curl_easy_setopt(h, CURLOPT_QUICK_EXIT, 1L);
	cc = curl_easy_perform(h);
	if (cc == CURLE_OK)
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	pthread_mutex_lock(&a.mu);
	cut = a.cut;
	if (cut && cc != CURLE_OK)
		a.dropped++;
	pthread_mutex_unlock(&a.mu);
	if (cc != CURLE_OK && !cut)
		log_event(LVL_WARNING, EV_ALERT_FAILED,
		    *cerr != '\0' ? cerr : curl_easy_strerror(cc));
	else if (cc == CURLE_OK && (status < 200 || status > 299)) {
		snprintf(cerr, sizeof(cerr), "HTTP status %ld", status);
		log_event(LVL_WARNING, EV_ALERT_FAILED, cerr);
	}
done:
	curl_slist_free_all(hdr);
	curl_easy_cleanup(h);
}

static void *
worker(void *arg)
{
	char *body, *url;
	long long left;
	long timeout;

	(void)arg;
	pthread_mutex_lock(&a.mu);
	for (;;) {
		while (a.n == 0 && !a.stop)
			pthread_cond_wait(&a.cv, &a.mu);
		if (a.n == 0 || a.cut)
			break;
		timeout = ALERT_TIMEOUT_MS;
		if (a.stop) {
			left = a.deadline - now_monotonic_ms();
			if (left <= 0)
				break;
			if (left < timeout)
				timeout = (long)left;
		}
		body = a.queue[a.head];
		a.head = (a.head + 1) % ALERT_QUEUE;
		a.n--;
		/* A reload may change the URL while this post runs. */
		if ((url = strdup(a.url)) == NULL)
			fatalx_oom();
		pthread_mutex_unlock(&a.mu);
		post(url, body, timeout);
		free(url);
		free(body);
		pthread_mutex_lock(&a.mu);
	}
	a.finished = 1;
	pthread_cond_signal(&a.done);
	pthread_mutex_unlock(&a.mu);
	return NULL;
}

/*
 * Starts the sender for url, or points the running one at url without
 * waiting for it; an empty url stops it at once (alerts off).
 */
int
alert_start(const char *url)
{
	pthread_condattr_t ca;
	char err[256], *copy;

	if (url == NULL || *url == '\0') {
		alert_stop(0);
		return 0;
	}
	if ((copy = strdup(url)) == NULL)
		fatalx_oom();
	if (a.running) {
		pthread_mutex_lock(&a.mu);
		free(a.url);
		a.url = copy;
		pthread_mutex_unlock(&a.mu);
		return 0;
	}
	if (health_global_init(err, sizeof(err)) == -1) {
		log_event(LVL_WARNING, EV_ALERT_FAILED, err);
		free(copy);
		return 0;
	}
	/* The stop's deadline is on the monotonic clock. */
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&a.done, &ca);
	pthread_condattr_destroy(&ca);
	a.url = copy;
	a.stop = a.finished = a.cut = 0;
	a.dropped = 0;
	if (pthread_create(&a.thread, NULL, worker, NULL) != 0) {
		pthread_cond_destroy(&a.done);
		free(a.url);
		a.url = NULL;
		return -1;
	}
	a.running = 1;
	return 0;
}

/*
 * Sends what is queued within budget_ms, then ends the thread: a post
 * still running then is cut, and what is left is dropped, with one line
 * that says how many.
 */
void
alert_stop(long long budget_ms)
{
	struct timespec ts;
	long long deadline;
	long dropped;

	if (!a.running)
		return;
	if (budget_ms < 0)
		budget_ms = 0;
	deadline = now_monotonic_ms() + budget_ms;
	ts.tv_sec = deadline / MS_PER_S;
	ts.tv_nsec = (deadline % MS_PER_S) * 1000000;
	pthread_mutex_lock(&a.mu);
	a.stop = 1;
	a.deadline = deadline;
	pthread_cond_signal(&a.cv);
	while (!a.finished)
		if (pthread_cond_timedwait(&a.done, &a.mu, &ts) == ETIMEDOUT)
			break;
	if (!a.finished) {
		a.cut = 1;
		if (a.sock != -1)
			shutdown(a.sock, SHUT_RDWR);
	}
	pthread_mutex_unlock(&a.mu);
	pthread_join(a.thread, NULL);
	dropped = a.dropped;
	while (a.n > 0) {
		free(a.queue[a.head]);
		a.head = (a.head + 1) % ALERT_QUEUE;
		a.n--;
		dropped++;
	}
	if (dropped > 0)
		log_event(LVL_WARNING, EV_ALERTS_DROPPED, dropped);
	pthread_cond_destroy(&a.done);
	a.running = 0;
	free(a.url);
	a.url = NULL;
}

/*
 * The body {event, host, count, message, time}, or NULL (said) if jansson
 * will not build it. The host name and the message (a driver's error, a
 * path) may hold any bytes: they go in made valid (text_json). I takes a
 * json_int_t, i an int: the argument's type decides.
 */
char *
alert_body(const char *event, long count, const char *message, const char *host,
    time_t t)
{
	char ts[32], why[JSON_ERROR_TEXT_LENGTH + 64];
	json_error_t jerr;
	struct tm tm;
	json_t *o;
	char *body;

	gmtime_r(&t, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
	o = json_pack_ex(&jerr, 0, "{s:s, s:o, s:I, s:o, s:s}", "event", event,
	    "host", text_json(host), "count", (json_int_t)count, "message",
	    text_json(message), "time", ts);
	if (o == NULL) {
		/* A bug of ours, never lack of memory: the alert is lost. */
		snprintf(
		    why, sizeof(why), "cannot build its JSON: %s", jerr.text);
		log_event(LVL_ERROR, EV_ALERT_FAILED, why);
		return NULL;
	}
	body = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	if (body == NULL)
		fatalx_oom();
	return body;
}

/* Queues an alert; never waits. */
void
alert_send(const char *event, long count, const char *message)
{
	char host[256] = "";
	char *body;

	if (!a.running)
		return;
	gethostname(host, sizeof(host) - 1);
	if ((body = alert_body(event, count, message, host, time(NULL))) ==
	    NULL)
		return;
	pthread_mutex_lock(&a.mu);
	if (a.n == ALERT_QUEUE) {
		pthread_mutex_unlock(&a.mu);
		log_event(LVL_WARNING, EV_ALERT_FAILED, "queue full, dropped");
		free(body);
		return;
	}
	a.queue[(a.head + a.n) % ALERT_QUEUE] = body;
	a.n++;
	pthread_cond_signal(&a.cv);
	pthread_mutex_unlock(&a.mu);
}
