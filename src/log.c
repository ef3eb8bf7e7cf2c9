/* log.c: every log line, pt/en text or JSON, to the file and stderr. */

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "limpeza.h"

/*
 * The catalogue of log lines. Each event has a stable JSON name, the
 * Portuguese line operators already grep for, its English twin, and the
 * types and JSON keys of its arguments in order: 's' a string, 'l' a
 * long, 'j' a json_t object (shown as a Python dict in text), 'F' a long
 * holding enum step bits (the steps' names in the line's language, a
 * list of stable names in JSON). Formats use only %s; log_event()
 * renders each argument by its type. A dry run's lines say what would
 * happen ("seria", "would"), never what did.
 */
struct log_def {
	const char *name;
	const char *pt;
	const char *en;
	const char *types;
	const char *keys[4];
};

static const struct log_def defs[EV_COUNT] = {
	[EV_START] = { "start", "🚀 Sistema de Limpeza %s iniciado...",
	    "🚀 %s Cleanup System started...", "s", { "running_ttl" } },
	[EV_CONFIG] = { "config",
	    "⏱️ Configuração: jobs > %s serão limpos a cada %s",
	    "⏱️ Configuration: jobs > %s will be cleaned every %s", "ss",
	    { "running_ttl", "interval" } },
	[EV_CONFIG_DETAIL] = { "config_detail",
	    "⚙️ Cache: %s | Banco: %s | Health: %s",
	    "⚙️ Cache: %s | Database: %s | Health: %s", "sss",
	    { "cache_file", "store", "health_url" } },
	[EV_CONFIG_WARNING] = { "config_warning", "⚠️ Configuração: %s",
	    "⚠️ Configuration: %s", "s", { "detail" } },
	[EV_NO_DATABASE] = { "no_database",
	    "⚠️ DATABASE_URL não definido - limpeza do banco desativada",
	    "⚠️ DATABASE_URL not set - database cleanup disabled", "",
	    { NULL } },
	[EV_STOP] = { "stop", "🛑 Sistema de limpeza interrompido",
	    "🛑 Cleanup system stopped", "", { NULL } },
	[EV_RELOAD] = { "reload", "🔄 Configuração recarregada",
	    "🔄 Configuration reloaded", "", { NULL } },
	[EV_RELOAD_FAILED] = { "reload_failed",
	    "❌ Recarga da configuração falhou, mantendo a anterior: %s",
	    "❌ Configuration reload failed, keeping the previous one: %s", "s",
	    { "detail" } },
	[EV_SIGNAL_CYCLE] = { "signal_cycle", "🔔 SIGUSR1: ciclo imediato",
	    "🔔 SIGUSR1: cycle now", "", { NULL } },
	[EV_CYCLE] = { "cycle", "🔄 Ciclo %s - %s", "🔄 Cycle %s - %s", "ls",
	    { "cycle", "time" } },
	[EV_CYCLE_START] = { "cycle_start", "🚀 Iniciando limpeza completa...",
	    "🚀 Starting full cleanup...", "", { NULL } },
	[EV_DRY_RUN] = { "dry_run",
	    "🧪 Simulação (dry-run): nada será alterado",
	    "🧪 Dry run: nothing will be changed", "", { NULL } },
	[EV_CYCLE_FAILED] = { "cycle_failed",
	    "⚠️ Ciclo %s com falhas - próximo ciclo em %s",
	    "⚠️ Cycle %s had failures - next cycle in %s", "ls",
	    { "cycle", "backoff" } },
	[EV_CACHE_ORPHAN] = { "cache_orphan",
	    "🧹 Job órfão no cache limpo: %s (rodando há %ss)",
	    "🧹 Orphan job cleaned from cache: %s (running for %ss)", "sl",
	    { "job_id", "age_s" } },
	[EV_CACHE_QUEUED] = { "cache_queued",
	    "🧹 Job queued expirado no cache: %s",
	    "🧹 Expired queued job cleaned from cache: %s", "s",
	    { "job_id" } },
	[EV_CACHE_FORCED] = { "cache_forced",
	    "🚨 Job terminado no cache (limpeza forçada): %s",
	    "🚨 Job ended in cache (forced cleanup): %s", "s", { "job_id" } },
	[EV_CACHE_WOULD_ORPHAN] = { "cache_orphan_would",
	    "🧪 Job órfão seria limpo do cache: %s (rodando há %ss)",
	    "🧪 Orphan job would be cleaned from cache: %s (running for %ss)",
	    "sl", { "job_id", "age_s" } },
	[EV_CACHE_WOULD_QUEUED] = { "cache_queued_would",
	    "🧪 Job queued expirado seria limpo do cache: %s",
	    "🧪 Expired queued job would be cleaned from cache: %s", "s",
	    { "job_id" } },
	[EV_CACHE_WOULD_FORCE] = { "cache_forced_would",
	    "🧪 Job seria terminado no cache (limpeza forçada): %s",
	    "🧪 Job would be ended in cache (forced cleanup): %s", "s",
	    { "job_id" } },
	[EV_CACHE_WOULD_CLEAN] = { "cache_cleaned_would",
	    "🧪 Cache: %s jobs órfãos seriam limpos",
	    "🧪 Cache: %s orphan jobs would be cleaned", "l", { "count" } },
	[EV_CACHE_CLEANED] = { "cache_cleaned",
	    "✅ Cache limpo: %s jobs órfãos removidos",
	    "✅ Cache cleaned: %s orphan jobs removed", "l", { "count" } },
	[EV_CACHE_MARKED] = { "cache_marked",
	    "✅ Cache limpo: %s jobs órfãos marcados como erro",
	    "✅ Cache cleaned: %s orphan jobs marked as error", "l",
	    { "count" } },
	[EV_CACHE_MISSING] = { "cache_missing",
	    "Arquivo de cache não encontrado: %s", "Cache file not found: %s",
	    "s", { "path" } },
	[EV_CACHE_INVALID] = { "cache_invalid",
	    "❌ Cache inválido, mantido intacto: %s (linha %s, coluna %s): %s",
	    "❌ Invalid cache left untouched: %s (line %s, column %s): %s",
	    "slls", { "path", "line", "column", "detail" } },
	[EV_CACHE_NOT_OBJECT] = { "cache_not_object",
	    "❌ Cache inválido, mantido intacto: %s (linha %s, coluna %s) não "
	    "contém um objeto JSON",
	    "❌ Invalid cache left untouched: %s (line %s, column %s) does not "
	    "hold a JSON object",
	    "sll", { "path", "line", "column" } },
	[EV_CACHE_ERROR] = { "cache_error", "❌ Erro no cache %s: %s",
	    "❌ Cache error %s: %s", "ss", { "path", "detail" } },
	[EV_CACHE_CHANGED] = { "cache_changed",
	    "Cache alterado durante a limpeza, nova tentativa: %s",
	    "Cache changed during the cleanup, retrying: %s", "s", { "path" } },
	[EV_CACHE_GAVE_UP] = { "cache_gave_up",
	    "⚠️ Cache alterado a cada tentativa, limpeza adiada: %s",
	    "⚠️ Cache changed at every try, cleanup postponed: %s", "s",
	    { "path" } },
	[EV_CACHE_LEFTOVER] = { "cache_leftover",
	    "🧹 Arquivo temporário deixado por uma execução interrompida "
	    "removido: %s",
	    "🧹 Temporary file left by an interrupted run removed: %s", "s",
	    { "path" } },
	[EV_CACHE_RECOVERED] = { "cache_recovered",
	    "⚠️ Arquivo temporário deixado por uma execução "
	    "interrompida "
	    "com bytes que não são do limpeza (talvez um job da API): "
	    "guardado como %s (era %s); confira e junte ao cache à mão",
	    "⚠️ A temporary file left by an interrupted run holds bytes "
	    "limpeza did not write (perhaps an API job): kept as %s (was %s); "
	    "check it and merge it into the cache by hand",
	    "ss", { "path", "from" } },
	[EV_CACHE_UNCHANGED] = { "cache_unchanged",
	    "Cache sem mudanças e nenhum job vencido: leitura dispensada (%s)",
	    "Cache unchanged and nothing due: not read (%s)", "s", { "path" } },
	[EV_CACHE_NO_LEASE] = { "cache_no_lease",
	    "⚠️ Cache %s trocado sem lease de escrita (%s): um job que a "
	    "API "
	    "grave no mesmo instante pode se perder",
	    "⚠️ Cache %s swapped without a write lease (%s): a job the API "
	    "writes at that very moment could be lost",
	    "ss", { "path", "detail" } },
	[EV_CACHE_SWAP] = { "cache_swap",
	    "Troca do cache %s: lease mantido por %s ms, troca %s",
	    "Cache swap %s: lease held %s ms, swap %s", "sls",
	    { "path", "held_ms", "outcome" } },
	[EV_CACHE_RETIRED] = { "cache_retired",
	    "🗑️ Cache: %s jobs finalizados removidos (já no banco)",
	    "🗑️ Cache: %s finished jobs removed (already in the database)",
	    "l", { "count" } },
	[EV_CACHE_RETIRED_SEEN] = { "cache_retired",
	    "🗑️ Cache: %s jobs finalizados removidos (finalizados há "
	    "mais "
	    "de "
	    "%s)",
	    "🗑️ Cache: %s finished jobs removed (finished more than %s "
	    "ago)",
	    "ls", { "count", "retention" } },
	[EV_CACHE_RETIRED_MARKED] = { "cache_retired_marked",
	    "🗑️ Cache: %s jobs marcados como erro removidos (marcados há "
	    "mais de %s)",
	    "🗑️ Cache: %s jobs marked as error removed (marked more than "
	    "%s "
	    "ago)",
	    "ls", { "count", "retention" } },
	[EV_CACHE_WOULD_RETIRE] = { "cache_retired_would",
	    "🧪 Cache: %s jobs finalizados seriam removidos (retenção de "
	    "%s)",
	    "🧪 Cache: %s finished jobs would be removed (retention %s)",
	    "ls", { "count", "retention" } },
	[EV_CACHE_RETIRED_JOB] = { "cache_retired_job",
	    "🗑️ Job finalizado removido do cache: %s (finalizado há %ss)",
	    "🗑️ Finished job removed from cache: %s (finished %ss ago)",
	    "sl", { "job_id", "age_s" } },
	[EV_CACHE_WOULD_RETIRE_JOB] = { "cache_retired_job_would",
	    "🧪 Job finalizado seria removido do cache: %s (finalizado há "
	    "%ss)",
	    "🧪 Finished job would be removed from cache: %s (finished %ss "
	    "ago)",
	    "sl", { "job_id", "age_s" } },
	[EV_CACHE_RETENTION_DOWN] = { "cache_retention_down",
	    "⚠️ Cache: retenção adiada, o banco não respondeu (%s): %s "
	    "- "
	    "nenhum job finalizado removido até ele responder",
	    "⚠️ Cache: retention postponed, the database did not answer "
	    "(%s): "
	    "%s - no finished job removed until it does",
	    "ss", { "store", "detail" } },
	[EV_DUE] = { "due", "⏰ Prazo atingido: %s jobs limpos fora do ciclo",
	    "⏰ Deadline reached: %s jobs cleaned between cycles", "l",
	    { "count" } },
	[EV_DB_JOB] = { "db_job",
	    "🧹 Job %s encerrado no banco: %s (criado há %ss)",
	    "🧹 Job %s ended in the database: %s (created %ss ago)", "ssl",
	    { "status", "job_id", "age_s" } },
	[EV_DB_JOB_NO_AGE] = { "db_job", "🧹 Job %s encerrado no banco: %s",
	    "🧹 Job %s ended in the database: %s", "ss",
	    { "status", "job_id" } },
	[EV_DB_WOULD_END] = { "db_job_would",
	    "🧪 Job %s seria encerrado no banco: %s",
	    "🧪 Job %s would be ended in the database: %s", "ss",
	    { "status", "job_id" } },
	[EV_DB_LOOK] = { "db_look", "Busca no banco: %s jobs vencidos em %s ms",
	    "Database look: %s stale jobs in %s ms", "ll", { "count", "ms" } },
	[EV_DB_BATCH] = { "db_batch", "Lote no banco: %s jobs em %s ms",
	    "Database batch: %s jobs in %s ms", "ll", { "count", "ms" } },
	[EV_LEADER] = { "leader",
	    "👑 Líder: esta instância limpa o banco e executa a limpeza forçada",
	    "👑 Leader: this instance cleans the database and runs forced "
	    "cleanup",
	    "", { NULL } },
	[EV_FOLLOWER] = { "follower",
	    "👥 Outra instância é a líder: aqui só o cache é limpo",
	    "👥 Another instance leads: only the cache is cleaned here", "",
	    { NULL } },
	[EV_DB_HELD] = { "db_held",
	    "⚠️ %s jobs vencidos bloqueados por outra transação (pid %s, "
	    "%s "
	    "há %s)",
	    "⚠️ %s stale jobs held by another transaction (pid %s, %s for "
	    "%s)",
	    "llss", { "count", "pid", "state", "age" } },
	[EV_DB_CLEANED] = { "db_cleaned",
	    "🧹 Limpeza banco executada: running > %s: %s, queued > %s: %s",
	    "🧹 Database cleanup done: running > %s: %s, queued > %s: %s",
	    "slsl", { "running_ttl", "running", "queued_ttl", "queued" } },
	[EV_DB_CLEANED_WOULD] = { "db_cleaned_would",
	    "🧪 Simulação no banco: running > %s: %s, queued > %s: %s "
	    "seriam "
	    "encerrados",
	    "🧪 Dry run in the database: running > %s: %s, queued > %s: %s "
	    "would be ended",
	    "slsl", { "running_ttl", "running", "queued_ttl", "queued" } },
	[EV_DB_STATS] = { "db_stats", "📊 Stats banco (24h): %s",
	    "📊 Database stats (24h): %s", "j", { "stats" } },
	[EV_DB_DOWN] = { "db_down", "❌ Erro no banco (%s): %s",
	    "❌ Database error (%s): %s", "ss", { "store", "detail" } },
	[EV_DB_STILL_DOWN] = { "db_still_down",
	    "Banco ainda indisponível (%s): %s",
	    "Database still unavailable (%s): %s", "ss",
	    { "store", "detail" } },
	[EV_DB_UP] = { "db_up", "✅ Banco disponível novamente (%s)",
	    "✅ Database available again (%s)", "s", { "store" } },
	[EV_HEALTH] = { "health", "📊 API Health: %s jobs ativos",
	    "📊 API Health: %s active jobs", "l", { "jobs_active" } },
	[EV_HEALTH_ERROR] = { "health_error",
	    "❌ Erro ao consultar API Health: %s",
	    "❌ API health check failed: %s", "s", { "detail" } },
	[EV_HEALTH_NOT_ASKED] = { "health_not_asked",
	    "🧪 API Health não consultada: simulação (a rota de health de "
	    "algumas APIs grava; --health a consulta)",
	    "🧪 API health not asked: dry run (some APIs' health routes "
	    "write; --health asks it)",
	    "", { NULL } },
	[EV_ACTIVE_DB] = { "active_db",
	    "📊 Banco: %s jobs ativos (running + queued)",
	    "📊 Database: %s active jobs (running + queued)", "l",
	    { "jobs_active" } },
	[EV_HEALTH_ENDS_JOBS] = { "health_ends_jobs",
	    "⚠️ A consulta à API Health terminou %s jobs ativos no cache "
	    "(reescreveu o arquivo com outra mensagem de erro): use "
	    "LIMPEZA_ACTIVE_FROM=database",
	    "⚠️ The API health request ended %s active jobs in the cache "
	    "(it "
	    "rewrote the file with an error message of its own): use "
	    "LIMPEZA_ACTIVE_FROM=database",
	    "l", { "count" } },
	[EV_FORCE_WARN] = { "force_warn",
	    "⚠️ MUITOS JOBS ATIVOS: %s - Executando limpeza forçada!",
	    "⚠️ TOO MANY ACTIVE JOBS: %s - Running forced cleanup!", "l",
	    { "jobs_active" } },
	[EV_FORCE_WARN_WOULD] = { "force_warn_would",
	    "🧪 MUITOS JOBS ATIVOS: %s - a limpeza forçada seria executada",
	    "🧪 TOO MANY ACTIVE JOBS: %s - a forced cleanup would run", "l",
	    { "jobs_active" } },
	[EV_FORCE_REQUESTED] = { "force_requested",
	    "⚠️ Limpeza forçada solicitada - Executando limpeza forçada!",
	    "⚠️ Forced cleanup requested - Running forced cleanup!", "",
	    { NULL } },
	[EV_FORCE_REQUESTED_WOULD] = { "force_requested_would",
	    "🧪 Limpeza forçada solicitada: seria executada",
	    "🧪 Forced cleanup requested: it would run", "", { NULL } },
	[EV_FORCE_DONE] = { "force_done",
	    "🚨 Limpeza forçada: %s jobs terminados (%s no banco, %s no cache)",
	    "🚨 Forced cleanup: %s jobs ended (%s in the database, %s in the "
	    "cache)",
	    "lll", { "count", "store", "cache" } },
	[EV_FORCE_DONE_WOULD] = { "force_done_would",
	    "🧪 Limpeza forçada: %s jobs seriam terminados (%s no banco, %s "
	    "no cache)",
	    "🧪 Forced cleanup: %s jobs would be ended (%s in the database, "
	    "%s "
	    "in the cache)",
	    "lll", { "count", "store", "cache" } },
	[EV_SUMMARY] = { "summary", "✅ Limpeza executada: %s jobs processados",
	    "✅ Cleanup done: %s jobs processed", "l", { "count" } },
	[EV_SUMMARY_WOULD] = { "summary_would",
	    "🧪 Simulação: %s jobs seriam encerrados",
	    "🧪 Dry run: %s jobs would be ended", "l", { "count" } },
	[EV_CYCLE_INCOMPLETE] = { "cycle_incomplete",
	    "⚠️ Limpeza incompleta - falha em: %s",
	    "⚠️ Cleanup incomplete - failed: %s", "F", { "failed_steps" } },
	[EV_CYCLE_STOPPED] = { "cycle_stopped",
	    "🛑 Parada no meio do ciclo - etapas não executadas: %s",
	    "🛑 Stopped mid-cycle - steps not run: %s", "F",
	    { "skipped_steps" } },
	[EV_CLEAN] = { "clean", "✅ Sistema limpo - nenhum job órfão encontrado",
	    "✅ System clean - no orphan job found", "", { NULL } },
	[EV_CLEAN_FOLLOWER] = { "clean_follower",
	    "✅ Nenhum job órfão no cache - o banco é limpo por outra "
	    "instância",
	    "✅ No orphan job in the cache - another instance cleans the "
	    "database",
	    "", { NULL } },
	[EV_SUMMARY_HELD] = { "summary_held",
	    "⚠️ Limpeza executada: %s jobs processados, %s jobs vencidos "
	    "bloqueados no banco",
	    "⚠️ Cleanup done: %s jobs processed, %s stale jobs held in the "
	    "database",
	    "ll", { "count", "held" } },
	[EV_REPORT] = { "report",
	    "📊 Relatório (Ciclo %s): %s jobs ativos na API",
	    "📊 Report (Cycle %s): %s active jobs in the API", "ll",
	    { "cycle", "jobs_active" } },
	[EV_REPORT_NO_API] = { "report",
	    "📊 Relatório (Ciclo %s): %s jobs limpos desde o início",
	    "📊 Report (Cycle %s): %s jobs cleaned since start", "ll",
	    { "cycle", "reaped_total" } },
	[EV_REPORT_DB] = { "report",
	    "📊 Relatório (Ciclo %s): %s jobs ativos no banco",
	    "📊 Report (Cycle %s): %s active jobs in the database", "ll",
	    { "cycle", "jobs_active" } },
	[EV_ALERT_FAILED] = { "alert_failed", "⚠️ Alerta não entregue: %s",
	    "⚠️ Alert not delivered: %s", "s", { "detail" } },
	[EV_ALERTS_DROPPED] = { "alerts_dropped",
	    "⚠️ Parada: %s alertas não enviados descartados",
	    "⚠️ Stopping: %s unsent alerts dropped", "l", { "count" } },
	[EV_METRICS_ERROR] = { "metrics_error", "❌ Métricas indisponíveis: %s",
	    "❌ Metrics unavailable: %s", "s", { "detail" } },
};

/* A cycle's steps by bit: the name in pt, in en, and JSON's. */
static const struct {
	long bit;
	const char *pt, *en, *json;
} step_names[] = {
	{ STEP_CACHE, "cache", "cache", "cache" },
	{ STEP_STORE, "banco", "database", "store" },
	{ STEP_HEALTH, "API health", "API health", "health" },
	{ STEP_FORCE, "limpeza forçada", "forced cleanup", "force" },
};
#define NSTEPS (sizeof(step_names) / sizeof(step_names[0]))

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
log_banner_ttl(const struct config *cfg, char *buf, size_t len)
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
log_reap_message(
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

/* The alert thread logs too: one line at a time, and no reopen meanwhile. */
static pthread_mutex_t log_mu = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;

static const char *level_names[] = { "DEBUG", "INFO", "WARNING", "ERROR" };
static const char *level_json[] = { "debug", "info", "warning", "error" };
static const int level_syslog[] = { 7, 6, 4, 3 };

static struct {
	enum log_level min;
	enum log_format format;
	enum lang lang;
	char *path;
	int fd;
	int journal; /* standard error is the journal: add <N> prefixes */
	time_t last_open_fail; /* last time the failure was reported */
	time_t last_try; /* last attempt while it fails */
} lg = { LVL_INFO, LOGF_TEXT, LANG_PT, NULL, -1, 0, 0, 0 };

/* A Python-dict rendering, {'done': 45, 'error': 12}, as the seed logged. */
static void
put_pydict(char *buf, size_t len, size_t *o, json_t *obj)
{
	const char *key;
	json_t *v;
	int first = 1, n;

	n = snprintf(buf + *o, len - *o, "{");
	json_object_foreach (obj, key, v) {
		if (n >= 0 && (size_t)n < len - *o)
			*o += (size_t)n;
		/* A status word is the database's text: made valid as any. */
		n = snprintf(buf + *o, len - *o, "%s'", first ? "" : ", ");
		if (n >= 0 && (size_t)n < len - *o)
			*o += (size_t)n;
		text_put(buf, len, o, key);
		n = snprintf(buf + *o, len - *o, "': %lld",
		    (long long)json_integer_value(v));
		first = 0;
	}
	if (n >= 0 && (size_t)n < len - *o)
		*o += (size_t)n;
	n = snprintf(buf + *o, len - *o, "}");
	if (n >= 0 && (size_t)n < len - *o)
		*o += (size_t)n;
}

/* The names of the steps whose bits are set, comma-separated. */
static void
put_steps(char *buf, size_t len, size_t *o, long bits, enum lang lang)
{
	size_t i;
	int n;

	for (i = 0; i < NSTEPS; i++) {
		if (!(bits & step_names[i].bit))
			continue;
		n = snprintf(buf + *o, len - *o, "%s%s",
		    (bits & (step_names[i].bit - 1)) ? ", " : "",
		    lang == LANG_PT ? step_names[i].pt : step_names[i].en);
		if (n >= 0 && (size_t)n < len - *o)
			*o += (size_t)n;
	}
}

static json_t *
steps_json(long bits)
{
	json_t *a = json_array();
	size_t i;

	if (a == NULL)
		fatalx_oom();
	for (i = 0; i < NSTEPS; i++)
		if ((bits & step_names[i].bit) &&
		    json_array_append_new(a, json_string(step_names[i].json)) ==
			-1)
			fatalx_oom();
	return a;
}

/* An event's arguments, read once from the va_list. */
union log_arg {
	const char *s;
	long l;
	json_t *j;
};

/*
 * The JSON object {ts, level, event, msg, args...} of one line, its texts
 * cut at cap bytes each.
 */
static char *
json_dump_line(enum log_level level, const struct log_def *d, double when,
    const char *msg, const union log_arg *arg, size_t cap)
{
	time_t secs = (time_t)when;
	char ts[40], *dump;
	struct tm tm;
	json_t *obj, *v;
	int i;

	gmtime_r(&secs, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(ts + strlen(ts), sizeof(ts) - strlen(ts), ".%03dZ",
	    (int)((when - (double)secs) * 1000) % 1000);
	obj = json_pack("{s:s, s:s, s:s, s:o}", "ts", ts, "level",
	    level_json[level], "event", d->name, "msg",
	    text_json_cut(msg, cap));
	if (obj == NULL)
		fatalx_oom();
	for (i = 0; i < 8 && d->types[i] != '\0'; i++) {
		switch (d->types[i]) {
		case 's':
			v = text_json_cut(arg[i].s, cap);
			break;
		case 'l':
			v = json_integer(arg[i].l);
			break;
		case 'F':
			v = steps_json(arg[i].l);
			break;
		default:
			/* a job's own value: shown only while there is room */
			v = cap >= 1024 ? json_deep_copy(arg[i].j)
					: json_string("...");
		}
		if (v == NULL)
			fatalx_oom();
		json_object_set_new(obj, d->keys[i], v);
	}
	dump = json_dumps(
	    obj, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
	json_decref(obj);
	if (dump == NULL)
		fatalx_oom();
	return dump;
}

/*
 * One JSON line into buf, always a whole JSON object: when it does not
 * fit, its texts are cut shorter (between characters) until it does, so
 * a reader never meets half an object.
 */
static int
json_line(char *buf, size_t len, enum log_level level, const struct log_def *d,
    double when, const char *msg, va_list ap)
{
	union log_arg arg[8] = { { NULL } };
	size_t cap;
	char *dump;
	int i;

	for (i = 0; i < 8 && d->types[i] != '\0'; i++)
		switch (d->types[i]) {
		case 's':
			arg[i].s = va_arg(ap, const char *);
			break;
		case 'l':
		case 'F':
			arg[i].l = va_arg(ap, long);
			break;
		default:
			arg[i].j = va_arg(ap, json_t *);
		}
	for (cap = len;; cap /= 2) {
		dump = json_dump_line(level, d, when, msg, arg, cap);
		if (strlen(dump) < len || cap < 16)
			break;
		free(dump);
	}
	if (strlen(dump) >= len) {
		free(dump);
		buf[0] = '\0';
		return -1;
	}
	memcpy(buf, dump, strlen(dump) + 1);
	free(dump);
	return 0;
}

/*
 * Formats one line (without its newline) into buf. Split from log_event()
 * so the unit tests can check every format without files or clocks.
 */
int
log_format_line(char *buf, size_t len, enum log_level level, enum log_event ev,
    enum log_format format, enum lang lang, double when, va_list ap)
{
	const struct log_def *d = &defs[ev];
	const char *fmt = lang == LANG_PT ? d->pt : d->en, *s;
	size_t o = 0;
	time_t secs = (time_t)when;
	struct tm tm;
	int i = 0;

	if (len < 64)
		return -1;
	if (format == LOGF_JSON) {
		char msg[2048];
		va_list ap2;

		va_copy(ap2, ap);
		log_format_line(
		    msg, sizeof(msg), level, ev, LOGF_TEXT, LANG_EN, -1, ap2);
		va_end(ap2);
		return json_line(buf, len, level, d, when, msg, ap);
	}

	/* when < 0: the message alone, used for the JSON "msg" field. */
	if (when >= 0) {
		localtime_r(&secs, &tm);
		o = strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm);
		o += (size_t)snprintf(
		    buf + o, len - o, " - %s - ", level_names[level]);
	}
	for (; *fmt != '\0' && o + 1 < len; fmt++) {
		if (fmt[0] == '%' && fmt[1] == 's' && d->types[i] != '\0') {
			char num[32];

			switch (d->types[i++]) {
			case 's':
				s = va_arg(ap, const char *);
				text_put(buf, len, &o, s != NULL ? s : "");
				break;
			case 'l':
				snprintf(
				    num, sizeof(num), "%ld", va_arg(ap, long));
				text_put(buf, len, &o, num);
				break;
			case 'F':
				put_steps(buf, len, &o, va_arg(ap, long), lang);
				break;
			default:
				put_pydict(buf, len, &o, va_arg(ap, json_t *));
			}
			fmt++;
			continue;
		}
		buf[o++] = *fmt;
	}
	buf[o] = '\0';
	text_trim(buf, &o);
	return 0;
}

static int
mkdir_parents(const char *path)
{
	char dir[4096], *p;

	if (snprintf(dir, sizeof(dir), "%s", path) >= (int)sizeof(dir))
		return -1;
	p = strrchr(dir, '/');
	if (p == NULL || p == dir)
		return 0;
	*p = '\0';
	for (p = dir + 1; *p != '\0'; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(dir, 0755) == -1 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	if (mkdir(dir, 0755) == -1 && errno != EEXIST)
		return -1;
	return 0;
}

/* Opens the log file, creating its directory; a failure is said once a minute.
 */
static void
log_open_file(void)
{
	time_t t = time(NULL);
	int fd;

	if (lg.path == NULL || *lg.path == '\0')
		return;
	lg.last_try = t;
	if (mkdir_parents(lg.path) == 0)
		fd = open(
		    lg.path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	else
		fd = -1;
	if (fd == -1) {
		if (t - lg.last_open_fail >= 60) {
			dprintf(STDERR_FILENO,
			    "%slimpeza: cannot open log file %s: %s; logging "
			    "to "
			    "standard error only\n",
			    lg.journal ? "<3>" : "", lg.path, strerror(errno));
			lg.last_open_fail = t;
		}
		return;
	}
	if (lg.fd != -1)
		close(lg.fd);
	lg.fd = fd;
	lg.last_open_fail = 0;
}

/* True when standard error is the journal (systemd sets JOURNAL_STREAM). */
static int
stderr_is_journal(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;
	char *end;

	if (js == NULL)
		return 0;
	dev = strtoull(js, &end, 10);
	if (end == js || *end != ':')
		return 0;
	ino = strtoull(end + 1, &end, 10);
	if (*end != '\0')
		return 0;
	if (fstat(STDERR_FILENO, &st) == -1)
		return 0;
	return (unsigned long long)st.st_dev == dev &&
	    (unsigned long long)st.st_ino == ino;
}

void
log_stderr_only(enum log_level min, enum log_format format, enum lang lang)
{
	pthread_mutex_lock(&log_mu);
	log_close();
	lg.min = min;
	lg.format = format;
	lg.lang = lang;
	lg.journal = stderr_is_journal();
	pthread_mutex_unlock(&log_mu);
}

/* Applies the log settings of cfg; on reload the file is reopened. */
int
log_setup(const struct config *cfg)
{
	char *path = NULL;

	if (cfg->log_file != NULL && *cfg->log_file != '\0') {
		path = strdup(cfg->log_file);
		if (path == NULL)
			fatalx_oom();
	}
	pthread_mutex_lock(&log_mu);
	log_stderr_only((enum log_level)cfg->log_level,
	    (enum log_format)cfg->log_format, (enum lang)cfg->lang);
	lg.path = path;
	log_open_file();
	pthread_mutex_unlock(&log_mu);
	return 0;
}

void
log_reopen(void)
{
	pthread_mutex_lock(&log_mu);
	log_open_file();
	pthread_mutex_unlock(&log_mu);
}

void
log_close(void)
{
	pthread_mutex_lock(&log_mu);
	if (lg.fd != -1)
		close(lg.fd);
	lg.fd = -1;
	free(lg.path);
	lg.path = NULL;
	pthread_mutex_unlock(&log_mu);
}

/* Reopens the file when logrotate moved it away without a SIGHUP. */
static void
log_check_rotated(void)
{
	struct stat a, b;

	if (lg.path == NULL)
		return;
	/* A file that could not be opened is tried again every few seconds. */
	if (lg.fd == -1) {
		if (time(NULL) - lg.last_try >= 5)
			log_open_file();
		return;
	}
	if (stat(lg.path, &a) == -1 || fstat(lg.fd, &b) == -1 ||
	    a.st_ino != b.st_ino || a.st_dev != b.st_dev)
		log_open_file();
}

static void
write_all(int fd, const char *buf, size_t len)
{
	ssize_t n;

	while (len > 0) {
		n = write(fd, buf, len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		buf += n;
		len -= (size_t)n;
	}
}

void
log_event(enum log_level level, enum log_event ev, ...)
{
	char line[8192], prefix[8] = "";
	struct timespec ts;
	va_list ap;
	size_t n;

	if (level < lg.min)
		return;
	pthread_mutex_lock(&log_mu);
	clock_gettime(CLOCK_REALTIME, &ts);
	va_start(ap, ev);
	log_format_line(line, sizeof(line) - 1, level, ev, lg.format, lg.lang,
	    (double)ts.tv_sec + (double)ts.tv_nsec / 1e9, ap);
	va_end(ap);
	n = strlen(line);
	line[n++] = '\n';

	log_check_rotated();
	if (lg.fd != -1)
		write_all(lg.fd, line, n);
	if (lg.journal) {
		snprintf(prefix, sizeof(prefix), "<%d>", level_syslog[level]);
		write_all(STDERR_FILENO, prefix, strlen(prefix));
	}
	write_all(STDERR_FILENO, line, n);
	pthread_mutex_unlock(&log_mu);
}

void
fatal(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	dprintf(STDERR_FILENO, "%slimpeza: %s\n", lg.journal ? "<2>" : "", buf);
	if (lg.fd != -1)
		dprintf(lg.fd, "limpeza: %s\n", buf);
	exit(1);
}

void
fatalx_oom(void)
{
	fatal("out of memory");
}
