/* mask.c: URLs as they may be shown: no password, no secret path. */

/* curl_url_get() and the rest are functions here (libs.c), not macros. */
#define CURL_DISABLE_TYPECHECK

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include <curl/curl.h>
#include <libpq-fe.h>

#include "limpeza.h"
#include "mask.h"

/* libpq's key=value form: a keyword, then '='. */
int
mask_is_conninfo(const char *s)
{
	size_t n = 0;

	while (isalpha((unsigned char)s[n]) || s[n] == '_')
		n++;
	while (s[n] == ' ')
		n++;
	return n > 0 && s[n] == '=';
}

/* Appends n bytes to an output buffer; o->failed once it is full. */
struct out {
	char *buf;
	size_t len, o;
	int failed;
};

static void
out_put(struct out *o, const char *s, size_t n)
{
	if (o->failed || o->o + n >= o->len) {
		o->failed = 1;
		return;
	}
	memcpy(o->buf + o->o, s, n);
	o->o += n;
	o->buf[o->o] = '\0';
}

static void
out_str(struct out *o, const char *s)
{
	out_put(o, s, strlen(s));
}

/* A value in a URL: unreserved bytes as they are, the rest %XX. */
static void
out_url_value(struct out *o, const char *v, const char *keep)
{
	char hex[4];

	for (; *v != '\0'; v++) {
		if (isalnum((unsigned char)*v) || strchr("-._~", *v) != NULL ||
		    strchr(keep, *v) != NULL)
			out_put(o, v, 1);
		else {
			snprintf(hex, sizeof(hex), "%%%02X", (unsigned char)*v);
			out_put(o, hex, 3);
		}
	}
}

/* A value in key=value form, quoted when libpq would need the quotes. */
static void
out_kv_value(struct out *o, const char *v)
{
	if (*v != '\0' && strpbrk(v, " \t\n\r\f\v'\\") == NULL) {
		out_str(o, v);
		return;
	}
	out_put(o, "'", 1);
	for (; *v != '\0'; v++) {
		if (*v == '\'' || *v == '\\')
			out_put(o, "\\", 1);
		out_put(o, v, 1);
	}
	out_put(o, "'", 1);
}

static int
is_secret_option(const char *keyword)
{
	return strcmp(keyword, "password") == 0 ||
	    strcmp(keyword, "sslpassword") == 0;
}

static const char *
option_value(const PQconninfoOption *opts, const char *keyword)
{
	for (; opts->keyword != NULL; opts++)
		if (strcmp(opts->keyword, keyword) == 0)
			return opts->val;
	return NULL;
}

/*
 * The connection string again, built from what libpq's own parser made
 * of it, every password shown as ***: no byte of the output comes from
 * a password, however the text spells it (quoted, escaped,
 * percent-encoded, given twice). A URL stays a URL.
 */
static void
mask_rebuild(const char *url, const PQconninfoOption *opts, struct out *o)
{
	const char *user = option_value(opts, "user");
	const char *pw = option_value(opts, "password");
	const char *host = option_value(opts, "host");
	const char *port = option_value(opts, "port");
	const char *db = option_value(opts, "dbname");
	const PQconninfoOption *k;
	int is_url = strncmp(url, "postgres://", 11) == 0 ||
	    strncmp(url, "postgresql://", 13) == 0;
	/* One host and port fit the authority; a list goes to the query. */
	int in_auth = host != NULL && *host != '\0' && *host != '/' &&
	    strchr(host, ',') == NULL &&
	    (port == NULL || strchr(port, ',') == NULL);
	char sep = '?';

	if (!is_url) {
		for (k = opts; k->keyword != NULL; k++) {
			if (k->val == NULL)
				continue;
			if (o->o > 0)
				out_put(o, " ", 1);
			out_str(o, k->keyword);
			out_put(o, "=", 1);
			if (is_secret_option(k->keyword))
				out_str(o, "***");
			else
				out_kv_value(o, k->val);
		}
		return;
	}
	out_put(o, url, (size_t)(strchr(url, ':') - url));
	out_str(o, "://");
	if (user != NULL || pw != NULL) {
		if (user != NULL)
			out_url_value(o, user, "");
		if (pw != NULL)
			out_str(o, ":***");
		out_put(o, "@", 1);
	}
	if (in_auth) {
		if (strchr(host, ':') != NULL) {
			out_put(o, "[", 1);
			out_url_value(o, host, ":");
			out_put(o, "]", 1);
		} else
			out_url_value(o, host, "");
		if (port != NULL) {
			out_put(o, ":", 1);
			out_url_value(o, port, "");
		}
	}
	if (db != NULL) {
		out_put(o, "/", 1);
		out_url_value(o, db, "");
	}
	for (k = opts; k->keyword != NULL; k++) {
		if (k->val == NULL || strcmp(k->keyword, "user") == 0 ||
		    strcmp(k->keyword, "password") == 0 ||
		    strcmp(k->keyword, "dbname") == 0 ||
		    (in_auth &&
			(strcmp(k->keyword, "host") == 0 ||
			    strcmp(k->keyword, "port") == 0)))
			continue;
		out_put(o, &sep, 1);
		sep = '&';
		out_str(o, k->keyword);
		out_put(o, "=", 1);
		if (is_secret_option(k->keyword))
			out_str(o, "***");
		else
			out_url_value(o, k->val, "/,:");
	}
}

/* Where a URL's authority starts (after scheme://), or NULL. */
static const char *
url_authority(const char *url)
{
	const char *auth = strstr(url, "://");

	if (auth == NULL || auth == url ||
	    strspn(url,
		"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
		"0123456789+.-") != (size_t)(auth - url))
		return NULL;
	return auth + 3;
}

/*
 * Whether libpq reads a URL otherwise than a person would, so that what
 * libpq takes for the user, the host, the port or the database may hold
 * a password. libpq ends user:password at the first '@' met before any
 * '/', and a '?' does not stop it. So a URL is ambiguous if, after that
 * '@' (or with none, after scheme://), another raw '@' comes before the
 * query (a password with an unescaped '@' or '/'); if what libpq takes
 * for user:password holds a '?' in the user, or is followed by no path
 * (a query a person meant, "h?password=p@ss"); or if libpq's port is not
 * a number ("app:secret/db", the host forgotten). The answer depends on
 * where these characters are, never on what the password is.
 */
static int
url_ambiguous(const char *url, const PQconninfoOption *opts)
{
	const char *auth = url_authority(url), *at, *q, *colon, *port;

	if (auth == NULL)
		return 0;
	port = option_value(opts, "port");
	if (port != NULL && port[strspn(port, "0123456789,")] != '\0')
		return 1;
	at = auth + strcspn(auth, "@/");
	if (*at == '@') {
		q = memchr(auth, '?', (size_t)(at - auth));
		colon = memchr(auth, ':', (size_t)(at - auth));
		if (q != NULL &&
		    (colon == NULL || q < colon || strchr(at, '/') == NULL))
			return 1;
		auth = at + 1;
	}
	q = auth + strcspn(auth, "?");
	return memchr(auth, '@', (size_t)(q - auth)) != NULL;
}

/* key=value keywords whose values are never secret. */
static int
is_plain_keyword(const char *k, size_t n)
{
	static const char *const plain[] = { "host", "hostaddr", "port",
		"dbname", "user", "sslmode", "connect_timeout",
		"application_name", "target_session_attrs", NULL };
	int i;

	for (i = 0; plain[i] != NULL; i++)
		if (strlen(plain[i]) == n && strncmp(plain[i], k, n) == 0)
			return 1;
	return 0;
}

/*
 * Without libpq's parser (libpq not loaded, or a text it rejects or reads
 * otherwise than a person would), print nothing that might be a
 * password. In a URL: everything from the first ':' of its authority to
 * its last '@', and from the first word "password" on, all the rest. In
 * key=value text: every value but those of plainly harmless keywords
 * (a misspelt "passwd=" included).
 */
static void
mask_fallback(const char *url, struct out *o)
{
	const char *auth = url_authority(url), *at, *colon, *p = url, *pw;
	const char *k, *v;

	if (auth == NULL && mask_is_conninfo(url)) {
		for (p = url; *p != '\0';) {
			if (isspace((unsigned char)*p)) {
				out_put(o, p++, 1);
				continue;
			}
			k = p;
			while (*p != '\0' && *p != '=' &&
			    !isspace((unsigned char)*p))
				p++;
			v = p;
			while (*v == ' ')
				v++;
			if (*v != '=') {
				out_str(o, "***");
				break;
			}
			out_put(o, k, (size_t)(p - k));
			out_put(o, "=", 1);
			for (v++; *v == ' '; v++)
				;
			/* A value ends at a space, or at its closing quote. */
			p = v;
			if (*p == '\'') {
				for (p++; *p != '\0' && *p != '\''; p++)
					if (*p == '\\' && p[1] != '\0')
						p++;
				if (*p == '\'')
					p++;
			} else
				while (
				    *p != '\0' && !isspace((unsigned char)*p))
					p++;
			if (is_plain_keyword(k, strcspn(k, " =")))
				out_put(o, v, (size_t)(p - v));
			else
				out_str(o, "***");
		}
		return;
	}
	if (auth != NULL) {
		at = strrchr(auth, '@');
		colon =
		    at != NULL ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
		if (colon != NULL) {
			out_put(o, url, (size_t)(colon - url));
			out_str(o, ":***");
			p = at;
		}
	}
	pw = strcasestr(p, "password");
	if (pw == NULL) {
		out_str(o, p);
		return;
	}
	out_put(o, p, (size_t)(pw - p));
	out_str(o, "password=***");
}

/*
 * A database URL as it may be shown anywhere: libpq's own parser
 * (PQconninfoParse) decides what the password is, for URLs and key=value
 * strings alike, and the password is shown as ***. Returns -1 if the
 * result did not fit (it is then cut).
 */
int
mask_dburl(const char *url, char *buf, size_t len)
{
	struct out o = { buf, len, 0, 0 };
	PQconninfoOption *opts = NULL;
	char err[256];

	if (len == 0)
		return -1;
	*buf = '\0';
	if (strncmp(url, "sqlite:///", 10) == 0)
		out_str(&o, url);
	else if (*url != '\0' && strncmp(url, "sqlite:", 7) != 0 &&
	    libs_pq(err, sizeof(err)) == 0 &&
	    (opts = PQconninfoParse(url, NULL)) != NULL) {
		/*
		 * A URL whose password a person reads otherwise than libpq
		 * (an unescaped '/' or '@' in it): whatever libpq made of it
		 * may hold part of that password, so only the scheme shows.
		 * Start-up refuses such a URL; this is for what else shows.
		 */
		if (url_ambiguous(url, opts)) {
			out_put(&o, url, (size_t)(strstr(url, "://") - url));
			out_str(&o, "://***");
		} else
			mask_rebuild(url, opts, &o);
	} else
		mask_fallback(url, &o);
	if (opts != NULL)
		PQconninfoFree(opts);
	return o.failed ? -1 : 0;
}

/*
 * An http(s) URL as libcurl reads it: its URL API (curl_url) with the
 * flags libcurl parses a transfer's CURLOPT_URL with, so that what is
 * decided here is what a request would send (CURLU_GUESS_SCHEME, which
 * libcurl adds, does nothing for a text that names its scheme, and one
 * that does not is no URL here). NULL if libcurl cannot be loaded or
 * refuses the text.
 */
static CURLU *
http_parse(const char *url)
{
	char err[256];
	CURLU *u;

	if (url_authority(url) == NULL || libs_curl(err, sizeof(err)) == -1 ||
	    (u = curl_url()) == NULL)
		return NULL;
	if (curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) !=
	    CURLUE_OK) {
		curl_url_cleanup(u);
		return NULL;
	}
	return u;
}

/*
 * One part of a parsed URL as libcurl holds it, or NULL if it has none or
 * an empty one (libcurl's own URL leaves out an empty query): curl_free()
 * it.
 */
static char *
http_part(CURLU *u, CURLUPart what)
{
	char *s = NULL;

	if (curl_url_get(u, what, &s, 0) != CURLUE_OK)
		return NULL;
	if (s != NULL && *s == '\0' && what != CURLUPART_USER &&
	    what != CURLUPART_PASSWORD) {
		curl_free(s);
		return NULL;
	}
	return s;
}

/*
 * Whether libcurl reads a URL otherwise than a person would: a raw '@'
 * that libcurl does not take for the end of the user and password, as it
 * finds it in the path, the query or the fragment. A person wrote it to
 * end user:password, and a '/', '?' or '#' before it ended the authority
 * for libcurl: part of the password would go out as the host, the port,
 * the path or the query, and be shown as such. The answer depends on
 * where these characters are, never on what the password is.
 */
static int
http_ambiguous(CURLU *u)
{
	static const CURLUPart after[] = { CURLUPART_PATH, CURLUPART_QUERY,
		CURLUPART_FRAGMENT };
	char *s;
	size_t i;
	int at = 0;

	for (i = 0; i < sizeof(after) / sizeof(after[0]); i++) {
		if ((s = http_part(u, after[i])) == NULL)
			continue;
		at |= strchr(s, '@') != NULL;
		curl_free(s);
	}
	return at;
}

/* What libcurl takes for user, password or login options, if anything. */
static int
http_has_userinfo(CURLU *u)
{
	static const CURLUPart login[] = { CURLUPART_USER, CURLUPART_PASSWORD,
		CURLUPART_OPTIONS };
	char *s;
	size_t i;
	int any = 0;

	for (i = 0; i < sizeof(login) / sizeof(login[0]); i++) {
		if ((s = http_part(u, login[i])) == NULL)
			continue;
		any = 1;
		curl_free(s);
	}
	return any;
}

/* Appends one part of u, with a prefix, if u has it. */
static void
out_part(struct out *o, CURLU *u, CURLUPart what, const char *prefix)
{
	char *s = http_part(u, what);

	if (s == NULL)
		return;
	out_str(o, prefix);
	out_str(o, s);
	curl_free(s);
}

/*
 * An http(s) URL as it may be shown, rebuilt from what libcurl's parser
 * made of it: no byte of the user, the password or the login options,
 * however they are spelt (they show as ***@), and with keep_path 0 only
 * "/..." for whatever follows the host (a webhook's path or query is
 * often its token). A URL that libcurl cannot parse, or reads otherwise
 * than written (start-up refuses both), shows only its scheme. Returns
 * -1 if the result did not fit (it is then cut).
 */
int
mask_http(const char *url, int keep_path, char *buf, size_t len)
{
	struct out o = { buf, len, 0, 0 };
	const char *auth = url_authority(url);
	char *path, *rest;
	CURLU *u;

	if (len == 0)
		return -1;
	*buf = '\0';
	if (*url == '\0')
		return 0;
	if ((u = http_parse(url)) == NULL || http_ambiguous(u)) {
		if (auth != NULL) {
			out_put(&o, url, (size_t)(auth - url));
			out_str(&o, "***");
		} else
			out_str(&o, "***");
		if (u != NULL)
			curl_url_cleanup(u);
		return o.failed ? -1 : 0;
	}
	out_part(&o, u, CURLUPART_SCHEME, "");
	out_str(&o, "://");
	if (http_has_userinfo(u))
		out_str(&o, "***@");
	out_part(&o, u, CURLUPART_HOST, "");
	out_part(&o, u, CURLUPART_PORT, ":");
	if (keep_path) {
		out_part(&o, u, CURLUPART_PATH, "");
		out_part(&o, u, CURLUPART_QUERY, "?");
		out_part(&o, u, CURLUPART_FRAGMENT, "#");
	} else {
		path = http_part(u, CURLUPART_PATH);
		rest = http_part(u, CURLUPART_QUERY);
		if (rest == NULL)
			rest = http_part(u, CURLUPART_FRAGMENT);
		if (rest != NULL || (path != NULL && strcmp(path, "/") != 0))
			out_str(&o, "/...");
		curl_free(path);
		curl_free(rest);
	}
	curl_url_cleanup(u);
	return o.failed ? -1 : 0;
}

/*
 * What libcurl makes of an http(s) URL, when libcurl is at hand: 0 all is
 * well; 1 it refuses the text; 2 it reads it otherwise than a person
 * would (see http_ambiguous). Either way the request could not go where
 * it was meant to, which is better said at start-up (exit 2).
 */
int
mask_http_check(const char *value)
{
	char lerr[256];
	CURLU *u;
	int rc;

	if (libs_curl(lerr, sizeof(lerr)) == -1)
		return 0;
	if ((u = http_parse(value)) == NULL)
		return 1;
	rc = http_ambiguous(u) ? 2 : 0;
	curl_url_cleanup(u);
	return rc;
}

/*
 * What libpq makes of a connection string, when libpq is at hand: 0 all
 * is well; 1 it refuses the text; 2 it reads a URL's password otherwise
 * than a person would (an unescaped '/' or '@' in it: libpq would take
 * part of the password for the host, the port or the database, and show
 * it in its errors); 3 its database name is itself a connection string
 * (libpq expands only the outer one: the inner one, password and all,
 * would go to the server as a name, and come back in its error). Either
 * way no connection could be made, which is
 * better said at start-up (exit 2) than every cycle. libpq's own message
 * is not repeated: it may quote the password.
 */
int
mask_dburl_check(const char *value)
{
	PQconninfoOption *opts, *o;
	char lerr[256], *msg = NULL;
	int rc;

	if (libs_pq(lerr, sizeof(lerr)) == -1)
		return 0;
	if ((opts = PQconninfoParse(value, &msg)) == NULL) {
		PQfreemem(msg);
		return 1;
	}
	rc = url_ambiguous(value, opts) ? 2 : 0;
	for (o = opts; rc == 0 && o->keyword != NULL; o++)
		if (strcmp(o->keyword, "dbname") == 0 && o->val != NULL &&
		    (strncmp(o->val, "postgres://", 11) == 0 ||
			strncmp(o->val, "postgresql://", 13) == 0 ||
			mask_is_conninfo(o->val)))
			rc = 3;
	PQconninfoFree(opts);
	return rc;
}
