/* fuzz_mask.c: a URL's password never survives masking. */

#include <ctype.h>
#include <stdio.h>

#include "fuzz.h"

/*
 * The input's first bytes (up to the first non-alphanumeric) are taken as
 * a password of at least 6 characters, placed in the places a password
 * goes; the rest is arbitrary URL text around it.
 */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *fmt[] = { "postgresql://user:%s@%s",
		"host=h password=%s %s", "postgres://h/db?password=%s&%s" };
	char *in = fuzz_str(data, size), *rest, pw[64], url[8192], out[8192];
	char blank[8192];
	size_t pl = 0;
	int form;

	while (pl < size && pl < sizeof(pw) - 1 && isalnum((unsigned char)in[pl]))
		pl++;
	if (pl < 6 || pl == size) {
		config_mask_url(in, out, sizeof(out));
		free(in);
		return 0;
	}
	memcpy(pw, in, pl);
	pw[pl] = '\0';
	rest = in + pl + 1;
	form = (unsigned char)in[pl] % 3;
	/* The same URL with a placeholder: a password that is also a word
	 * of the URL (say "password") proves nothing. */
	snprintf(blank, sizeof(blank), fmt[form], "\x01", rest);
	snprintf(url, sizeof(url), fmt[form], pw, rest);
	if (strstr(blank, pw) == NULL &&
	    config_mask_url(url, out, sizeof(out)) == 0 &&
	    strstr(out, pw) != NULL)
		abort();
	free(in);
	return 0;
}
