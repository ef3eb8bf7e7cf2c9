/*
 * fuzz_mask.c: the real parsers decide what the secrets are (libpq for a
 * database URL, libcurl for an http(s) one); masking never shows them.
 */

/* curl_url_get() and the rest are libs.c's functions, not macros. */
#define CURL_DISABLE_TYPECHECK

#include <stdio.h>

#include <curl/curl.h>
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
 *
 * An input whose first byte has its high bit set is an http(s) URL (the
 * health URL, the webhook) and its oracle is libcurl's URL API
 * (curl_url), with the flags libcurl parses a transfer's URL with (one
 * without "://" is no URL: mask.c does not let libcurl guess). The
 * shapes: user:password@, raw or percent-encoded, a token as the user,
 * or the whole input. For the URL U as libcurl reads it, the masked U is
 * built from libcurl's parts: the scheme, "***@" if there is any user,
 * password or login option, the host and port, and then (health URL) the
 * path, query and fragment or (webhook) "/..." if there is more than "/";
 * or only the scheme where libcurl refuses U or reads it otherwise than
 * written. With libcurl's user, password and options replaced (U'),
 * none of them, raw or decoded, appears in the masked U unless it appears
 * in the masked U' too (a word of the host); for a webhook, with its path
 * and query replaced too, neither of them. (The masked U and U' may
 * differ: libcurl writes a host "%35" back as "5" and reads that as
 * 0.0.0.5.)
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

/* ---- http(s) URLs: libcurl's URL API is the oracle ---- */

static CURLU *
http_parse(const char *s)
{
	CURLU *u = curl_url();

	if (u == NULL)
		abort();
	if (strstr(s, "://") == NULL ||
	    curl_url_set(u, CURLUPART_URL, s, CURLU_NON_SUPPORT_SCHEME) !=
		CURLUE_OK) {
		curl_url_cleanup(u);
		return NULL;
	}
	return u;
}

/* A part libcurl holds; an empty query or fragment is none, as in its URL. */
static char *
http_get(CURLU *u, CURLUPart what, unsigned int flags)
{
	char *s = NULL;

	if (curl_url_get(u, what, &s, flags) != CURLUE_OK)
		return NULL;
	if (s != NULL && *s == '\0' &&
	    (what == CURLUPART_QUERY || what == CURLUPART_FRAGMENT)) {
		curl_free(s);
		return NULL;
	}
	return s;
}

static void
put_part(struct buf *b, CURLU *u, CURLUPart what, const char *prefix)
{
	char *s = http_get(u, what, 0);

	if (s == NULL)
		return;
	puts_(b, prefix);
	puts_(b, s);
	curl_free(s);
}

/* The masked form of the URL u holds, from libcurl's parts alone. */
static void
http_expected(struct buf *b, CURLU *u, int keep_path)
{
	static const CURLUPart login[] = { CURLUPART_USER,
		CURLUPART_PASSWORD, CURLUPART_OPTIONS };
	char *path, *query, *frag, *s;
	size_t i;
	int any = 0;

	b->len = 0;
	put(b, "", 0);
	put_part(b, u, CURLUPART_SCHEME, "");
	puts_(b, "://");
	for (i = 0; i < 3; i++)
		if ((s = http_get(u, login[i], 0)) != NULL) {
			any = 1;
			curl_free(s);
		}
	if (any)
		puts_(b, "***@");
	put_part(b, u, CURLUPART_HOST, "");
	put_part(b, u, CURLUPART_PORT, ":");
	path = http_get(u, CURLUPART_PATH, 0);
	query = http_get(u, CURLUPART_QUERY, 0);
	frag = http_get(u, CURLUPART_FRAGMENT, 0);
	if (keep_path) {
		puts_(b, path != NULL ? path : "");
		if (query != NULL) {
			puts_(b, "?");
			puts_(b, query);
		}
		if (frag != NULL) {
			puts_(b, "#");
			puts_(b, frag);
		}
	} else if (query != NULL || frag != NULL ||
	    (path != NULL && strcmp(path, "/") != 0))
		puts_(b, "/...");
	curl_free(path);
	curl_free(query);
	curl_free(frag);
}

/* The masked form that shows only the scheme of s (http and three stars). */
static int
http_scheme_only(const char *masked, const char *s)
{
	size_t n = strcspn(s, ":");

	return strncmp(masked, s, n) == 0 && strncmp(s + n, "://", 3) == 0 &&
	    strcmp(masked + n, "://***") == 0;
}

static void
build_http(struct buf *b, int shape, const struct fields *f)
{
	b->len = 0;
	put(b, "", 0);
	puts_(b, shape % 2 == 0 ? "https://" : "http://");
	switch (shape) {
	case 0:
	case 1:
		puts_(b, f->user);
		puts_(b, ":");
		puts_(b, f->pw);
		break;
	case 2:
		put_pct(b, f->user);
		puts_(b, ":");
		put_pct(b, f->pw);
		break;
	case 3:
		puts_(b, f->user); /* a token as the user, raw */
		break;
	default:
		put_pct(b, f->user);
		break;
	}
	puts_(b, "@");
	puts_(b, f->host);
	puts_(b, "/");
	puts_(b, f->db);
	puts_(b, f->extra);
}

/* secret, raw or decoded, shown in masked but not in other */
static void
http_not_shown(CURLU *u, CURLUPart what, const char *masked, const char *other)
{
	char *raw = http_get(u, what, 0), *dec = http_get(u, what,
					      CURLU_URLDECODE);

	not_shown(masked, other, raw);
	not_shown(masked, other, dec);
	curl_free(raw);
	curl_free(dec);
}

static void
fuzz_http(const char *s)
{
	static char m[16384], m2[16384];
	static const CURLUPart login[] = { CURLUPART_USER,
		CURLUPART_PASSWORD, CURLUPART_OPTIONS };
	struct buf want = { NULL, 0, 0 };
	CURLU *u, *v;
	char *other, *x;
	int keep, rc;
	size_t i;

	u = http_parse(s);
	for (keep = 0; keep < 2; keep++) {
		rc = mask_http(s, keep, m, sizeof(m));
		if (*s == '\0') {
			if (*m != '\0')
				abort();
			continue;
		}
		if (rc != 0)
			continue;
		/* a refused URL, or one read otherwise than written */
		if (http_scheme_only(m, s) || strcmp(m, "***") == 0) {
			if (mask_http_check(s) == 0)
				abort();
			continue;
		}
		if (u == NULL)
			abort();
		http_expected(&want, u, keep);
		if (strcmp(m, want.s) != 0)
			abort();
		/* the same URL with other secrets shows none of these */
		v = http_parse(s);
		for (i = 0; i < 3; i++)
			if ((x = http_get(v, login[i], 0)) != NULL) {
				curl_free(x);
				curl_url_set(v, login[i], OTHER, 0);
			}
		if (!keep) {
			x = http_get(v, CURLUPART_PATH, 0);
			if (x != NULL && strcmp(x, "/") != 0)
				curl_url_set(v, CURLUPART_PATH, "/" OTHER, 0);
			curl_free(x);
			if ((x = http_get(v, CURLUPART_QUERY, 0)) != NULL)
				curl_url_set(v, CURLUPART_QUERY, OTHER, 0);
			curl_free(x);
			if ((x = http_get(v, CURLUPART_FRAGMENT, 0)) != NULL)
				curl_url_set(v, CURLUPART_FRAGMENT, OTHER, 0);
			curl_free(x);
		}
		other = http_get(v, CURLUPART_URL, 0);
		if (other != NULL && mask_http(other, keep, m2, sizeof(m2)) ==
			0 && !http_scheme_only(m2, other)) {
			for (i = 0; i < 3; i++)
				http_not_shown(u, login[i], m, m2);
			if (!keep) {
				http_not_shown(u, CURLUPART_PATH, m, m2);
				http_not_shown(u, CURLUPART_QUERY, m, m2);
				http_not_shown(u, CURLUPART_FRAGMENT, m, m2);
			}
		}
		curl_free(other);
		curl_url_cleanup(v);
	}
	if (u != NULL)
		curl_url_cleanup(u);
	free(want.s);
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

	if (size < 1 || libs_pq(err, sizeof(err)) == -1 ||
	    libs_curl(err, sizeof(err)) == -1)
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
	if (data[0] & 0x80) {
		if (shape == NSHAPES - 1)
			put(&s1, (const char *)data + 1,
			    strnlen((const char *)data + 1, size - 1));
		else
			build_http(&s1, shape, &f);
		fuzz_http(s1.s);
		free(s1.s);
		free(in);
		return 0;
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
