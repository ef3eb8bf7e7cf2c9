/* jsonscan.c: a validating scanner for Python's JSON and a member iterator. */

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "jsonscan.h"

#define MAX_WINDOW ((size_t)2 * 1024 * 1024 * 1024)
#define HUGE_PAGE ((size_t)2 * 1024 * 1024)
#define MAX_FIELD_LEN 64 /* a longer key is never one the caller names */

/*
 * The scanner works on the bytes in the window, b[0, len). When a check
 * needs a byte past len it "runs out": if the window does not end where
 * the file does, that is no error yet (more is set and the member is
 * scanned again once the window holds more); at the end of the file it
 * is one. Any other error is final at once, so a bad value early in a
 * large file costs one window, not the rest of the file.
 */
struct scanner {
	const unsigned char *b;
	size_t len, i;
	int eof;
	int more;
	const char *err;
	size_t err_at;
	const struct jsonscan *js;
	size_t flen[JSONSCAN_MAX_FIELDS];
	size_t member; /* where the member being scanned starts in b */
};

/* The file, one slice at a time: buf[0] is the file's byte at base. */
struct window {
	int fd;
	char *buf;
	size_t len, cap;
	off_t base;
	int eof;
	struct jsonscan_hash hash; /* of every byte read */
};

#define HASH_K 0x9e3779b97f4a7c15ULL

static uint64_t
rotl64(uint64_t x, int r)
{
	return (x << r) | (x >> (64 - r));
}

/*
 * 32 bytes at a time, a word to each of four lanes, each step a bijection
 * of the lane for a given word and of the word for a given lane: one word
 * changed always changes its lane, whatever comes after it. The lanes
 * run side by side, so the hash goes about as fast as memory.
 */
static void
hash_block(struct jsonscan_hash *hs, const unsigned char *p)
{
	uint64_t w[4];
	int i;

	memcpy(w, p, sizeof(w));
	for (i = 0; i < 4; i++)
		hs->h[i] = rotl64(hs->h[i] ^ w[i], 29 + 2 * i) * HASH_K;
}

void
jsonscan_hash_init(struct jsonscan_hash *hs)
{
	memset(hs, 0, sizeof(*hs));
	hs->h[0] = 0x243f6a8885a308d3ULL;
	hs->h[1] = 0x13198a2e03707344ULL;
	hs->h[2] = 0xa4093822299f31d0ULL;
	hs->h[3] = 0x082efa98ec4e6c89ULL;
}

void
jsonscan_hash_add(struct jsonscan_hash *hs, const void *mem, size_t n)
{
	const unsigned char *p = mem;
	size_t k;

	hs->len += n;
	if (hs->ntail > 0) {
		k = sizeof(hs->tail) - hs->ntail;
		if (k > n)
			k = n;
		memcpy(hs->tail + hs->ntail, p, k);
		hs->ntail += k;
		p += k;
		n -= k;
		if (hs->ntail < sizeof(hs->tail))
			return;
		hash_block(hs, hs->tail);
		hs->ntail = 0;
	}
	for (; n >= sizeof(hs->tail);
	     p += sizeof(hs->tail), n -= sizeof(hs->tail))
		hash_block(hs, p);
	memcpy(hs->tail, p, n);
	hs->ntail = n;
}

/* murmur3's finaliser. */
static uint64_t
fmix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

void
jsonscan_hash_end(struct jsonscan_hash *hs, uint64_t out[2])
{
	memset(hs->tail + hs->ntail, 0, sizeof(hs->tail) - hs->ntail);
	hash_block(hs, hs->tail);
	out[0] = fmix64(hs->h[0] ^ fmix64(hs->h[1] + hs->len));
	out[1] = fmix64(hs->h[2] ^ fmix64(hs->h[3] + out[0]));
}

static int scan_value(struct scanner *, int, struct jsonscan_field *);

static int
fail(struct scanner *z, size_t at, const char *msg)
{
	if (z->err == NULL) {
		z->err = msg;
		z->err_at = at;
	}
	return -1;
}

static int
ran_out(struct scanner *z)
{
	if (!z->eof)
		z->more = 1;
	return fail(z, z->len, "unexpected end of file");
}

static void
skip_ws(struct scanner *z)
{
	while (z->i < z->len &&
	    (z->b[z->i] == ' ' || z->b[z->i] == '\t' || z->b[z->i] == '\n' ||
		z->b[z->i] == '\r'))
		z->i++;
}

static int
hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * The length of the UTF-8 sequence at p as Python's strict decoder takes
 * it: 0 if invalid (overlong, a surrogate, past U+10FFFF, a stray byte),
 * -1 if the left bytes are a valid start of one.
 */
static int
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
	for (k = 1; k < n; k++) {
		if (k >= left)
			return -1;
		if ((p[k] & 0xc0) != 0x80)
			return 0;
		v = (v << 6) | (p[k] & 0x3f);
	}
	if (v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff) ||
	    (n == 3 && v < 0x800) || (n == 4 && v < 0x10000))
		return 0;
	return (int)n;
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

/* A string at z->i (on its quote): 1 if it holds a '\', 0 if not, -1. */
static int
scan_string(struct scanner *z)
{
	const unsigned char *b = z->b;
	size_t i = z->i + 1, len = z->len, k;
	int n, escaped = 0;

	for (;;) {
		i = plain_run(b, i, len);
		if (i >= len)
			return ran_out(z);
		if (b[i] == '"')
			break;
		if (b[i] < 0x20)
			return fail(z, i, "control character in a string");
		if (b[i] >= 0x80) {
			n = utf8_seq(b + i, len - i);
			if (n == -1 && !z->eof)
				return ran_out(z);
			if (n <= 0)
				return fail(z, i, "invalid UTF-8");
			i += (size_t)n;
			continue;
		}
		escaped = 1;
		if (i + 1 >= len)
			return ran_out(z);
		switch (b[i + 1]) {
		case '"':
		case '\\':
		case '/':
		case 'b':
		case 'f':
		case 'n':
		case 'r':
		case 't':
			i += 2;
			continue;
		case 'u':
			/* Any four hex digits: Python keeps lone surrogates. */
			for (k = 2; k < 6; k++) {
				if (i + k >= len)
					return ran_out(z);
				if (hexval(b[i + k]) == -1)
					return fail(
					    z, i, "invalid \\uXXXX escape");
			}
			i += 6;
			continue;
		default:
			return fail(z, i, "invalid escape");
		}
	}
	z->i = i + 1;
	return escaped;
}

/* One of the words true, false, null, NaN, Infinity at `at`. */
static int
literal(struct scanner *z, size_t at, const char *word)
{
	size_t k;

	for (k = 0; word[k] != '\0'; k++) {
		if (at + k >= z->len)
			return ran_out(z);
		if (z->b[at + k] != (unsigned char)word[k])
			return fail(z, at, "invalid literal");
	}
	z->i = at + k;
	return 0;
}

static size_t
digits(const unsigned char *b, size_t i, size_t len)
{
	while (i < len && b[i] >= '0' && b[i] <= '9')
		i++;
	return i;
}

/*
 * A number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? or -Infinity.
 * Python reads any real (1e400 is inf) and any integer up to its int
 * conversion limit; nothing needs converting here.
 */
static int
scan_number(struct scanner *z)
{
	const unsigned char *b = z->b;
	size_t i = z->i, len = z->len, start = z->i, ndigits;
	int real = 0;

	if (b[i] == '-') {
		if (++i >= len)
			return ran_out(z);
		if (b[i] == 'I')
			return literal(z, i, "Infinity");
	}
	if (b[i] == '0')
		i++;
	else if (b[i] >= '1' && b[i] <= '9')
		i = digits(b, i, len);
	else
		return fail(z, i, "invalid number");
	ndigits = i - start - (b[start] == '-');
	if (i < len && b[i] == '.') {
		real = 1;
		if (++i >= len)
			return ran_out(z);
		if (b[i] < '0' || b[i] > '9')
			return fail(z, i, "invalid number");
		i = digits(b, i, len);
	}
	if (i < len && (b[i] == 'e' || b[i] == 'E')) {
		real = 1;
		if (++i < len && (b[i] == '+' || b[i] == '-'))
			i++;
		if (i >= len)
			return ran_out(z);
		if (b[i] < '0' || b[i] > '9')
			return fail(z, i, "invalid number");
		i = digits(b, i, len);
	}
	if (i >= len && !z->eof)
		return ran_out(z); /* more digits may follow */
	if (!real && ndigits > JSONSCAN_MAX_INT_DIGITS)
		return fail(z, start, "integer with more than 4300 digits");
	z->i = i;
	return 0;
}

/*
 * Decodes a valid string literal (quotes included) into out, which holds
 * at least len bytes: UTF-8, with \u escapes of surrogate pairs joined as
 * Python joins them and a lone surrogate in its three-byte form (so two
 * keys decode alike exactly when Python takes them as equal). Returns the
 * decoded length.
 */
size_t
jsonscan_string(const char *lit, size_t len, char *out)
{
	const unsigned char *p = (const unsigned char *)lit + 1;
	const unsigned char *end = (const unsigned char *)lit + len - 1;
	unsigned int u, u2;
	size_t o = 0;
	int k;

	while (p < end) {
		if (*p != '\\') {
			out[o++] = (char)*p++;
			continue;
		}
		switch (p[1]) {
		case 'b':
			out[o++] = '\b';
			break;
		case 'f':
			out[o++] = '\f';
			break;
		case 'n':
			out[o++] = '\n';
			break;
		case 'r':
			out[o++] = '\r';
			break;
		case 't':
			out[o++] = '\t';
			break;
		case 'u':
			break;
		default: /* '"', '\\', '/' */
			out[o++] = (char)p[1];
			break;
		}
		if (p[1] != 'u') {
			p += 2;
			continue;
		}
		for (u = 0, k = 2; k < 6; k++)
			u = u << 4 | (unsigned int)hexval(p[k]);
		p += 6;
		if (u >= 0xd800 && u <= 0xdbff && end - p >= 6 &&
		    p[0] == '\\' && p[1] == 'u') {
			for (u2 = 0, k = 2; k < 6; k++)
				u2 = u2 << 4 | (unsigned int)hexval(p[k]);
			if (u2 >= 0xdc00 && u2 <= 0xdfff) {
				u = 0x10000 + ((u - 0xd800) << 10) +
				    (u2 - 0xdc00);
				p += 6;
			}
		}
		if (u < 0x80)
			out[o++] = (char)u;
		else if (u < 0x800) {
			out[o++] = (char)(0xc0 | u >> 6);
			out[o++] = (char)(0x80 | (u & 0x3f));
		} else if (u < 0x10000) {
			out[o++] = (char)(0xe0 | u >> 12);
			out[o++] = (char)(0x80 | (u >> 6 & 0x3f));
			out[o++] = (char)(0x80 | (u & 0x3f));
		} else {
			out[o++] = (char)(0xf0 | u >> 18);
			out[o++] = (char)(0x80 | (u >> 12 & 0x3f));
			out[o++] = (char)(0x80 | (u >> 6 & 0x3f));
			out[o++] = (char)(0x80 | (u & 0x3f));
		}
	}
	return o;
}

/*
 * A key [ks, ke) of the member's object value whose value ends at z->i:
 * if the caller named it, where it is (the last one wins, as in Python).
 */
static void
note_field(struct scanner *z, struct jsonscan_field *found, size_t ks,
    size_t ke, int escaped, size_t vs)
{
	char decoded[6 * MAX_FIELD_LEN + 2];
	const char *key = (const char *)z->b + ks + 1;
	size_t klen = ke - ks - 2, f, at = z->member;

	if (escaped) {
		if (ke - ks > sizeof(decoded))
			return;
		klen =
		    jsonscan_string((const char *)z->b + ks, ke - ks, decoded);
		key = decoded;
	}
	for (f = 0; f < z->js->nfields; f++)
		if (z->flen[f] == klen &&
		    memcmp(key, z->js->fields[f], klen) == 0) {
			found[f].key_start = ks - at;
			found[f].key_end = ke - at;
			found[f].value_start = vs - at;
			found[f].value_end = z->i - at;
		}
}

/*
 * An object or array at z->i, at nesting depth. In a member's object
 * value (found != NULL), the keys the caller named are located.
 */
static int
scan_container(struct scanner *z, int depth, struct jsonscan_field *found)
{
	const unsigned char *b = z->b;
	unsigned char close = b[z->i] == '{' ? '}' : ']';
	size_t ks, ke, vs;
	int escaped;

	z->i++;
	skip_ws(z);
	if (z->i >= z->len)
		return ran_out(z);
	if (b[z->i] == close) {
		z->i++;
		return 0;
	}
	for (;;) {
		if (z->i >= z->len)
			return ran_out(z);
		if (close == '}') {
			if (b[z->i] != '"')
				return fail(z, z->i, "property name expected");
			ks = z->i;
			if ((escaped = scan_string(z)) == -1)
				return -1;
			ke = z->i;
			skip_ws(z);
			if (z->i >= z->len)
				return ran_out(z);
			if (b[z->i] != ':')
				return fail(z, z->i, "':' expected");
			z->i++;
			skip_ws(z);
			vs = z->i;
			if (scan_value(z, depth + 1, NULL) == -1)
				return -1;
			if (found != NULL)
				note_field(z, found, ks, ke, escaped, vs);
		} else if (b[z->i] == '"') {
			/* most of a cache file: lists of short strings */
			if (scan_string(z) == -1)
				return -1;
		} else if (scan_value(z, depth + 1, NULL) == -1)
			return -1;
		skip_ws(z);
		if (z->i >= z->len)
			return ran_out(z);
		if (b[z->i] == ',') {
			z->i++;
			skip_ws(z);
			continue;
		}
		if (b[z->i] == close) {
			z->i++;
			return 0;
		}
		return fail(z, z->i,
		    close == '}' ? "',' or '}' expected"
				 : "',' or ']' expected");
	}
}

static int
scan_value(struct scanner *z, int depth, struct jsonscan_field *found)
{
	if (z->i >= z->len)
		return ran_out(z);
	switch (z->b[z->i]) {
	case '{':
	case '[':
		if (depth > JSONSCAN_MAX_DEPTH)
			return fail(z, z->i, "nesting too deep");
		return scan_container(
		    z, depth, z->b[z->i] == '{' ? found : NULL);
	case '"':
		return scan_string(z) == -1 ? -1 : 0;
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
	case 't':
		return literal(z, z->i, "true");
	case 'f':
		return literal(z, z->i, "false");
	case 'n':
		return literal(z, z->i, "null");
	case 'N':
		return literal(z, z->i, "NaN");
	case 'I':
		return literal(z, z->i, "Infinity");
	default:
		return fail(z, z->i, "value expected");
	}
}

/* The mapping size for n bytes: whole huge pages once that is worth it. */
static size_t
big_size(size_t n)
{
	size_t unit = n >= HUGE_PAGE ? HUGE_PAGE : 4096;

	return n == 0 ? unit : (n + unit - 1) / unit * unit;
}

/*
 * The window lives in an anonymous mapping that asks for huge pages once
 * it is large: few page faults and TLB entries, which a virtual machine
 * makes dear. Grows old (oldn bytes) to n, or maps n new ones; NULL with
 * errno when there is no memory.
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
		return NULL;
	if (big_size(n) >= HUGE_PAGE)
		(void)madvise(p, big_size(n), MADV_HUGEPAGE);
	return p;
}

/*
 * Drops the window's bytes before keep and reads on; when nothing can be
 * dropped the window grows (a member larger than the window). The
 * scanner follows: its position moves back by keep.
 */
static int
refill(struct window *w, struct scanner *z, size_t keep)
{
	ssize_t n;
	char *grown;

	if (keep > 0) {
		memmove(w->buf, w->buf + keep, w->len - keep);
		w->len -= keep;
		w->base += (off_t)keep;
	}
	if (w->len == w->cap) {
		if (w->cap >= MAX_WINDOW) {
			errno = EFBIG;
			return -1;
		}
		if ((grown = big_alloc(w->buf, w->cap, w->cap * 2)) == NULL)
			return -1;
		w->buf = grown;
		w->cap *= 2;
	}
	do
		n = read(w->fd, w->buf + w->len, w->cap - w->len);
	while (n == -1 && errno == EINTR);
	if (n == -1)
		return -1;
	if (n == 0)
		w->eof = 1;
	jsonscan_hash_add(&w->hash, w->buf + w->len, (size_t)n);
	w->len += (size_t)n;
	z->b = (const unsigned char *)w->buf;
	z->len = w->len;
	z->eof = w->eof;
	z->i -= keep;
	return 0;
}

/*
 * One member of the top-level object and the ',' or '}' after it.
 * Returns 0 if more follow, 1 after the last, 2 for an empty object.
 */
static int
scan_member(
    struct scanner *z, int first, struct jsonscan_member *m, int *escaped)
{
	const unsigned char *b = z->b;
	size_t ks;

	skip_ws(z);
	if (z->i >= z->len)
		return ran_out(z);
	if (first && b[z->i] == '}') {
		z->i++;
		return 2;
	}
	if (b[z->i] != '"')
		return fail(z, z->i, "property name expected");
	ks = z->i;
	if ((*escaped = scan_string(z)) == -1)
		return -1;
	m->key_end = z->i - ks;
	skip_ws(z);
	if (z->i >= z->len)
		return ran_out(z);
	if (b[z->i] != ':')
		return fail(z, z->i, "':' expected");
	z->i++;
	skip_ws(z);
	if (z->i >= z->len)
		return ran_out(z);
	m->value_start = z->i - ks;
	m->object = b[z->i] == '{';
	if (m->object)
		memset(m->field, 0, sizeof(m->field));
	z->member = ks;
	if (scan_value(z, 2, m->object ? m->field : NULL) == -1)
		return -1;
	m->bytes = (const char *)b + ks;
	m->len = z->i - ks;
	skip_ws(z);
	if (z->i >= z->len)
		return ran_out(z);
	if (b[z->i] == ',') {
		z->i++;
		return 0;
	}
	if (b[z->i] == '}') {
		z->i++;
		return 1;
	}
	return fail(z, z->i, "',' or '}' expected");
}

/* One element of a top-level array, like scan_member(). */
static int
scan_element(struct scanner *z, int first)
{
	skip_ws(z);
	if (z->i >= z->len)
		return ran_out(z);
	if (first && z->b[z->i] == ']') {
		z->i++;
		return 2;
	}
	if (scan_value(z, 2, NULL) == -1)
		return -1;
	skip_ws(z);
	if (z->i >= z->len)
		return ran_out(z);
	if (z->b[z->i] == ',') {
		z->i++;
		return 0;
	}
	if (z->b[z->i] == ']') {
		z->i++;
		return 1;
	}
	return fail(z, z->i, "',' or ']' expected");
}

/* Hands a member to the caller, its key decoded in *key (grown as needed). */
static int
deliver(struct jsonscan *js, struct window *w, struct jsonscan_member *m,
    int escaped, char **key, size_t *keycap)
{
	char *grown;

	m->off = w->base + (off_t)(m->bytes - w->buf);
	if (!escaped) {
		m->key = m->bytes + 1;
		m->key_len = m->key_end - 2;
	} else {
		if (m->key_end > *keycap) {
			if ((grown = realloc(*key, m->key_end)) == NULL)
				return -1;
			*key = grown;
			*keycap = m->key_end;
		}
		m->key_len = jsonscan_string(m->bytes, m->key_end, *key);
		m->key = *key;
	}
	return js->member(js->arg, m);
}

/*
 * The members (or elements) of the top-level object (or array) at z->i,
 * one at a time, each whole in the window: one that the window's end cut
 * is scanned again once the window holds more of the file. Returns 0 at
 * the end, -1 for invalid JSON, -2 on a failure (errno).
 */
static int
scan_top(struct jsonscan *js, struct window *w, struct scanner *z)
{
	struct jsonscan_member m;
	int object = z->b[z->i] == '{', first = 1, escaped = 0, r;
	size_t mark, keycap = 0;
	char *key = NULL;

	z->i++;
	for (;;) {
		mark = z->i;
		z->more = 0;
		r = object ? scan_member(z, first, &m, &escaped)
			   : scan_element(z, first);
		if (r == -1 && z->more) {
			z->err = NULL;
			z->i = mark;
			if (refill(w, z, mark) == -1)
				break;
			continue;
		}
		if (r == -1 || r == 2) {
			free(key);
			return r == 2 ? 0 : -1;
		}
		first = 0;
		if (object && deliver(js, w, &m, escaped, &key, &keycap) == -1)
			break;
		if (r == 1) {
			free(key);
			return 0;
		}
	}
	free(key);
	return -2;
}

/* A top-level value that is no container: valid or not is all that counts. */
static int
scan_scalar(struct window *w, struct scanner *z)
{
	size_t mark = z->i;

	for (;;) {
		z->more = 0;
		if (scan_value(z, 1, NULL) == 0)
			return 0;
		if (!z->more)
			return -1;
		z->err = NULL;
		z->i = mark;
		if (refill(w, z, mark) == -1)
			return -2;
		mark = 0;
	}
}

/*
 * Scans the file open as js->fd from its current offset to its end, and
 * hands each member of a top-level object to js->member as soon as it
 * is scanned: if the file turns out invalid later, what was handed over
 * is to be forgotten.
 */
enum jsonscan_result
jsonscan_file(struct jsonscan *js)
{
	struct window w;
	struct scanner z;
	enum jsonscan_result rc = JSONSCAN_FAILED;
	size_t f;
	int r, object;

	memset(&w, 0, sizeof(w));
	w.fd = js->fd;
	jsonscan_hash_init(&w.hash);
	memset(&z, 0, sizeof(z));
	z.js = js;
	js->hash[0] = js->hash[1] = 0;
	js->size = js->value_at = js->err_at = 0;
	js->err = NULL;
	if (js->nfields > JSONSCAN_MAX_FIELDS) {
		errno = EINVAL;
		return JSONSCAN_FAILED;
	}
	for (f = 0; f < js->nfields; f++)
		if ((z.flen[f] = strlen(js->fields[f])) > MAX_FIELD_LEN) {
			errno = EINVAL;
			return JSONSCAN_FAILED;
		}
	plain_init();
	w.cap = js->window > 0 ? js->window : JSONSCAN_WINDOW;
	if ((w.buf = big_alloc(NULL, 0, w.cap)) == NULL)
		return JSONSCAN_FAILED;
	z.b = (const unsigned char *)w.buf;

	for (;;) {
		skip_ws(&z);
		if (z.i < z.len || w.eof)
			break;
		if (refill(&w, &z, z.i) == -1)
			goto done;
	}
	js->value_at = w.base + (off_t)z.i;
	if (z.i >= z.len) {
		fail(&z, z.i,
		    w.base + (off_t)z.len == 0 ? "empty file"
					       : "value expected");
		rc = JSONSCAN_INVALID;
		goto done;
	}
	object = z.b[z.i] == '{';
	if (object || z.b[z.i] == '[')
		r = scan_top(js, &w, &z);
	else
		r = scan_scalar(&w, &z);
	if (r == -2)
		goto done;
	if (r == -1) {
		rc = JSONSCAN_INVALID;
		goto done;
	}
	/* Only white space may follow, to the end of the file. */
	for (;;) {
		skip_ws(&z);
		if (z.i < z.len) {
			fail(&z, z.i, "extra data");
			rc = JSONSCAN_INVALID;
			goto done;
		}
		if (w.eof)
			break;
		if (refill(&w, &z, z.i) == -1)
			goto done;
	}
	js->size = w.base + (off_t)w.len;
	jsonscan_hash_end(&w.hash, js->hash);
	rc = object ? JSONSCAN_OBJECT : JSONSCAN_OTHER;
done:
	if (rc == JSONSCAN_INVALID) {
		js->err = z.err;
		js->err_at = w.base + (off_t)z.err_at;
	}
	munmap(w.buf, big_size(w.cap));
	return rc;
}

/*
 * Line and column of a file offset, for the log, as Python counts them:
 * the column in characters, from 1.
 */
void
jsonscan_position(int fd, off_t at, long *line, long *column)
{
	char buf[16384];
	off_t off = 0;
	ssize_t n, i;
	long col = 0;

	*line = 1;
	while (off < at) {
		n = pread(fd, buf,
		    (size_t)(at - off) < sizeof(buf) ? (size_t)(at - off)
						     : sizeof(buf),
		    off);
		if (n <= 0)
			break;
		for (i = 0; i < n; i++)
			if (buf[i] == '\n') {
				(*line)++;
				col = 0;
			} else if (((unsigned char)buf[i] & 0xc0) != 0x80)
				col++;
		off += n;
	}
	*column = col + 1;
}
