/* fuzz_mask.c: libpq decides what the password is; masking never shows it. */

#include <stdio.h>

#include <libpq-fe.h>

#include "fuzz.h"
#include "mask.h"

/*
 * The oracle is libpq's own parser (PQconninfoParse), not the masker's
 * idea of a connection string. The input's first byte picks a shape (a
 * URL's userinfo, raw or percent-encoded, a query parameter, key=value
 * bare, quoted or backslash-escaped, or the whole input as it is); the
 * rest, split at NUL bytes, gives the user, the password, the host, the
 * database and trailing text, any bytes at all.
 *
 * For a string S in which libpq reads the password P, and the same string
 * S' with another password in its place that libpq reads the same
 * otherwise: the masked S and S' are equal (nothing of the output comes
 * from the password), and neither P nor the way S spells it (raw,
 * percent-encoded) appears in the masked S unless it appears in the
 * masked S' too (a word of the host, say).
 */

#define NSHAPES 8
#define OTHER "Zx0Q9"

struct fields {
	const char *user, *pw, *host, *db, *extra;
};

struct buf {
	char *s;
	size_t len, cap;
};

static void
put(struct buf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		b->cap = (b->len + n + 1) * 2;
		if ((b->s = realloc(b->s, b->cap)) == NULL)
			abort();
	}
	memcpy(b->s + b->len, s, n);
	b->len += n;
	b->s[b->len] = '\0';
}

static void
puts_(struct buf *b, const char *s)
{
	put(b, s, strlen(s));
}

static void
put_pct(struct buf *b, const char *s)
{
	char hex[4];

	for (; *s != '\0'; s++) {
		snprintf(hex, sizeof(hex), "%%%02X", (unsigned char)*s);
		put(b, hex, 3);
	}
}

/* Backslash before each byte libpq's key=value syntax gives a meaning. */
static void
put_escaped(struct buf *b, const char *s, const char *special)
{
	for (; *s != '\0'; s++) {
		if (strchr(special, *s) != NULL)
			put(b, "\\", 1);
		put(b, s, 1);
	}
}

static void
build(struct buf *b, int shape, const struct fields *f, const char *pw)
{
	b->len = 0;
	put(b, "", 0);
	switch (shape) {
	case 0:
		puts_(b, "postgresql://");
		puts_(b, f->user);
		puts_(b, ":");
		puts_(b, pw);
		puts_(b, "@");
		puts_(b, f->host);
		puts_(b, "/");
		puts_(b, f->db);
		break;
	case 1:
		puts_(b, "postgres://");
		puts_(b, f->user);
		puts_(b, ":");
		put_pct(b, pw);
		puts_(b, "@");
		puts_(b, f->host);
		puts_(b, ":5432/");
		puts_(b, f->db);
		break;
	case 2:
		puts_(b, "postgresql://");
		puts_(b, f->host);
		puts_(b, "/");
		puts_(b, f->db);
		puts_(b, "?user=");
		puts_(b, f->user);
		puts_(b, "&password=");
		put_pct(b, pw);
		break;
	case 3:
		puts_(b, "postgresql://");
		puts_(b, f->host);
		puts_(b, "/");
		puts_(b, f->db);
		puts_(b, "?password=");
		puts_(b, pw);
		puts_(b, "&");
		break;
	case 4:
		puts_(b, "host=");
		puts_(b, f->host);
		puts_(b, " user=");
		puts_(b, f->user);
		puts_(b, " password=");
		puts_(b, pw);
		puts_(b, " ");
		break;
	case 5:
		puts_(b, "host=");
		puts_(b, f->host);
		puts_(b, " password='");
		put_escaped(b, pw, "'\\");
		puts_(b, "' dbname=");
		puts_(b, f->db);
		puts_(b, " ");
		break;
	default:
		puts_(b, "password = ");
		put_escaped(b, pw, " \t\n\r\f\v'\\");
		puts_(b, " user=");
		puts_(b, f->user);
		break;
	}
	puts_(b, f->extra);
}

static PQconninfoOption *
parse(const char *s)
{
	return PQconninfoParse(s, NULL);
}

static const char *
password(const PQconninfoOption *o)
{
	for (; o != NULL && o->keyword != NULL; o++)
		if (strcmp(o->keyword, "password") == 0)
			return o->val;
	return NULL;
}

/* libpq reads a and b the same but for the password. */
static int
same_but_password(const PQconninfoOption *a, const PQconninfoOption *b)
{
	for (; a->keyword != NULL && b->keyword != NULL; a++, b++) {
		if (strcmp(a->keyword, b->keyword) != 0)
			return 0;
		if (strcmp(a->keyword, "password") == 0)
			continue;
		if ((a->val == NULL) != (b->val == NULL) ||
		    (a->val != NULL && strcmp(a->val, b->val) != 0))
			return 0;
	}
	return a->keyword == NULL && b->keyword == NULL;
}

/* what may appear in mask(S) only where it appears in mask(S') too */
static void
not_shown(const char *masked, const char *other, const char *what)
{
	if (what != NULL && *what != '\0' && strstr(masked, what) != NULL &&
	    strstr(other, what) == NULL)
		abort();
}

/* The masked form that shows only the scheme of s. */
static int
scheme_only(const char *masked, const char *s)
{
	size_t n = strcspn(s, ":");

	return strncmp(masked, s, n) == 0 && strcmp(masked + n, "://***") == 0;
}

/* S with every occurrence of pw in it replaced by OTHER. */
static void
replace_all(struct buf *b, const char *s, const char *pw)
{
	const char *at;
	size_t pl = strlen(pw);

	b->len = 0;
	put(b, "", 0);
	while ((at = strstr(s, pw)) != NULL) {
		put(b, s, (size_t)(at - s));
		puts_(b, OTHER);
		s = at + pl;
	}
	puts_(b, s);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char m1[16384], m2[16384];
	char err[256], *in, *p, *end;
	const char **slot[5];
	struct fields f = { "", "", "", "", "" };
	struct buf s1 = { NULL, 0, 0 }, s2 = { NULL, 0, 0 }, spelled = { NULL,
		0, 0 };
	PQconninfoOption *o1 = NULL, *o2 = NULL;
	const char *pw;
	int shape, i;

	if (size < 1 || libs_pq(err, sizeof(err)) == -1)
		return 0;
	shape = data[0] % NSHAPES;
	in = malloc(size);
	if (in == NULL)
		abort();
	memcpy(in, data + 1, size - 1);
	in[size - 1] = '\0';
	slot[0] = &f.user;
	slot[1] = &f.pw;
	slot[2] = &f.host;
	slot[3] = &f.db;
	slot[4] = &f.extra;
	end = in + size - 1;
	for (p = in, i = 0; i < 5 && p <= end; i++) {
		*slot[i] = p;
		p += strlen(p) + 1;
	}
	if (shape == NSHAPES - 1) {
		/* the whole input, and it with the password replaced */
		put(&s1, (const char *)data + 1, strnlen((const char *)data + 1,
						     size - 1));
		o1 = parse(s1.s);
		pw = password(o1);
		if (pw != NULL && *pw != '\0')
			replace_all(&s2, s1.s, pw);
	} else {
		build(&s1, shape, &f, f.pw);
		build(&s2, shape, &f, OTHER);
		o1 = parse(s1.s);
	}
	mask_dburl(s1.s, m1, sizeof(m1));
	pw = password(o1);
	if (pw != NULL && *pw != '\0' && s2.s != NULL &&
	    (o2 = parse(s2.s)) != NULL && password(o2) != NULL &&
	    strcmp(password(o2), OTHER) == 0 && same_but_password(o1, o2) &&
	    mask_dburl(s1.s, m1, sizeof(m1)) == 0 &&
	    mask_dburl(s2.s, m2, sizeof(m2)) == 0) {
		/* Or only the scheme, where a person would read the password
		 * otherwise than libpq: nothing of it either. */
		if (strcmp(m1, m2) != 0 && !scheme_only(m1, s1.s))
			abort();
		not_shown(m1, m2, pw);
		put_pct(&spelled, pw);
		not_shown(m1, m2, spelled.s);
		if (shape != NSHAPES - 1)
			not_shown(m1, m2, f.pw);
	}
	if (o1 != NULL)
		PQconninfoFree(o1);
	if (o2 != NULL)
		PQconninfoFree(o2);
	free(s1.s);
	free(s2.s);
	free(spelled.s);
	free(in);
	return 0;
}
