/* config.c: the one settings table: env, env files, options, checks. */

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <libpq-fe.h>

#include "limpeza.h"

enum setting_type {
	T_DBURL,
	T_PATHLIST,
	T_PATH,
	T_HTTPURL,
	T_HOOKURL,
	T_DURATION,
	T_INT,
	T_ENUM,
	T_BOOL,
	T_IDENT,
	T_TABLE,
	T_WORD,
	T_ZONE,
	T_ADDR
};

/*
 * One row per setting of SPEC §4. The environment name, the long option,
 * the default, the accepted range and the help text all live here, so
 * that parsing, validation, --help, `check` and the man page cannot drift
 * apart. For T_ENUM, choices lists the words in the order of their enum
 * values; for T_DURATION, min and max are milliseconds.
 */
struct setting {
	const char *env;
	const char *option;
	enum setting_type type;
	const char *def;
	size_t off;
	const char *choices;
	long long min;
	long long max;
	const char *help;
};

#define OFF(f) offsetof(struct config, f)
#define DAY_MS (86400 * MS_PER_S)

static const struct setting settings[] = {
	{ "DATABASE_URL", "database-url", T_DBURL, "", OFF(database_url), NULL,
	    0, 0,
	    "job store: postgres://..., postgresql://..., libpq key=value, "
	    "or sqlite:///path (SQLAlchemy form); unset: read from the env "
	    "files, else the database step is skipped. The password is never "
	    "shown; a URL libpq reads otherwise than written (an unescaped "
	    "'@' or '/' in its password: write %40, %2F) is refused" },
	{ "LIMPEZA_ENV_FILES", "env-files", T_PATHLIST,
	    "/root/desfollow/backend/.env:backend/.env", OFF(env_files), NULL,
	    0, 0,
	    "dotenv files read in order, first value wins, missing files "
	    "skipped; empty: none (--env-file FILE adds one)" },
	{ "LIMPEZA_CACHE_FILE", "cache-file", T_PATH,
	    "/tmp/desfollow_jobs.json", OFF(cache_file), NULL, 0, 0,
	    "the API's JSON job cache; empty disables the cache step" },
	{ "LIMPEZA_HEALTH_URL", "health-url", T_HTTPURL,
	    "http://api.desfollow.com.br/api/health", OFF(health_url), NULL, 0,
	    0,
	    "API health endpoint (http or https); empty disables the health "
	    "check and forced cleanup" },
	{ "LIMPEZA_RUNNING_TTL", "running-ttl", T_DURATION, "3m",
	    OFF(running_ttl), NULL, MS_PER_S, 30 * DAY_MS,
	    "a running job without progress for longer is orphaned" },
	{ "LIMPEZA_QUEUED_TTL", "queued-ttl", T_DURATION, "2m", OFF(queued_ttl),
	    NULL, MS_PER_S, 30 * DAY_MS,
	    "a queued job older than this is expired" },
	{ "LIMPEZA_INTERVAL", "interval", T_DURATION, "30s", OFF(interval),
	    NULL, 100, DAY_MS, "time between cleanup cycles" },
	{ "LIMPEZA_ERROR_BACKOFF", "error-backoff", T_DURATION, "10s",
	    OFF(error_backoff), NULL, 100, DAY_MS,
	    "wait after a cycle in which a step failed" },
	{ "LIMPEZA_FORCE_THRESHOLD", "force-threshold", T_INT, "5",
	    OFF(force_threshold), NULL, 0, 1000000000,
	    "force a full cleanup when the API reports more active jobs than "
	    "this; 0 disables" },
	{ "LIMPEZA_ACTIVE_FROM", "active-from", T_ENUM, "health",
	    OFF(active_from), "health|database", 0, 0,
	    "where the count of active jobs comes from: health (the API's "
	    "jobs_active) or database (the table's running + queued rows; the "
	    "health URL is not requested). Desfollow's health route marks "
	    "every running job as an error and always answers 0: use database "
	    "there" },
	{ "LIMPEZA_FORCE_CACHE", "force-cache", T_ENUM, "all", OFF(force_cache),
	    "all|active", 0, 0,
	    "forced cleanup of the cache: all (empty it) or active (only "
	    "running/queued jobs)" },
	{ "LIMPEZA_FORCE_MIN_AGE", "force-min-age", T_DURATION, "0",
	    OFF(force_min_age), NULL, 0, 30 * DAY_MS,
	    "forced cleanup spares active jobs younger than this" },
	{ "LIMPEZA_REPORT_EVERY", "report-every", T_INT, "10",
	    OFF(report_every), NULL, 1, 1000000, "cycles between reports" },
	{ "LIMPEZA_CACHE_ACTION", "cache-action", T_ENUM, "remove",
	    OFF(cache_action), "remove|mark", 0, 0,
	    "orphans in the cache are removed, or kept and marked "
	    "status=error with an error message" },
	{ "LIMPEZA_CACHE_RETENTION", "cache-retention", T_DURATION, "1h",
	    OFF(cache_retention), NULL, 0, 365 * DAY_MS,
	    "finished cache jobs (done, error) leave the file this long after "
	    "their row finished in the database; without a database only when "
	    "set, this long after limpeza first saw them finished; 0: kept "
	    "forever" },
	{ "LIMPEZA_HEALTH_TIMEOUT", "health-timeout", T_DURATION, "10s",
	    OFF(health_timeout), NULL, 100, 300 * MS_PER_S,
	    "total time allowed for one health request" },
	{ "LIMPEZA_TABLE", "table", T_TABLE, "scans", OFF(table), NULL, 0, 0,
	    "job table, [schema.]table" },
	{ "LIMPEZA_ID_COLUMN", "id-column", T_IDENT, "job_id", OFF(id_column),
	    NULL, 0, 0, "job id column" },
	{ "LIMPEZA_STATUS_COLUMN", "status-column", T_IDENT, "status",
	    OFF(status_column), NULL, 0, 0, "status column" },
	{ "LIMPEZA_UPDATED_COLUMN", "updated-column", T_IDENT, "updated_at",
	    OFF(updated_column), NULL, 0, 0,
	    "heartbeat column, moved on progress" },
	{ "LIMPEZA_CREATED_COLUMN", "created-column", T_IDENT, "created_at",
	    OFF(created_column), NULL, 0, 0, "creation time column" },
	{ "LIMPEZA_ERROR_COLUMN", "error-column", T_IDENT, "error_message",
	    OFF(error_column), NULL, 0, 0, "error message column" },
	{ "LIMPEZA_RUNNING_STATUS", "running-status", T_WORD, "running",
	    OFF(running_status), NULL, 0, 0, "status of a running job" },
	{ "LIMPEZA_QUEUED_STATUS", "queued-status", T_WORD, "queued",
	    OFF(queued_status), NULL, 0, 0, "status of a queued job" },
	{ "LIMPEZA_ERROR_STATUS", "error-status", T_WORD, "error",
	    OFF(error_status), NULL, 0, 0, "status given to a reaped job" },
	{ "LIMPEZA_BATCH", "batch", T_INT, "1000", OFF(batch), NULL, 1, 1000000,
	    "rows per reaping statement" },
	{ "LIMPEZA_DB_TIMEZONE", "db-timezone", T_ZONE, "UTC", OFF(db_timezone),
	    NULL, 0, 0,
	    "zone name (UTC, America/Sao_Paulo) in which naive timestamps "
	    "are written; offsets are refused" },
	{ "LIMPEZA_LEADER_KEY", "leader-key", T_INT, "7105573", OFF(leader_key),
	    NULL, INT64_MIN, INT64_MAX,
	    "advisory lock key for leader election; 0 disables it" },
	{ "LIMPEZA_LOG_FILE", "log-file", T_PATH,
	    "/var/log/desfollow/limpeza_3min.log", OFF(log_file), NULL, 0, 0,
	    "log file, appended, directory created; empty: standard error "
	    "only" },
	{ "LIMPEZA_LOG_FORMAT", "log-format", T_ENUM, "text", OFF(log_format),
	    "text|json", 0, 0, "text (the operators' format) or json" },
	{ "LIMPEZA_LOG_LEVEL", "log-level", T_ENUM, "info", OFF(log_level),
	    "debug|info|warning|error", 0, 0, "lowest level logged" },
	{ "LIMPEZA_LANG", "lang", T_ENUM, "pt", OFF(lang), "pt|en", 0, 0,
	    "language of log lines and of the messages written to reaped "
	    "jobs" },
	{ "LIMPEZA_DRY_RUN", "dry-run", T_BOOL, "0", OFF(dry_run), NULL, 0, 0,
	    "report what would be reaped, change nothing" },
	{ "LIMPEZA_METRICS_ADDR", "metrics-addr", T_ADDR, "", OFF(metrics_addr),
	    NULL, 0, 0,
	    "serve Prometheus metrics at /metrics and /healthz on this "
	    "address only, e.g. 127.0.0.1:9464; empty: off" },
	{ "LIMPEZA_ALERT_WEBHOOK", "alert-webhook", T_HOOKURL, "",
	    OFF(alert_webhook), NULL, 0, 0,
	    "POST a JSON alert here on forced cleanup, on a store or API "
	    "unreachable for 3 cycles, and on recovery; empty: off" },
};

#define NSETTINGS ((int)(sizeof(settings) / sizeof(settings[0])))
#define MAX_VALUE 4096
#define MAX_ENV_FILE (1024L * 1024)

int
config_nsettings(void)
{
	return NSETTINGS;
}

const char *
config_setting_env(int k)
{
	return k >= 0 && k < NSETTINGS ? settings[k].env : NULL;
}

static const char *
type_hint(const struct setting *s)
{
	switch (s->type) {
	case T_DBURL:
		return "URL";
	case T_PATHLIST:
		return "FILES";
	case T_PATH:
		return "PATH";
	case T_HTTPURL:
	case T_HOOKURL:
		return "URL";
	case T_DURATION:
		return "DURATION";
	case T_INT:
		return "N";
	case T_ENUM:
		return s->choices;
	case T_BOOL:
		return "0|1";
	case T_IDENT:
		return "NAME";
	case T_TABLE:
		return "[SCHEMA.]TABLE";
	case T_WORD:
		return "WORD";
	case T_ZONE:
		return "ZONE";
	case T_ADDR:
		return "HOST:PORT";
	}
	return "VALUE";
}

int
config_args_init(struct config_args *a)
{
	memset(a, 0, sizeof(*a));
	a->values = calloc(NSETTINGS, sizeof(*a->values));
	return a->values == NULL ? -1 : 0;
}

void
config_args_free(struct config_args *a)
{
	free(a->values);
	free(a->env_files);
	memset(a, 0, sizeof(*a));
}

/*
 * Takes one command-line option at argv[*i] if it names a setting or
 * --env-file, in the forms --name=value and --name value; a boolean
 * setting may stand alone. Returns 1 if taken, 0 if the option is not a
 * setting, -1 with err set if it is one but lacks its value.
 */
int
config_parse_option(struct config_args *a, int argc, char **argv, int *i,
    char *err, size_t errlen)
{
	const char *arg = argv[*i], *name, *eq, *value;
	size_t nlen;
	int k;

	if (strncmp(arg, "--", 2) != 0)
		return 0;
	name = arg + 2;
	eq = strchr(name, '=');
	nlen = eq != NULL ? (size_t)(eq - name) : strlen(name);

	if (nlen == strlen("env-file") &&
	    strncmp(name, "env-file", nlen) == 0) {
		const char **n;

		if (eq != NULL)
			value = eq + 1;
		else if (*i + 1 < argc)
			value = argv[++*i];
		else {
			snprintf(err, errlen, "option --env-file needs a file");
			return -1;
		}
		n = realloc(a->env_files, (a->nenv_files + 1) * sizeof(*n));
		if (n == NULL)
			fatalx_oom();
		a->env_files = n;
		a->env_files[a->nenv_files++] = value;
		return 1;
	}

	for (k = 0; k < NSETTINGS; k++) {
		if (strlen(settings[k].option) != nlen ||
		    strncmp(settings[k].option, name, nlen) != 0)
			continue;
		if (eq != NULL)
			value = eq + 1;
		else if (settings[k].type == T_BOOL)
			value = "1";
		else if (*i + 1 < argc)
			value = argv[++*i];
		else {
			snprintf(err, errlen, "option --%s needs a value (%s)",
			    settings[k].option, type_hint(&settings[k]));
			return -1;
		}
		a->values[k] = value;
		return 1;
	}
	return 0;
}

/*
 * HOST:PORT for a listening socket: a numeric IPv4 address, or an IPv6
 * one in brackets, and a port. Names are refused so that the address a
 * socket binds to is exactly the one written.
 */
int
config_parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *sl)
{
	struct sockaddr_storage tmp;
	struct sockaddr_in *in = (struct sockaddr_in *)&tmp;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&tmp;
	char host[64], *end;
	const char *colon;
	long port;

	memset(&tmp, 0, sizeof(tmp));
	colon = strrchr(s, ':');
	if (colon == NULL || colon == s || (size_t)(colon - s) >= sizeof(host))
		return -1;
	errno = 0;
	port = strtol(colon + 1, &end, 10);
	if (colon[1] == '\0' || *end != '\0' || errno != 0 || port < 1 ||
	    port > 65535)
		return -1;
	if (s[0] == '[') {
		if (colon[-1] != ']' || colon - s < 3)
			return -1;
		snprintf(
		    host, sizeof(host), "%.*s", (int)(colon - s - 2), s + 1);
		if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
			return -1;
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)port);
		if (sl != NULL)
			*sl = sizeof(*in6);
	} else {
		snprintf(host, sizeof(host), "%.*s", (int)(colon - s), s);
		if (inet_pton(AF_INET, host, &in->sin_addr) != 1)
			return -1;
		in->sin_family = AF_INET;
		in->sin_port = htons((uint16_t)port);
		if (sl != NULL)
			*sl = sizeof(*in);
	}
	if (ss != NULL)
		*ss = tmp;
	return 0;
}

/* Durations: a whole number with an optional unit ms, s, m or h (s if none). */
int
config_parse_duration(const char *s, long long *out)
{
	char *end;
	long long n, mult;

	if (s == NULL || !isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	n = strtoll(s, &end, 10);
	if (errno != 0)
		return -1;
	if (strcmp(end, "") == 0 || strcmp(end, "s") == 0)
		mult = MS_PER_S;
	else if (strcmp(end, "ms") == 0)
		mult = 1;
	else if (strcmp(end, "m") == 0 || strcmp(end, "min") == 0)
		mult = 60 * MS_PER_S;
	else if (strcmp(end, "h") == 0)
		mult = 3600 * MS_PER_S;
	else
		return -1;
	if (n > LLONG_MAX / mult)
		return -1;
	*out = n * mult;
	return 0;
}

/* The short form used in log lines: 3min, 30s, 500ms. */
int
config_format_duration(long long ms, char *buf, size_t len)
{
	int n;

	if (ms != 0 && ms % (60 * MS_PER_S) == 0)
		n = snprintf(buf, len, "%lldmin", ms / (60 * MS_PER_S));
	else if (ms % MS_PER_S == 0)
		n = snprintf(buf, len, "%llds", ms / MS_PER_S);
	else
		n = snprintf(buf, len, "%lldms", ms);
	return n < 0 || (size_t)n >= len ? -1 : 0;
}

static int
is_ident(const char *s, size_t len)
{
	size_t i;

	if (len == 0 || len > 63)
		return 0;
	if (!isalpha((unsigned char)s[0]) && s[0] != '_')
		return 0;
	for (i = 1; i < len; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '_')
			return 0;
	return 1;
}

static int
has_control(const char *s)
{
	for (; *s != '\0'; s++)
		if (iscntrl((unsigned char)*s))
			return 1;
	return 0;
}

static int
is_libpq_conninfo(const char *s)
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

	if (auth == NULL && is_libpq_conninfo(url)) {
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
config_mask_url(const char *url, char *buf, size_t len)
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
 * An http(s) URL as it may be shown: a user:password@ part as user:***@,
 * and with keep_path 0 nothing after the host (a webhook's path is often
 * its secret token). Returns -1 if it did not fit (it is then cut).
 */
int
config_mask_http(const char *url, int keep_path, char *buf, size_t len)
{
	struct out o = { buf, len, 0, 0 };
	const char *auth = url_authority(url), *end, *at, *colon;

	if (len == 0)
		return -1;
	*buf = '\0';
	if (auth == NULL) {
		out_str(&o, *url == '\0' ? "" : "***");
		return o.failed ? -1 : 0;
	}
	end = auth + strcspn(auth, "/?#");
	out_put(&o, url, (size_t)(auth - url));
	at = NULL;
	for (const char *q = auth; q < end; q++)
		if (*q == '@')
			at = q;
	if (at != NULL) {
		colon = memchr(auth, ':', (size_t)(at - auth));
		out_put(
		    &o, auth, (size_t)((colon != NULL ? colon : at) - auth));
		out_str(&o, colon != NULL ? ":***@" : "@");
		auth = at + 1;
	}
	out_put(&o, auth, (size_t)(end - auth));
	if (keep_path)
		out_str(&o, end);
	else if (*end != '\0')
		out_str(&o, "/...");
	return o.failed ? -1 : 0;
}

static int
bad(char *err, size_t errlen, const struct setting *s, const char *from,
    const char *value, const char *accepted)
{
	char shown[128];

	/* A value the check refused may be a URL nobody can parse: of a
	 * database URL nothing is shown, as it may hold a password. */
	if (s->type == T_DBURL) {
		snprintf(err, errlen,
		    "invalid %s (not shown: it may hold a password)%s: "
		    "expected %s",
		    s->env, from, accepted);
		return -1;
	}
	if (s->type == T_HTTPURL || s->type == T_HOOKURL)
		config_mask_http(
		    value, s->type == T_HTTPURL, shown, sizeof(shown));
	else
		snprintf(shown, sizeof(shown), "%s", value);
	/* Control characters would break the one-line promise. */
	for (char *c = shown; *c != '\0'; c++)
		if (iscntrl((unsigned char)*c))
			*c = '?';
	if (strlen(value) >= sizeof(shown) - 1)
		snprintf(shown + sizeof(shown) - 5, 5, "...");
	snprintf(err, errlen, "invalid %s '%s'%s: expected %s", s->env, shown,
	    from, accepted);
	return -1;
}

/*
 * What libpq makes of a connection string, when libpq is at hand: 0 all
 * is well; 1 it refuses the text; 2 it reads a URL's password otherwise
 * than a person would (an unescaped '/' or '@' in it: libpq would take
 * part of the password for the host, the port or the database, and show
 * it in its errors). Either way no connection could be made, which is
 * better said at start-up (exit 2) than every cycle. libpq's own message
 * is not repeated: it may quote the password.
 */
static int
libpq_check(const char *value)
{
	PQconninfoOption *opts;
	char lerr[256], *msg = NULL;
	int rc;

	if (libs_pq(lerr, sizeof(lerr)) == -1)
		return 0;
	if ((opts = PQconninfoParse(value, &msg)) == NULL) {
		PQfreemem(msg);
		return 1;
	}
	rc = url_ambiguous(value, opts) ? 2 : 0;
	PQconninfoFree(opts);
	return rc;
}

/* Checks one value and stores it in cfg; err names the setting and value. */
static int
setting_apply(struct config *cfg, const struct setting *s, const char *value,
    const char *from, char *err, size_t errlen)
{
	char accepted[256], *slot, **sp;
	long long n, *ip = (long long *)(void *)((char *)cfg + s->off);
	char *end;
	const char *c;
	size_t len = strlen(value);

	if (len > MAX_VALUE)
		return bad(
		    err, errlen, s, from, value, "at most 4096 characters");
	if (has_control(value))
		return bad(err, errlen, s, from, value,
		    "no control characters (newline, tab...)");

	switch (s->type) {
	case T_DURATION:
		if (config_parse_duration(value, &n) == -1 || n < s->min ||
		    n > s->max) {
			char lo[32], hi[32];

			config_format_duration(s->min, lo, sizeof(lo));
			config_format_duration(s->max, hi, sizeof(hi));
			snprintf(accepted, sizeof(accepted),
			    "a duration such as 180, 180s, 3m, 1h or 500ms, "
			    "from %s to %s",
			    lo, hi);
			return bad(err, errlen, s, from, value, accepted);
		}
		*ip = n;
		return 0;
	case T_INT:
		errno = 0;
		n = strtoll(value, &end, 10);
		if (*value == '\0' || *end != '\0' || errno != 0 ||
		    n < s->min || n > s->max) {
			snprintf(accepted, sizeof(accepted),
			    "a whole number from %lld to %lld", s->min, s->max);
			return bad(err, errlen, s, from, value, accepted);
		}
		*ip = n;
		return 0;
	case T_BOOL:
		if (strcmp(value, "1") == 0 || strcasecmp(value, "true") == 0 ||
		    strcasecmp(value, "yes") == 0 ||
		    strcasecmp(value, "on") == 0)
			*ip = 1;
		else if (strcmp(value, "0") == 0 || *value == '\0' ||
		    strcasecmp(value, "false") == 0 ||
		    strcasecmp(value, "no") == 0 ||
		    strcasecmp(value, "off") == 0)
			*ip = 0;
		else
			return bad(err, errlen, s, from, value,
			    "0 or 1 (also true/false, yes/no, on/off)");
		return 0;
	case T_ENUM: {
		const char *w = s->choices;
		long long k = 0;

		for (;;) {
			size_t wl = strcspn(w, "|");

			if (wl == len && strncasecmp(w, value, wl) == 0) {
				*ip = k;
				return 0;
			}
			if (w[wl] == '\0')
				break;
			w += wl + 1;
			k++;
		}
		snprintf(accepted, sizeof(accepted), "one of %s", s->choices);
		return bad(err, errlen, s, from, value, accepted);
	}
	case T_IDENT:
		if (!is_ident(value, len))
			return bad(err, errlen, s, from, value,
			    "a plain identifier: a letter or _, then letters, "
			    "digits or _, at most 63");
		break;
	case T_TABLE:
		c = strchr(value, '.');
		if (c == NULL ? !is_ident(value, len)
			      : (!is_ident(value, (size_t)(c - value)) ||
				    !is_ident(c + 1, strlen(c + 1))))
			return bad(err, errlen, s, from, value,
			    "table or schema.table, plain identifiers only");
		break;
	case T_WORD:
		if (len == 0 || len > 64)
			return bad(err, errlen, s, from, value,
			    "a non-empty status word of at most 64 characters");
		break;
	case T_ZONE:
		/*
		 * PostgreSQL reads -03:00, UTC-3 and Etc/GMT+3 with the
		 * POSIX sign (UTC+03:00, UTC+03:00, UTC-03:00): a sign
		 * taken the wrong way reaps fresh rows, or never the stale
		 * ones. Names with a sign or a digit are refused; every
		 * region has a name without (America/Sao_Paulo, UTC).
		 */
		if (strpbrk(value, "+:<0123456789") != NULL)
			return bad(err, errlen, s, from, value,
			    "a zone name such as UTC or America/Sao_Paulo, "
			    "not an offset or a name with one: PostgreSQL "
			    "may read its sign reversed (-03:00 is "
			    "UTC+03:00 to it, Etc/GMT+3 is UTC-03:00)");
		if (len == 0 || len > 64 || !isalpha((unsigned char)*value) ||
		    strspn(value,
			"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
			"_/-") != len)
			return bad(err, errlen, s, from, value,
			    "a time zone name such as UTC or "
			    "America/Sao_Paulo");
		break;
	case T_ADDR:
		if (len != 0 && config_parse_addr(value, NULL, NULL) == -1)
			return bad(err, errlen, s, from, value,
			    "HOST:PORT with a numeric IPv4 or [IPv6] address "
			    "and "
			    "a port from 1 to 65535, or empty to disable");
		break;
	case T_HTTPURL:
	case T_HOOKURL:
		if (len != 0 && strncasecmp(value, "http://", 7) != 0 &&
		    strncasecmp(value, "https://", 8) != 0)
			return bad(err, errlen, s, from, value,
			    "an http:// or https:// URL, or empty to disable");
		break;
	case T_DBURL:
		if (len != 0 && strncmp(value, "postgres://", 11) != 0 &&
		    strncmp(value, "postgresql://", 13) != 0 &&
		    !(strncmp(value, "sqlite:///", 10) == 0 && len > 10) &&
		    !is_libpq_conninfo(value))
			return bad(err, errlen, s, from, value,
			    "postgres://..., postgresql://..., libpq "
			    "key=value or sqlite:///path");
		if (len == 0 || strncmp(value, "sqlite:", 7) == 0)
			break;
		switch (libpq_check(value)) {
		case 1:
			return bad(err, errlen, s, from, value,
			    "a connection string libpq can parse");
		case 2:
			return bad(err, errlen, s, from, value,
			    "a URL libpq reads as written: '@', '/' and '?' "
			    "inside a password percent-encoded (%40, %2F, "
			    "%3F), a numeric port");
		}
		break;
	case T_PATH:
	case T_PATHLIST:
		break;
	}
	sp = (char **)(void *)((char *)cfg + s->off);
	slot = strdup(value);
	if (slot == NULL)
		fatalx_oom();
	free(*sp);
	*sp = slot;
	return 0;
}

/* A string map (jansson object) holding the first value of every key. */
struct env_file_ctx {
	json_t *file;
};

static int
env_file_set(void *arg, const char *key, const char *value)
{
	struct env_file_ctx *ctx = arg;

	/* Within one file the last assignment wins, as in a shell. */
	json_object_set_new(ctx->file, key, json_string(value));
	return 0;
}

static void config_warn(struct config *cfg, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
config_warn(struct config *cfg, const char *fmt, ...)
{
	va_list ap;

	if (cfg->nwarnings >=
	    (int)(sizeof(cfg->warnings) / sizeof(cfg->warnings[0])))
		return;
	va_start(ap, fmt);
	vsnprintf(
	    cfg->warnings[cfg->nwarnings++], sizeof(cfg->warnings[0]), fmt, ap);
	va_end(ap);
}

/*
 * Reads one dotenv file into vars, keeping values already there. A file
 * that cannot be read is worth a warning, or with strict (a file named
 * with --env-file: the unit's settings file) an error, since the daemon
 * would otherwise run without its settings (a missing file is fine).
 */
static int
env_file_read(struct config *cfg, const char *path, json_t *vars, int strict,
    char *err, size_t errlen)
{
	char why[256] = "";
	struct env_file_ctx ctx;
	struct stat st;
	char *buf = NULL, perr[160];
	ssize_t n;
	size_t len = 0;
	int fd, nbad;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd == -1) {
		if (errno == ENOENT)
			return 0;
		snprintf(why, sizeof(why), "%s", strerror(errno));
		goto unreadable;
	}
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
		snprintf(why, sizeof(why), "not a regular file");
		goto done;
	}
	if (st.st_mode & (S_IRGRP | S_IROTH))
		config_warn(cfg,
		    "env file %s is readable by group or others (mode %04o) "
		    "and may hold secrets: chmod 600 it",
		    path, (unsigned)(st.st_mode & 07777));
	if (st.st_size > MAX_ENV_FILE) {
		snprintf(why, sizeof(why), "larger than 1 MiB, skipped");
		goto done;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (buf == NULL)
		fatalx_oom();
	while ((n = read(fd, buf + len, (size_t)st.st_size - len)) > 0)
		len += (size_t)n;
	if (n == -1) {
		snprintf(why, sizeof(why), "%s", strerror(errno));
		goto done;
	}
	ctx.file = json_object();
	if (ctx.file == NULL)
		fatalx_oom();
	nbad = dotenv_parse(buf, len, env_file_set, &ctx, perr, sizeof(perr));
	if (nbad > 0)
		config_warn(cfg, "env file %s: %d line(s) skipped, first: %s",
		    path, nbad, perr);
	json_object_update_missing(vars, ctx.file);
	json_decref(ctx.file);
done:
	free(buf);
	close(fd);
unreadable:
	if (*why == '\0')
		return 0;
	if (strict) {
		snprintf(err, errlen,
		    "cannot read the settings file %s given with --env-file: "
		    "%s (it must be readable by the user limpeza runs as)",
		    path, why);
		return -1;
	}
	config_warn(cfg, "env file %s: %s", path, why);
	return 0;
}

static void
env_files_read(struct config *cfg, const char *list, json_t *vars)
{
	char *copy, *p, *tok;

	copy = strdup(list);
	if (copy == NULL)
		fatalx_oom();
	for (p = copy; (tok = strsep(&p, ":")) != NULL;)
		if (*tok != '\0')
			(void)env_file_read(cfg, tok, vars, 0, NULL, 0);
	free(copy);
}

/*
 * Settings that are each valid but wrong together: one status word for
 * two kinds of job (LIMPEZA_QUEUED_STATUS=running would reap a live
 * running job as an expired queued one after 2 minutes; an error status
 * equal to an active one would reap reaped rows again), or one column
 * for two roles.
 */
static int
config_distinct(const struct config *cfg, char *err, size_t errlen)
{
	const struct {
		const char *env;
		const char *value;
	} word[] = {
		{ "LIMPEZA_RUNNING_STATUS", cfg->running_status },
		{ "LIMPEZA_QUEUED_STATUS", cfg->queued_status },
		{ "LIMPEZA_ERROR_STATUS", cfg->error_status },
		{ "LIMPEZA_ID_COLUMN", cfg->id_column },
		{ "LIMPEZA_STATUS_COLUMN", cfg->status_column },
		{ "LIMPEZA_UPDATED_COLUMN", cfg->updated_column },
		{ "LIMPEZA_CREATED_COLUMN", cfg->created_column },
		{ "LIMPEZA_ERROR_COLUMN", cfg->error_column },
	};
	size_t i, j, last;

	for (i = 0; i < sizeof(word) / sizeof(word[0]); i++) {
		/* Statuses are compared with statuses, columns with columns. */
		last = i < 3 ? 3 : sizeof(word) / sizeof(word[0]);
		for (j = i + 1; j < last; j++)
			if (strcmp(word[i].value, word[j].value) == 0) {
				snprintf(err, errlen,
				    "invalid %s '%s': %s is '%s' too; expected "
				    "a different %s",
				    word[j].env, word[j].value, word[i].env,
				    word[i].value, i < 3 ? "status" : "column");
				return -1;
			}
	}
	return 0;
}

/*
 * Builds a whole configuration: for each setting the command-line value,
 * else the environment, else the env files, else the default. Returns -1
 * with one line in err at the first bad value; cfg is then freed.
 */
int
config_load(
    struct config *cfg, const struct config_args *a, char *err, size_t errlen)
{
	json_t *vars = NULL;
	const char *value, *from;
	int k, envk = -1;

	memset(cfg, 0, sizeof(*cfg));
	for (k = 0; k < NSETTINGS; k++)
		if (strcmp(settings[k].env, "LIMPEZA_ENV_FILES") == 0)
			envk = k;

	vars = json_object();
	if (vars == NULL)
		fatalx_oom();
	value = a->values[envk];
	if (value == NULL)
		value = getenv(settings[envk].env);
	if (value == NULL)
		value = settings[envk].def;
	for (k = 0; k < a->nenv_files; k++)
		if (env_file_read(cfg, a->env_files[k], vars, 1, err, errlen) ==
		    -1)
			goto fail;
	env_files_read(cfg, value, vars);

	for (k = 0; k < NSETTINGS; k++) {
		const struct setting *s = &settings[k];

		from = "";
		value = a->values[k];
		if (value != NULL)
			from = " (from the command line)";
		else if ((value = getenv(s->env)) != NULL)
			from = " (from the environment)";
		else if (k != envk &&
		    (value = json_string_value(
			 json_object_get(vars, s->env))) != NULL)
			from = " (from an env file)";
		else
			value = s->def;
		if (setting_apply(cfg, s, value, from, err, errlen) == -1)
			goto fail;
		/* Without a database, retention ages from first sight: only
		 * on request, never by default (SPEC §1.1). */
		if (s->off == OFF(cache_retention))
			cfg->cache_retention_set = *from != '\0';
	}
	if (config_distinct(cfg, err, errlen) == -1)
		goto fail;
	if (cfg->active_from == ACTIVE_DATABASE && *cfg->database_url == '\0')
		config_warn(cfg,
		    "LIMPEZA_ACTIVE_FROM=database without "
		    "DATABASE_URL: no active count, no forced "
		    "cleanup");
	json_decref(vars);
	return 0;
fail:
	json_decref(vars);
	config_free(cfg);
	return -1;
}

void
config_free(struct config *cfg)
{
	int k;

	for (k = 0; k < NSETTINGS; k++) {
		switch (settings[k].type) {
		case T_DURATION:
		case T_INT:
		case T_ENUM:
		case T_BOOL:
			break;
		default:
			free(*(char **)(void *)((char *)cfg + settings[k].off));
		}
	}
	memset(cfg, 0, sizeof(*cfg));
}

/* Validates one value for the setting named env, alone (for fuzzing, check). */
int
config_check_setting(
    const char *env, const char *value, char *err, size_t errlen)
{
	struct config tmp;
	int k, rc;

	for (k = 0; k < NSETTINGS; k++) {
		if (strcmp(settings[k].env, env) != 0)
			continue;
		memset(&tmp, 0, sizeof(tmp));
		rc = setting_apply(&tmp, &settings[k], value, "", err, errlen);
		config_free(&tmp);
		return rc;
	}
	snprintf(err, errlen, "unknown setting %s", env);
	return -1;
}

/* Renders a setting's current value as it would be written back. */
static void
setting_value(
    const struct config *cfg, const struct setting *s, char *buf, size_t len)
{
	const char *base = (const char *)cfg + s->off;
	long long n = *(const long long *)(const void *)base;
	const char *str;

	switch (s->type) {
	case T_DURATION:
		/* The form config_parse_duration() reads back: 3m, 30s, 500ms.
		 */
		if (n != 0 && n % (60 * MS_PER_S) == 0)
			snprintf(buf, len, "%lldm", n / (60 * MS_PER_S));
		else if (n % MS_PER_S == 0)
			snprintf(buf, len, "%llds", n / MS_PER_S);
		else
			snprintf(buf, len, "%lldms", n);
		return;
	case T_INT:
	case T_BOOL:
		snprintf(buf, len, "%lld", n);
		return;
	case T_ENUM: {
		const char *w = s->choices;

		while (n-- > 0)
			w += strcspn(w, "|") + 1;
		snprintf(buf, len, "%.*s", (int)strcspn(w, "|"), w);
		return;
	}
	default:
		str = *(char *const *)(const void *)base;
		if (s->type == T_DBURL)
			config_mask_url(str, buf, len);
		else if (s->type == T_HTTPURL || s->type == T_HOOKURL)
			config_mask_http(str, s->type == T_HTTPURL, buf, len);
		else
			snprintf(buf, len, "%s", str);
	}
}

/* The effective configuration, one NAME=value a line, secrets masked. */
void
config_print(const struct config *cfg, FILE *out)
{
	char buf[MAX_VALUE + 8];
	int k;

	for (k = 0; k < NSETTINGS; k++) {
		setting_value(cfg, &settings[k], buf, sizeof(buf));
		fprintf(out, "%s=%s\n", settings[k].env, buf);
	}
}

void
config_print_help(FILE *out)
{
	int k;

	fputs("usage: limpeza [run]                       run the daemon loop\n"
	      "       limpeza once [--force] [--dry-run]  one full cycle, then "
	      "exit\n"
	      "       limpeza check [--health]            verify configuration,"
	      " database, cache\n"
	      "       limpeza stats [--json] [--health]   jobs per status and "
	      "active jobs\n"
	      "       limpeza --help | --version\n\n"
	      "check, stats and any dry run are read-only: they request the "
	      "health URL\nonly with --health. Some APIs' health routes write "
	      "(Desfollow's marks every\nrunning job as an error and rewrites "
	      "its cache file).\n\n"
	      "Settings (option > environment > env files > default):\n",
	    out);
	for (k = 0; k < NSETTINGS; k++) {
		const struct setting *s = &settings[k];

		fprintf(out, "  --%s=%s\n      %s (%s; default: %s)\n",
		    s->option, type_hint(s), s->help, s->env,
		    *s->def != '\0' ? s->def : "empty");
	}
	fputs("  --env-file=FILE\n      read one more dotenv file before "
	      "LIMPEZA_ENV_FILES\n\n"
	      "Durations: 180, 180s, 3m, 1h or 500ms.\n"
	      "Exit status: 0 success, 1 run-time failure, 2 bad usage or "
	      "configuration.\n",
	    out);
}

/* The SETTINGS section of limpeza(8), from the same table as --help. */
void
config_print_man(FILE *out)
{
	int k;

	fputs(".SH SETTINGS\n"
	      "Each setting is read from its long option, else the "
	      "environment, else the env files, else its default.\n",
	    out);
	for (k = 0; k < NSETTINGS; k++) {
		const struct setting *s = &settings[k];
		const char *c;

		fprintf(out, ".TP\n.BR %s \", \" \\-\\-%s =\\fI", s->env,
		    s->option);
		for (c = type_hint(s); *c != '\0'; c++)
			fputs(*c == '-' ? "\\-" : (char[]){ *c, '\0' }, out);
		fputs("\\fR\n", out);
		for (c = s->help; *c != '\0'; c++)
			fputs(*c == '-'	     ? "\\-"
				: *c == '\\' ? "\\e"
					     : (char[]){ *c, '\0' },
			    out);
		fprintf(out, ". Default: %s.\n",
		    *s->def != '\0' ? s->def : "empty");
	}
}

/* Words for a TTL in a job's error message: "3 minutos", "90 seconds". */
static void
duration_words(long long ms, enum lang lang, char *buf, size_t len)
{
	long long n;
	const char *unit;

	if (ms % (60 * MS_PER_S) == 0) {
		n = ms / (60 * MS_PER_S);
		unit = lang == LANG_PT ? (n == 1 ? "minuto" : "minutos")
				       : (n == 1 ? "minute" : "minutes");
	} else if (ms % MS_PER_S == 0) {
		n = ms / MS_PER_S;
		unit = lang == LANG_PT ? (n == 1 ? "segundo" : "segundos")
				       : (n == 1 ? "second" : "seconds");
	} else {
		n = ms;
		unit = "ms";
	}
	snprintf(buf, len, "%lld %s", n, unit);
}

/*
 * The running TTL as the start-up banner names it: "3 Minutos" (the
 * seed's "Sistema de Limpeza 3 Minutos"), "20 Segundos"; "3-Minute".
 */
void
config_banner_ttl(const struct config *cfg, char *buf, size_t len)
{
	long long ms = cfg->running_ttl;

	size_t sp;

	if (cfg->lang == LANG_PT) {
		duration_words(ms, LANG_PT, buf, len);
		sp = strcspn(buf, " ");
		if (ms % MS_PER_S == 0 && buf[sp] == ' ')
			buf[sp + 1] = (char)toupper((unsigned char)buf[sp + 1]);
	} else if (ms % (60 * MS_PER_S) == 0)
		snprintf(buf, len, "%lld-Minute", ms / (60 * MS_PER_S));
	else if (ms % MS_PER_S == 0)
		snprintf(buf, len, "%lld-Second", ms / MS_PER_S);
	else
		snprintf(buf, len, "%lld-ms", ms);
}

/* The error message written to a reaped job; the TTL follows the settings. */
void
config_reap_message(
    const struct config *cfg, enum reap_kind kind, char *buf, size_t len)
{
	char words[64];
	int pt = cfg->lang == LANG_PT;

	switch (kind) {
	case REAP_RUNNING:
		duration_words(cfg->running_ttl, (enum lang)cfg->lang, words,
		    sizeof(words));
		snprintf(buf, len,
		    pt ? "Job órfão - mais de %s"
		       : "Orphan job - no progress for more than %s",
		    words);
		break;
	case REAP_QUEUED:
		duration_words(cfg->queued_ttl, (enum lang)cfg->lang, words,
		    sizeof(words));
		snprintf(buf, len,
		    pt ? "Job queued expirado - mais de %s"
		       : "Queued job expired - more than %s",
		    words);
		break;
	case REAP_FORCED:
		snprintf(buf, len, "%s",
		    pt ? "Limpeza forçada - excesso de jobs ativos"
		       : "Forced cleanup - too many active jobs");
		break;
	}
}

/*
 * A dotenv parser in the common dialect: comments, blank lines, optional
 * `export`, KEY=value with the value bare (a " #" starts a comment),
 * 'single-quoted' (literal) or "double-quoted" (backslash escapes, may
 * span lines). Lines that are none of these are skipped and counted; err
 * describes the first. Returns the number of skipped lines.
 */
int
dotenv_parse(const char *text, size_t len,
    int (*cb)(void *, const char *, const char *), void *arg, char *err,
    size_t errlen)
{
	const char *p = text, *end = text + len, *k0, *k1;
	char *val = NULL;
	size_t vlen, vcap = 0;
	int line = 1, nbad = 0, start;
	const char *why;

	if (errlen > 0)
		*err = '\0';
	while (p < end) {
		start = line;
		while (p < end && (*p == ' ' || *p == '\t' || *p == '\r'))
			p++;
		if (p == end)
			break;
		if (*p == '\n' || *p == '#')
			goto skip_line;
		if ((size_t)(end - p) > 7 && strncmp(p, "export", 6) == 0 &&
		    (p[6] == ' ' || p[6] == '\t')) {
			p += 7;
			while (p < end && (*p == ' ' || *p == '\t'))
				p++;
		}
		k0 = p;
		while (p < end &&
		    (isalnum((unsigned char)*p) || *p == '_' || *p == '.'))
			p++;
		k1 = p;
		while (p < end && (*p == ' ' || *p == '\t'))
			p++;
		why = "expected KEY=value";
		if (k1 == k0 || isdigit((unsigned char)*k0) || p == end ||
		    *p != '=')
			goto bad_line;
		p++;
		while (p < end && (*p == ' ' || *p == '\t'))
			p++;

		vlen = 0;
		if (vcap < (size_t)(end - p) + 1) {
			vcap = (size_t)(end - p) + 1;
			free(val);
			val = malloc(vcap);
			if (val == NULL)
				fatalx_oom();
		}
		if (p < end && (*p == '"' || *p == '\'')) {
			char q = *p++;

			while (p < end && *p != q) {
				if (*p == '\n')
					line++;
				if (q == '"' && *p == '\\' && p + 1 < end) {
					p++;
					switch (*p) {
					case 'n':
						val[vlen++] = '\n';
						break;
					case 't':
						val[vlen++] = '\t';
						break;
					case 'r':
						val[vlen++] = '\r';
						break;
					default:
						val[vlen++] = *p;
					}
					p++;
					continue;
				}
				val[vlen++] = *p++;
			}
			why = "unterminated quoted value";
			if (p == end)
				goto bad_line;
			p++;
			while (
			    p < end && (*p == ' ' || *p == '\t' || *p == '\r'))
				p++;
			why = "text after the closing quote";
			if (p < end && *p != '\n' && *p != '#')
				goto bad_line;
		} else {
			while (p < end && *p != '\n') {
				if (*p == '#' && vlen > 0 &&
				    (val[vlen - 1] == ' ' ||
					val[vlen - 1] == '\t'))
					break;
				val[vlen++] = *p++;
			}
			while (vlen > 0 &&
			    (val[vlen - 1] == ' ' || val[vlen - 1] == '\t' ||
				val[vlen - 1] == '\r'))
				vlen--;
		}
		val[vlen] = '\0';
		{
			char key[128];
			size_t kl = (size_t)(k1 - k0);

			why = "key longer than 127 characters";
			if (kl >= sizeof(key))
				goto bad_line;
			memcpy(key, k0, kl);
			key[kl] = '\0';
			if (cb(arg, key, val) != 0)
				break;
		}
		goto skip_line;
	bad_line:
		if (nbad++ == 0 && errlen > 0)
			snprintf(err, errlen, "line %d: %s", start, why);
	skip_line:
		while (p < end && *p != '\n')
			p++;
		if (p < end) {
			p++;
			line++;
		}
	}
	free(val);
	return nbad;
}
