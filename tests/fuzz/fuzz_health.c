/* fuzz_health.c: only a JSON object's non-negative integer jobs_active counts. */

#include "fuzz.h"

/*
 * The oracle is jansson's own typing: json_unpack's "I" takes an integer
 * and nothing else (not a real, however round, nor a string of digits),
 * so a health_parse that loosened its rule would disagree here.
 */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_int_t v = -1;
	char err[256];
	long long n = -1;
	json_t *o;
	int rc, want;

	rc = health_parse((const char *)data, size, &n, err, sizeof(err));
	o = json_loadb((const char *)data, size, 0, NULL);
	want = o != NULL &&
	    json_unpack(o, "{s:I}", "jobs_active", &v) == 0 && v >= 0;
	if (rc != (want ? 0 : -1) || (want && n != v))
		abort();
	if (rc == -1 && (strlen(err) == 0 || strchr(err, '\n') != NULL))
		abort();
	json_decref(o);
	return 0;
}
