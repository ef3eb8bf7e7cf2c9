/* fuzz_text.c: any bytes in an error, a path or a host name give valid output. */

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fuzz.h"
#include "store.h"

/*
 * The oracle is Python, as the webhook's receiver and a JSON-log reader
 * would be: one python3 process, started once, answers for each output
 * whether json.loads() takes it as an object ('j') or whether it is one
 * line of strict UTF-8 ('t'). limpeza's own checks are not asked.
 */
static const char oracle_py[] =
    "import json, sys\n"
    "i, o = sys.stdin.buffer, sys.stdout.buffer\n"
    "while True:\n"
    "    h = i.read(5)\n"
    "    if len(h) < 5: break\n"
    "    b = i.read(int.from_bytes(h[1:], 'little'))\n"
    "    try:\n"
    "        t = b.decode('utf-8')\n"
    "        ok = ('\\n' not in t and '\\r' not in t) if h[:1] == b't' \\\n"
    "            else isinstance(json.loads(t), dict)\n"
    "    except ValueError:\n"
    "        ok = False\n"
    "    o.write(b'1' if ok else b'0'); o.flush()\n";

static int to_py = -1, from_py = -1;

static void
oracle_start(void)
{
	int in[2], out[2];
	pid_t pid;

	if (pipe(in) == -1 || pipe(out) == -1)
		abort();
	if ((pid = fork()) == -1)
		abort();
	if (pid == 0) {
		dup2(in[0], 0);
		dup2(out[1], 1);
		close(in[1]);
		close(out[0]);
		execl("/usr/bin/python3", "python3", "-c", oracle_py,
		    (char *)NULL);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	signal(SIGPIPE, SIG_IGN);
	to_py = in[1];
	from_py = out[0];
}

/*
 * Whole writes and reads, whatever interrupts them: libFuzzer's timer
 * signal does (no SA_RESTART), and a short or failed transfer would put
 * the two sides out of step.
 */
static void
put(const void *p, size_t n)
{
	const char *c = p;
	ssize_t w;

	while (n > 0) {
		if ((w = write(to_py, c, n)) == -1) {
			if (errno == EINTR)
				continue;
			abort();
		}
		c += w;
		n -= (size_t)w;
	}
}

static int
get(void)
{
	unsigned char c;
	ssize_t r;

	while ((r = read(from_py, &c, 1)) == -1 && errno == EINTR)
		;
	return r == 1 ? c : -1;
}

/* Python's word on s: kind 'j' (a JSON object) or 't' (a line). */
static void
oracle_check(char kind, const char *s)
{
	unsigned char h[5];
	size_t n = strlen(s);
	int c;

	if (to_py == -1)
		oracle_start();
	h[0] = (unsigned char)kind;
	h[1] = n & 0xff;
	h[2] = (n >> 8) & 0xff;
	h[3] = (n >> 16) & 0xff;
	h[4] = (n >> 24) & 0xff;
	put(h, sizeof(h));
	put(s, n);
	if ((c = get()) != '1') {
		fprintf(stderr, "python refused (%d) %c: %s\n", c, kind, s);
		abort();
	}
}

static void
line(char *buf, size_t len, enum log_format f, ...)
{
	va_list ap;

	va_start(ap, f);
	if (log_format_line(buf, len, LVL_ERROR, EV_CACHE_ERROR, f, LANG_PT,
		fuzz_now, ap) == -1)
		abort();
	va_end(ap);
}

/*
 * The input is up to three texts split at NUL bytes: a driver's error, a
 * path and a host name. Each goes where such a text goes: store_err()'s
 * cut, the alert's body, a log line in text and in JSON (a buffer as
 * small as 64 bytes too, to cut inside anything), and stats --json.
 */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *in = fuzz_str(data, size), *err = in, *path = "", *host = "";
	char *body, *dump, small[64], big[4096];
	struct store st;
	json_t *o;
	size_t n;

	fuzz_quiet();
	n = strlen(in);
	if (n < size) {
		path = in + n + 1;
		n += 1 + strlen(path);
		if (n < size)
			host = in + n + 1;
	}
	memset(&st, 0, sizeof(st));
	store_err(&st, "cannot open %s: %s", path, err);
	oracle_check('t', st.err);

	if ((body = alert_body("store_unreachable", 3, st.err, host,
		 (time_t)fuzz_now)) == NULL)
		abort();
	oracle_check('j', body);
	free(body);
	/* any other message (a library's error, a path) as it came */
	if ((body = alert_body("cache_error", 1, err, host,
		 (time_t)fuzz_now)) == NULL)
		abort();
	oracle_check('j', body);
	free(body);

	line(big, sizeof(big), LOGF_TEXT, path, st.err);
	oracle_check('t', big);
	line(small, sizeof(small), LOGF_TEXT, path, err);
	oracle_check('t', small);
	line(big, sizeof(big), LOGF_JSON, path, err);
	oracle_check('j', big);

	o = json_pack("{s:o, s:o}", "path", text_json(path), "error",
	    text_json(err));
	if (o == NULL || (dump = json_dumps(o, JSON_INDENT(2))) == NULL)
		abort();
	oracle_check('j', dump);
	free(dump);
	json_decref(o);
	free(in);
	return 0;
}
