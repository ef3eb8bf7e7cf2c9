/* fuzz_cache.c: the cache pass against jansson and against SPEC §1.1. */

/*
 * Every input goes through cache_reap(), the whole pass, on a real file,
 * half of them in mark mode, most through small scan windows.
 *
 * - Refused: the file is left byte for byte. If jansson reads it as an
 *   object, only a difference of Python's excuses that: a NUL byte that
 *   jansson skips after a number, or nesting past Python's limit.
 * - Accepted while jansson refuses: jansson's error must be one of what
 *   Python reads and jansson does not (NaN, Infinity, -Infinity, numbers
 *   past jansson's limits, a lone surrogate, NUL in a key).
 * - Accepted: old and new file are split into members by a splitter of
 *   this file's own, and each member's fate is decided by reference(),
 *   SPEC §1.1 written out again on what jansson parsed: a kept member
 *   is in the new file with its bytes unchanged, in order; a reaped one
 *   is gone, or in mark mode there with status and error set and every
 *   other member byte for byte. Where the reference cannot decide (a
 *   time given as a string, a value only Python reads), either fate is
 *   accepted, but a kept member is still byte for byte.
 * - Accepted by both: jansson reads the new file as the old one minus
 *   (or with marks on) exactly the reaped jobs.
 */

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"
#include "jsonscan.h"

#define MAX_MEMBERS 4096

enum ref { REF_KEEP, REF_REAP, REF_UNSURE };

struct span {
	size_t ks, ke, vs, ve;
};

static size_t
ws(const char *t, size_t i, size_t n)
{
	while (i < n && strchr(" \t\r\n", t[i]) != NULL && t[i] != '\0')
		i++;
	return i;
}

static size_t
skip_string(const char *t, size_t i, size_t n)
{
	for (i++; i < n && t[i] != '"'; i++)
		if (t[i] == '\\')
			i++;
	return i + 1;
}

static size_t
skip_value(const char *t, size_t i, size_t n)
{
	int depth = 0;

	if (i < n && t[i] != '{' && t[i] != '[') {
		if (t[i] == '"')
			return skip_string(t, i, n);
		while (i < n && strchr(", \t\r\n}]", t[i]) == NULL)
			i++;
		return i;
	}
	while (i < n) {
		if (t[i] == '"') {
			i = skip_string(t, i, n);
			continue;
		}
		if (t[i] == '{' || t[i] == '[')
			depth++;
		else if ((t[i] == '}' || t[i] == ']') && --depth == 0)
			return i + 1;
		i++;
	}
	return n + 1;
}

/*
 * The members of the object in t as spans, by quotes and brackets alone
 * (t is JSON that was accepted). Returns their count, -1 if that fails,
 * -2 if there are too many to look at.
 */
static int
split(const char *t, size_t n, struct span *out)
{
	size_t i = ws(t, 0, n);
	int k = 0;

	if (i >= n || t[i] != '{')
		return -1;
	i = ws(t, i + 1, n);
	if (i < n && t[i] == '}')
		return 0;
	while (k < MAX_MEMBERS) {
		if (i >= n || t[i] != '"')
			return -1;
		out[k].ks = i;
		out[k].ke = i = skip_string(t, i, n);
		i = ws(t, i, n);
		if (i >= n || t[i] != ':')
			return -1;
		out[k].vs = i = ws(t, i + 1, n);
		out[k].ve = i = skip_value(t, i, n);
		if (i > n)
			return -1;
		k++;
		i = ws(t, i, n);
		if (i < n && t[i] == '}')
			return k;
		if (i >= n || t[i] != ',')
			return -1;
		i = ws(t, i + 1, n);
	}
	return -2;
}

static int
same(const char *a, const struct span *x, const char *b, const struct span *y)
{
	return x->ve - x->ks == y->ve - y->ks &&
	    memcmp(a + x->ks, b + y->ks, x->ve - x->ks) == 0;
}

static int
same_key(const char *a, const struct span *x, const char *b, const struct span *y)
{
	return x->ke - x->ks == y->ke - y->ks &&
	    memcmp(a + x->ks, b + y->ks, x->ke - x->ks) == 0;
}

/* A job time as SPEC §1.1 reads it: 1 usable, 0 not (before 2001-09-09,
 * an uptime rather than a date, counts as none), -1 a string. */
static int
usable(const json_t *v, double *t)
{
	if (json_is_string(v))
		return -1;
	if (json_is_integer(v))
		*t = (double)json_integer_value(v);
	else if (json_is_real(v))
		*t = json_real_value(v);
	else
		return 0;
	return isfinite(*t) && *t >= 1e9 && *t <= 1e11;
}

static int
is_word(const json_t *v, const char *w)
{
	return json_is_string(v) && json_string_length(v) == strlen(w) &&
	    memcmp(json_string_value(v), w, strlen(w)) == 0;
}

/*
 * SPEC §1.1 on a job jansson parsed: a running job older than 180 s by
 * its start_time, a queued one older than 120 s by its start_time, else
 * its created_at, is reaped; a job without a usable time is new to a
 * fresh reaper. Times given as strings (ISO-8601) are not judged here.
 */
static enum ref
reference(const json_t *job, int *queued)
{
	const json_t *status = json_object_get(job, "status");
	double t = 0;
	int u;

	*queued = 0;
	if (!json_is_object(job))
		return REF_KEEP;
	if (is_word(status, "queued"))
		*queued = 1;
	else if (!is_word(status, "running"))
		return REF_KEEP;
	u = usable(json_object_get(job, "start_time"), &t);
	if (u == 0 && *queued)
		u = usable(json_object_get(job, "created_at"), &t);
	if (u == -1)
		return REF_UNSURE;
	if (u == 0)
		return REF_KEEP;
	return fuzz_now - t > (*queued ? 120 : 180) ? REF_REAP : REF_KEEP;
}

static int
depth_of(json_t *v)
{
	const char *k;
	json_t *x;
	size_t i;
	int d = 0, e;

	if (json_is_object(v))
		json_object_foreach (v, k, x)
			if ((e = depth_of(x)) > d)
				d = e;
	if (json_is_array(v))
		json_array_foreach (v, i, x)
			if ((e = depth_of(x)) > d)
				d = e;
	return json_is_object(v) || json_is_array(v) ? d + 1 : 0;
}

/*
 * Does jansson refuse t for what only Python reads? Its nesting limit
 * (2048) is below Python 3.12's, which the scanner takes.
 */
static int
python_only(const char *t, size_t n, const json_error_t *e)
{
	static const char *const excuses[] = { "too big integer",
		"too big negative integer", "real number overflow",
		"invalid Unicode '\\uD", "NUL byte in object key",
		"maximum parsing depth reached" };
	size_t i;

	if (strcmp(e->text, "invalid token near 'NaN'") == 0 ||
	    strcmp(e->text, "invalid token near 'Infinity'") == 0)
		return 1;
	if (strcmp(e->text, "invalid token near '-'") == 0 && e->position > 0 &&
	    (size_t)e->position + 8 <= n &&
	    memcmp(t + e->position - 1, "-Infinity", 9) == 0)
		return 1;
	for (i = 0; i < sizeof(excuses) / sizeof(excuses[0]); i++)
		if (strncmp(e->text, excuses[i], strlen(excuses[i])) == 0)
			return 1;
	return 0;
}

/* Is the key of member x (in t) the word w, as jansson decodes it? */
static int
key_is(const char *t, const struct span *x, const char *w)
{
	json_t *k = json_loadb(t + x->ks, x->ke - x->ks,
	    JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
	int r = k != NULL && is_word(k, w);

	json_decref(k);
	return r;
}

static int
status_or_error(const char *t, const struct span *x)
{
	return key_is(t, x, "status") || key_is(t, x, "error");
}

/* A marked job: status and error set, the rest of it byte for byte. */
static void
check_marked(const char *in, const struct span *a, const char *out,
    const struct span *b, int queued)
{
	static struct span x[MAX_MEMBERS], y[MAX_MEMBERS];
	const char *u = in + a->vs, *v = out + b->vs;
	int nx, ny, i, j;
	json_t *job;

	nx = split(u, a->ve - a->vs, x);
	ny = split(v, b->ve - b->vs, y);
	if (nx < 0 || ny < 0)
		abort();
	/* the members other than status and error, in order */
	for (i = j = 0;; i++, j++) {
		while (i < nx && status_or_error(u, &x[i]))
			i++;
		while (j < ny && status_or_error(v, &y[j]))
			j++;
		if (i == nx || j == ny)
			break;
		if (!same(u, &x[i], v, &y[j]))
			abort();
	}
	if (i != nx || j != ny)
		abort();
	/* jansson reads the marks, where it reads the job at all */
	job = json_loadb(v, b->ve - b->vs, JSON_DECODE_ANY | JSON_ALLOW_NUL,
	    NULL);
	if (job != NULL &&
	    (!is_word(json_object_get(job, "status"), "error") ||
		!is_word(json_object_get(job, "error"),
		    queued ? "Job queued expirado - mais de 2 minutos"
			   : "Job órfão - mais de 3 minutos")))
		abort();
	json_decref(job);
}

/*
 * Member by member, for an accepted input: what is kept is there byte for
 * byte, what is reaped is gone or marked, and nothing else is there (a
 * file not rewritten is the old one: then nothing may be due in it).
 */
static void
check_members(const char *in, size_t n, const char *out, size_t outn,
    int mark, int rewritten)
{
	static struct span a[MAX_MEMBERS], b[MAX_MEMBERS];
	static json_t *keys[MAX_MEMBERS];
	int na, nb, i, j, k, last, queued;
	enum ref r;
	json_t *v;

	na = split(in, n, a);
	nb = split(out, outn, b);
	if (na == -2 || nb == -2)
		return;
	if (na < 0 || nb < 0)
		abort();
	/* keys as jansson decodes them; one it cannot: no judging by key */
	for (i = 0; i < na; i++)
		if ((keys[i] = json_loadb(in + a[i].ks, a[i].ke - a[i].ks,
			 JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL)) == NULL) {
			while (i-- > 0)
				json_decref(keys[i]);
			return;
		}
	for (i = j = 0; i < na; i++) {
		for (last = 1, k = i + 1; k < na && last; k++)
			last = !json_equal(keys[i], keys[k]);
		if (!last)
			continue; /* Python keeps only the last of a key */
		v = json_loadb(in + a[i].vs, a[i].ve - a[i].vs,
		    JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
		r = v != NULL ? reference(v, &queued) : REF_UNSURE;
		json_decref(v);
		if (!rewritten) { /* the file as it was: nothing was due */
			if (r == REF_REAP)
				abort();
			continue;
		}
		if (j < nb && same(in, &a[i], out, &b[j])) {
			if (r == REF_REAP)
				abort();
			j++;
			continue;
		}
		if (r == REF_KEEP)
			abort();
		if (mark && r == REF_REAP) {
			if (j >= nb || !same_key(in, &a[i], out, &b[j]))
				abort();
			check_marked(in, &a[i], out, &b[j], queued);
			j++;
		} else if (mark && j < nb && same_key(in, &a[i], out, &b[j]))
			j++; /* unsure, and marked */
	}
	if (rewritten && j != nb)
		abort();
	for (i = 0; i < na; i++)
		json_decref(keys[i]);
}

/* Accepted by both: jansson reads the new file as exactly the expected. */
static void
check_jansson(json_t *orig, const char *out, size_t outn, int mark)
{
	json_t *got, *want, *v, *m, *g;
	const char *key;
	int queued;
	enum ref r;

	got = json_loadb(out, outn, JSON_ALLOW_NUL, NULL);
	if (got == NULL || !json_is_object(got))
		abort();
	want = json_object();
	json_object_foreach (orig, key, v)
	{
		r = reference(v, &queued);
		g = json_object_get(got, key);
		if (r == REF_UNSURE) /* judged bytewise in check_members() */
			r = g != NULL && json_equal(g, v) ? REF_KEEP : REF_REAP;
		if (r == REF_KEEP) {
			json_object_set(want, key, v);
			continue;
		}
		if (!mark)
			continue;
		m = json_deep_copy(v);
		json_object_set_new(m, "status", json_string("error"));
		json_object_set_new(m, "error",
		    json_string(queued ? "Job queued expirado - mais de 2 minutos"
				       : "Job órfão - mais de 3 minutos"));
		json_object_set_new(want, key, m);
	}
	if (!json_equal(got, want))
		abort();
	json_decref(got);
	json_decref(want);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char path[64];
	struct timespec old[2] = { { 1000000000, 0 }, { 1000000000, 0 } };
	const char *in = (const char *)data;
	struct cache_result res;
	struct config cfg;
	struct cache *c;
	json_error_t e;
	json_t *orig;
	char *out;
	FILE *f;
	size_t n;
	int fd, rc, mark = size % 2;

	if (*path == '\0') {
		fuzz_quiet();
		setenv("TZ", "UTC", 1);
		snprintf(path, sizeof(path), "/tmp/limpeza-fuzz-XXXXXX");
		close(mkstemp(path));
	}
	fd = open(path, O_WRONLY | O_TRUNC);
	if (fd == -1 || write(fd, data, size) != (ssize_t)size)
		abort();
	futimens(fd, old); /* not caught mid-write: decide at once */
	close(fd);

	memset(&cfg, 0, sizeof(cfg));
	cfg.cache_file = path;
	cfg.running_ttl = 180000;
	cfg.queued_ttl = 120000;
	cfg.running_status = "running";
	cfg.queued_status = "queued";
	cfg.error_status = "error";
	cfg.lang = LANG_PT;
	cfg.cache_action = mark ? CACHE_MARK : CACHE_REMOVE;

	/* small windows cut the input anywhere; the default one does not */
	cache_set_window(size % 3 ? 1 + size % 29 : 0);
	c = cache_new();
	rc = cache_reap(c, &cfg, NULL, 0, 0, &res);
	cache_free(c);

	out = malloc(size * 2 + 65536);
	f = fopen(path, "rb");
	n = fread(out, 1, size * 2 + 65536, f);
	fclose(f);

	orig = json_loadb(in, size, JSON_ALLOW_NUL, &e);
	if (rc != 0) {
		/* refused: untouched, and only where Python refuses too */
		if (rc != -1 || n != size || memcmp(out, data, size) != 0)
			abort();
		if (orig != NULL && json_is_object(orig) &&
		    memchr(data, '\0', size) == NULL &&
		    depth_of(orig) <= JSONSCAN_MAX_DEPTH)
			abort();
		goto done;
	}
	if (orig == NULL && !python_only(in, size, &e))
		abort();
	if (orig != NULL && !json_is_object(orig))
		abort();
	if (!res.rewritten && (n != size || memcmp(out, data, size) != 0))
		abort();
	check_members(in, size, out, n, mark, res.rewritten);
	if (orig != NULL)
		check_jansson(orig, out, n, mark);
done:
	json_decref(orig);
	free(out);
	return 0;
}
