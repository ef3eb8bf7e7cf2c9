/* fuzz_health.c: only a JSON object's non-negative integer jobs_active counts. */

#include "fuzz.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[256];
	long long n = -1;
	json_t *o, *v;
	int rc, want;

	rc = health_parse((const char *)data, size, &n, err, sizeof(err));
	o = json_loadb((const char *)data, size, 0, NULL);
	v = json_object_get(o, "jobs_active");
	want = json_is_object(o) && json_is_integer(v) &&
	    json_integer_value(v) >= 0;
	if (rc != (want ? 0 : -1) || (want && n != json_integer_value(v)))
		abort();
	if (rc == -1 && (strlen(err) == 0 || strchr(err, '\n') != NULL))
		abort();
	json_decref(o);
	return 0;
}
