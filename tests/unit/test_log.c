/* test_log.c: the text lines operators grep, their English twins, and JSON
 * lines. */

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"

/* 2024-01-15 14:30:15 UTC, the SPEC's example moment. */
#define WHEN 1705329015.0

static char line[4096];

static const char *
fmt(enum log_level lvl, enum log_format f, enum lang l, enum log_event ev, ...)
{
	va_list ap;

	va_start(ap, ev);
	assert_int_equal(
	    log_format_line(line, sizeof(line), lvl, ev, f, l, WHEN, ap), 0);
	va_end(ap);
	return line;
}

static void
test_text_pt(void **state)
{
	json_t *stats = json_pack("{s:i, s:i}", "done", 45, "error", 12);

	(void)state;
	assert_string_equal(
	    fmt(LVL_INFO, LOGF_TEXT, LANG_PT, EV_CYCLE, 42L, "14:30:15"),
	    "2024-01-15 14:30:15 - INFO - 🔄 Ciclo 42 - 14:30:15");
	assert_string_equal(
	    fmt(LVL_INFO, LOGF_TEXT, LANG_PT, EV_CACHE_ORPHAN, "3f0c", 212L),
	    "2024-01-15 14:30:15 - INFO - 🧹 Job órfão no cache limpo: "
	    "3f0c "
	    "(rodando há 212s)");
	assert_string_equal(fmt(LVL_INFO, LOGF_TEXT, LANG_PT, EV_DB_CLEANED,
				"3min", 1L, "2min", 0L),
	    "2024-01-15 14:30:15 - INFO - 🧹 Limpeza banco executada: "
	    "running "
	    "> 3min: 1, queued > 2min: 0");
	assert_string_equal(
	    fmt(LVL_INFO, LOGF_TEXT, LANG_PT, EV_DB_STATS, stats),
	    "2024-01-15 14:30:15 - INFO - 📊 Stats banco (24h): {'done': 45, "
	    "'error': 12}");
	assert_string_equal(
	    fmt(LVL_WARNING, LOGF_TEXT, LANG_PT, EV_FORCE_WARN, 9L),
	    "2024-01-15 14:30:15 - WARNING - ⚠️ MUITOS JOBS ATIVOS: 9 - "
	    "Executando limpeza forçada!");
	assert_string_equal(
	    fmt(LVL_INFO, LOGF_TEXT, LANG_PT, EV_REPORT, 50L, 2L),
	    "2024-01-15 14:30:15 - INFO - 📊 Relatório (Ciclo 50): 2 jobs "
	    "ativos na API");
	assert_string_equal(
	    fmt(LVL_ERROR, LOGF_TEXT, LANG_PT, EV_HEALTH_ERROR, "timeout"),
	    "2024-01-15 14:30:15 - ERROR - ❌ Erro ao consultar API Health: "
	    "timeout");
	json_decref(stats);
}

static void
test_text_en(void **state)
{
	(void)state;
	assert_string_equal(
	    fmt(LVL_INFO, LOGF_TEXT, LANG_EN, EV_CACHE_CLEANED, 2L),
	    "2024-01-15 14:30:15 - INFO - ✅ Cache cleaned: 2 orphan jobs "
	    "removed");
	assert_string_equal(fmt(LVL_INFO, LOGF_TEXT, LANG_EN, EV_STOP),
	    "2024-01-15 14:30:15 - INFO - 🛑 Cleanup system stopped");
}

/* Nor a status word from the database, shown in the statistics line. */
static void
test_status_word_cannot_forge_a_line(void **state)
{
	json_t *by = json_object();

	(void)state;
	json_object_set_new(by,
	    "done\n2024-01-15 14:30:15 - INFO - \xe2\x9c\x85 Sistema limpo",
	    json_integer(3));
	fmt(LVL_INFO, LOGF_TEXT, LANG_PT, EV_DB_STATS, by);
	assert_null(strchr(line, '\n'));
	assert_non_null(strstr(line, "'done\\x0a2024-01-15"));
	assert_non_null(strstr(line, "': 3}"));
	json_decref(by);
}

/* A job id with a newline must not forge a second log line. */
static void
test_control_chars(void **state)
{
	(void)state;
	fmt(LVL_INFO, LOGF_TEXT, LANG_PT, EV_CACHE_QUEUED,
	    "x\n2024-01-15 14:30:15 - INFO - forged");
	assert_null(strchr(line, '\n'));
	assert_non_null(strstr(line, "x\\x0a2024"));
}

static void
test_json(void **state)
{
	json_t *o;

	(void)state;
	fmt(LVL_WARNING, LOGF_JSON, LANG_PT, EV_CACHE_ORPHAN, "3f0c", 212L);
	assert_null(strchr(line, '\n'));
	o = json_loads(line, 0, NULL);
	assert_non_null(o);
	assert_string_equal(json_string_value(json_object_get(o, "ts")),
	    "2024-01-15T14:30:15.000Z");
	assert_string_equal(
	    json_string_value(json_object_get(o, "level")), "warning");
	assert_string_equal(
	    json_string_value(json_object_get(o, "event")), "cache_orphan");
	assert_string_equal(
	    json_string_value(json_object_get(o, "job_id")), "3f0c");
	assert_int_equal(json_integer_value(json_object_get(o, "age_s")), 212);
	assert_string_equal(json_string_value(json_object_get(o, "msg")),
	    "🧹 Orphan job cleaned from cache: 3f0c (running for 212s)");
	json_decref(o);

	/* bytes that are not UTF-8 still give a valid JSON line */
	fmt(LVL_INFO, LOGF_JSON, LANG_EN, EV_CACHE_QUEUED, "a\xff\xfe");
	o = json_loads(line, 0, NULL);
	assert_non_null(o);
	assert_string_equal(
	    json_string_value(json_object_get(o, "job_id")), "a\\xff\\xfe");
	json_decref(o);
}

/* A cycle's failed steps: named in the line's language, listed in JSON. */
static void
test_failed_steps(void **state)
{
	json_t *o, *steps;

	(void)state;
	assert_string_equal(
	    fmt(LVL_WARNING, LOGF_TEXT, LANG_PT, EV_CYCLE_INCOMPLETE,
		(long)(STEP_CACHE | STEP_STORE | STEP_FORCE)),
	    "2024-01-15 14:30:15 - WARNING - ⚠️ Limpeza incompleta - falha "
	    "em: cache, banco, limpeza forçada");
	assert_string_equal(fmt(LVL_WARNING, LOGF_TEXT, LANG_EN,
				EV_CYCLE_INCOMPLETE, (long)STEP_HEALTH),
	    "2024-01-15 14:30:15 - WARNING - ⚠️ Cleanup incomplete - "
	    "failed: "
	    "API health");
	fmt(LVL_WARNING, LOGF_JSON, LANG_PT, EV_CYCLE_INCOMPLETE,
	    (long)(STEP_STORE | STEP_HEALTH));
	o = json_loads(line, 0, NULL);
	assert_non_null(o);
	steps = json_object_get(o, "failed_steps");
	assert_int_equal(json_array_size(steps), 2);
	assert_string_equal(
	    json_string_value(json_array_get(steps, 0)), "store");
	assert_string_equal(
	    json_string_value(json_array_get(steps, 1)), "health");
	assert_string_equal(json_string_value(json_object_get(o, "msg")),
	    "⚠️ Cleanup incomplete - failed: database, API health");
	json_decref(o);
}

/* A dry run's lines say "would", in both languages. */
static void
test_dry_run_words(void **state)
{
	(void)state;
	assert_string_equal(fmt(LVL_INFO, LOGF_TEXT, LANG_PT, EV_DB_WOULD_END,
				"running", "3f0c"),
	    "2024-01-15 14:30:15 - INFO - 🧪 Job running seria encerrado no "
	    "banco: 3f0c");
	assert_string_equal(fmt(LVL_INFO, LOGF_TEXT, LANG_EN, EV_DB_WOULD_END,
				"queued", "9a11"),
	    "2024-01-15 14:30:15 - INFO - 🧪 Job queued would be ended in "
	    "the "
	    "database: 9a11");
	assert_string_equal(
	    fmt(LVL_INFO, LOGF_TEXT, LANG_EN, EV_SUMMARY_WOULD, 3L),
	    "2024-01-15 14:30:15 - INFO - 🧪 Dry run: 3 jobs would be ended");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_text_pt),
		cmocka_unit_test(test_text_en),
		cmocka_unit_test(test_control_chars),
		cmocka_unit_test(test_status_word_cannot_forge_a_line),
		cmocka_unit_test(test_json),
		cmocka_unit_test(test_failed_steps),
		cmocka_unit_test(test_dry_run_words),
	};

	setenv("TZ", "UTC", 1);
	tzset();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
