/* dotenv.h: the env files (dotenv.c). */

#ifndef DOTENV_H
#define DOTENV_H

#include <stddef.h>

#include <jansson.h>

struct config;

int dotenv_parse(const char *, size_t,
    int (*)(void *, const char *, const char *, int), void *, char *, size_t);
int dotenv_read_file(
    struct config *, const char *, json_t *, int, char *, size_t);
int dotenv_read_files(struct config *, const char *, json_t *, char *, size_t);

#endif /* DOTENV_H */
