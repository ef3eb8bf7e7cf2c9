/* fuzz_cache.c: the cache reaper against jansson, differentially. */

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"

/*
 * Every input jansson rejects (or that is not an object) must be left
 * byte for byte; every object must come out as a file that jansson reads
 * as the original minus exactly the jobs cache_decide() gives up, and an
 * input with nothing to reap must not be rewritten at all.
 */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char path[64];
	struct timespec old[2] = { { 1000000000, 0 }, { 1000000000, 0 } };
	struct config cfg;
	struct cache_result res;
	struct cache *c;
	json_t *orig, *got, *want, *v;
	const char *key;
	char *out;
	FILE *f;
	size_t n;
	int fd, rc, reaped = 0;

	if (*path == '\0') {
		fuzz_quiet();
		snprintf(path, sizeof(path), "/tmp/limpeza-fuzz-XXXXXX");
		close(mkstemp(path));
	}
	fd = open(path, O_WRONLY | O_TRUNC);
	if (fd == -1 || write(fd, data, size) != (ssize_t)size)
		abort();
	futimens(fd, old); /* not caught mid-write: decide at once */
	close(fd);

	memset(&cfg, 0, sizeof(cfg));
	cfg.cache_file = path;
	cfg.running_ttl = 180000;
	cfg.queued_ttl = 120000;
	cfg.running_status = "running";
	cfg.queued_status = "queued";
	cfg.error_status = "error";
	cfg.cache_action = size % 2 ? CACHE_MARK : CACHE_REMOVE;

	/* small windows cut the input anywhere; the default one does not */
	cache_set_window(size % 3 ? 1 + size % 29 : 0);
	c = cache_new();
	rc = cache_reap(c, &cfg, 0, 0, &res);
	cache_free(c);

	out = malloc(size * 2 + 65536);
	f = fopen(path, "rb");
	n = fread(out, 1, size * 2 + 65536, f);
	fclose(f);

	orig = json_loadb((const char *)data, size, JSON_ALLOW_NUL, NULL);
	if (orig == NULL || !json_is_object(orig)) {
		if (rc != -1 || n != size || memcmp(out, data, size) != 0)
			abort();
		goto done;
	}
	if (rc != 0)
		abort();
	want = json_object();
	json_object_foreach(orig, key, v)
	{
		struct cache_policy pol = { 180, 120, 0, 0, 0, "running",
			"queued" };
		double age;
		enum cache_fate fate = cache_decide(v, &pol, fuzz_now, 0, &age);

		if (fate == FATE_KEEP) {
			json_object_set(want, key, v);
			continue;
		}
		reaped++;
		if (cfg.cache_action == CACHE_MARK) {
			json_t *m = json_deep_copy(v);
			char msg[128];

			config_reap_message(&cfg,
			    fate == FATE_RUNNING ? REAP_RUNNING : REAP_QUEUED,
			    msg, sizeof(msg));
			json_object_set_new(m, "status", json_string("error"));
			json_object_set_new(m, "error", json_string(msg));
			json_object_set_new(want, key, m);
		}
	}
	got = json_loadb(out, n, JSON_ALLOW_NUL, NULL);
	if (got == NULL || !json_equal(got, want))
		abort();
	if (reaped == 0 && (n != size || memcmp(out, data, size) != 0))
		abort();
	json_decref(got);
	json_decref(want);
done:
	json_decref(orig);
	free(out);
	return 0;
}
