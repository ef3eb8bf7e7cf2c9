/* jsonscan.h: JSON as Python's json module reads it, scanned from a file. */

#ifndef JSONSCAN_H
#define JSONSCAN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * The language is exactly what Python's json.loads() accepts from a file
 * read as UTF-8: RFC 8259 plus NaN, Infinity and -Infinity, integers of
 * any length up to Python's int conversion limit, and \u escapes of lone
 * surrogates; NUL is a valid character in keys too. Python's nesting limit
 * depends on its version and on the caller's stack: up to 3.11 it is the
 * recursion limit (1000) less the frames in use, from 3.12 on the C
 * recursion limit (10000) less the same. The scanner takes the larger
 * limit itself (10000) and refuses deeper nesting, so it never refuses a
 * file the API's Python reads.
 *
 * The file is read through a window that holds one member of the top-level
 * object at a time, so the scanner's memory follows the largest member,
 * not the file (what a caller keeps per member is the caller's).
 * Nothing here knows what the members mean: the caller names the keys it
 * wants located inside each member's object value, and gets each member,
 * with those keys' spans, through a callback.
 */
#define JSONSCAN_MAX_DEPTH 10000
#define JSONSCAN_MAX_INT_DIGITS 4300 /* sys.get_int_max_str_digits() */
#define JSONSCAN_MAX_FIELDS 8
#define JSONSCAN_WINDOW ((size_t)1024 * 1024)

/*
 * A member of a member's object value, as offsets into the member's bytes:
 * the last one with its key, as Python keeps the last of duplicate keys.
 * value_end == 0: the object has no such member.
 */
struct jsonscan_field {
	size_t key_start, key_end; /* the key, quotes included */
	size_t value_start, value_end;
};

/*
 * One member of the top-level object, while its bytes are in the window:
 * bytes[0] is its key's opening quote, bytes[len - 1] its value's last
 * byte, and off is where bytes[0] sits in the file. The pointers are good
 * until the callback returns.
 */
struct jsonscan_member {
	off_t off;
	const char *bytes;
	size_t len;
	size_t key_end; /* one past the key's closing quote */
	size_t value_start;
	const char *key; /* decoded, see jsonscan_string() */
	size_t key_len;
	int object; /* the value is an object: field[] is filled */
	struct jsonscan_field field[JSONSCAN_MAX_FIELDS];
};

enum jsonscan_result {
	JSONSCAN_OBJECT, /* an object; every member went to the callback */
	JSONSCAN_OTHER, /* valid JSON that is not an object */
	JSONSCAN_INVALID, /* not JSON to Python: see err and err_at */
	JSONSCAN_FAILED /* errno: a read, memory, or the callback said stop */
};

struct jsonscan {
	/* Set by the caller. */
	int fd; /* read from its current offset to its end */
	size_t window; /* the window's first size; 0: JSONSCAN_WINDOW */
	const char *const *fields; /* keys to locate in member objects */
	size_t nfields;
	int (*member)(void *, const struct jsonscan_member *); /* -1: stop */
	void *arg;
	/* Set by jsonscan_file(). */
	off_t size; /* bytes read: the whole file unless FAILED or INVALID */
	off_t value_at; /* where the top-level value starts */
	const char *err;
	off_t err_at;
	uint64_t hash[2]; /* of the bytes read: whole file if OBJECT/OTHER */
};

/*
 * A 128-bit hash of a stream of bytes, the same however the stream is cut
 * into pieces. Not cryptographic: it tells one version of a file from
 * another written by a writer that is no adversary.
 */
struct jsonscan_hash {
	uint64_t h[4];
	uint64_t len;
	unsigned char tail[32];
	size_t ntail;
};

void jsonscan_hash_init(struct jsonscan_hash *);
void jsonscan_hash_add(struct jsonscan_hash *, const void *, size_t);
void jsonscan_hash_end(struct jsonscan_hash *, uint64_t[2]);

enum jsonscan_result jsonscan_file(struct jsonscan *);
size_t jsonscan_string(const char *, size_t, char *);
void jsonscan_position(int, off_t, long *, long *);

#endif /* JSONSCAN_H */
