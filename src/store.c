/* store.c: picks the store driver from DATABASE_URL; shared helpers. */

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

const char *
store_kind(const struct config *cfg)
{
	const char *u = cfg->database_url;

	if (u == NULL || *u == '\0')
		return "none";
	if (strncmp(u, "sqlite:", 7) == 0)
		return "sqlite";
	return "postgresql";
}

/* A handle for the configured store (not yet connected), or NULL if none. */
struct store *
store_open(const struct config *cfg)
{
	const struct store_ops *ops = NULL;
	struct store *s;

	if (strcmp(store_kind(cfg), "sqlite") == 0)
		ops = &store_sqlite_ops;
	else if (strcmp(store_kind(cfg), "postgresql") == 0)
		ops = &store_pg_ops;
	if (ops == NULL)
		return NULL;
	s = ops->open(cfg);
	if (s == NULL)
		fatalx_oom();
	s->ops = ops;
	s->cfg = cfg;
	return s;
}

void
store_close(struct store *s)
{
	if (s != NULL)
		s->ops->close(s);
}

void
store_err(struct store *s, const char *fmt, ...)
{
	va_list ap;
	char whole[2048], *nl;

	va_start(ap, fmt);
	vsnprintf(whole, sizeof(whole), fmt, ap);
	va_end(ap);
	/* Driver messages may span lines; a log line must not. */
	while ((nl = strpbrk(whole, "\r\n\t")) != NULL)
		*nl = ' ';
	/*
	 * A driver's text may be in any encoding, and a long one is cut: made
	 * valid UTF-8 and cut between characters, it can go into any log line
	 * or alert.
	 */
	text_clean(s->err, sizeof(s->err), whole);
	for (nl = s->err + strlen(s->err); nl > s->err && nl[-1] == ' '; nl--)
		nl[-1] = '\0';
}

/*
 * Quotes a [schema.]table whose parts config.c has already checked to be
 * plain identifiers, so quoting only guards against reserved words.
 */
int
store_quote_table(const char *table, char *buf, size_t len)
{
	const char *dot = strchr(table, '.');
	int n;

	if (dot == NULL)
		n = snprintf(buf, len, "\"%s\"", table);
	else
		n = snprintf(buf, len, "\"%.*s\".\"%s\"", (int)(dot - table),
		    table, dot + 1);
	return n < 0 || (size_t)n >= len ? -1 : 0;
}

/* Adds one active status's row count and oldest age to the statistics. */
void
stats_add_active(const struct config *cfg, struct store_stats *st,
    const char *status, long count, double oldest_s)
{
	st->active += count;
	if (oldest_s > st->oldest_s)
		st->oldest_s = oldest_s;
	if (status != NULL && strcmp(status, cfg->running_status) == 0)
		st->oldest_running_s = oldest_s;
	else if (status != NULL && strcmp(status, cfg->queued_status) == 0)
		st->oldest_queued_s = oldest_s;
}

/*
 * `limpeza check`'s line about the active rows with neither an updated
 * nor a created time, which are never reaped (SPEC §1.2).
 */
void
store_check_ageless(const struct config *cfg, FILE *out, long n)
{
	if (n == 0)
		fprintf(out,
		    "ok: every %s or %s row has %s or %s (none is "
		    "ageless)\n",
		    cfg->running_status, cfg->queued_status,
		    cfg->updated_column, cfg->created_column);
	else
		fprintf(out,
		    "warning: %ld %s or %s rows have neither %s nor %s: "
		    "they have no age and are never reaped\n",
		    n, cfg->running_status, cfg->queued_status,
		    cfg->updated_column, cfg->created_column);
}
