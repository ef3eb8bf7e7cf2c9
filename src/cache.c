/* cache.c: the cache-file reaper: flock, decide, rewrite atomically. */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "limpeza.h"

#define CACHE_TRIES 5
#define LOCK_WAIT_MS 2000
#define CACHE_MAX_BYTES (2LL * 1024 * 1024 * 1024)

/*
 * What the reaper remembers between passes: when it first saw each active
 * job that carries no usable timestamp, keyed "status\nid", in monotonic
 * milliseconds. Only jobs present in the last pass are kept, so the map
 * never grows beyond the file. A restart forgets it, which only gives
 * such jobs more time.
 */
struct cache {
	json_t *seen;
	/*
	 * The file as the last full pass left it, and when its first active
	 * job falls due: until then, an unchanged file is not even read.
	 */
	int known;
	struct stat last;
	long long next_due; /* monotonic ms; LLONG_MAX: no active job */
	long active;
	double oldest_since; /* wall clock start of the oldest active job */
};

struct cache *
cache_new(void)
{
	struct cache *c = calloc(1, sizeof(*c));

	if (c == NULL || (c->seen = json_object()) == NULL)
		fatalx_oom();
	return c;
}

/* Forgets the file, so the next pass reads it (new settings, new TTLs). */
void
cache_invalidate(struct cache *c)
{
	c->known = 0;
}

/*
 * When the first active job in the file falls due, in monotonic ms
 * (LLONG_MAX if none, or if the file is not known yet).
 */
long long
cache_next_due(const struct cache *c)
{
	return c->known ? c->next_due : LLONG_MAX;
}

void
cache_free(struct cache *c)
{
	if (c == NULL)
		return;
	json_decref(c->seen);
	free(c);
}

static long long
days_from_civil(long long y, unsigned m, unsigned d)
{
	long long era;
	unsigned yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = (unsigned)(y - era * 400);
	doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (long long)doe - 719468;
}

static int
digits(const char **p, int n, int *out)
{
	int v = 0;

	while (n-- > 0) {
		if (**p < '0' || **p > '9')
			return -1;
		v = v * 10 + (*(*p)++ - '0');
	}
	*out = v;
	return 0;
}

/*
 * ISO-8601 as Python's isoformat() and most APIs write it:
 * YYYY-MM-DD[(T| )HH:MM[:SS[.fff]]][Z|+HH:MM|+HHMM|+HH]. A time without
 * a zone is UTC, as the API writes utcnow().
 */
int
cache_parse_iso8601(const char *s, double *out)
{
	static const int mdays[] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30,
		31 };
	int y, mo, d, h = 0, mi = 0, sec = 0, zh = 0, zm = 0, sign = 0;
	double frac = 0, scale = 0.1;
	const char *p = s;

	if (digits(&p, 4, &y) == -1 || *p++ != '-' ||
	    digits(&p, 2, &mo) == -1 || *p++ != '-' || digits(&p, 2, &d) == -1)
		return -1;
	if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1])
		return -1;
	if (*p == 'T' || *p == 't' || *p == ' ') {
		p++;
		if (digits(&p, 2, &h) == -1 || *p++ != ':' ||
		    digits(&p, 2, &mi) == -1)
			return -1;
		if (*p == ':') {
			p++;
			if (digits(&p, 2, &sec) == -1)
				return -1;
			if (*p == '.' || *p == ',') {
				p++;
				if (*p < '0' || *p > '9')
					return -1;
				for (; *p >= '0' && *p <= '9'; p++) {
					frac += (*p - '0') * scale;
					scale /= 10;
				}
			}
		}
		if (h > 23 || mi > 59 || sec > 60)
			return -1;
		if (*p == 'Z' || *p == 'z')
			p++;
		else if (*p == '+' || *p == '-') {
			sign = *p++ == '-' ? -1 : 1;
			if (digits(&p, 2, &zh) == -1)
				return -1;
			if (*p == ':')
				p++;
			if (*p != '\0' && digits(&p, 2, &zm) == -1)
				return -1;
			if (zh > 23 || zm > 59)
				return -1;
		}
	}
	if (*p != '\0')
		return -1;
	*out =
	    (double)(days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400LL +
		h * 3600LL + mi * 60LL + sec -
		sign * (zh * 3600LL + zm * 60LL)) +
	    frac;
	return 0;
}

/*
 * A job's time field: epoch seconds (int or float) or an ISO-8601 string.
 * Zero, negative and absurd values count as missing: the old cleaner read
 * a missing time as 1970 and killed every new job (SPEC §8.1).
 */
int
cache_parse_time(const json_t *v, double *out)
{
	double t;
	char *end;

	if (json_is_integer(v))
		t = (double)json_integer_value(v);
	else if (json_is_real(v))
		t = json_real_value(v);
	else if (json_is_string(v)) {
		const char *s = json_string_value(v);

		if (cache_parse_iso8601(s, &t) == -1) {
			t = strtod(s, &end);
			if (end == s || *end != '\0')
				return -1;
		}
	} else
		return -1;
	if (!isfinite(t) || t <= 0 || t > 1e11)
		return -1;
	*out = t;
	return 0;
}

/*
 * Decides one job's fate. now is the host clock (the clock that wrote
 * the times); first_age is how long this job has been seen in its status,
 * used when it has no usable time. A job is reaped only when it is
 * strictly older than its TTL.
 */
enum cache_fate
cache_decide(const json_t *job, const struct cache_policy *p, double now,
    double first_age, double *age)
{
	const char *status;
	int running, queued;
	double t;

	*age = 0;
	if (!json_is_object(job))
		return p->force && p->force_all ? FATE_FORCED : FATE_KEEP;
	status = json_string_value(json_object_get(job, "status"));
	running = status != NULL && strcmp(status, p->running) == 0;
	queued = status != NULL && strcmp(status, p->queued) == 0;
	if (!running && !queued)
		return p->force && p->force_all ? FATE_FORCED : FATE_KEEP;

	if (cache_parse_time(json_object_get(job, "start_time"), &t) == 0 ||
	    (queued &&
		cache_parse_time(json_object_get(job, "created_at"), &t) == 0))
		*age = now - t;
	else
		*age = first_age;

	if (p->force)
		return p->force_min_age > 0 && *age < p->force_min_age
		    ? FATE_KEEP
		    : FATE_FORCED;
	if (running && *age > p->running_ttl)
		return FATE_RUNNING;
	if (queued && *age > p->queued_ttl)
		return FATE_QUEUED;
	return FATE_KEEP;
}

/*
 * The validating scanner. It accepts exactly the JSON that jansson's
 * json_loadb(JSON_ALLOW_NUL) accepts (the fuzz target fuzz_cache checks
 * this against jansson itself) in one pass over the bytes, without
 * building a tree: the file may be tens of MB and only a few fields of
 * each job decide its fate. It records each top-level member's key and
 * value spans and, in job objects, the spans of the deciding fields.
 */
#define MAX_DEPTH 2048 /* jansson's JSON_PARSER_MAX_DEPTH */
#define S_ESCAPE 1
#define S_NUL 2

enum field { F_STATUS, F_START, F_CREATED, NFIELDS };
static const char *const field_keys[NFIELDS] = { "\"status\"", "\"start_time\"",
	"\"created_at\"" };
static const char *const field_names[NFIELDS] = { "status", "start_time",
	"created_at" };

/* Where the deciding fields of the job being scanned are, in the window. */
struct fields {
	size_t fs[NFIELDS], fe[NFIELDS]; /* fe == 0: absent */
};

/*
 * A top-level member, as byte spans of the file. What its fate depends on
 * is taken while its bytes are in the window: the decoded key, and for a
 * job that may be active its deciding fields (and in mark mode the whole
 * job, which is then re-serialised).
 */
struct member {
	off_t ks, ke, vs, ve;
	int superseded; /* a later member has the same key */
	enum cache_fate fate;
	double age;
	json_t *job; /* the deciding fields only */
	json_t *full; /* the whole job, if it may be marked */
	size_t id, idlen; /* the decoded key, in scan.ids */
};

struct scan {
	struct member *m;
	size_t n, cap;
	char *ids;
	size_t ids_len, ids_cap;
};

/*
 * The file is scanned through one small window, a slice at a time, and
 * the kept jobs are copied to the new file from the old one by the
 * kernel: a 50 MB cache costs no 50 MB of fresh memory (faulting it in
 * was half of the pass on a virtual machine) and no copy through it.
 */
struct window {
	int fd;
	char *buf;
	size_t len, cap;
	off_t base; /* the file offset of buf[0] */
	int eof;
};

struct scanner {
	const unsigned char *b;
	size_t len, i;
	const char *err;
	size_t err_at;
};

static int
fail(struct scanner *z, size_t at, const char *msg)
{
	if (z->err == NULL) {
		z->err = msg;
		z->err_at = at;
	}
	return -1;
}

static void
skip_ws(struct scanner *z)
{
	while (z->i < z->len &&
	    (z->b[z->i] == ' ' || z->b[z->i] == '\t' || z->b[z->i] == '\n' ||
		z->b[z->i] == '\r'))
		z->i++;
}

/* The length of a valid UTF-8 sequence at p, 0 if invalid (as jansson). */
static size_t
utf8_seq(const unsigned char *p, size_t left)
{
	unsigned int v;
	size_t n, k;

	if (p[0] >= 0xc2 && p[0] <= 0xdf) {
		n = 2;
		v = p[0] & 0x1f;
	} else if (p[0] >= 0xe0 && p[0] <= 0xef) {
		n = 3;
		v = p[0] & 0x0f;
	} else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
		n = 4;
		v = p[0] & 0x07;
	} else
		return 0;
	if (left < n)
		return 0;
	for (k = 1; k < n; k++) {
		if ((p[k] & 0xc0) != 0x80)
			return 0;
		v = (v << 6) | (p[k] & 0x3f);
	}
	if (v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff) ||
	    (n == 3 && v < 0x800) || (n == 4 && v < 0x10000))
		return 0;
	return n;
}

static int
hex4(const unsigned char *p, size_t left, unsigned int *v)
{
	size_t k;

	if (left < 4)
		return -1;
	*v = 0;
	for (k = 0; k < 4; k++) {
		unsigned char c = p[k];

		*v <<= 4;
		if (c >= '0' && c <= '9')
			*v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			*v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			*v |= c - 'A' + 10;
		else
			return -1;
	}
	return 0;
}

/* Bytes a string may hold that need no further look: most of them. */
static unsigned char plain[256];

static void
plain_init(void)
{
	int c;

	if (plain['a'])
		return;
	for (c = 0x20; c < 0x80; c++)
		plain[c] = c != '"' && c != '\\';
}

/*
 * Skips plain string bytes from i. Most of a cache file is short ASCII
 * strings (the result lists), so this looks at sixteen bytes at a time
 * with SSE2, then eight with plain integers: the lowest flagged byte of
 * the word is the first one that is a quote, a backslash, a control
 * character or not ASCII (the borrows that make the tests inexact only
 * reach bytes above it).
 */
static size_t
plain_run(const unsigned char *b, size_t i, size_t len)
{
#if defined(__SSE2__)
	/* Signed bytes: 0x80 and up are negative, so "below 0x20" too. */
	const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\');
	const __m128i space = _mm_set1_epi8(0x20);
	__m128i w;
	int hits;

	while (len - i >= 16) {
		w = _mm_loadu_si128((const __m128i *)(const void *)(b + i));
		hits = _mm_movemask_epi8(
		    _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(w, quote),
				     _mm_cmpeq_epi8(w, bslash)),
			_mm_cmplt_epi8(w, space)));
		if (hits != 0)
			return i + (size_t)__builtin_ctz((unsigned int)hits);
		i += 16;
	}
#endif
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	const uint64_t ones = 0x0101010101010101ULL;
	const uint64_t highs = 0x8080808080808080ULL;
	uint64_t v, q, bs, hit;

	while (len - i >= 8) {
		memcpy(&v, b + i, 8);
		q = v ^ (ones * '"');
		bs = v ^ (ones * '\\');
		hit = (((v - ones * 0x20) & ~v) | ((q - ones) & ~q) |
			  ((bs - ones) & ~bs) | v) &
		    highs;
		if (hit != 0)
			return i + (size_t)(__builtin_ctzll(hit) / 8);
		i += 8;
	}
#endif
	while (i < len && plain[b[i]])
		i++;
	return i;
}

/* A string at z->i (on its quote); flags gets S_ESCAPE and S_NUL. */
static int
scan_string(struct scanner *z, int *flags)
{
	const unsigned char *b = z->b;
	size_t i = z->i + 1, len = z->len, n;
	unsigned int u, u2;

	*flags = 0;
	for (;;) {
		i = plain_run(b, i, len);
		if (i >= len)
			return fail(z, i, "premature end of input");
		if (b[i] == '"')
			break;
		if (b[i] < 0x20)
			return fail(z, i, "control character in a string");
		if (b[i] >= 0x80) {
			if ((n = utf8_seq(b + i, len - i)) == 0)
				return fail(z, i, "invalid UTF-8");
			i += n;
			continue;
		}
		*flags |= S_ESCAPE;
		if (++i >= len)
			return fail(z, i, "premature end of input");
		if (b[i] != 'u') {
			if (strchr("\"\\/bfnrt", b[i]) == NULL || b[i] == '\0')
				return fail(z, i, "invalid escape");
			i++;
			continue;
		}
		if (hex4(b + i + 1, len - i - 1, &u) == -1)
			return fail(z, i, "invalid escape");
		i += 5;
		if (u >= 0xd800 && u <= 0xdbff) {
			if (len - i < 6 || b[i] != '\\' || b[i + 1] != 'u' ||
			    hex4(b + i + 2, len - i - 2, &u2) == -1 ||
			    u2 < 0xdc00 || u2 > 0xdfff)
				return fail(z, i, "invalid Unicode surrogate");
			i += 6;
		} else if (u >= 0xdc00 && u <= 0xdfff)
			return fail(z, i, "invalid Unicode surrogate");
		else if (u == 0)
			*flags |= S_NUL;
	}
	z->i = i + 1;
	return 0;
}

/*
 * jansson reads past one NUL byte right after a number or a literal
 * (ungetting a NUL loses it), so "[1\0]" is valid JSON to it, and so to
 * us. The NUL is not part of the value's span.
 */
static void
skip_quirk_nul(struct scanner *z)
{
	if (z->i < z->len && z->b[z->i] == '\0')
		z->i++;
}

static size_t
value_end(const struct scanner *z)
{
	return z->i > 0 && z->b[z->i - 1] == '\0' ? z->i - 1 : z->i;
}

/* A number, with jansson's grammar and its overflow errors. */
static int
scan_number(struct scanner *z)
{
	const unsigned char *b = z->b;
	size_t i = z->i, len = z->len, start = z->i, ndigits;
	int real = 0, expo = 0;
	char small[64], *text;

	if (i < len && b[i] == '-')
		i++;
	if (i < len && b[i] == '0') {
		i++;
		if (i < len && b[i] >= '0' && b[i] <= '9')
			return fail(z, i, "invalid number");
	} else if (i < len && b[i] >= '1' && b[i] <= '9') {
		while (i < len && b[i] >= '0' && b[i] <= '9')
			i++;
	} else
		return fail(z, i, "invalid number");
	ndigits = i - start - (b[start] == '-');
	if (i < len && b[i] == '.') {
		real = 1;
		if (++i >= len || b[i] < '0' || b[i] > '9')
			return fail(z, i, "invalid number");
		while (i < len && b[i] >= '0' && b[i] <= '9')
			i++;
	}
	if (i < len && (b[i] == 'e' || b[i] == 'E')) {
		real = expo = 1;
		i++;
		if (i < len && (b[i] == '+' || b[i] == '-'))
			i++;
		if (i >= len || b[i] < '0' || b[i] > '9')
			return fail(z, i, "invalid number");
		while (i < len && b[i] >= '0' && b[i] <= '9')
			i++;
	}
	z->i = i;
	/*
	 * Only a long integer or a real with an exponent or hundreds of
	 * digits can overflow; the rest need no conversion at all.
	 */
	if ((!real && ndigits <= 18) || (real && !expo && ndigits < 300)) {
		skip_quirk_nul(z);
		return 0;
	}
	/* Short numbers are the rule; only long ones need a heap copy. */
	text = i - start < sizeof(small) ? small : malloc(i - start + 1);
	if (text == NULL)
		fatalx_oom();
	memcpy(text, b + start, i - start);
	text[i - start] = '\0';
	errno = 0;
	if (!real) {
		(void)strtoll(text, NULL, 10);
		if (errno == ERANGE)
			fail(z, start, "too big integer");
	} else {
		double d = strtod(text, NULL);

		if (errno == ERANGE && (d == HUGE_VAL || d == -HUGE_VAL))
			fail(z, start, "real number overflow");
	}
	if (text != small)
		free(text);
	skip_quirk_nul(z);
	return z->err != NULL ? -1 : 0;
}

static int scan_value(struct scanner *, int, struct fields *);

/* Does the key at [ks, ke) name field f? Escaped keys are decoded. */
static int
key_is(struct scanner *z, size_t ks, size_t ke, int flags, const char *want)
{
	json_t *k;
	int r;

	if (!(flags & S_ESCAPE))
		return ke - ks == strlen(want) &&
		    memcmp(z->b + ks, want, ke - ks) == 0;
	k = json_loadb((const char *)z->b + ks, ke - ks, JSON_DECODE_ANY, NULL);
	r = k != NULL && json_string_length(k) == strlen(want) - 2 &&
	    memcmp(json_string_value(k), want + 1, strlen(want) - 2) == 0;
	json_decref(k);
	return r;
}

/*
 * An object or array at z->i whose values sit at depth. A job object
 * (job != NULL) also gets the spans of its deciding fields: the last
 * occurrence of each, as jansson keeps the last of duplicate keys.
 */
static int
scan_container(struct scanner *z, int depth, struct fields *job)
{
	unsigned char close = z->b[z->i] == '{' ? '}' : ']';
	size_t ks, ke, vs;
	int flags, f;

	z->i++;
	skip_ws(z);
	if (z->i < z->len && z->b[z->i] == close) {
		z->i++;
		return 0;
	}
	for (;;) {
		if (close == '}') {
			if (z->i >= z->len || z->b[z->i] != '"')
				return fail(z, z->i, "string or '}' expected");
			ks = z->i;
			if (scan_string(z, &flags) == -1)
				return -1;
			ke = z->i;
			if (flags & S_NUL)
				return fail(z, ks,
				    "NUL byte in object key not supported");
			skip_ws(z);
			if (z->i >= z->len || z->b[z->i] != ':')
				return fail(z, z->i, "':' expected");
			z->i++;
			skip_ws(z);
			vs = z->i;
			if (scan_value(z, depth, NULL) == -1)
				return -1;
			for (f = 0; job != NULL && f < NFIELDS; f++)
				if (key_is(z, ks, ke, flags, field_keys[f])) {
					job->fs[f] = vs;
					job->fe[f] = value_end(z);
				}
		} else if (scan_value(z, depth, NULL) == -1)
			return -1;
		skip_ws(z);
		if (z->i < z->len && z->b[z->i] == ',') {
			z->i++;
			skip_ws(z);
			continue;
		}
		if (z->i < z->len && z->b[z->i] == close) {
			z->i++;
			return 0;
		}
		return fail(z, z->i,
		    close == '}' ? "',' or '}' expected"
				 : "',' or ']' expected");
	}
}

static int
scan_value(struct scanner *z, int depth, struct fields *job)
{
	const unsigned char *b = z->b;
	size_t start = z->i;
	int flags;

	if (depth > MAX_DEPTH)
		return fail(z, z->i, "maximum parsing depth reached");
	if (z->i >= z->len)
		return fail(z, z->i, "premature end of input");
	switch (b[z->i]) {
	case '{':
	case '[':
		return scan_container(
		    z, depth + 1, b[z->i] == '{' ? job : NULL);
	case '"':
		return scan_string(z, &flags);
	case '-':
	case '0':
	case '1':
	case '2':
	case '3':
	case '4':
	case '5':
	case '6':
	case '7':
	case '8':
	case '9':
		return scan_number(z);
	default:
		while (z->i < z->len &&
		    ((b[z->i] >= 'a' && b[z->i] <= 'z') ||
			(b[z->i] >= 'A' && b[z->i] <= 'Z')))
			z->i++;
		if ((z->i - start == 4 &&
			(memcmp(b + start, "true", 4) == 0 ||
			    memcmp(b + start, "null", 4) == 0)) ||
		    (z->i - start == 5 && memcmp(b + start, "false", 5) == 0)) {
			skip_quirk_nul(z);
			return 0;
		}
		return fail(z, start, "invalid token");
	}
}

#define HUGE_PAGE (2UL * 1024 * 1024)

/* The mapping size for n bytes: whole huge pages once that is worth it. */
static size_t
big_size(size_t n)
{
	size_t unit = n >= HUGE_PAGE ? HUGE_PAGE : 4096;

	return n == 0 ? unit : (n + unit - 1) / unit * unit;
}

/*
 * The large arrays of a pass (the file, its members, the output pieces)
 * live in anonymous mappings that ask for huge pages: a 50 MB cache is
 * then a few dozen page faults and TLB entries, not tens of thousands,
 * which a virtual machine makes dear. Grows old, of oldn bytes, to n
 * bytes, or maps n new ones; new memory comes zeroed.
 */
static void *
big_alloc(void *old, size_t oldn, size_t n)
{
	void *p;

	if (old == NULL)
		p = mmap(NULL, big_size(n), PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	else
		p = mremap(old, big_size(oldn), big_size(n), MREMAP_MAYMOVE);
	if (p == MAP_FAILED)
		fatalx_oom();
	if (big_size(n) >= HUGE_PAGE)
		(void)madvise(p, big_size(n), MADV_HUGEPAGE);
	return p;
}

static void
big_free(void *p, size_t n)
{
	if (p != NULL)
		munmap(p, big_size(n));
}

static struct member *
scan_add(struct scan *s)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 64;

		s->m = big_alloc(
		    s->m, s->cap * sizeof(*s->m), cap * sizeof(*s->m));
		s->cap = cap;
	}
	return &s->m[s->n++];
}

#define WINDOW_BYTES ((size_t)1024 * 1024)

static size_t window_bytes = WINDOW_BYTES;

/* For tests: the window's first size, to cut jobs anywhere (0: default). */
void
cache_set_window(size_t n)
{
	window_bytes = n > 0 ? n : WINDOW_BYTES;
}

/*
 * Drops the first keep bytes of the window and reads on; when nothing
 * can be dropped the window grows (a job larger than the window). The
 * scanner follows: its position moves back by keep.
 */
static int
window_fill(struct window *w, struct scanner *z, size_t keep)
{
	ssize_t n;

	if (keep > 0) {
		memmove(w->buf, w->buf + keep, w->len - keep);
		w->len -= keep;
		w->base += (off_t)keep;
	}
	if (w->len == w->cap) {
		if ((long long)w->cap > CACHE_MAX_BYTES) {
			errno = EFBIG;
			return -1;
		}
		w->buf = big_alloc(w->buf, w->cap, w->cap * 2);
		w->cap *= 2;
	}
	do
		n = read(w->fd, w->buf + w->len, w->cap - w->len);
	while (n == -1 && errno == EINTR);
	if (n == -1)
		return -1;
	if (n == 0)
		w->eof = 1;
	w->len += (size_t)n;
	z->b = (const unsigned char *)w->buf;
	z->len = w->len;
	z->i -= keep;
	return 0;
}

/*
 * One member of the top-level object and the ',' or '}' after it, with
 * spans relative to the window. Returns 0 if more follow, 1 after the
 * last, 2 for an empty object, -1 on an error.
 */
static int
scan_member(struct scanner *z, int first, struct member *m, struct fields *f,
    int *key_flags)
{
	size_t ks;

	skip_ws(z);
	if (first && z->i < z->len && z->b[z->i] == '}') {
		z->i++;
		return 2;
	}
	if (z->i >= z->len || z->b[z->i] != '"')
		return fail(z, z->i, "string or '}' expected");
	ks = z->i;
	if (scan_string(z, key_flags) == -1)
		return -1;
	if (*key_flags & S_NUL)
		return fail(z, ks, "NUL byte in object key not supported");
	m->ks = (off_t)ks;
	m->ke = (off_t)z->i;
	skip_ws(z);
	if (z->i >= z->len || z->b[z->i] != ':')
		return fail(z, z->i, "':' expected");
	z->i++;
	skip_ws(z);
	m->vs = (off_t)z->i;
	memset(f, 0, sizeof(*f));
	if (scan_value(z, 2, f) == -1)
		return -1;
	m->ve = (off_t)value_end(z);
	skip_ws(z);
	if (z->i < z->len && z->b[z->i] == ',') {
		z->i++;
		return 0;
	}
	if (z->i < z->len && z->b[z->i] == '}') {
		z->i++;
		return 1;
	}
	return fail(z, z->i, "',' or '}' expected");
}

/* Could this job's status be running or queued? Escaped: assume so. */
static int
maybe_active(const char *b, const struct fields *f, const struct config *cfg)
{
	size_t n = f->fe[F_STATUS] - f->fs[F_STATUS];
	const char *v = b + f->fs[F_STATUS];

	if (f->fe[F_STATUS] == 0 || v[0] != '"')
		return 0;
	if (memchr(v, '\\', n) != NULL)
		return 1;
	return (n == strlen(cfg->running_status) + 2 &&
		   memcmp(v + 1, cfg->running_status, n - 2) == 0) ||
	    (n == strlen(cfg->queued_status) + 2 &&
		memcmp(v + 1, cfg->queued_status, n - 2) == 0);
}

/*
 * Takes what decides a member's fate while its bytes are in the window:
 * its decoded key, and the deciding fields of a job that may be active
 * (only those are parsed; most jobs are done).
 */
static void
capture(struct scan *s, struct member *m, const struct scanner *z,
    const struct fields *f, int key_flags, const struct config *cfg)
{
	const char *b = (const char *)z->b, *id = b + m->ks + 1;
	size_t idlen = (size_t)(m->ke - m->ks) - 2, cap;
	json_t *key = NULL, *v;
	int k;

	if (key_flags & S_ESCAPE) {
		key = json_loadb(
		    b + m->ks, (size_t)(m->ke - m->ks), JSON_DECODE_ANY, NULL);
		if (key == NULL)
			fatalx_oom();
		id = json_string_value(key);
		idlen = json_string_length(key);
	}
	if (s->ids == NULL || s->ids_len + idlen > s->ids_cap) {
		cap = s->ids_cap ? s->ids_cap : 65536;
		while (cap < s->ids_len + idlen)
			cap *= 2;
		s->ids = big_alloc(s->ids, s->ids_cap, cap);
		s->ids_cap = cap;
	}
	memcpy(s->ids + s->ids_len, id, idlen);
	m->id = s->ids_len;
	m->idlen = idlen;
	s->ids_len += idlen;
	json_decref(key);

	if (b[m->vs] != '{' || !maybe_active(b, f, cfg))
		return;
	if ((m->job = json_object()) == NULL)
		fatalx_oom();
	for (k = 0; k < NFIELDS; k++) {
		if (f->fe[k] == 0)
			continue;
		v = json_loadb(b + f->fs[k], f->fe[k] - f->fs[k],
		    JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
		if (v == NULL)
			fatalx_oom();
		json_object_set_new(m->job, field_names[k], v);
	}
	/* Marking re-serialises the job: keep all of it. */
	if (cfg->cache_action == CACHE_MARK &&
	    (m->full = json_loadb(b + m->vs, (size_t)(m->ve - m->vs),
		 JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL)) == NULL)
		fatalx_oom();
}

/*
 * Scans the file through the window. Returns 0 with the members in out
 * for an object, 1 for valid JSON that is not an object, -1 with err and
 * err_at (a file offset) for what jansson would refuse, -2 with errno on
 * a read error. With cfg, each member's deciding fields are captured.
 */
static int
scan_window(struct window *w, struct scan *out, const struct config *cfg,
    const char **err, off_t *err_at)
{
	struct scanner z = { (const unsigned char *)w->buf, w->len, 0, NULL,
		0 };
	struct member tmp, *m;
	struct fields f;
	size_t mark;
	int r, flags, first = 1, rc = -1, is_object;

	plain_init();
	for (;;) {
		skip_ws(&z);
		if (z.i < z.len || w->eof)
			break;
		if (window_fill(w, &z, z.i) == -1)
			return -2;
	}
	if (z.i >= z.len || (z.b[z.i] != '{' && z.b[z.i] != '[')) {
		fail(&z, z.i, "'[' or '{' expected");
		goto done;
	}
	is_object = z.b[z.i] == '{';
	if (!is_object) {
		/* Not a job cache: only whether it is valid matters. */
		while (!w->eof)
			if (window_fill(w, &z, 0) == -1)
				return -2;
		if (scan_value(&z, 1, NULL) == -1)
			goto done;
	} else {
		z.i++;
		for (;;) {
			mark = z.i;
			memset(&tmp, 0, sizeof(tmp));
			r = scan_member(&z, first, &tmp, &f, &flags);
			if (r == -1 && !w->eof) {
				/* Cut by the window's end, maybe: read on. */
				z.err = NULL;
				z.i = mark;
				if (window_fill(w, &z, mark) == -1)
					return -2;
				continue;
			}
			if (r == -1)
				goto done;
			first = 0;
			if (r == 2)
				break;
			m = scan_add(out);
			*m = tmp;
			if (cfg != NULL)
				capture(out, m, &z, &f, flags, cfg);
			m->ks += w->base;
			m->ke += w->base;
			m->vs += w->base;
			m->ve += w->base;
			if (r == 1)
				break;
		}
	}
	for (;;) {
		skip_ws(&z);
		if (z.i < z.len) {
			fail(&z, z.i, "end of file expected");
			goto done;
		}
		if (w->eof)
			break;
		if (window_fill(w, &z, z.i) == -1)
			return -2;
	}
	rc = is_object ? 0 : 1;
done:
	*err = z.err;
	*err_at = w->base + (off_t)z.err_at;
	return rc;
}

/* Line and column of a file offset, for the log: counted from the start. */
static void
position_of(int fd, off_t at, char *buf, size_t cap, long *line, long *col)
{
	off_t off = 0, bol = 0;
	ssize_t n, i;

	*line = 1;
	while (off < at) {
		n = pread(fd, buf,
		    (size_t)(at - off) < cap ? (size_t)(at - off) : cap, off);
		if (n <= 0)
			break;
		for (i = 0; i < n; i++)
			if (buf[i] == '\n') {
				(*line)++;
				bol = off + i + 1;
			}
		off += n;
	}
	*col = (long)(at - bol + 1);
}

/* Takes the exclusive lock, waiting a bounded time for a cooperating writer. */
static int
lock_file(int fd)
{
	struct timespec pause = { 0, 10L * 1000 * 1000 };
	long long deadline = now_monotonic_ms() + LOCK_WAIT_MS;

	while (flock(fd, LOCK_EX | LOCK_NB) == -1) {
		if (errno != EWOULDBLOCK && errno != EINTR)
			return -1;
		if (now_monotonic_ms() > deadline) {
			errno = EWOULDBLOCK;
			return -1;
		}
		nanosleep(&pause, NULL);
	}
	return 0;
}

static int
same_version(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino &&
	    a->st_size == b->st_size &&
	    a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
	    a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/*
 * True if the file changes within a moment: a parse error then means the
 * API was caught writing, not a broken file.
 */
static int
settling(int fd, const struct stat *was)
{
	struct timespec pause = { 0, 20L * 1000 * 1000 };
	struct stat now;

	/* Only a file written within the last second can be mid-write. */
	if (now_realtime() - (double)was->st_mtim.tv_sec > 1.0)
		return 0;
	nanosleep(&pause, NULL);
	return fstat(fd, &now) == 0 && !same_version(was, &now);
}

/*
 * A file written within the current clock tick can be written again
 * without its mtime moving (file times are coarse), and then the check
 * before the rename would not see the change: let it age one tick. The
 * kernel's clock, not the daemon's, wrote the mtime.
 */
#define FRESH_NS (20L * 1000 * 1000)

static int
fresh_wait(int fd, struct stat *st)
{
	struct timespec now, pause = { 0, FRESH_NS };
	long long age;

	clock_gettime(CLOCK_REALTIME, &now);
	age = (long long)(now.tv_sec - st->st_mtim.tv_sec) * 1000000000LL +
	    (now.tv_nsec - st->st_mtim.tv_nsec);
	if (age < 0 || age >= FRESH_NS)
		return 0;
	nanosleep(&pause, NULL);
	return fstat(fd, st);
}

/* Is the job (its deciding fields) running or queued? */
static int
is_active(const struct config *cfg, const json_t *job)
{
	const char *st = json_string_value(json_object_get(job, "status"));

	return st != NULL &&
	    (strcmp(st, cfg->running_status) == 0 ||
		strcmp(st, cfg->queued_status) == 0);
}

/*
 * The new file as a list of pieces: ranges of the old file, each a run
 * of kept jobs with the bytes between them, and bytes in memory (the
 * separators, marked jobs re-serialised).
 */
struct piece {
	const char *mem; /* NULL: the range [off, off + len) of the old file */
	off_t off;
	size_t len;
};

struct output {
	struct piece *p;
	size_t n, cap;
	char **dumps;
	size_t ndumps;
};

static void
out_add(struct output *o, const char *mem, off_t off, size_t len)
{
	if (o->n == o->cap) {
		o->cap = o->cap ? o->cap * 2 : 64;
		o->p = realloc(o->p, o->cap * sizeof(*o->p));
		if (o->p == NULL)
			fatalx_oom();
	}
	o->p[o->n].mem = mem;
	o->p[o->n].off = off;
	o->p[o->n].len = len;
	o->n++;
}

static void
output_free(struct output *o)
{
	size_t i;

	for (i = 0; i < o->ndumps; i++)
		free(o->dumps[i]);
	free(o->dumps);
	free(o->p);
	memset(o, 0, sizeof(*o));
}

static void
build_output(struct scan *s, const struct config *cfg, struct output *o)
{
	char msg[256];
	off_t run = -1, run_end = 0;
	size_t i, kept = 0;

	memset(o, 0, sizeof(*o));
	o->dumps = calloc(s->n + 1, sizeof(*o->dumps));
	if (o->dumps == NULL)
		fatalx_oom();
	out_add(o, "{", 0, 1);
	for (i = 0; i < s->n; i++) {
		struct member *m = &s->m[i];

		if (!m->superseded && m->fate == FATE_KEEP) {
			if (run == -1) {
				if (kept++ > 0)
					out_add(o, ", ", 0, 2);
				run = m->ks;
			}
			run_end = m->ve;
			continue;
		}
		if (run != -1)
			out_add(o, NULL, run, (size_t)(run_end - run));
		run = -1;
		/* Marking keeps active jobs as errors; the rest go. */
		if (m->superseded || m->fate == FATE_KEEP ||
		    cfg->cache_action != CACHE_MARK || m->full == NULL ||
		    !is_active(cfg, m->job))
			continue;
		config_reap_message(cfg,
		    m->fate == FATE_RUNNING	 ? REAP_RUNNING
			: m->fate == FATE_QUEUED ? REAP_QUEUED
						 : REAP_FORCED,
		    msg, sizeof(msg));
		json_object_set_new(
		    m->full, "status", json_string(cfg->error_status));
		json_object_set_new(m->full, "error", json_string(msg));
		o->dumps[o->ndumps] = json_dumps(m->full,
		    JSON_ENSURE_ASCII | JSON_PRESERVE_ORDER |
			JSON_REAL_PRECISION(17));
		if (o->dumps[o->ndumps] == NULL)
			fatalx_oom();
		if (kept++ > 0)
			out_add(o, ", ", 0, 2);
		out_add(o, NULL, m->ks, (size_t)(m->ke - m->ks));
		out_add(o, ": ", 0, 2);
		out_add(o, o->dumps[o->ndumps], 0, strlen(o->dumps[o->ndumps]));
		o->ndumps++;
	}
	if (run != -1)
		out_add(o, NULL, run, (size_t)(run_end - run));
	out_add(o, "}", 0, 1);
}

/* Where copy_file_range() cannot: n bytes at *off of in through buf. */
static ssize_t
copy_through(int in, off_t *off, int fd, char *buf, size_t n)
{
	ssize_t got, w;
	size_t done = 0;

	if ((got = pread(in, buf, n, *off)) <= 0)
		return got;
	while (done < (size_t)got) {
		w = write(fd, buf + done, (size_t)got - done);
		if (w == -1 && errno == EINTR)
			continue;
		if (w == -1)
			return -1;
		done += (size_t)w;
	}
	*off += got;
	return got;
}

/*
 * Writes the pieces to fd, the old file's ranges by copy_file_range():
 * the kernel copies them page to page, nothing passes through limpeza.
 * Write-back of each few MB is started as soon as they are written, so
 * the disk works while the rest is copied and the final fsync() has
 * little left to wait for. Returns 1 if the old file (in) is shorter
 * than it was: it changed.
 */
#define FLUSH_CHUNK (4L * 1024 * 1024)

static int
write_output(int fd, int in, const struct output *o, char *buf, size_t cap)
{
	off_t done = 0, flushed = 0, off;
	size_t i, left, n;
	ssize_t w;
	int kernel = 1;

	for (i = 0; i < o->n; i++) {
		const struct piece *p = &o->p[i];

		off = p->off;
		for (left = p->len; left > 0;) {
			n = left < FLUSH_CHUNK ? left : FLUSH_CHUNK;
			if (p->mem != NULL)
				w = write(fd, p->mem + (p->len - left), n);
			else if (kernel) {
				w = copy_file_range(in, &off, fd, NULL, n, 0);
				if (w == -1 &&
				    (errno == EXDEV || errno == EINVAL ||
					errno == ENOSYS ||
					errno == EOPNOTSUPP)) {
					kernel = 0;
					continue;
				}
			} else
				w = copy_through(
				    in, &off, fd, buf, n < cap ? n : cap);
			if (w == -1 && errno == EINTR)
				continue;
			if (w == -1)
				return -1;
			if (w == 0 && p->mem == NULL)
				return 1;
			if (w == 0) {
				errno = EIO;
				return -1;
			}
			left -= (size_t)w;
			done += w;
			if (done - flushed >= FLUSH_CHUNK) {
				/* Only a hint: fsync() decides durability. */
				(void)sync_file_range(fd, flushed,
				    done - flushed, SYNC_FILE_RANGE_WRITE);
				flushed = done;
			}
		}
	}
	return 0;
}

/*
 * Writes data next to path and renames it over path, keeping mode and
 * owner, unless the file (open as oldfd) changed since `was` was taken:
 * then the file in place is the writer's and 1 is returned so the caller
 * reads the new version. buf is scratch space.
 */
static int
replace_file(const char *path, int oldfd, const struct stat *was,
    const struct output *data, char *buf, size_t cap, char *err, size_t errlen)
{
	char tmp[4096], dir[4096], *slash;
	const char *base;
	struct stat now;
	int fd = -1, dfd, r;

	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (slash == NULL) {
		strcpy(dir, ".");
		base = path;
	} else {
		base = path + (slash - dir) + 1;
		if (slash == dir)
			slash[1] = '\0';
		else
			*slash = '\0';
	}
	if (snprintf(tmp, sizeof(tmp), "%s/.%s.limpeza-XXXXXX", dir, base) >=
	    (int)sizeof(tmp)) {
		snprintf(err, errlen, "path too long");
		return -1;
	}
	fd = mkstemp(tmp);
	if (fd == -1) {
		snprintf(err, errlen,
		    "cannot create a temporary file in %.200s: %s", dir,
		    strerror(errno));
		return -1;
	}
	if (fchmod(fd, was->st_mode & 07777) == -1) {
		snprintf(
		    err, errlen, "cannot keep the mode: %s", strerror(errno));
		goto fail;
	}
	/* The API must still be able to open the file for writing. */
	if ((was->st_uid != geteuid() || was->st_gid != getegid()) &&
	    fchown(fd, was->st_uid, was->st_gid) == -1) {
		snprintf(err, errlen,
		    "cannot keep the owner %u:%u (%s); run limpeza as the "
		    "file's owner",
		    (unsigned)was->st_uid, (unsigned)was->st_gid,
		    strerror(errno));
		goto fail;
	}
	if ((r = write_output(fd, oldfd, data, buf, cap)) == 1) {
		close(fd);
		unlink(tmp);
		return 1;
	}
	if (r == -1 || fsync(fd) == -1) {
		snprintf(err, errlen, "cannot write the new file: %s",
		    strerror(errno));
		goto fail;
	}
	if (close(fd) == -1) {
		fd = -1;
		snprintf(err, errlen, "cannot write the new file: %s",
		    strerror(errno));
		goto fail;
	}
	fd = -1;
	if (lstat(path, &now) == -1 || !same_version(was, &now)) {
		unlink(tmp);
		return 1;
	}
	/*
	 * The API writes without a lock. Swapping the names (not a plain
	 * rename) keeps the old file at tmp, so a writer that opened it
	 * after the check above can be noticed: its version goes back in
	 * place and the pass is retried. What is left is a window of two
	 * system calls in which a second writer would have to open the file.
	 */
	if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_EXCHANGE) == 0) {
		if (fstat(oldfd, &now) == 0 && same_version(was, &now)) {
			unlink(tmp);
		} else {
			if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path,
				RENAME_EXCHANGE) == 0)
				unlink(tmp);
			return 1;
		}
	} else if ((errno != EINVAL && errno != ENOSYS) ||
	    rename(tmp, path) == -1) {
		snprintf(err, errlen, "cannot replace the file: %s",
		    strerror(errno));
		goto fail;
	}
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd != -1) {
		fsync(dfd);
		close(dfd);
	}
	return 0;
fail:
	if (fd != -1)
		close(fd);
	unlink(tmp);
	return -1;
}

/*
 * Removes temporary files that a limpeza killed mid-rewrite left next to
 * the cache file. Called with the lock held: every limpeza writes its
 * temporary file only while it holds the lock, so any such file now is a
 * leftover.
 */
static void
remove_leftovers(const char *path)
{
	char dir[4096], prefix[512], full[4608];
	const char *base, *slash = strrchr(path, '/');
	struct dirent *de;
	DIR *d;

	if (slash == NULL) {
		snprintf(dir, sizeof(dir), ".");
		base = path;
	} else {
		snprintf(dir, sizeof(dir), "%.*s",
		    slash == path ? 1 : (int)(slash - path), path);
		base = slash + 1;
	}
	snprintf(prefix, sizeof(prefix), ".%s.limpeza-", base);
	if ((d = opendir(dir)) == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		if (strncmp(de->d_name, prefix, strlen(prefix)) != 0 ||
		    strlen(de->d_name) != strlen(prefix) + 6)
			continue;
		snprintf(full, sizeof(full), "%s/%s", dir, de->d_name);
		if (unlink(full) == 0)
			log_event(LVL_INFO, EV_CACHE_LEFTOVER, full);
	}
	closedir(d);
}

static void
log_reaped(const struct scan *s, const struct config *cfg, int dry_run,
    struct cache_result *res)
{
	size_t i;

	for (i = 0; i < s->n; i++) {
		const struct member *m = &s->m[i];
		char *id;

		if (m->fate == FATE_KEEP)
			continue;
		if ((id = strndup(s->ids + m->id, m->idlen)) == NULL)
			fatalx_oom();
		switch (m->fate) {
		case FATE_RUNNING:
			log_event(LVL_INFO,
			    dry_run ? EV_CACHE_WOULD_ORPHAN : EV_CACHE_ORPHAN,
			    id, (long)m->age);
			res->reaped_running++;
			break;
		case FATE_QUEUED:
			log_event(LVL_INFO,
			    dry_run ? EV_CACHE_WOULD_QUEUED : EV_CACHE_QUEUED,
			    id);
			res->reaped_queued++;
			break;
		case FATE_FORCED: {
			const char *st = json_string_value(
			    json_object_get(m->job, "status"));

			log_event(LVL_INFO,
			    dry_run ? EV_CACHE_WOULD_FORCE : EV_CACHE_FORCED,
			    id);
			res->forced++;
			if (st != NULL && strcmp(st, cfg->running_status) == 0)
				res->forced_running++;
			else if (st != NULL &&
			    strcmp(st, cfg->queued_status) == 0)
				res->forced_queued++;
			break;
		}
		case FATE_KEEP:
			break;
		}
		free(id);
	}
	if (res->reaped_running + res->reaped_queued > 0)
		log_event(LVL_INFO,
		    dry_run				  ? EV_CACHE_WOULD_CLEAN
			: cfg->cache_action == CACHE_MARK ? EV_CACHE_MARKED
							  : EV_CACHE_CLEANED,
		    res->reaped_running + res->reaped_queued);
}

/* FNV-1a: the keys are job ids, short and already spread out. */
static size_t
id_hash(const char *p, size_t n)
{
	uint64_t h = 14695981039346656037ULL;

	while (n-- > 0)
		h = (h ^ (unsigned char)*p++) * 1099511628211ULL;
	return (size_t)h;
}

/*
 * Marks the members whose key a later member repeats: jansson (and
 * Python) keep only the last. The table holds member indices, so a file
 * of 20,000 jobs costs one allocation, not 20,000.
 */
static void
find_superseded(struct scan *s)
{
	size_t i, h, mask, size = 16, *slot;

	while (size < s->n * 2)
		size *= 2;
	mask = size - 1;
	if ((slot = malloc(size * sizeof(*slot))) == NULL)
		fatalx_oom();
	memset(slot, 0xff, size * sizeof(*slot));
	for (i = 0; i < s->n; i++) {
		struct member *m = &s->m[i];
		const char *id = s->ids + m->id;

		for (h = id_hash(id, m->idlen) & mask; slot[h] != SIZE_MAX;
		     h = (h + 1) & mask) {
			struct member *o = &s->m[slot[h]];

			if (o->idlen == m->idlen &&
			    memcmp(s->ids + o->id, id, m->idlen) == 0) {
				o->superseded = 1;
				break;
			}
		}
		slot[h] = i;
	}
	free(slot);
}

/*
 * Decides every member and notes first sightings. Only possibly active
 * jobs carry their deciding fields; the rest are done (or not jobs).
 */
static void
decide_all(struct cache *c, const struct config *cfg, int force, struct scan *s,
    json_t *seen)
{
	struct cache_policy pol = {
		.running_ttl = (double)cfg->running_ttl / MS_PER_S,
		.queued_ttl = (double)cfg->queued_ttl / MS_PER_S,
		.force = force,
		.force_all = cfg->force_cache == FORCE_ALL,
		.force_min_age = (double)cfg->force_min_age / MS_PER_S,
		.running = cfg->running_status,
		.queued = cfg->queued_status,
	};
	double now = now_realtime();
	long long mono = now_monotonic_ms();
	json_t *first;
	size_t i;

	find_superseded(s);
	for (i = 0; i < s->n; i++) {
		struct member *m = &s->m[i];
		const char *status;
		double first_age = 0;

		if (m->superseded)
			continue;
		if (m->job == NULL) {
			m->fate = cache_decide(NULL, &pol, now, 0, &m->age);
			continue;
		}
		status = json_string_value(json_object_get(m->job, "status"));
		if (status != NULL &&
		    (strcmp(status, pol.running) == 0 ||
			strcmp(status, pol.queued) == 0)) {
			size_t sl = strlen(status), skl = sl + 1 + m->idlen;
			char *sk = malloc(skl);

			if (sk == NULL)
				fatalx_oom();
			memcpy(sk, status, sl);
			sk[sl] = '\n';
			memcpy(sk + sl + 1, s->ids + m->id, m->idlen);
			first = json_object_getn(c->seen, sk, skl);
			if (first != NULL) {
				first_age =
				    (double)(mono - json_integer_value(first)) /
				    MS_PER_S;
				json_object_setn_nocheck(seen, sk, skl, first);
			} else
				json_object_setn_new_nocheck(
				    seen, sk, skl, json_integer(mono));
			free(sk);
		}
		m->fate = cache_decide(m->job, &pol, now, first_age, &m->age);
	}
}

static void
scan_free(struct scan *s)
{
	size_t i;

	for (i = 0; i < s->n; i++) {
		json_decref(s->m[i].job);
		json_decref(s->m[i].full);
	}
	big_free(s->m, s->cap * sizeof(*s->m));
	big_free(s->ids, s->ids_cap);
	memset(s, 0, sizeof(*s));
}

/*
 * The members of the JSON object in the file open as fd (read from its
 * current offset through a window of `window` bytes at first), as file
 * offsets of each key (quotes included) and value; -1 if it is not a
 * valid JSON object.
 */
int
cache_members(int fd, size_t window,
    int (*cb)(void *, size_t, size_t, size_t, size_t), void *arg)
{
	struct window w = { fd, NULL, 0, window ? window : WINDOW_BYTES, 0, 0 };
	struct scan s = { NULL, 0, 0, NULL, 0, 0 };
	const char *err;
	off_t at;
	size_t i;
	int rc = -1;

	w.buf = big_alloc(NULL, 0, w.cap);
	if (scan_window(&w, &s, NULL, &err, &at) == 0) {
		rc = 0;
		for (i = 0; i < s.n && rc == 0; i++)
			if (cb(arg, (size_t)s.m[i].ks, (size_t)s.m[i].ke,
				(size_t)s.m[i].vs, (size_t)s.m[i].ve) != 0)
				rc = -1;
	}
	scan_free(&s);
	big_free(w.buf, w.cap);
	return rc;
}

/*
 * One pass over the file. Returns 0 when done (whether or not anything
 * changed), 1 when the file changed underneath and the pass must be
 * retried, -1 on an error that was logged.
 */
static int
cache_pass(struct cache *c, const struct config *cfg, int force, int dry_run,
    struct cache_result *res)
{
	const char *path = cfg->cache_file;
	struct stat st, pst;
	struct scan s = { NULL, 0, 0, NULL, 0, 0 };
	struct output out = { NULL, 0, 0, NULL, 0 };
	struct window w = { -1, NULL, 0, 0, 0, 0 };
	json_t *seen = NULL;
	const char *why;
	char err[512];
	size_t i;
	off_t at;
	long long next_due, due;
	int fd, rc = -1, r, changes = 0, kind;

	fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd == -1) {
		if (errno == ENOENT) {
			log_event(LVL_DEBUG, EV_CACHE_MISSING, path);
			return 0;
		}
		log_event(LVL_ERROR, EV_CACHE_ERROR, path,
		    errno == ELOOP ? "is a symbolic link; it is not followed "
				     "or replaced"
				   : strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
		log_event(LVL_ERROR, EV_CACHE_ERROR, path,
		    "not a regular file; left alone");
		goto done;
	}
	if (lock_file(fd) == -1) {
		log_event(LVL_ERROR, EV_CACHE_ERROR, path,
		    errno == EWOULDBLOCK
			? "locked by another process for more than 2 s"
			: strerror(errno));
		goto done;
	}
	/* The lock is only worth something if path still names this file. */
	if (lstat(path, &pst) == -1 || pst.st_ino != st.st_ino ||
	    pst.st_dev != st.st_dev) {
		rc = 1;
		goto done;
	}
	if (!dry_run)
		remove_leftovers(path);
	if (fstat(fd, &st) == -1 || fresh_wait(fd, &st) == -1) {
		log_event(LVL_ERROR, EV_CACHE_ERROR, path, strerror(errno));
		goto done;
	}
	w.fd = fd;
	w.cap = window_bytes;
	w.buf = big_alloc(NULL, 0, w.cap);
	if ((kind = scan_window(&w, &s, cfg, &why, &at)) == -2) {
		log_event(LVL_ERROR, EV_CACHE_ERROR, path, strerror(errno));
		goto done;
	}
	if (kind == -1 && settling(fd, &st)) {
		/* Caught mid-write by the API: read it again shortly. */
		rc = 1;
		goto done;
	}
	if (kind == -1) {
		long line, col;

		position_of(fd, at, w.buf, w.cap, &line, &col);
		log_event(LVL_ERROR, EV_CACHE_INVALID, path, line, col,
		    w.eof && w.base + (off_t)w.len == 0 ? "empty file" : why);
		goto done;
	}
	if (kind == 1) {
		log_event(LVL_ERROR, EV_CACHE_NOT_OBJECT, path);
		goto done;
	}

	if ((seen = json_object()) == NULL)
		fatalx_oom();
	decide_all(c, cfg, force, &s, seen);
	res->active = 0;
	res->oldest_s = -1;
	next_due = LLONG_MAX;
	for (i = 0; i < s.n; i++) {
		const char *stt;
		double ttl;

		if (s.m[i].superseded)
			continue;
		if (s.m[i].fate != FATE_KEEP) {
			changes++;
			continue;
		}
		if (!is_active(cfg, s.m[i].job))
			continue;
		res->active++;
		if (s.m[i].age > res->oldest_s)
			res->oldest_s = s.m[i].age;
		stt = json_string_value(json_object_get(s.m[i].job, "status"));
		ttl = (double)(strcmp(stt, cfg->running_status) == 0
			      ? cfg->running_ttl
			      : cfg->queued_ttl) /
		    MS_PER_S;
		due = now_monotonic_ms() +
		    (long long)((ttl - s.m[i].age) * MS_PER_S);
		if (due < next_due)
			next_due = due;
	}

	if (changes > 0 && !dry_run) {
		build_output(&s, cfg, &out);
		r = replace_file(
		    path, fd, &st, &out, w.buf, w.cap, err, sizeof(err));
		if (r == 1) {
			rc = 1;
			goto done;
		}
		if (r == -1) {
			log_event(LVL_ERROR, EV_CACHE_ERROR, path, err);
			goto done;
		}
		res->rewritten = 1;
	}
	if (changes > 0)
		log_reaped(&s, cfg, dry_run, res);
	json_decref(c->seen);
	c->seen = seen;
	seen = NULL;
	c->known = !force && lstat(path, &c->last) == 0;
	c->next_due = next_due;
	c->active = res->active;
	c->oldest_since = now_realtime() - res->oldest_s;
	rc = 0;
done:
	json_decref(seen);
	scan_free(&s);
	output_free(&out);
	big_free(w.buf, w.cap);
	close(fd);
	return rc;
}

/*
 * Reaps the cache file: stale jobs (or, with force, active ones, and all
 * jobs when LIMPEZA_FORCE_CACHE=all). A file that changes while it is
 * being cleaned is read again, a few times at most.
 */
int
cache_reap(struct cache *c, const struct config *cfg, int force, int dry_run,
    struct cache_result *res)
{
	struct stat now;
	int try, r;

	memset(res, 0, sizeof(*res));
	res->oldest_s = -1;
	if (cfg->cache_file == NULL || *cfg->cache_file == '\0')
		return 0;
	/* Nothing changed and nothing is due: no need to read 50 MB. */
	if (!force && c->known && lstat(cfg->cache_file, &now) == 0 &&
	    same_version(&c->last, &now) && now_monotonic_ms() < c->next_due) {
		res->active = c->active;
		res->oldest_s =
		    c->active > 0 ? now_realtime() - c->oldest_since : -1;
		log_event(LVL_DEBUG, EV_CACHE_UNCHANGED, cfg->cache_file);
		return 0;
	}
	c->known = 0;
	for (try = 0; try < CACHE_TRIES; try++) {
		memset(res, 0, sizeof(*res));
		res->oldest_s = -1;
		r = cache_pass(c, cfg, force, dry_run, res);
		if (r != 1)
			return r;
		log_event(LVL_DEBUG, EV_CACHE_CHANGED, cfg->cache_file);
	}
	log_event(LVL_WARNING, EV_CACHE_GAVE_UP, cfg->cache_file);
	return 0;
}
