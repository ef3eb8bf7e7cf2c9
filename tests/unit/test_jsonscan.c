/* test_jsonscan.c: the scanner alone: Python's dialect, spans, fields, windows.
 */

/*
 * Linked with jsonscan.o and nothing else of limpeza's. On the language
 * that jansson and Python share, jansson is the oracle; what only Python
 * accepts is listed with Python's verdict (the generated differential
 * test, tests/integration/test_python_dialect.py, asks Python itself).
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "jsonscan.h"

/* Windows that cut the text everywhere, and the default one. */
static const size_t windows[] = { 1, 2, 3, 5, 8, 13, 64, 0 };
#define NWINDOWS (sizeof(windows) / sizeof(windows[0]))

static const char *const job_fields[] = { "status", "start_time", "error" };

struct seen {
	const char *src;
	char keys[8][32];
	char vals[8][128];
	char status[8][32]; /* the "status" field's value, "-" if none */
	int n;
};

static int
record(void *arg, const struct jsonscan_member *m)
{
	struct seen *s = arg;
	const struct jsonscan_field *f = &m->field[0];

	if (s->n == 8)
		return 0;
	/* the spans are file offsets, and the bytes are those of the file */
	assert_memory_equal(m->bytes, s->src + m->off, m->len);
	snprintf(s->keys[s->n], 32, "%.*s", (int)m->key_len, m->key);
	snprintf(s->vals[s->n], 128, "%.*s", (int)(m->len - m->value_start),
	    m->bytes + m->value_start);
	if (m->object && f->value_end != 0)
		snprintf(s->status[s->n], 32, "%.*s",
		    (int)(f->value_end - f->value_start),
		    m->bytes + f->value_start);
	else
		snprintf(s->status[s->n], 32, "-");
	s->n++;
	return 0;
}

/* jsonscan_file() on a file holding len bytes of text. */
static enum jsonscan_result
scan(const char *text, size_t len, size_t window, struct seen *s,
    struct jsonscan *out)
{
	struct jsonscan js;
	enum jsonscan_result r;
	int fd = memfd_create("scan", 0);

	assert_true(fd != -1);
	assert_int_equal(write(fd, text, len), (ssize_t)len);
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	memset(&js, 0, sizeof(js));
	js.fd = fd;
	js.window = window;
	js.fields = job_fields;
	js.nfields = 3;
	js.member = record;
	js.arg = s;
	s->src = text;
	s->n = 0;
	r = jsonscan_file(&js);
	if (out != NULL)
		*out = js;
	close(fd);
	return r;
}

/* The verdict, the same with every window; 1 if an object, 0 if not. */
static int
verdict(const char *text, size_t len)
{
	struct seen s;
	enum jsonscan_result r, first = JSONSCAN_FAILED;
	size_t w;
	int n = -1;

	for (w = 0; w < NWINDOWS; w++) {
		r = scan(text, len, windows[w], &s, NULL);
		assert_int_not_equal(r, JSONSCAN_FAILED);
		if (w > 0 && (r != first || s.n != n))
			fail_msg("window %zu: %d (%d members), before %d (%d): "
				 "%.*s",
			    windows[w], r, s.n, first, n, (int)len, text);
		first = r;
		n = s.n;
	}
	return first == JSONSCAN_OBJECT;
}

/* On what both read, the scanner and jansson agree. */
static int
agree(const char *text, size_t len)
{
	json_t *j = json_loadb(text, len, JSON_ALLOW_NUL, NULL);
	int theirs = j != NULL && json_is_object(j), ours = verdict(text, len);

	json_decref(j);
	if (ours != theirs)
		fail_msg("scanner %s, jansson %s: %.*s",
		    ours ? "accepts" : "refuses",
		    theirs ? "accepts" : "refuses", (int)len, text);
	return ours;
}

/* Spans, decoded keys and the named fields, wherever the window cuts. */
static void
test_members(void **state)
{
	struct seen s;
	size_t w;
	const char *text =
	    " {\"a\": {\"x\": \"}{\\\"\", \"status\": [1, {\"status\": "
	    "2}], \"st\\u0061tus\" : \"run\"},\n\"b\\\"q\" :-1.5e3 , "
	    "\"\\ud83d\\ude00\":\"s\\\\\", \"d\":{\"y\": {\"status\": 1}}}\n";

	(void)state;
	for (w = 0; w < NWINDOWS; w++) {
		assert_int_equal(scan(text, strlen(text), windows[w], &s, NULL),
		    JSONSCAN_OBJECT);
		assert_int_equal(s.n, 4);
		assert_string_equal(s.keys[0], "a");
		assert_string_equal(s.vals[0],
		    "{\"x\": \"}{\\\"\", \"status\": [1, {\"status\": 2}], "
		    "\"st\\u0061tus\" : \"run\"}");
		/* the last "status" counts, escaped or not */
		assert_string_equal(s.status[0], "\"run\"");
		assert_string_equal(s.keys[1], "b\"q");
		assert_string_equal(s.vals[1], "-1.5e3");
		assert_string_equal(s.status[1], "-");
		assert_string_equal(s.keys[2], "\xf0\x9f\x98\x80");
		assert_string_equal(s.vals[2], "\"s\\\\\"");
		/* a "status" deeper down is no field of the member */
		assert_string_equal(s.status[3], "-");
	}
	assert_int_equal(scan("{}", 2, 0, &s, NULL), JSONSCAN_OBJECT);
	assert_int_equal(s.n, 0);
}

/*
 * Strings are scanned sixteen and eight bytes at a time: each byte that
 * ends or breaks the plain run (quote, backslash, control, non-ASCII, a
 * valid or broken UTF-8 sequence) at every offset of strings long enough
 * to span several words must be seen exactly where jansson sees it.
 */
static void
test_string_bytes(void **state)
{
	static const char *const odd[] = { "\"", "\\\"", "\\n", "\\u00e9",
		"\\x", "\x01", "\x1f", "\x7f", "\x80", "\xc3\xa9", "\xc3",
		"\xed\xa0\x80", "\xf0\x9f\x98\x80", "\xff", " ", "\xc0\x80",
		"\xf4\x90\x80\x80", "\xe0\x80\x80" };
	char text[256], pad[64];
	size_t o, k, n, accepted = 0;

	(void)state;
	memset(pad, 'a', sizeof(pad));
	for (k = 0; k < sizeof(odd) / sizeof(odd[0]); k++)
		for (o = 0; o < 40; o++) {
			n = (size_t)snprintf(text, sizeof(text),
			    "{\"k\": [\"%.*s%s%.*s\"], \"%.*s\": 1}", (int)o,
			    pad, odd[k], (int)(40 - o), pad, (int)o, pad);
			accepted += (size_t)agree(text, n);
		}
	/* the valid ones: three escapes, DEL, é, the emoji and the space */
	assert_int_equal(accepted, 7 * 40);
}

/* Numbers in the grammar both read (jansson's overflow limits aside). */
static void
test_numbers(void **state)
{
	static const char *const nums[] = { "0", "-0", "123456789012345678",
		"-123456789012345678", "9223372036854775807", "1.5", "-0.25e-3",
		"1e308", "1e-400", "01", "1.", ".5", "-", "1e", "1e+", "+1",
		"0x10", "1.7976931348623157e308", "-01", "1.e5", "1E5",
		"1e05" };
	char text[1024];
	size_t i, n;

	(void)state;
	for (i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
		n = (size_t)snprintf(
		    text, sizeof(text), "{\"n\": %s}", nums[i]);
		agree(text, n);
	}
}

/* The verdict on {"n": SIGN DIGITS... TAIL}. */
static int
big_number(const char *sign, size_t ndigits, const char *tail)
{
	char text[4400 + 32];
	size_t n;

	n = (size_t)sprintf(text, "{\"n\": %s", sign);
	memset(text + n, '7', ndigits);
	n += ndigits;
	n += (size_t)sprintf(text + n, "%s}", tail);
	return verdict(text, n);
}

/* Python's own: what jansson refuses and Python reads, and its limits. */
static void
test_python_dialect(void **state)
{
	static const struct {
		const char *text;
		int python; /* json.loads() of it is a dict */
		size_t len; /* 0: strlen(text) */
	} cases[] = {
		{ "{\"a\": NaN}", 1, 0 },
		{ "{\"a\": Infinity}", 1, 0 },
		{ "{\"a\": -Infinity}", 1, 0 },
		{ "{\"a\": [NaN,Infinity,-Infinity]}", 1, 0 },
		{ "{\"a\": 9223372036854775808}", 1, 0 },
		{ "{\"a\": -99999999999999999999999999999999}", 1, 0 },
		{ "{\"a\": 1e400, \"b\": -1E+999}", 1, 0 },
		{ "{\"a\": \"\\ud83d\"}", 1, 0 },
		{ "{\"a\": \"\\udc00\\ud83d\"}", 1, 0 },
		{ "{\"\\ud83d\": 1}", 1, 0 },
		{ "{\"\\u0000\": 1}", 1, 0 },
		{ "{\"a\": \"\\u0000\"}", 1, 0 },
		{ "{\"a\": nan}", 0, 0 },
		{ "{\"a\": -NaN}", 0, 0 },
		{ "{\"a\": +Infinity}", 0, 0 },
		{ "{\"a\": infinity}", 0, 0 },
		{ "{\"a\": Infinityx}", 0, 0 },
		{ "{\"a\": NaN1}", 0, 0 },
		{ "{\"a\": -Inf}", 0, 0 },
		{ "{\"a\": True}", 0, 0 },
		{ "{\"a\": 1}\0", 0, 9 },
		{ "{\"a\": 1\0}", 0, 9 },
		{ "\xef\xbb\xbf{}", 0, 0 },
		{ "{\"a\": \"\\ud83\"}", 0, 0 },
		{ "{\"a\": \"\\U0041\"}", 0, 0 },
		{ "{\"a\": 'x'}", 0, 0 },
		{ "{\"a\": 1,}", 0, 0 },
		{ "{\"a\": 1} // comment", 0, 0 },
		{ "{\f}", 0, 0 },
		{ "{\"a\":\v1}", 0, 0 },
		{ "{\"a\": \"\x1fn\"}", 0, 0 },
		{ "{\"a\": \"\x7f\"}", 1, 0 },
		{ " \t\r\n{\"a\" \r:\n1\t}\r\n ", 1, 0 },
		{ "", 0, 0 },
		{ "   ", 0, 0 },
	};
	size_t i, len;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		len = cases[i].len ? cases[i].len : strlen(cases[i].text);
		if (verdict(cases[i].text, len) != cases[i].python)
			fail_msg("%s: Python says %s", cases[i].text,
			    cases[i].python ? "valid" : "invalid");
	}
	/* integers: 4300 digits are Python's limit; reals have none */
	assert_int_equal(big_number("", 4300, ""), 1);
	assert_int_equal(big_number("-", 4300, ""), 1);
	assert_int_equal(big_number("", 4301, ""), 0);
	assert_int_equal(big_number("-", 4301, ""), 0);
	assert_int_equal(big_number("", 4301, ".5"), 1);
	assert_int_equal(big_number("", 4301, "e1"), 1);
}

/* Nesting: 10000 levels (Python 3.12's C recursion limit) and no more. */
static void
test_depth(void **state)
{
	char *text = malloc(2 * JSONSCAN_MAX_DEPTH + 16);
	size_t d, n;

	(void)state;
	assert_non_null(text);
	for (d = JSONSCAN_MAX_DEPTH - 2; d <= JSONSCAN_MAX_DEPTH + 1; d++) {
		/* the object is level 1, its member's value level 2 */
		n = (size_t)sprintf(text, "{\"a\": ");
		memset(text + n, '[', d - 1);
		n += d - 1;
		memset(text + n, ']', d - 1);
		n += d - 1;
		text[n++] = '}';
		assert_int_equal(verdict(text, n), d <= JSONSCAN_MAX_DEPTH);
	}
	free(text);
}

/* Valid JSON that is not an object, and where its value starts. */
static void
test_other(void **state)
{
	static const char *const other[] = { "[]", "[{\"a\": 1}, NaN]", "\"x\"",
		"12", "-Infinity", "null", " \n true " };
	struct jsonscan js;
	struct seen s;
	size_t i, w;

	(void)state;
	for (i = 0; i < sizeof(other) / sizeof(other[0]); i++)
		for (w = 0; w < NWINDOWS; w++)
			assert_int_equal(scan(other[i], strlen(other[i]),
					     windows[w], &s, &js),
			    JSONSCAN_OTHER);
	assert_int_equal(js.value_at, 3);
	assert_int_equal(scan("[1,]", 4, 0, &s, NULL), JSONSCAN_INVALID);
	assert_int_equal(scan("[1] 2", 5, 0, &s, NULL), JSONSCAN_INVALID);
}

/* Keys and strings decode as Python decodes them (UTF-8 out). */
static void
test_string_decode(void **state)
{
	static const struct {
		const char *lit, *want;
	} cases[] = {
		{ "\"plain\"", "plain" },
		{ "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\/\b\f\n\r\t" },
		{ "\"\\u0061\\u00e9\\u20AC\"", "a\xc3\xa9\xe2\x82\xac" },
		{ "\"\\ud83d\\ude00\"", "\xf0\x9f\x98\x80" },
		{ "\"\\ud83d\"", "\xed\xa0\xbd" },
		{ "\"\\ude00\\ud83d\"", "\xed\xb8\x80\xed\xa0\xbd" },
		{ "\"\\ud83dx\\ude00\"", "\xed\xa0\xbdx\xed\xb8\x80" },
		{ "\"Jo\xc3\xa3o\"", "Jo\xc3\xa3o" },
	};
	char out[64];
	size_t i, n;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		n = jsonscan_string(cases[i].lit, strlen(cases[i].lit), out);
		assert_int_equal(n, strlen(cases[i].want));
		assert_memory_equal(out, cases[i].want, n);
	}
	n = jsonscan_string("\"\\u0000\"", 8, out);
	assert_int_equal(n, 1);
	assert_int_equal(out[0], '\0');
}

/*
 * A bad value early in a large file is found in the first window: the
 * scanner does not read on (and grow) to the end of the file.
 */
static void
test_early_error_reads_one_window(void **state)
{
	const size_t size = 8 * JSONSCAN_WINDOW;
	struct jsonscan js;
	struct seen s;
	char *text = malloc(size);
	size_t n, i;
	int fd;

	(void)state;
	assert_non_null(text);
	n = (size_t)sprintf(text, "{\"a\": {\"count\": nan}");
	for (i = 0; n + 64 < size; i++)
		n += (size_t)sprintf(
		    text + n, ", \"j%zu\": {\"status\": \"done\"}", i);
	text[n++] = '}';
	fd = memfd_create("early", 0);
	assert_int_equal(write(fd, text, n), (ssize_t)n);
	lseek(fd, 0, SEEK_SET);
	memset(&js, 0, sizeof(js));
	js.fd = fd;
	js.member = record;
	js.arg = &s;
	s.src = text;
	s.n = 0;
	assert_int_equal(jsonscan_file(&js), JSONSCAN_INVALID);
	assert_int_equal(js.err_at, 16);
	assert_true(lseek(fd, 0, SEEK_CUR) <= (off_t)JSONSCAN_WINDOW);
	close(fd);
	free(text);
}

/* Line and column as Python counts them: characters, from 1. */
static void
test_position(void **state)
{
	const char *text = "{\n  \"n\xc3\xa3o\": x}";
	long line, col;
	int fd = memfd_create("pos", 0);

	(void)state;
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	jsonscan_position(fd, (off_t)(strchr(text, 'x') - text), &line, &col);
	assert_int_equal(line, 2);
	assert_int_equal(col, 10);
	jsonscan_position(fd, 0, &line, &col);
	assert_int_equal(line, 1);
	assert_int_equal(col, 1);
	close(fd);
}

/*
 * The file hash (issue 22): the same however the bytes are cut into
 * pieces, and a same-size change of any one byte, anywhere, changes it.
 */
static void
hash_of(const unsigned char *p, size_t n, size_t step, uint64_t out[2])
{
	struct jsonscan_hash hs;
	size_t i, k;

	jsonscan_hash_init(&hs);
	for (i = 0; i < n; i += k) {
		k = step == 0 ? (size_t)rand() % 70 + 1 : step;
		if (k > n - i)
			k = n - i;
		jsonscan_hash_add(&hs, p + i, k);
	}
	jsonscan_hash_end(&hs, out);
}

static void
test_hash(void **state)
{
	unsigned char buf[1000];
	uint64_t whole[2], cut[2], other[2];
	size_t i, step;

	(void)state;
	srand(7);
	for (i = 0; i < sizeof(buf); i++)
		buf[i] = (unsigned char)rand();
	hash_of(buf, sizeof(buf), sizeof(buf), whole);
	for (step = 0; step <= 40; step++) {
		hash_of(buf, sizeof(buf), step, cut);
		assert_memory_equal(whole, cut, sizeof(whole));
	}
	for (i = 0; i < sizeof(buf); i++) {
		buf[i] ^= 1;
		hash_of(buf, sizeof(buf), 0, other);
		assert_memory_not_equal(whole, other, sizeof(whole));
		buf[i] ^= 1;
	}
	/* One byte fewer: another hash. */
	hash_of(buf, sizeof(buf) - 1, 0, cut);
	assert_memory_not_equal(whole, cut, sizeof(whole));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_members),
		cmocka_unit_test(test_string_bytes),
		cmocka_unit_test(test_numbers),
		cmocka_unit_test(test_python_dialect),
		cmocka_unit_test(test_depth),
		cmocka_unit_test(test_other),
		cmocka_unit_test(test_string_decode),
		cmocka_unit_test(test_early_error_reads_one_window),
		cmocka_unit_test(test_position),
		cmocka_unit_test(test_hash),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
