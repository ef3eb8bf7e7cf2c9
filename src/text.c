/* text.c: any bytes made into valid UTF-8 text, cut only between characters. */

#include <stdio.h>
#include <string.h>

#include "limpeza.h"

/*
 * The length of the well-formed UTF-8 character at s (RFC 3629: no
 * overlong forms, no surrogates, nothing past U+10FFFF), or 0 if the
 * bytes at s are not one. s is NUL-terminated, and NUL is never a
 * continuation byte, so reading stops at the string's end.
 */
static size_t
utf8_char(const unsigned char *s)
{
	unsigned char c = s[0];
	unsigned char lo = 0x80, hi = 0xbf;
	size_t n, i;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		if (c == 0xe0)
			lo = 0xa0; /* overlong */
		else if (c == 0xed)
			hi = 0x9f; /* surrogates */
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		if (c == 0xf0)
			lo = 0x90; /* overlong */
		else if (c == 0xf4)
			hi = 0x8f; /* past U+10FFFF */
	} else
		return 0;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (i = 2; i < n; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return n;
}

/*
 * Appends s to buf at *o, as valid UTF-8 on one line: a control character
 * or a byte that is not part of a well-formed character is shown as \xNN,
 * and s is cut before the first character (or \xNN) that would not fit
 * whole. buf is always NUL-terminated. Every text limpeza did not write
 * itself (driver errors, paths, job ids, host names) goes through here
 * before it reaches a log line or a JSON string.
 */
void
text_put(char *buf, size_t len, size_t *o, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t n;

	if (len == 0)
		return;
	if (*o >= len)
		*o = len - 1;
	while (*p != '\0') {
		n = utf8_char(p);
		if (n == 0 || *p < 0x20 || *p == 0x7f) {
			if (*o + 4 >= len)
				break;
			snprintf(buf + *o, len - *o, "\\x%02x", *p);
			*o += 4;
			p++;
			continue;
		}
		if (*o + n >= len)
			break;
		memcpy(buf + *o, p, n);
		*o += n;
		p += n;
	}
	buf[*o] = '\0';
}

/*
 * Cuts buf (of *o bytes) before a last character that a full buffer cut
 * short: the formats' own text is copied byte by byte up to the end.
 */
void
text_trim(char *buf, size_t *o)
{
	size_t start = *o, back = 0;

	while (start > 0 && back < 4 &&
	    ((unsigned char)buf[start - 1] & 0xc0) == 0x80) {
		start--;
		back++;
	}
	if (start == 0 || ((unsigned char)buf[start - 1] & 0x80) == 0)
		return; /* ASCII last, or no lead byte to judge by */
	start--;
	if (utf8_char((const unsigned char *)buf + start) != back + 1) {
		*o = start;
		buf[*o] = '\0';
	}
}

/* The length of the well-formed UTF-8 character at s, or 0 if none. */
size_t
text_char(const char *s)
{
	return utf8_char((const unsigned char *)s);
}

/* dst (of len bytes) becomes src made valid, as text_put() does. */
void
text_clean(char *dst, size_t len, const char *src)
{
	size_t o = 0;

	text_put(dst, len, &o, src);
}

/*
 * A JSON string of s made valid and cut at max bytes (at most TEXT_MAX):
 * never NULL but for lack of memory (a string of valid UTF-8 is all
 * json_string() checks).
 */
json_t *
text_json_cut(const char *s, size_t max)
{
	char buf[TEXT_MAX];
	json_t *v;

	if (max > sizeof(buf))
		max = sizeof(buf);
	if (max == 0)
		max = 1;
	text_clean(buf, max, s != NULL ? s : "");
	if ((v = json_string(buf)) == NULL)
		fatalx_oom();
	return v;
}

/* The same, cut only past TEXT_MAX bytes. */
json_t *
text_json(const char *s)
{
	return text_json_cut(s, TEXT_MAX);
}
