/* test_config.c: durations, the settings table, precedence, validation,
 * masking. */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clock.h"
#include "mask.h"

static void
clear_env(void)
{
	int k;

	for (k = 0; k < config_nsettings(); k++)
		unsetenv(config_setting_env(k));
	setenv("LIMPEZA_ENV_FILES", "", 1);
}

static int
load(struct config *cfg, const char **opts, char *err, size_t errlen)
{
	struct config_args a;
	char *argv[16];
	int argc = 0, i, r;

	assert_int_equal(config_args_init(&a), 0);
	argv[argc++] = "limpeza";
	for (; opts != NULL && *opts != NULL; opts++)
		argv[argc++] = (char *)(uintptr_t)*opts;
	for (i = 1; i < argc; i++)
		assert_int_equal(
		    config_parse_option(&a, argc, argv, &i, err, errlen), 1);
	r = config_load(cfg, &a, err, errlen);
	config_args_free(&a);
	return r;
}

static void
test_durations(void **state)
{
	long long ms;

	(void)state;
	assert_int_equal(config_parse_duration("180", &ms), 0);
	assert_int_equal(ms, 180000);
	assert_int_equal(config_parse_duration("180s", &ms), 0);
	assert_int_equal(ms, 180000);
	assert_int_equal(config_parse_duration("3m", &ms), 0);
	assert_int_equal(ms, 180000);
	assert_int_equal(config_parse_duration("1h", &ms), 0);
	assert_int_equal(ms, 3600000);
	assert_int_equal(config_parse_duration("250ms", &ms), 0);
	assert_int_equal(ms, 250);
	assert_int_equal(config_parse_duration("", &ms), -1);
	assert_int_equal(config_parse_duration("3x", &ms), -1);
	assert_int_equal(config_parse_duration("-1", &ms), -1);
	assert_int_equal(config_parse_duration("1.5m", &ms), -1);
	assert_int_equal(config_parse_duration(" 3m", &ms), -1);
	assert_int_equal(
	    config_parse_duration("99999999999999999999", &ms), -1);
	assert_int_equal(config_parse_duration("9999999999999999h", &ms), -1);
}

static void
test_format_duration(void **state)
{
	char b[32];

	(void)state;
	config_format_duration(180000, b, sizeof(b));
	assert_string_equal(b, "3min");
	config_format_duration(30000, b, sizeof(b));
	assert_string_equal(b, "30s");
	config_format_duration(90000, b, sizeof(b));
	assert_string_equal(b, "90s");
	config_format_duration(500, b, sizeof(b));
	assert_string_equal(b, "500ms");
}

static void
test_defaults(void **state)
{
	struct config cfg;
	char err[512];

	(void)state;
	clear_env();
	assert_int_equal(load(&cfg, NULL, err, sizeof(err)), 0);
	assert_string_equal(cfg.database_url, "");
	assert_string_equal(cfg.cache_file, "/tmp/desfollow_jobs.json");
	assert_string_equal(
	    cfg.health_url, "http://api.desfollow.com.br/api/health");
	assert_int_equal(cfg.running_ttl, 180000);
	assert_int_equal(cfg.queued_ttl, 120000);
	assert_int_equal(cfg.interval, 30000);
	assert_int_equal(cfg.error_backoff, 10000);
	assert_int_equal(cfg.force_threshold, 5);
	assert_int_equal(cfg.force_cache, FORCE_ALL);
	assert_int_equal(cfg.force_min_age, 0);
	assert_int_equal(cfg.report_every, 10);
	assert_int_equal(cfg.cache_action, CACHE_REMOVE);
	assert_int_equal(cfg.health_timeout, 10000);
	assert_string_equal(cfg.table, "scans");
	assert_string_equal(cfg.id_column, "job_id");
	assert_string_equal(cfg.updated_column, "updated_at");
	assert_string_equal(cfg.error_column, "error_message");
	assert_string_equal(cfg.running_status, "running");
	assert_int_equal(cfg.batch, 1000);
	assert_string_equal(cfg.db_timezone, "UTC");
	assert_int_equal(cfg.leader_key, 7105573);
	assert_string_equal(
	    cfg.log_file, "/var/log/desfollow/limpeza_3min.log");
	assert_int_equal(cfg.log_format, LOGF_TEXT);
	assert_int_equal(cfg.log_level, LVL_INFO);
	assert_int_equal(cfg.lang, LANG_PT);
	assert_int_equal(cfg.dry_run, 0);
	config_free(&cfg);
}

/* option > environment > env files (first file wins) > default */
static void
test_precedence(void **state)
{
	char f1[] = "/tmp/limpeza-env1-XXXXXX",
	     f2[] = "/tmp/limpeza-env2-XXXXXX";
	char list[128], err[512];
	struct config cfg;
	const char *opts[] = { "--interval=7s", NULL };
	FILE *f;
	int fd;

	(void)state;
	clear_env();
	fd = mkstemp(f1);
	f = fdopen(fd, "w");
	fputs("# backend settings\nexport DATABASE_URL=\"sqlite:///one.db\"\n"
	      "LIMPEZA_INTERVAL=5s\nLIMPEZA_QUEUED_TTL=70s\n",
	    f);
	fclose(f);
	fd = mkstemp(f2);
	f = fdopen(fd, "w");
	/* Within one file the last assignment wins, as in a shell. */
	fputs(
	    "DATABASE_URL=sqlite:///two.db\nLIMPEZA_BATCH=3\nLIMPEZA_BATCH=7\n"
	    "LIMPEZA_QUEUED_TTL=80s\n",
	    f);
	fclose(f);
	snprintf(list, sizeof(list), "%s:/nonexistent/.env:%s", f1, f2);
	setenv("LIMPEZA_ENV_FILES", list, 1);
	setenv("LIMPEZA_INTERVAL", "6s", 1);
	setenv("LIMPEZA_QUEUED_TTL", "90s", 1);

	assert_int_equal(load(&cfg, opts, err, sizeof(err)), 0);
	assert_int_equal(cfg.interval, 7000); /* option */
	assert_int_equal(cfg.queued_ttl, 90000); /* environment */
	assert_string_equal(cfg.database_url, "sqlite:///one.db"); /* file 1 */
	assert_int_equal(cfg.batch, 7); /* only in file 2 */
	assert_int_equal(cfg.running_ttl, 180000); /* default */
	assert_int_equal(cfg.nwarnings, 0); /* 0600, a missing file: fine */
	config_free(&cfg);

	/* A secrets file others can read is worth a warning. */
	chmod(f2, 0644);
	assert_int_equal(load(&cfg, opts, err, sizeof(err)), 0);
	assert_int_equal(cfg.nwarnings, 1);
	assert_non_null(strstr(cfg.warnings[0], "readable by group or others"));
	assert_non_null(strstr(cfg.warnings[0], f2));
	config_free(&cfg);

	/*
	 * The unit's settings file (--env-file) must be readable: else the
	 * daemon would run without its settings. A missing one is fine.
	 */
	{
		const char *unreadable[] = { "--env-file=/tmp", NULL };
		const char *missing[] = { "--env-file=/nonexistent/limpeza.env",
			NULL };

		assert_int_equal(load(&cfg, unreadable, err, sizeof(err)), -1);
		assert_non_null(strstr(err, "/tmp given with --env-file"));
		assert_non_null(strstr(err, "not a regular file"));
		assert_int_equal(load(&cfg, missing, err, sizeof(err)), 0);
		config_free(&cfg);
	}

	/* A bad value in an env file is still a configuration error. */
	f = fopen(f2, "w");
	fputs("LIMPEZA_BATCH=lots\n", f);
	fclose(f);
	assert_int_equal(load(&cfg, NULL, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "LIMPEZA_BATCH"));
	assert_non_null(strstr(err, "env file"));
	unlink(f1);
	unlink(f2);
	clear_env();
}

/*
 * LIMPEZA_CACHE_RETENTION given by option, environment or env file is
 * "set"; its default is not (without a database only a set retention
 * prunes). Even "1h", the default's own value, counts when given.
 */
static void
test_retention_set(void **state)
{
	char f1[] = "/tmp/limpeza-env3-XXXXXX", list[64], err[512];
	const char *opts[] = { "--cache-retention=0", NULL };
	struct config cfg;
	FILE *f;

	(void)state;
	clear_env();
	assert_int_equal(load(&cfg, NULL, err, sizeof(err)), 0);
	assert_int_equal(cfg.cache_retention, 3600000);
	assert_int_equal(cfg.cache_retention_set, 0);
	config_free(&cfg);
	assert_int_equal(load(&cfg, opts, err, sizeof(err)), 0);
	assert_int_equal(cfg.cache_retention, 0);
	assert_int_equal(cfg.cache_retention_set, 1);
	config_free(&cfg);
	setenv("LIMPEZA_CACHE_RETENTION", "1h", 1);
	assert_int_equal(load(&cfg, NULL, err, sizeof(err)), 0);
	assert_int_equal(cfg.cache_retention_set, 1);
	config_free(&cfg);
	unsetenv("LIMPEZA_CACHE_RETENTION");
	f = fdopen(mkstemp(f1), "w");
	fputs("LIMPEZA_CACHE_RETENTION=90s\n", f);
	fclose(f);
	snprintf(list, sizeof(list), "%s", f1);
	setenv("LIMPEZA_ENV_FILES", list, 1);
	assert_int_equal(load(&cfg, NULL, err, sizeof(err)), 0);
	assert_int_equal(cfg.cache_retention, 90000);
	assert_int_equal(cfg.cache_retention_set, 1);
	config_free(&cfg);
	unlink(f1);
	clear_env();
}

/*
 * A setting's value in an env file that is not UTF-8 (issue 23) is
 * refused, naming the file, the line and the setting, never the value:
 * it was read as unset before (a DATABASE_URL "not set"). Another key's
 * is not limpeza's to judge, and an --env-file is held to the same.
 */
static void
test_env_file_not_utf8(void **state)
{
	char f1[] = "/tmp/limpeza-env4-XXXXXX", want[128], err[512];
	const char *opts[] = { "--env-file", f1, NULL };
	struct config cfg;
	FILE *f;

	(void)state;
	clear_env();
	f = fdopen(mkstemp(f1), "w");
	fputs("# the API's file\nSECRET_KEY=caf\xe9-is-fine-here\n\n"
	      "DATABASE_URL=postgresql://app:s\xe3o-S3cr@h/db\n",
	    f);
	fclose(f);
	setenv("LIMPEZA_ENV_FILES", f1, 1);
	assert_int_equal(load(&cfg, NULL, err, sizeof(err)), -1);
	snprintf(want, sizeof(want),
	    "env file %s, line 4: the value of DATABASE_URL is not UTF-8", f1);
	assert_non_null(strstr(err, want));
	assert_null(strstr(err, "S3cr"));
	setenv("LIMPEZA_ENV_FILES", "", 1);
	assert_int_equal(load(&cfg, opts, err, sizeof(err)), -1);
	assert_non_null(strstr(err, want));
	/* the same file in UTF-8: read, the other key's bytes no matter */
	f = fopen(f1, "w");
	fputs("SECRET_KEY=caf\xe9\nDATABASE_URL=postgresql://app:s\xc3\xa3o"
	      "@h/db\n",
	    f);
	fclose(f);
	setenv("LIMPEZA_ENV_FILES", f1, 1);
	assert_int_equal(load(&cfg, NULL, err, sizeof(err)), 0);
	assert_string_equal(
	    cfg.database_url, "postgresql://app:s\xc3\xa3o@h/db");
	config_free(&cfg);
	unlink(f1);
	clear_env();
}

struct bad_case {
	const char *env;
	const char *value;
	const char *expect; /* a word of the accepted-values part */
};

static void
test_bad_values(void **state)
{
	static const struct bad_case cases[] = {
		{ "LIMPEZA_RUNNING_TTL", "3x", "duration" },
		{ "LIMPEZA_RUNNING_TTL", "0", "duration" },
		{ "LIMPEZA_INTERVAL", "", "duration" },
		{ "LIMPEZA_FORCE_THRESHOLD", "-1", "whole number" },
		{ "LIMPEZA_BATCH", "10x", "whole number" },
		{ "LIMPEZA_FORCE_CACHE", "some", "all|active" },
		{ "LIMPEZA_CACHE_ACTION", "delete", "remove|mark" },
		{ "LIMPEZA_LOG_FORMAT", "xml", "text|json" },
		{ "LIMPEZA_LOG_LEVEL", "trace", "debug|info|warning|error" },
		{ "LIMPEZA_LANG", "es", "pt|en" },
		{ "LIMPEZA_DRY_RUN", "maybe", "0 or 1" },
		{ "LIMPEZA_TABLE", "scans; DROP TABLE users", "identifiers" },
		{ "LIMPEZA_TABLE", "a.b.c", "identifiers" },
		{ "LIMPEZA_ID_COLUMN", "job\"id", "identifier" },
		{ "LIMPEZA_STATUS_COLUMN", "1status", "identifier" },
		{ "LIMPEZA_UPDATED_COLUMN", "", "identifier" },
		{ "LIMPEZA_HEALTH_URL", "ftp://x/health", "http" },
		{ "DATABASE_URL", "mysql://u:pw@h/db", "postgres" },
		{ "LIMPEZA_CACHE_FILE", "/tmp/a\nb", "control" },
		{ "LIMPEZA_DB_TIMEZONE", "UTC'; --", "zone" },
		{ "LIMPEZA_RUNNING_STATUS", "", "status" },
		{ "LIMPEZA_ERROR_STATUS", "a\rb", "control" },
		{ "LIMPEZA_METRICS_ADDR", "localhost:9464", "numeric" },
		{ "LIMPEZA_METRICS_ADDR", "127.0.0.1:99999", "numeric" },
		{ "LIMPEZA_ALERT_WEBHOOK", "file:///etc/passwd", "http" },
		/* valid alone, wrong together with the defaults */
		{ "LIMPEZA_QUEUED_STATUS", "running", "different status" },
		{ "LIMPEZA_ERROR_STATUS", "queued", "different status" },
		/* a finished job's word (issue 23): every finished row older
		 * than the TTL would be ended */
		{ "LIMPEZA_RUNNING_STATUS", "done", "finished well" },
		{ "LIMPEZA_QUEUED_STATUS", "done", "finished well" },
		{ "LIMPEZA_ERROR_STATUS", "done", "finished well" },
		{ "LIMPEZA_ERROR_COLUMN", "status", "different column" },
		{ "LIMPEZA_CREATED_COLUMN", "updated_at", "different column" },
	};
	struct config cfg;
	char err[512];
	size_t i;

	(void)state;
	/* A huge value is refused before anything else looks at it. */
	clear_env();
	{
		char *huge = malloc(100001);

		memset(huge, 'a', 100000);
		huge[100000] = '\0';
		setenv("LIMPEZA_TABLE", huge, 1);
		free(huge);
	}
	assert_int_equal(load(&cfg, NULL, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "at most 4096 characters"));
	assert_true(strlen(err) < 400);
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		clear_env();
		setenv(cases[i].env, cases[i].value, 1);
		err[0] = '\0';
		assert_int_equal(load(&cfg, NULL, err, sizeof(err)), -1);
		if (strstr(err, cases[i].env) == NULL ||
		    strstr(err, cases[i].expect) == NULL ||
		    strchr(err, '\n') != NULL)
			fail_msg("case %zu (%s): bad message: %s", i,
			    cases[i].env, err);
	}
	clear_env();
}

/*
 * LIMPEZA_DB_TIMEZONE takes zone names only. PostgreSQL reads an offset
 * such as -03:00, and names such as Etc/GMT+3 or UTC-3, with the POSIX
 * sign (-03:00 is UTC+03:00 to it): a sign read the other way round reaps
 * fresh rows or never the stale ones, so they are refused, in one line
 * that says why and what is accepted.
 */
static void
test_zone_offsets_refused(void **state)
{
	static const char *refused[] = { "-03:00", "+03:00", "-3", "3", "-0300",
		"UTC-3", "UTC+03:00", "GMT+3", "Etc/GMT+3", "Etc/GMT-3",
		"EST5EDT", "GMT0", "<-03>+3" };
	static const char *accepted[] = { "UTC", "America/Sao_Paulo",
		"america/sao_paulo", "America/Port-au-Prince", "Asia/Tokyo",
		"America/Argentina/Buenos_Aires", "Zulu" };
	struct config cfg;
	char err[512];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
		clear_env();
		setenv("LIMPEZA_DB_TIMEZONE", refused[i], 1);
		err[0] = '\0';
		if (load(&cfg, NULL, err, sizeof(err)) != -1)
			fail_msg("zone %s accepted", refused[i]);
		if (strstr(err, "LIMPEZA_DB_TIMEZONE") == NULL ||
		    strstr(err, refused[i]) == NULL ||
		    strstr(err, "sign") == NULL ||
		    strstr(err, "reversed") == NULL ||
		    strstr(err, "America/Sao_Paulo") == NULL ||
		    strchr(err, '\n') != NULL)
			fail_msg("zone %s: bad message: %s", refused[i], err);
	}
	for (i = 0; i < sizeof(accepted) / sizeof(accepted[0]); i++) {
		clear_env();
		setenv("LIMPEZA_DB_TIMEZONE", accepted[i], 1);
		if (load(&cfg, NULL, err, sizeof(err)) != 0)
			fail_msg("zone %s refused: %s", accepted[i], err);
		assert_string_equal(cfg.db_timezone, accepted[i]);
		config_free(&cfg);
	}
	clear_env();
}

static void
test_secret_not_in_error(void **state)
{
	struct config cfg;
	char err[512];

	(void)state;
	clear_env();
	setenv("DATABASE_URL", "mysql://admin:s3cr3t@db.example/app", 1);
	assert_int_equal(load(&cfg, NULL, err, sizeof(err)), -1);
	assert_null(strstr(err, "s3cr3t"));
	assert_non_null(strstr(err, "invalid DATABASE_URL (not shown"));
	/* Refused values nobody can parse: nothing of them is shown. */
	{
		const char *const bad_urls[] = {
			" postgresql://app:s3cr3t@h/db",
			"postgresql:/app:s3cr3t@h/db", "app:s3cr3t@h/db",
			"sqlite://app:s3cr3t@h/db",
			"host=h passwd=s3cr3t", /* libpq: no such keyword */
			"postgresql://app:pa/s3cr3t@h:1/db", /* '/' in it */
			"postgresql://app:p@s3cr3t@h/db", /* '@' in it */
			/* a query without a path: libpq ends user:password at
			 * the '@' inside it (found by an outside review) */
			"postgresql://h?password=s3cr3t@x",
			"postgresql://h.example?user=app&password=s3cr3t@x",
			"postgresql://127.0.0.1:1?user=app&password=s3cr3t@3",
			"postgresql://app:s3cr3t/db", /* the host forgotten */
			NULL
		};
		int i;

		for (i = 0; bad_urls[i] != NULL; i++) {
			setenv("DATABASE_URL", bad_urls[i], 1);
			assert_int_equal(
			    load(&cfg, NULL, err, sizeof(err)), -1);
			assert_null(strstr(err, "s3cr3t"));
			assert_null(strstr(err, "cr3"));
			assert_non_null(strstr(err, "DATABASE_URL"));
		}
	}
	/* a raw '@' libpq reads as written, in a parameter: accepted */
	setenv("DATABASE_URL", "postgresql://h/db?user=alice@example.com", 1);
	assert_int_equal(load(&cfg, NULL, err, sizeof(err)), 0);
	config_free(&cfg);
	setenv("DATABASE_URL", "postgresql://app@h/db?password=s3@cr3t", 1);
	assert_int_equal(load(&cfg, NULL, err, sizeof(err)), 0);
	config_free(&cfg);
	clear_env();
}

/* The masked form of url is want. */
static void
masks_to(const char *url, const char *want)
{
	char b[512];

	mask_dburl(url, b, sizeof(b));
	assert_string_equal(b, want);
}

static void
test_mask_url(void **state)
{
	char b[256];

	(void)state;
	/* libpq's parser decides what the password is; it is never shown. */
	masks_to("postgresql://u:p%40ss@h:5432/db?sslmode=require",
	    "postgresql://u:***@h:5432/db?sslmode=require");
	masks_to("postgres://u@h/db", "postgres://u@h/db");
	/* passwords of the original project's env files */
	masks_to(
	    "postgresql://postgres:Desfollow-DB2026###@db.x.supabase.co:5432/"
	    "postgres",
	    "postgresql://postgres:***@db.x.supabase.co:5432/postgres");
	masks_to("postgresql://postgres:[Desfollow-DB2026!!!]@h:6543/db",
	    "postgresql://postgres:***@h:6543/db");
	masks_to("postgresql://u:pa?ss&w=rd@h/db", "postgresql://u:***@h/db");
	masks_to("postgresql://u:sem;i:co#l@h/db", "postgresql://u:***@h/db");
	masks_to("postgresql://u:p%23ss@h/db", "postgresql://u:***@h/db");
	/* a password parameter, and one given twice */
	mask_dburl("postgres://h/db?user=u&password=z%26z&x=1&password=y", b,
	    sizeof(b));
	assert_null(strstr(b, "z"));
	assert_null(strstr(b, "y"));
	assert_non_null(strstr(b, "password=***"));
	/* key=value: quoted, escaped, with spaces */
	masks_to("host=h dbname=d password=xyz user=u",
	    "user=u password=*** dbname=d host=h");
	masks_to(
	    "host=h password='a b\\' c' user=u", "user=u password=*** host=h");
	masks_to(
	    "host=h password=a\\ bcd user=u", "user=u password=*** host=h");
	/* found by fuzz_mask: a URL-like text after a password= parameter */
	mask_dburl("host=h password=sehBnn x://e:y@h", b, sizeof(b));
	assert_null(strstr(b, "sehBnn"));
	masks_to("sqlite:///demo/jobs.db", "sqlite:///demo/jobs.db");
	/* what libpq rejects is masked from its first possible password on */
	masks_to("postgresql://u:p%zzsecret@h/db", "postgresql://u:***@h/db");
	masks_to("host=h password=abc defgh", "host=h password=*** ***");
	masks_to("mysql://admin:s3cr3t@db.example/app",
	    "mysql://admin:***@db.example/app");
	/* a keyword libpq does not know: only harmless keywords' values show */
	masks_to(
	    "host=h passwd=SecretXY dbname=d", "host=h passwd=*** dbname=d");
	/* libpq reads these passwords otherwise than a person: only the
	 * scheme shows */
	masks_to(
	    "postgresql://app:pa/ss99xy@127.0.0.1:1/rb", "postgresql://***");
	masks_to("postgresql://app:p@ss99xy@h/db", "postgresql://***");
	/* found by fuzz_mask: an '@' in a query parameter's password */
	masks_to("postgresql://h/db:x?password=two@ wo&",
	    "postgresql://:***@h/db%3Ax");
	/* a query without a path, and a port that is no number: libpq's
	 * user, host or port would hold a person's password */
	masks_to("postgresql://h?password=SecretXY@x", "postgresql://***");
	masks_to(
	    "postgresql://127.0.0.1:1?password=SecretXY@3", "postgresql://***");
	masks_to("postgresql://app:SecretXY/db", "postgresql://***");
	/* a raw '@' in a parameter libpq reads as written is no password */
	masks_to("postgresql://h/db?user=alice@example.com",
	    "postgresql://alice%40example.com@h/db");
	/* the same output whatever the password (found by fuzz_mask) */
	masks_to("postgresql://::c@/?password=:c&", "postgresql://:***@");
	masks_to("postgresql://::c@/?password=Zx0Q9&", "postgresql://:***@");
	masks_to("sqlite://app:SecretXY@h/db", "sqlite://app:***@h/db");
	/* http URLs: the user and password, and a webhook's secret path */
	mask_http("http://admin:HealthPw9@h:8/api/health", 1, b, sizeof(b));
	assert_string_equal(b, "http://***@h:8/api/health");
	mask_http(
	    "https://hooks.slack.com/services/T0/B0/XXXX", 0, b, sizeof(b));
	assert_string_equal(b, "https://hooks.slack.com/...");
	mask_http("https://h/api/health", 1, b, sizeof(b));
	assert_string_equal(b, "https://h/api/health");
}

/*
 * http(s) URLs as libcurl reads them (issue 23): no part of the user or
 * password shown, however it is spelt; a webhook's path and query never;
 * a '?', '#', '/' or '@' left raw in a password refused, and shown as
 * the scheme only.
 */
static void
test_mask_http(void **state)
{
	static const struct {
		const char *url;
		const char *health; /* keep_path 1 */
		const char *hook; /* keep_path 0 */
	} ok[] = {
		{ "http://user:s3cr%3Fet@127.0.0.1:1/api/health",
		    "http://***@127.0.0.1:1/api/health",
		    "http://***@127.0.0.1:1/..." },
		{ "https://hookuser:tok%3Fen123@hooks.example/T0/B0",
		    "https://***@hooks.example/T0/B0",
		    "https://***@hooks.example/..." },
		{ "https://u:p%23ss%2Fw%40rd@h:8/x?y=1",
		    "https://***@h:8/x?y=1", "https://***@h:8/..." },
		{ "https://0123456789abcdefSECRET@o1.ingest.example.com/42",
		    "https://***@o1.ingest.example.com/42",
		    "https://***@o1.ingest.example.com/..." },
		{ "https://:onlypw@h/", "https://***@h/", "https://***@h" },
		{ "https://hooks.example?token=SECRETQ",
		    "https://hooks.example/?token=SECRETQ",
		    "https://hooks.example/..." },
		{ "http://[::1]:9/api/health", "http://[::1]:9/api/health",
		    "http://[::1]:9/..." },
	};
	static const char *const refused[] = {
		"http://user:s3cr?et@127.0.0.1:1/api/health",
		"https://hookuser:tok?en123@hooks.example/T0/B0",
		"https://u:s3cr#et@h/x", "https://u:s3cr/et@h/x",
		"https://u:12/s3cret@h/x", "https://u:12#s3cret@h/x",
		"https://u:s3c@ret@h/x", "https://s3cr?et@h/x",
		"https://s3cr/et@h/x", NULL
	};
	struct config cfg;
	char b[512], err[512];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		assert_int_equal(mask_http(ok[i].url, 1, b, sizeof(b)), 0);
		assert_string_equal(b, ok[i].health);
		assert_int_equal(mask_http(ok[i].url, 0, b, sizeof(b)), 0);
		assert_string_equal(b, ok[i].hook);
		assert_int_equal(mask_http_check(ok[i].url), 0);
	}
	clear_env();
	for (i = 0; refused[i] != NULL; i++) {
		mask_http(refused[i], 1, b, sizeof(b));
		assert_string_equal(b,
		    strncmp(refused[i], "https", 5) == 0 ? "https://***"
							 : "http://***");
		assert_int_not_equal(mask_http_check(refused[i]), 0);
		setenv("LIMPEZA_HEALTH_URL", refused[i], 1);
		assert_int_equal(load(&cfg, NULL, err, sizeof(err)), -1);
		assert_null(strstr(err, "cr"));
		assert_null(strstr(err, "et@"));
		assert_non_null(strstr(err, "invalid LIMPEZA_HEALTH_URL"));
		assert_non_null(strstr(err, "percent-encoded (%40, %2F, %3F"));
		clear_env();
		setenv("LIMPEZA_ALERT_WEBHOOK", refused[i], 1);
		assert_int_equal(load(&cfg, NULL, err, sizeof(err)), -1);
		assert_null(strstr(err, "cr"));
		assert_non_null(strstr(err, "invalid LIMPEZA_ALERT_WEBHOOK"));
		clear_env();
	}
}

static void
test_options(void **state)
{
	struct config_args a;
	char *argv[] = { "limpeza", "--running-ttl", "5s", "--dry-run",
		"--lang=en", "--nope", "--batch" };
	char err[256];
	int i;

	(void)state;
	config_args_init(&a);
	i = 1;
	assert_int_equal(config_parse_option(&a, 7, argv, &i, err, 256), 1);
	assert_int_equal(i, 2);
	i = 3;
	assert_int_equal(config_parse_option(&a, 7, argv, &i, err, 256), 1);
	assert_int_equal(i, 3);
	i = 4;
	assert_int_equal(config_parse_option(&a, 7, argv, &i, err, 256), 1);
	i = 5;
	assert_int_equal(config_parse_option(&a, 7, argv, &i, err, 256), 0);
	i = 6;
	assert_int_equal(config_parse_option(&a, 7, argv, &i, err, 256), -1);
	assert_non_null(strstr(err, "--batch"));
	config_args_free(&a);
}

static void
test_reap_messages(void **state)
{
	struct config cfg;
	char err[256], m[256];
	const char *opts[] = { "--queued-ttl=90s", NULL };
	const char *en[] = { "--lang=en", "--running-ttl=1m", NULL };

	(void)state;
	clear_env();
	assert_int_equal(load(&cfg, opts, err, sizeof(err)), 0);
	log_reap_message(&cfg, REAP_RUNNING, m, sizeof(m));
	assert_string_equal(m, "Job órfão - mais de 3 minutos");
	log_reap_message(&cfg, REAP_QUEUED, m, sizeof(m));
	assert_string_equal(m, "Job queued expirado - mais de 90 segundos");
	log_reap_message(&cfg, REAP_FORCED, m, sizeof(m));
	assert_string_equal(m, "Limpeza forçada - excesso de jobs ativos");
	config_free(&cfg);
	assert_int_equal(load(&cfg, en, err, sizeof(err)), 0);
	log_reap_message(&cfg, REAP_RUNNING, m, sizeof(m));
	assert_string_equal(
	    m, "Orphan job - no progress for more than 1 minute");
	config_free(&cfg);
}

/* --help and the man page come from the table: every setting is in both. */
static void
test_help_lists_every_setting(void **state)
{
	char *help = NULL, *man = NULL;
	size_t hl = 0, ml = 0;
	FILE *h = open_memstream(&help, &hl), *m = open_memstream(&man, &ml);
	int k;

	(void)state;
	config_print_help(h);
	config_print_man(m);
	fclose(h);
	fclose(m);
	for (k = 0; k < config_nsettings(); k++) {
		if (strstr(help, config_setting_env(k)) == NULL)
			fail_msg(
			    "%s missing from --help", config_setting_env(k));
		if (strstr(man, config_setting_env(k)) == NULL)
			fail_msg("%s missing from the man page",
			    config_setting_env(k));
	}
	assert_non_null(strstr(help, "--running-ttl=DURATION"));
	free(help);
	free(man);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_durations),
		cmocka_unit_test(test_format_duration),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_precedence),
		cmocka_unit_test(test_retention_set),
		cmocka_unit_test(test_bad_values),
		cmocka_unit_test(test_env_file_not_utf8),
		cmocka_unit_test(test_zone_offsets_refused),
		cmocka_unit_test(test_secret_not_in_error),
		cmocka_unit_test(test_mask_url),
		cmocka_unit_test(test_mask_http),
		cmocka_unit_test(test_options),
		cmocka_unit_test(test_reap_messages),
		cmocka_unit_test(test_help_lists_every_setting),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
