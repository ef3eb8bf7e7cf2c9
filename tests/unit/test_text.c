/* test_text.c: text made valid UTF-8, cut only between characters. */

#include <string.h>

#include "clock.h"

static char buf[64];

static const char *
clean(size_t len, const char *s)
{
	memset(buf, 'Z', sizeof(buf));
	text_clean(buf, len, s);
	return buf;
}

/* Valid text, multibyte characters included, passes unchanged. */
static void
test_valid_unchanged(void **state)
{
	(void)state;
	assert_string_equal(clean(64, "ãé 🧹 ok"), "ãé 🧹 ok");
	assert_string_equal(clean(64, ""), "");
}

/*
 * Bytes that are no character (a stray continuation, a cut lead byte,
 * overlong forms, surrogates, past U+10FFFF, 0xff) and control
 * characters are shown as \xNN: one line of valid UTF-8 whatever came.
 */
static void
test_invalid_bytes_escaped(void **state)
{
	(void)state;
	assert_string_equal(clean(64, "a\xff\xfe"), "a\\xff\\xfe");
	assert_string_equal(clean(64, "\x80x"), "\\x80x");
	assert_string_equal(clean(64, "\xc3"), "\\xc3");
	assert_string_equal(clean(64, "\xc0\xaf"), "\\xc0\\xaf");
	assert_string_equal(clean(64, "\xe0\x80\xaf"), "\\xe0\\x80\\xaf");
	assert_string_equal(clean(64, "\xed\xa0\x80"), "\\xed\\xa0\\x80");
	assert_string_equal(
	    clean(64, "\xf4\x90\x80\x80"), "\\xf4\\x90\\x80\\x80");
	assert_string_equal(clean(64, "l1\nl2\t\x7f"), "l1\\x0al2\\x09\\x7f");
	/* the largest character there is stays */
	assert_string_equal(clean(64, "\xf4\x8f\xbf\xbf"), "\xf4\x8f\xbf\xbf");
}

/* A text too long is cut before the first character that does not fit. */
static void
test_cut_between_characters(void **state)
{
	(void)state;
	/* 4 bytes of room: "ab" and no half of "ã" */
	assert_string_equal(clean(4, "abã"), "ab");
	assert_string_equal(clean(5, "abã"), "abã");
	assert_string_equal(clean(4, "a🧹"), "a");
	assert_string_equal(clean(6, "a🧹"), "a🧹");
	/* nor half an escape */
	assert_string_equal(clean(6, "a\xff"), "a\\xff");
	assert_string_equal(clean(5, "a\xff"), "a");
	assert_string_equal(clean(1, "abc"), "");
}

/* The tail of a full buffer that a byte-wise copy cut mid-character. */
static void
test_trim(void **state)
{
	char t[16];
	size_t o;

	(void)state;
	strcpy(t, "ab\xc3");
	o = 3;
	text_trim(t, &o);
	assert_int_equal(o, 2);
	assert_string_equal(t, "ab");
	strcpy(t, "a\xf0\x9f\xa7");
	o = 4;
	text_trim(t, &o);
	assert_string_equal(t, "a");
	strcpy(t, "aã");
	o = 3;
	text_trim(t, &o);
	assert_string_equal(t, "aã");
	strcpy(t, "abc");
	o = 3;
	text_trim(t, &o);
	assert_string_equal(t, "abc");
}

/* text_json() always gives a string, made valid the same way. */
static void
test_json(void **state)
{
	json_t *v;

	(void)state;
	v = text_json("x\xe3y");
	assert_non_null(v);
	assert_string_equal(json_string_value(v), "x\\xe3y");
	json_decref(v);
	v = text_json(NULL);
	assert_string_equal(json_string_value(v), "");
	json_decref(v);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_unchanged),
		cmocka_unit_test(test_invalid_bytes_escaped),
		cmocka_unit_test(test_cut_between_characters),
		cmocka_unit_test(test_trim),
		cmocka_unit_test(test_json),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
