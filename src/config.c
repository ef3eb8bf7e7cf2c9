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

#include "dotenv.h"
#include "limpeza.h"
#include "mask.h"

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
	    "'@' or '/' in its password: write %40, %2F) is refused, as is a "
	    "database name that is itself a connection string" },
	{ "LIMPEZA_ENV_FILES", "env-files", T_PATHLIST,
	    "/root/desfollow/backend/.env:backend/.env", OFF(env_files), NULL,
	    0, 0,
	    "dotenv files read in order, first value wins, missing files "
	    "skipped; empty: none (--env-file FILE adds one)" },
	{ "LIMPEZA_CACHE_FILE", "cache-file", T_PATH,
	    "/tmp/desfollow_jobs.json", OFF(cache_file), NULL, 0, 0,
	    "the API's JSON job cache, a file name of at most 174 bytes; empty "
	    "disables the cache step" },
	{ "LIMPEZA_HEALTH_URL", "health-url", T_HTTPURL,
	    "http://api.desfollow.com.br/api/health", OFF(health_url), NULL, 0,
	    0,
	    "API health endpoint (http or https); empty disables the health "
	    "check and forced cleanup. Its user and password are never "
	    "shown; a URL libcurl reads otherwise than written (a '?', '#', "
	    "'/' or '@' left raw in them: write %3F, %23, %2F, %40) is "
	    "refused" },
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
	    "unreachable for 3 cycles, and on recovery; empty: off. Shown "
	    "without its user, password, path or query; refused as the "
	    "health URL is" },
};

#define NSETTINGS ((int)(sizeof(settings) / sizeof(settings[0])))
#define MAX_VALUE 4096

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

/* Where the last part of path starts. */
static size_t
path_base_at(const char *path)
{
	const char *slash = strrchr(path, '/');

	return slash == NULL ? 0 : (size_t)(slash - path) + 1;
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
		mask_http(value, s->type == T_HTTPURL, shown, sizeof(shown));
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
		/* A char(n) column ignores trailing spaces: 'done ' would be
		 * 'done' there, and pass the checks below as another word. */
		if (isspace((unsigned char)value[0]) ||
		    isspace((unsigned char)value[len - 1]))
			return bad(err, errlen, s, from, value,
			    "a status word without leading or trailing spaces");
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
		if (len != 0 && mask_http_check(value) != 0)
			return bad(err, errlen, s, from, value,
			    "a URL libcurl reads as written: '@', '/', '?', "
			    "'#' and ':' inside a user name or password "
			    "percent-encoded (%40, %2F, %3F, %23, %3A), an "
			    "'@' after the host as %40, a numeric port");
		break;
	case T_DBURL:
		if (len != 0 && strncmp(value, "postgres://", 11) != 0 &&
		    strncmp(value, "postgresql://", 13) != 0 &&
		    !(strncmp(value, "sqlite:///", 10) == 0 && len > 10) &&
		    !mask_is_conninfo(value))
			return bad(err, errlen, s, from, value,
			    "postgres://..., postgresql://..., libpq "
			    "key=value or sqlite:///path");
		if (len == 0 || strncmp(value, "sqlite:", 7) == 0)
			break;
		switch (mask_dburl_check(value)) {
		case 1:
			return bad(err, errlen, s, from, value,
			    "a connection string libpq can parse");
		case 2:
			return bad(err, errlen, s, from, value,
			    "a URL libpq reads as written: '@', '/' and '?' "
			    "inside a password percent-encoded (%40, %2F, "
			    "%3F), a numeric port");
		case 3:
			return bad(err, errlen, s, from, value,
			    "a database name that is not itself a connection "
			    "string");
		}
		break;
	case T_PATH:
		/* A longer name could be read and checked but never
		 * rewritten: say so now, not at the first stale job. */
		if (s->off == OFF(cache_file) &&
		    strlen(value) - path_base_at(value) > SAFEFILE_NAME_MAX) {
			char want[128];

			snprintf(want, sizeof(want),
			    "a file name (after the last '/') of at most %d "
			    "bytes: limpeza's temporary file beside it takes "
			    "%d more",
			    SAFEFILE_NAME_MAX, 255 - SAFEFILE_NAME_MAX);
			return bad(err, errlen, s, from, value, want);
		}
		break;
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

/* One more line for the log once it is up (env_file_read...). */
void
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
 * Settings that are each valid but wrong together: one status word for
 * two kinds of job (LIMPEZA_QUEUED_STATUS=running would reap a live
 * running job as an expired queued one after 2 minutes; an error status
 * equal to an active one would reap reaped rows again), a status word
 * that is a finished job's (done), or one column for two roles.
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

	/* A finished job's status is no status to reap by, nor to give:
	 * LIMPEZA_RUNNING_STATUS=done would end every finished row. */
	/* Statuses are compared as a case-insensitive collation (MySQL's,
	 * SQLite's NOCASE, citext) would: 'Done' may be 'done' there. */
	for (i = 0; i < 3; i++)
		if (strcasecmp(word[i].value, DONE_STATUS) == 0) {
			snprintf(err, errlen,
			    "invalid %s '%s': '%s' is the status of a job "
			    "that finished well; expected a different status",
			    word[i].env, word[i].value, DONE_STATUS);
			return -1;
		}
	for (i = 0; i < sizeof(word) / sizeof(word[0]); i++) {
		/* Statuses are compared with statuses, columns with columns. */
		last = i < 3 ? 3 : sizeof(word) / sizeof(word[0]);
		for (j = i + 1; j < last; j++)
			if ((i < 3 ? strcasecmp(word[i].value, word[j].value)
				   : strcmp(word[i].value, word[j].value)) ==
			    0) {
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
		if (dotenv_read_file(
			cfg, a->env_files[k], vars, 1, err, errlen) == -1)
			goto fail;
	if (dotenv_read_files(cfg, value, vars, err, errlen) == -1)
		goto fail;

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
			mask_dburl(str, buf, len);
		else if (s->type == T_HTTPURL || s->type == T_HOOKURL)
			mask_http(str, s->type == T_HTTPURL, buf, len);
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
