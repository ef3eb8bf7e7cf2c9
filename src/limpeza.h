/* limpeza.h: shared types and every module's prototypes, grouped by file. */

#ifndef LIMPEZA_H
#define LIMPEZA_H

#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <jansson.h>

#define LIMPEZA_VERSION "0.1.0"

#define MS_PER_S 1000LL

enum log_level { LVL_DEBUG, LVL_INFO, LVL_WARNING, LVL_ERROR };
enum log_format { LOGF_TEXT, LOGF_JSON };
enum lang { LANG_PT, LANG_EN };
enum cache_action { CACHE_REMOVE, CACHE_MARK };
enum active_from { ACTIVE_HEALTH, ACTIVE_DATABASE };
enum force_cache { FORCE_ALL, FORCE_ACTIVE };

/*
 * The effective settings. Every field is owned by the struct (strings are
 * heap copies) and is filled only by config_load(), which validates all of
 * them first: the rest of the program never sees a bad value. Durations are
 * milliseconds. An empty string means "disabled" where SPEC §4 says so.
 */
struct config {
	char *database_url;
	char *env_files;
	char *cache_file;
	char *health_url;
	long long running_ttl;
	long long queued_ttl;
	long long interval;
	long long error_backoff;
	long long force_threshold;
	long long active_from;
	long long force_cache;
	long long force_min_age;
	long long report_every;
	long long cache_action;
	long long cache_retention;
	/* LIMPEZA_CACHE_RETENTION was given (option, environment, env
	 * file), not defaulted. */
	int cache_retention_set;
	long long health_timeout;
	char *table;
	char *id_column;
	char *status_column;
	char *updated_column;
	char *created_column;
	char *error_column;
	char *running_status;
	char *queued_status;
	char *error_status;
	long long batch;
	char *db_timezone;
	long long leader_key;
	char *log_file;
	long long log_format;
	long long log_level;
	long long lang;
	long long dry_run;
	char *metrics_addr;
	char *alert_webhook;
	/* Lines worth a warning once logging is up (unreadable env file...). */
	char warnings[8][256];
	int nwarnings;
};

/* Command-line settings, kept so that a reload applies them again. */
struct config_args {
	const char **values; /* one slot per setting, NULL when not given */
	const char **env_files;
	int nenv_files;
};

/* A cycle's steps, as bits: which of them failed (log.c names them). */
enum step { STEP_CACHE = 1, STEP_STORE = 2, STEP_HEALTH = 4, STEP_FORCE = 8 };

/* Job kinds that a reaper can end; they pick the message and the log line. */
enum reap_kind { REAP_RUNNING, REAP_QUEUED, REAP_FORCED };

/* config.c */
int config_nsettings(void);
const char *config_setting_env(int);
int config_args_init(struct config_args *);
void config_args_free(struct config_args *);
int config_parse_option(
    struct config_args *, int, char **, int *, char *, size_t);
int config_load(struct config *, const struct config_args *, char *, size_t);
int config_check_setting(const char *, const char *, char *, size_t);
void config_free(struct config *);
int config_parse_duration(const char *, long long *);
int config_parse_addr(const char *, struct sockaddr_storage *, socklen_t *);
int config_format_duration(long long, char *, size_t);
void config_print_help(FILE *);
void config_print_man(FILE *);
void config_print(const struct config *, FILE *);
void config_warn(struct config *, const char *, ...)
    __attribute__((format(printf, 2, 3)));

/* log.c */
enum log_event {
	EV_START,
	EV_CONFIG,
	EV_CONFIG_DETAIL,
	EV_CONFIG_WARNING,
	EV_NO_DATABASE,
	EV_STOP,
	EV_RELOAD,
	EV_RELOAD_FAILED,
	EV_SIGNAL_CYCLE,
	EV_CYCLE,
	EV_CYCLE_START,
	EV_DRY_RUN,
	EV_CYCLE_FAILED,
	EV_CACHE_ORPHAN,
	EV_CACHE_QUEUED,
	EV_CACHE_FORCED,
	EV_CACHE_WOULD_ORPHAN,
	EV_CACHE_WOULD_QUEUED,
	EV_CACHE_WOULD_FORCE,
	EV_CACHE_WOULD_CLEAN,
	EV_CACHE_CLEANED,
	EV_CACHE_MARKED,
	EV_CACHE_MISSING,
	EV_CACHE_INVALID,
	EV_CACHE_NOT_OBJECT,
	EV_CACHE_ERROR,
	EV_CACHE_CHANGED,
	EV_CACHE_GAVE_UP,
	EV_CACHE_LEFTOVER,
	EV_CACHE_RECOVERED,
	EV_CACHE_UNCHANGED,
	EV_CACHE_NO_LEASE,
	EV_CACHE_SWAP,
	EV_CACHE_RETIRED,
	EV_CACHE_RETIRED_SEEN,
	EV_CACHE_RETIRED_MARKED,
	EV_CACHE_WOULD_RETIRE,
	EV_CACHE_RETIRED_JOB,
	EV_CACHE_WOULD_RETIRE_JOB,
	EV_CACHE_RETENTION_DOWN,
	EV_DUE,
	EV_DB_JOB,
	EV_DB_JOB_NO_AGE,
	EV_DB_WOULD_END,
	EV_DB_LOOK,
	EV_DB_BATCH,
	EV_LEADER,
	EV_FOLLOWER,
	EV_DB_HELD,
	EV_DB_CLEANED,
	EV_DB_CLEANED_WOULD,
	EV_DB_STATS,
	EV_DB_DOWN,
	EV_DB_STILL_DOWN,
	EV_DB_UP,
	EV_HEALTH,
	EV_HEALTH_ERROR,
	EV_HEALTH_NOT_ASKED,
	EV_HEALTH_ENDS_JOBS,
	EV_ACTIVE_DB,
	EV_FORCE_WARN,
	EV_FORCE_WARN_WOULD,
	EV_FORCE_REQUESTED,
	EV_FORCE_REQUESTED_WOULD,
	EV_FORCE_DONE,
	EV_FORCE_DONE_WOULD,
	EV_SUMMARY,
	EV_SUMMARY_WOULD,
	EV_CYCLE_INCOMPLETE,
	EV_CYCLE_STOPPED,
	EV_CLEAN,
	EV_CLEAN_FOLLOWER,
	EV_SUMMARY_HELD,
	EV_REPORT,
	EV_REPORT_NO_API,
	EV_REPORT_DB,
	EV_ALERT_FAILED,
	EV_ALERTS_DROPPED,
	EV_METRICS_ERROR,
	EV_COUNT
};

int log_setup(const struct config *);
void log_reopen(void);
void log_close(void);
void log_event(enum log_level, enum log_event, ...);
int log_format_line(char *, size_t, enum log_level, enum log_event,
    enum log_format, enum lang, double, va_list);
void log_stderr_only(enum log_level, enum log_format, enum lang);
void fatal(const char *, ...) __attribute__((format(printf, 1, 2), noreturn));
void fatalx_oom(void) __attribute__((noreturn));
void log_reap_message(const struct config *, enum reap_kind, char *, size_t);
void log_banner_ttl(const struct config *, char *, size_t);

/* text.c */
/* Room for any path (PATH_MAX bytes, each shown as \xNN at worst). */
#define TEXT_MAX 16384
void text_put(char *, size_t, size_t *, const char *);
void text_trim(char *, size_t *);
void text_clean(char *, size_t, const char *);
size_t text_char(const char *);
json_t *text_json_cut(const char *, size_t);
json_t *text_json(const char *);

/* clock.c */
/* How long a network wait goes on before it asks stop_pending() again. */
#define STOP_SLICE_MS 100
double now_realtime(void);
long long now_monotonic_ms(void);
int stop_pending(void);
void stop_pending_hup(int);

/* jobtime.c */
int jobtime_iso8601(const char *, double *);
int jobtime_parse(const char *, size_t, double *);

/* safefile.c */
/* A piece of a new file: len bytes of mem, or (mem NULL) of the old file. */
struct safefile_piece {
	const char *mem;
	off_t off;
	size_t len;
};
struct safefile_out {
	struct safefile_piece *p;
	size_t n, cap;
};
/*
 * The longest cache file name: limpeza's temporary file beside it,
 * .NAME.limpeza-XXXXXX.<64 hex digits>, is 81 bytes longer, and a name
 * has at most 255 (NAME_MAX).
 */
#define SAFEFILE_NAME_MAX (255 - 81)
int safefile_open(const char *, int *, struct stat *, char *, size_t);
int safefile_same_version(const struct stat *, const struct stat *);
int safefile_settling(int, const struct stat *);
void safefile_put(struct safefile_out *, const char *, off_t, size_t);
void safefile_out_free(struct safefile_out *);
int safefile_replace(const char *, int, const struct stat *, const uint64_t[2],
    const struct safefile_out *, struct stat *, char *, size_t);
void safefile_remove_leftovers(const char *);

/* cache.c */
/* The status of a finished job besides LIMPEZA_ERROR_STATUS (SPEC §1.1). */
#define DONE_STATUS "done"
struct cache;
struct store;
struct cache_result {
	long reaped_running;
	long reaped_queued;
	long forced;
	long forced_running; /* forced, by the state the job was in */
	long forced_queued;
	long active; /* running/queued jobs left in the file */
	double oldest_s; /* age of the oldest active job left, -1 if none */
	long finished; /* finished jobs (done, error) in the file read */
	long retired; /* of those, past their retention: removed */
	long retired_error; /* of those, in the error status */
	long retired_marked; /* of those, limpeza's own marks without a row */
	off_t size; /* the file's size after the pass */
	int rewritten;
	int lookup_failed; /* retention's look-up in the store failed */
};
struct cache_policy {
	double running_ttl;
	double queued_ttl;
	int force;
	int force_all;
	double force_min_age;
	double retention; /* seconds a finished job stays; 0: forever */
	/* seconds a job limpeza marked stays without a row; 0: forever */
	double mark_retention;
};
enum job_state { JOB_OTHER, JOB_RUNNING, JOB_QUEUED, JOB_DONE, JOB_ERROR };
/* What decides a job's fate, decoded from its bytes (SPEC §1.1). */
struct cache_job {
	enum job_state state; /* by its status; OTHER for a non-object */
	double start_time; /* epoch seconds; 0: missing or unusable */
	double created_at;
};
enum cache_fate {
	FATE_KEEP,
	FATE_RUNNING,
	FATE_QUEUED,
	FATE_FORCED,
	FATE_RETIRED /* finished, and past its retention */
};
/* How finished jobs leave the file (SPEC §1.1, LIMPEZA_CACHE_RETENTION). */
enum cache_retention {
	RETENTION_OFF, /* 0, or no database and not set explicitly */
	RETENTION_ROWS, /* once their row is finished for that long */
	RETENTION_FIRST_SIGHT /* no database: seen finished for that long */
};

struct cache *cache_new(void);
void cache_free(struct cache *);
void cache_invalidate(struct cache *);
void cache_collect_forced(struct cache *, json_t *);
long cache_ended_by_others(struct cache *, const struct config *);
long long cache_next_due(const struct cache *);
enum cache_retention cache_retention_mode(const struct config *);
int cache_reap(struct cache *, const struct config *, struct store *, int, int,
    struct cache_result *);
enum cache_fate cache_decide(const struct cache_job *,
    const struct cache_policy *, double, double, double *);
void cache_set_window(size_t);

/* libs.c */
int libs_pq(char *, size_t);
int libs_curl(char *, size_t);

/* health.c */
int health_global_init(char *, size_t);
int health_curl_opt(int, const char *, char *, size_t);
int health_probe(const struct config *, long long *, char *, size_t);
int health_parse(const char *, size_t, long long *, char *, size_t);

/* metrics.c */
void metrics_reaped(const char *, const char *, const char *, long);
void metrics_step_failed(const char *);
void metrics_cycle(double, int);
void metrics_gauges(long long, int, int, long long);
void metrics_stale_left(long);
void metrics_probe_ended(long);
char *metrics_render(size_t *);
int metrics_healthy(void);
int metrics_start(const char *, char *, size_t);
void metrics_stop(void);

/* alert.c */
#define ALERT_TIMEOUT_MS 5000
int alert_start(const char *);
void alert_stop(long long);
void alert_send(const char *, long, const char *);
char *alert_body(const char *, long, const char *, const char *, time_t);

/* cycle.c */
struct cycle;
struct cycle *cycle_new(const struct config *, int);
void cycle_free(struct cycle *);
void cycle_set_config(struct cycle *, const struct config *);
int cycle_run(struct cycle *, int, int (*)(void));
long long cycle_count(const struct cycle *);
const char *cycle_status(const struct cycle *);
long long cycle_next_due(const struct cycle *);
int cycle_reap_due(struct cycle *);
void cycle_ask_health(struct cycle *, int);

/* commands.c */
int cmd_check(struct config *, int);
int cmd_stats(struct config *, int, int);

/* notify.c */
long long notify_watchdog_ms(void);
void notify_watchdog(void);
void notify_cycle(int, const char *);
void notify_reloading(void);
void notify_reloaded(void);
void notify_stopping(void);

#endif /* LIMPEZA_H */
