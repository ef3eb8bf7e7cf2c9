/* alert.c: JSON alerts POSTed to LIMPEZA_ALERT_WEBHOOK from a worker thread. */

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "limpeza.h"

#define ALERT_QUEUE 16
#define ALERT_TIMEOUT_MS 5000

/*
 * Alerts are queued and sent by one thread, so a slow or dead webhook
 * never holds a cycle up: the cycle only copies a few hundred bytes into
 * the queue. A full queue drops the alert, with a log line.
 */
static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_t thread;
	int running;
	int stop;
	char *url;
	char *queue[ALERT_QUEUE];
	int head, n;
} a = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

static size_t
discard(char *data, size_t size, size_t nmemb, void *arg)
{
	(void)data;
	(void)arg;
	return size * nmemb;
}

static void
post(const char *url, const char *body)
{
	struct curl_slist *hdr = NULL;
	char cerr[CURL_ERROR_SIZE] = "";
	long status = 0;
	CURLcode cc;
	CURL *h;

	if ((h = curl_easy_init()) == NULL)
		return;
	hdr = curl_slist_append(hdr, "Content-Type: application/json");
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)ALERT_TIMEOUT_MS);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, cerr);
	curl_easy_setopt(h, CURLOPT_USERAGENT, "limpeza/" LIMPEZA_VERSION);
	cc = curl_easy_perform(h);
	if (cc == CURLE_OK)
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	if (cc != CURLE_OK)
		log_event(LVL_WARNING, EV_ALERT_FAILED,
		    *cerr != '\0' ? cerr : curl_easy_strerror(cc));
	else if (status < 200 || status > 299) {
		snprintf(cerr, sizeof(cerr), "HTTP status %ld", status);
		log_event(LVL_WARNING, EV_ALERT_FAILED, cerr);
	}
	curl_slist_free_all(hdr);
	curl_easy_cleanup(h);
}

static void *
worker(void *arg)
{
	char *body, *url;

	(void)arg;
	pthread_mutex_lock(&a.mu);
	for (;;) {
		while (a.n == 0 && !a.stop)
			pthread_cond_wait(&a.cv, &a.mu);
		if (a.n == 0 && a.stop)
			break;
		body = a.queue[a.head];
		a.head = (a.head + 1) % ALERT_QUEUE;
		a.n--;
		url = a.url;
		pthread_mutex_unlock(&a.mu);
		post(url, body);
		free(body);
		pthread_mutex_lock(&a.mu);
	}
	pthread_mutex_unlock(&a.mu);
	return NULL;
}

/* Starts the sender for url (empty: alerts off), stopping any old one. */
int
alert_start(const char *url)
{
	char err[256];

	alert_stop();
	if (url == NULL || *url == '\0')
		return 0;
	if (health_global_init(err, sizeof(err)) == -1) {
		log_event(LVL_WARNING, EV_ALERT_FAILED, err);
		return 0;
	}
	if ((a.url = strdup(url)) == NULL)
		fatalx_oom();
	a.stop = 0;
	if (pthread_create(&a.thread, NULL, worker, NULL) != 0) {
		free(a.url);
		a.url = NULL;
		return -1;
	}
	a.running = 1;
	return 0;
}

/* Sends what is queued (each post is bounded), then ends the thread. */
void
alert_stop(void)
{
	if (!a.running)
		return;
	pthread_mutex_lock(&a.mu);
	a.stop = 1;
	pthread_cond_signal(&a.cv);
	pthread_mutex_unlock(&a.mu);
	pthread_join(a.thread, NULL);
	a.running = 0;
	free(a.url);
	a.url = NULL;
}

/* Queues {event, host, count, message, time}; never waits. */
void
alert_send(const char *event, long count, const char *message)
{
	char host[256] = "", ts[32];
	time_t t = time(NULL);
	struct tm tm;
	json_t *o;
	char *body;

	if (!a.running)
		return;
	gethostname(host, sizeof(host) - 1);
	gmtime_r(&t, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
	o = json_pack("{s:s, s:s, s:i, s:s, s:s}", "event", event, "host", host,
	    "count", (json_int_t)count, "message", message, "time", ts);
	if (o == NULL)
		fatalx_oom();
	body = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	if (body == NULL)
		fatalx_oom();
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
