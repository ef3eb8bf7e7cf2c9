/* fuzz_settings.c: every setting's parser, and durations, on any value. */

#include "fuzz.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[512], *value;
	const char *env;
	long long ms;
	int rc;

	if (size == 0)
		return 0;
	fuzz_quiet();
	env = config_setting_env(data[0] % config_nsettings());
	value = fuzz_str(data + 1, size - 1);
	err[0] = '\0';
	rc = config_check_setting(env, value, err, sizeof(err));
	/* A refusal is one line naming the setting. */
	if (rc == -1 && (strstr(err, env) == NULL || strchr(err, '\n') != NULL))
		abort();
	if (config_parse_duration(value, &ms) == 0 && ms < 0)
		abort();
	free(value);
	return 0;
}
