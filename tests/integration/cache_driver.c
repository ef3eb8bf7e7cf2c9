/* cache_driver.c: many cache passes in one process, for test_python_dialect.py. */

/*
 * Each document read from standard input goes through cache_reap(), the
 * product's whole pass (open and lock, scan, decide, commit), on a real
 * file, with the settings config_load() gives from the environment, and
 * the real clock. What the pass left in the file, and what it logged, go
 * back on standard output. Starting one `limpeza once` per document would
 * test the same code; this runs ten thousand of them in seconds.
 *
 * Input, per document:  "ACTION FORCE WINDOW LENGTH\n" and LENGTH bytes,
 *   ACTION r (remove) or m (mark), FORCE 0 or 1, WINDOW the scan window's
 *   first size (0: the default).
 * Output, per document: "RC REWRITTEN RUNNING QUEUED FORCED OUTLEN LOGLEN\n",
 *   the file's bytes, the log's bytes (JSON lines).
 *
 * Usage: cache_driver  (LIMPEZA_CACHE_FILE names the file to use)
 */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "limpeza.h"

static char *
slurp(int fd, size_t *len)
{
	struct stat st;
	char *buf;
	ssize_t n;

	if (fstat(fd, &st) == -1 || (buf = malloc((size_t)st.st_size + 1)) ==
	    NULL)
		exit(3);
	n = pread(fd, buf, (size_t)st.st_size, 0);
	if (n != st.st_size)
		exit(3);
	*len = (size_t)n;
	return buf;
}

int
main(void)
{
	/* Old times: not a file caught mid-write, decide at once. */
	struct timespec old[2] = { { 1000000000, 0 }, { 1000000000, 0 } };
	struct config_args args;
	struct cache_result res;
	struct config cfg;
	struct cache *c;
	char action, err[512], *doc, *out, *log;
	size_t window, len, outlen, loglen;
	int force, fd, logfd, rc;
	char logpath[] = "/tmp/limpeza-driver-log-XXXXXX";

	if (config_args_init(&args) == -1 ||
	    config_load(&cfg, &args, err, sizeof(err)) == -1) {
		fprintf(stderr, "cache_driver: %s\n", err);
		return 2;
	}
	/* The log goes to a file of its own, read back after each pass. */
	if ((logfd = mkstemp(logpath)) == -1 || dup2(logfd, 2) == -1)
		return 3;
	unlink(logpath);
	log_stderr_only(LVL_INFO, LOGF_JSON, LANG_PT);
	while (scanf("%c %d %zu %zu", &action, &force, &window, &len) == 4) {
		if (getchar() != '\n' || (doc = malloc(len + 1)) == NULL ||
		    fread(doc, 1, len, stdin) != len)
			return 3;
		fd = open(cfg.cache_file, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd == -1 || write(fd, doc, len) != (ssize_t)len ||
		    futimens(fd, old) == -1 || close(fd) == -1)
			return 3;
		cfg.cache_action = action == 'm' ? CACHE_MARK : CACHE_REMOVE;
		cache_set_window(window);
		if (ftruncate(2, 0) == -1 || lseek(2, 0, SEEK_SET) == -1)
			return 3;

		c = cache_new();
		rc = cache_reap(c, &cfg, NULL, force, 0, &res);
		cache_free(c);

		if ((fd = open(cfg.cache_file, O_RDONLY)) == -1)
			return 3;
		out = slurp(fd, &outlen);
		close(fd);
		log = slurp(2, &loglen);
		printf("%d %d %ld %ld %ld %zu %zu\n", rc, res.rewritten,
		    res.reaped_running, res.reaped_queued, res.forced, outlen,
		    loglen);
		fwrite(out, 1, outlen, stdout);
		fwrite(log, 1, loglen, stdout);
		fflush(stdout);
		free(doc);
		free(out);
		free(log);
	}
	config_free(&cfg);
	config_args_free(&args);
	return 0;
}
