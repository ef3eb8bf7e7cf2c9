/* fuzz_dotenv.c: any env file text parses without harm into sane keys. */

#include <ctype.h>

#include "dotenv.h"
#include "fuzz.h"

static int
check(void *arg, const char *key, const char *value, int line)
{
	(void)arg;
	(void)value;
	if (line < 1)
		abort();
	if (*key == '\0' || isdigit((unsigned char)*key))
		abort();
	for (; *key != '\0'; key++)
		if (!isalnum((unsigned char)*key) && *key != '_' && *key != '.')
			abort();
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[160];
	int bad = dotenv_parse((const char *)data, size, check, NULL, err,
	    sizeof(err));

	if (bad < 0 || (bad > 0 && strncmp(err, "line ", 5) != 0))
		abort();
	return 0;
}
