/* mask.h: URLs as they may be shown (mask.c). */

#ifndef MASK_H
#define MASK_H

#include <stddef.h>

int mask_dburl(const char *, char *, size_t);
int mask_dburl_check(const char *);
int mask_is_conninfo(const char *);
int mask_http(const char *, int, char *, size_t);
int mask_http_check(const char *);

#endif /* MASK_H */
