/* health.c: asks the API how many jobs are active (libcurl, bounded). */

#include <string.h>

#include <curl/curl.h>

#include "limpeza.h"

#define HEALTH_MAX_BODY (1024UL * 1024)

struct body {
	char *buf;
	size_t len;
	int too_big;
};

/*
 * libcurl, loaded and initialised the first time a URL needs it. Called
 * from the main thread only: the alert thread starts after it.
 */
int
health_global_init(char *err, size_t errlen)
{
	static int ready;

	if (ready)
		return 0;
	if (libs_curl(err, errlen) == -1)
		return -1;
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		snprintf(err, errlen, "cannot initialise libcurl");
		return -1;
	}
	ready = 1;
	return 0;
}

/*
 * The result of setting one option limpeza relies on: 0, or -1 with err
 * naming the option. An older libcurl answers CURLE_UNKNOWN_OPTION for
 * an option it does not know, CURLOPT_PROTOCOLS_STR before 7.85: going
 * on without it would drop the protocol restriction silently.
 */
int
health_curl_opt(int cc, const char *name, char *err, size_t errlen)
{
	if (cc == CURLE_OK)
		return 0;
	snprintf(err, errlen, "libcurl refused %s: %s%s", name,
	    curl_easy_strerror((CURLcode)cc),
	    cc == CURLE_UNKNOWN_OPTION ? " (libcurl 7.85 or later is needed)"
				       : "");
	return -1;
}

#define OPT(h, opt, val) \
	health_curl_opt(curl_easy_setopt(h, opt, val), #opt, err, errlen)

/* Keeps at most 1 MiB; returning short makes curl abort the transfer. */
static size_t
body_write(char *data, size_t size, size_t nmemb, void *arg)
{
	struct body *b = arg;
	size_t n = size * nmemb;

	if (b->len + n > HEALTH_MAX_BODY) {
		b->too_big = 1;
		return 0;
	}
	memcpy(b->buf + b->len, data, n);
	b->len += n;
	return n;
}

/*
 * Reads jobs_active from a health answer. Only a JSON object with a
 * non-negative integer jobs_active counts; anything else is an error, so
 * a broken answer can never trigger a forced cleanup.
 */
int
health_parse(
    const char *body, size_t len, long long *jobs, char *err, size_t errlen)
{
	json_error_t jerr;
	json_t *root, *v;
	int rc = -1;

	root = json_loadb(body, len, 0, &jerr);
	if (root == NULL) {
		snprintf(err, errlen, "answer is not JSON (line %d, column %d)",
		    jerr.line, jerr.column);
		return -1;
	}
	if (!json_is_object(root)) {
		snprintf(err, errlen, "answer is not a JSON object");
		goto done;
	}
	v = json_object_get(root, "jobs_active");
	if (v == NULL) {
		snprintf(err, errlen, "answer has no jobs_active");
		goto done;
	}
	if (!json_is_integer(v) || json_integer_value(v) < 0) {
		snprintf(
		    err, errlen, "jobs_active is not a non-negative integer");
		goto done;
	}
	*jobs = json_integer_value(v);
	rc = 0;
done:
	json_decref(root);
	return rc;
}

/* One GET of LIMPEZA_HEALTH_URL within LIMPEZA_HEALTH_TIMEOUT in total. */
/*
 * The request, through libcurl's multi interface so that it can be
 * abandoned: every STOP_SLICE_MS it asks whether a stop is pending, and
 * a stop ends it at once (CURLE_ABORTED_BY_CALLBACK). CURLE_FAILED_INIT
 * with err set when libcurl cannot run it.
 */
static CURLcode
perform(CURL *h, char *err, size_t errlen)
{
	CURLcode cc = CURLE_FAILED_INIT;
	CURLM *m;
	CURLMsg *msg;
	int running = 1, left;

	if ((m = curl_multi_init()) == NULL ||
	    curl_multi_add_handle(m, h) != CURLM_OK) {
		snprintf(err, errlen, "cannot start a request");
		if (m != NULL)
			curl_multi_cleanup(m);
		return cc;
	}
	for (;;) {
		if (curl_multi_perform(m, &running) != CURLM_OK) {
			snprintf(err, errlen, "the request failed in libcurl");
			break;
		}
		if (running == 0) {
			while ((msg = curl_multi_info_read(m, &left)) != NULL)
				if (msg->msg == CURLMSG_DONE)
					cc = msg->data.result;
			if (cc == CURLE_FAILED_INIT)
				snprintf(err, errlen, "no answer from libcurl");
			break;
		}
		if (stop_pending()) {
			snprintf(err, errlen, "abandoned for a stop");
			cc = CURLE_ABORTED_BY_CALLBACK;
			break;
		}
		if (curl_multi_poll(m, NULL, 0, STOP_SLICE_MS, NULL) !=
		    CURLM_OK) {
			snprintf(err, errlen, "the request failed in libcurl");
			break;
		}
	}
	curl_multi_remove_handle(m, h);
	curl_multi_cleanup(m);
	return cc;
}

int
health_probe(
    const struct config *cfg, long long *jobs, char *err, size_t errlen)
{
	/* cppcheck-suppress unassignedVariable ; body_write() fills it */
	static char buf[HEALTH_MAX_BODY];
	struct body b = { buf, 0, 0 };
	char cerr[CURL_ERROR_SIZE] = "";
	CURL *h;
	CURLcode cc;
	long status = 0;
	int rc = -1;

	if (health_global_init(err, errlen) == -1)
		return -1;
	h = curl_easy_init();
	if (h == NULL) {
		snprintf(err, errlen, "cannot start a request");
		return -1;
	}
	if (OPT(h, CURLOPT_URL, cfg->health_url) == -1 ||
	    OPT(h, CURLOPT_PROTOCOLS_STR, "http,https") == -1 ||
	    OPT(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https") == -1 ||
	    OPT(h, CURLOPT_FOLLOWLOCATION, 1L) == -1 ||
	    OPT(h, CURLOPT_MAXREDIRS, 3L) == -1 ||
	    OPT(h, CURLOPT_TIMEOUT_MS, (long)cfg->health_timeout) == -1 ||
	    OPT(h, CURLOPT_CONNECTTIMEOUT_MS, (long)cfg->health_timeout) ==
		-1 ||
	    OPT(h, CURLOPT_NOSIGNAL, 1L) == -1 ||
	    OPT(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)HEALTH_MAX_BODY) ==
		-1 ||
	    OPT(h, CURLOPT_WRITEFUNCTION, body_write) == -1 ||
	    OPT(h, CURLOPT_WRITEDATA, &b) == -1 ||
	    OPT(h, CURLOPT_ERRORBUFFER, cerr) == -1)
		goto done;
	/*
	 * Nice to have, not relied on: a libcurl without zlib refuses the
	 * encoding, and a server name for its logs needs no check.
	 */
	(void)curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "");
	(void)curl_easy_setopt(
	    h, CURLOPT_USERAGENT, "limpeza/" LIMPEZA_VERSION);
	/*
	 * A stop must not wait on a name look-up that hangs: the cleanup
	 * then leaves the resolver thread behind instead of joining it.
	 */
	(void)curl_easy_setopt(h, CURLOPT_QUICK_EXIT, 1L);

	if ((cc = perform(h, err, errlen)) == CURLE_ABORTED_BY_CALLBACK) {
		rc = -2;
		goto done;
	}
	if (cc == CURLE_FAILED_INIT)
		goto done;
	if (b.too_big || cc == CURLE_FILESIZE_EXCEEDED) {
		snprintf(err, errlen, "answer larger than 1 MiB");
		goto done;
	}
	if (cc != CURLE_OK) {
		snprintf(err, errlen, "%s",
		    *cerr != '\0' ? cerr : curl_easy_strerror(cc));
		goto done;
	}
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	if (status != 200) {
		snprintf(err, errlen, "HTTP status %ld", status);
		goto done;
	}
	rc = health_parse(b.buf, b.len, jobs, err, errlen);
done:
	curl_easy_cleanup(h);
	return rc;
}
