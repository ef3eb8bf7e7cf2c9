/* libs.c: libpq and libcurl, loaded the first time they are needed. */

/* The definitions below are functions, not curl's type-checking macros. */
#define CURL_DISABLE_TYPECHECK

#include <curl/curl.h>
#include <dlfcn.h>
#include <libpq-fe.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "limpeza.h"
#include "probe.h"

/*
 * A daemon that cleans a cache file and an SQLite store never speaks to
 * PostgreSQL, and one without a health URL or webhook never speaks HTTP.
 * Yet linking libpq and libcurl maps some forty libraries at every start
 * (most of the 20 ms a `limpeza once` takes before it does anything), and
 * GnuTLS, which they bring in for LDAP and RTMP, initialises itself from
 * a constructor and keeps about 0.8 MB for ever. So both libraries are
 * dlopen()ed on first need, with GNUTLS_NO_IMPLICIT_INIT=1 unless the
 * environment says otherwise, and the functions limpeza calls are defined
 * here with the libraries' own prototypes, forwarding to them (systemd
 * treats its optional libraries the same way).
 *
 * Which file to load is the build's answer, not a string written here:
 * scripts/probe.sh asks the linker which library it picks for -lpq and
 * -lcurl and writes their sonames (libcurl.so.4, libcurl-gnutls.so.4...)
 * to build/probe.h, so the library loaded is the one compiled against.
 */

#define PQ_FUNCS(X)             \
	X(PQconnectStartParams) \
	X(PQconnectPoll)        \
	X(PQgetCancel)          \
	X(PQcancel)             \
	X(PQfreeCancel)         \
	X(PQsetnonblocking)     \
	X(PQflush)              \
	X(PQstatus)             \
	X(PQtransactionStatus)  \
	X(PQerrorMessage)       \
	X(PQfinish)             \
	X(PQsendQueryParams)    \
	X(PQenterPipelineMode)  \
	X(PQexitPipelineMode)   \
	X(PQpipelineSync)       \
	X(PQsocket)             \
	X(PQconsumeInput)       \
	X(PQisBusy)             \
	X(PQgetResult)          \
	X(PQresultStatus)       \
	X(PQresultErrorMessage) \
	X(PQclear)              \
	X(PQntuples)            \
	X(PQgetvalue)           \
	X(PQgetisnull)          \
	X(PQescapeLiteral)      \
	X(PQescapeIdentifier)   \
	X(PQfreemem)            \
	X(PQconninfoParse)      \
	X(PQconninfoFree)

#define CURL_FUNCS(X)               \
	X(curl_global_init)         \
	X(curl_easy_init)           \
	X(curl_easy_setopt)         \
	X(curl_easy_perform)        \
	X(curl_easy_getinfo)        \
	X(curl_easy_cleanup)        \
	X(curl_easy_strerror)       \
	X(curl_slist_append)        \
	X(curl_slist_free_all)      \
	X(curl_multi_init)          \
	X(curl_multi_add_handle)    \
	X(curl_multi_remove_handle) \
	X(curl_multi_perform)       \
	X(curl_multi_poll)          \
	X(curl_multi_info_read)     \
	X(curl_multi_cleanup)       \
	X(curl_url)                 \
	X(curl_url_set)             \
	X(curl_url_get)             \
	X(curl_url_cleanup)         \
	X(curl_free)

#define POINTER(f) static __typeof__(f) *p_##f;
#define ENTRY(f) { #f, (void **)&p_##f },

PQ_FUNCS(POINTER)
CURL_FUNCS(POINTER)

struct sym {
	const char *name;
	void **slot;
};

static const struct sym pq_syms[] = { PQ_FUNCS(ENTRY) };
static const struct sym curl_syms[] = { CURL_FUNCS(ENTRY) };
static void *pq_lib, *curl_lib;

/* Called from the main thread only, before any other thread uses them. */
static int
load(const char *soname, const struct sym *syms, size_t n, void **lib,
    char *err, size_t errlen)
{
	void *h;
	size_t i;

	if (*lib != NULL)
		return 0;
	/* GnuTLS's constructor runs inside dlopen() and reads this. */
	if (getenv("GNUTLS_NO_IMPLICIT_INIT") == NULL)
		(void)setenv("GNUTLS_NO_IMPLICIT_INIT", "1", 0);
	if ((h = dlopen(soname, RTLD_NOW | RTLD_LOCAL)) == NULL) {
		snprintf(err, errlen, "cannot load %s: %s", soname, dlerror());
		return -1;
	}
	for (i = 0; i < n; i++)
		if ((*syms[i].slot = dlsym(h, syms[i].name)) == NULL) {
			snprintf(
			    err, errlen, "%s has no %s", soname, syms[i].name);
			dlclose(h);
			return -1;
		}
	*lib = h;
	return 0;
}

int
libs_pq(char *err, size_t errlen)
{
	return load(PQ_SONAME, pq_syms, sizeof(pq_syms) / sizeof(pq_syms[0]),
	    &pq_lib, err, errlen);
}

int
libs_curl(char *err, size_t errlen)
{
	return load(CURL_SONAME, curl_syms,
	    sizeof(curl_syms) / sizeof(curl_syms[0]), &curl_lib, err, errlen);
}

/* libpq: callers load it (libs_pq) before their first call. */

PGconn *
PQconnectStartParams(
    const char *const *keywords, const char *const *values, int expand)
{
	return p_PQconnectStartParams(keywords, values, expand);
}

PostgresPollingStatusType
PQconnectPoll(PGconn *conn)
{
	return p_PQconnectPoll(conn);
}

PGcancel *
PQgetCancel(PGconn *conn)
{
	return p_PQgetCancel(conn);
}

int
PQcancel(PGcancel *cancel, char *errbuf, int errbufsize)
{
	return p_PQcancel(cancel, errbuf, errbufsize);
}

void
PQfreeCancel(PGcancel *cancel)
{
	p_PQfreeCancel(cancel);
}

int
PQsetnonblocking(PGconn *conn, int arg)
{
	return p_PQsetnonblocking(conn, arg);
}

int
PQflush(PGconn *conn)
{
	return p_PQflush(conn);
}

ConnStatusType
PQstatus(const PGconn *conn)
{
	return p_PQstatus(conn);
}

PGTransactionStatusType
PQtransactionStatus(const PGconn *conn)
{
	return p_PQtransactionStatus(conn);
}

char *
PQerrorMessage(const PGconn *conn)
{
	return p_PQerrorMessage(conn);
}

void
PQfinish(PGconn *conn)
{
	p_PQfinish(conn);
}

int
PQsendQueryParams(PGconn *conn, const char *command, int n, const Oid *types,
    const char *const *values, const int *lengths, const int *formats,
    int result_format)
{
	return p_PQsendQueryParams(
	    conn, command, n, types, values, lengths, formats, result_format);
}

int
PQenterPipelineMode(PGconn *conn)
{
	return p_PQenterPipelineMode(conn);
}

int
PQexitPipelineMode(PGconn *conn)
{
	return p_PQexitPipelineMode(conn);
}

int
PQpipelineSync(PGconn *conn)
{
	return p_PQpipelineSync(conn);
}

int
PQsocket(const PGconn *conn)
{
	return p_PQsocket(conn);
}

int
PQconsumeInput(PGconn *conn)
{
	return p_PQconsumeInput(conn);
}

int
PQisBusy(PGconn *conn)
{
	return p_PQisBusy(conn);
}

PGresult *
PQgetResult(PGconn *conn)
{
	return p_PQgetResult(conn);
}

ExecStatusType
PQresultStatus(const PGresult *res)
{
	return p_PQresultStatus(res);
}

char *
PQresultErrorMessage(const PGresult *res)
{
	return p_PQresultErrorMessage(res);
}

void
PQclear(PGresult *res)
{
	p_PQclear(res);
}

int
PQntuples(const PGresult *res)
{
	return p_PQntuples(res);
}

char *
PQgetvalue(const PGresult *res, int row, int col)
{
	return p_PQgetvalue(res, row, col);
}

int
PQgetisnull(const PGresult *res, int row, int col)
{
	return p_PQgetisnull(res, row, col);
}

char *
PQescapeLiteral(PGconn *conn, const char *str, size_t len)
{
	return p_PQescapeLiteral(conn, str, len);
}

char *
PQescapeIdentifier(PGconn *conn, const char *str, size_t len)
{
	return p_PQescapeIdentifier(conn, str, len);
}

void
PQfreemem(void *ptr)
{
	p_PQfreemem(ptr);
}

PQconninfoOption *
PQconninfoParse(const char *conninfo, char **errmsg)
{
	return p_PQconninfoParse(conninfo, errmsg);
}

void
PQconninfoFree(PQconninfoOption *opts)
{
	p_PQconninfoFree(opts);
}

/* libcurl: health_global_init() loads it before the first call. */

CURLcode
curl_global_init(long flags)
{
	return p_curl_global_init(flags);
}

CURL *
curl_easy_init(void)
{
	return p_curl_easy_init();
}

/*
 * One argument follows the option, of the type its number says (curl.h
 * numbers options by type, CURLOPTTYPE_*): read it as that type and pass
 * it on.
 */
CURLcode
curl_easy_setopt(CURL *h, CURLoption opt, ...)
{
	void (*fn)(void);
	curl_off_t off;
	va_list ap;
	CURLcode rc;
	void *ptr;
	long num;

	va_start(ap, opt);
	if (opt >= CURLOPTTYPE_OFF_T && opt < CURLOPTTYPE_BLOB) {
		off = va_arg(ap, curl_off_t);
		rc = p_curl_easy_setopt(h, opt, off);
	} else if (opt >= CURLOPTTYPE_FUNCTIONPOINT &&
	    opt < CURLOPTTYPE_OFF_T) {
		fn = va_arg(ap, void (*)(void));
		rc = p_curl_easy_setopt(h, opt, fn);
	} else if (opt >= CURLOPTTYPE_OBJECTPOINT) {
		/* objects, strings, lists, callbacks' data and blobs */
		ptr = va_arg(ap, void *);
		rc = p_curl_easy_setopt(h, opt, ptr);
	} else {
		num = va_arg(ap, long);
		rc = p_curl_easy_setopt(h, opt, num);
	}
	va_end(ap);
	return rc;
}

CURLcode
curl_easy_perform(CURL *h)
{
	return p_curl_easy_perform(h);
}

/* Every CURLINFO takes one pointer to where the answer goes. */
CURLcode
curl_easy_getinfo(CURL *h, CURLINFO info, ...)
{
	va_list ap;
	CURLcode rc;

	va_start(ap, info);
	rc = p_curl_easy_getinfo(h, info, va_arg(ap, void *));
	va_end(ap);
	return rc;
}

void
curl_easy_cleanup(CURL *h)
{
	p_curl_easy_cleanup(h);
}

const char *
curl_easy_strerror(CURLcode code)
{
	return p_curl_easy_strerror(code);
}

struct curl_slist *
curl_slist_append(struct curl_slist *list, const char *data)
{
	return p_curl_slist_append(list, data);
}

void
curl_slist_free_all(struct curl_slist *list)
{
	p_curl_slist_free_all(list);
}

CURLM *
curl_multi_init(void)
{
	return p_curl_multi_init();
}

CURLMcode
curl_multi_add_handle(CURLM *m, CURL *h)
{
	return p_curl_multi_add_handle(m, h);
}

CURLMcode
curl_multi_remove_handle(CURLM *m, CURL *h)
{
	return p_curl_multi_remove_handle(m, h);
}

CURLMcode
curl_multi_perform(CURLM *m, int *running)
{
	return p_curl_multi_perform(m, running);
}

CURLMcode
curl_multi_poll(CURLM *m, struct curl_waitfd fds[], unsigned int nfds,
    int timeout_ms, int *ret)
{
	return p_curl_multi_poll(m, fds, nfds, timeout_ms, ret);
}

CURLMsg *
curl_multi_info_read(CURLM *m, int *left)
{
	return p_curl_multi_info_read(m, left);
}

CURLMcode
curl_multi_cleanup(CURLM *m)
{
	return p_curl_multi_cleanup(m);
}

/* libcurl's URL API: mask.c loads libcurl (libs_curl) before its calls. */

CURLU *
curl_url(void)
{
	return p_curl_url();
}

CURLUcode
curl_url_set(CURLU *u, CURLUPart what, const char *part, unsigned int flags)
{
	return p_curl_url_set(u, what, part, flags);
}

/* const from libcurl 8 on: scripts/probe.sh asks the header. */
CURLUcode
curl_url_get(CURL_URL_GET_CONST CURLU *u, CURLUPart what, char **part,
    unsigned int flags)
{
	return p_curl_url_get(u, what, part, flags);
}

void
curl_url_cleanup(CURLU *u)
{
	p_curl_url_cleanup(u);
}

void
curl_free(void *p)
{
	p_curl_free(p);
}
