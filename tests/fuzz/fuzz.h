/* fuzz.h: what every fuzz target shares: a fixed clock and silence. */

#ifndef FUZZ_H
#define FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "limpeza.h"

int LLVMFuzzerTestOneInput(const uint8_t *, size_t);

double fuzz_now = 1800000000.0;

double
now_realtime(void)
{
	return fuzz_now;
}

long long
now_monotonic_ms(void)
{
	return 5000000;
}

int
stop_pending(void)
{
	return 0;
}

/* A NUL-terminated copy of the input. */
static inline char *
fuzz_str(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);

	if (s == NULL)
		abort();
	memcpy(s, data, size);
	s[size] = '\0';
	return s;
}

static inline void
fuzz_quiet(void)
{
	log_stderr_only((enum log_level)(LVL_ERROR + 1), LOGF_TEXT, LANG_EN);
}

#endif
