/* dotenv.c: the env files: a dotenv parser and the files' reader. */

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dotenv.h"
#include "limpeza.h"

#define MAX_ENV_FILE (1024L * 1024)

/*
 * A dotenv parser in the common dialect: comments, blank lines, optional
 * `export`, KEY=value with the value bare (a " #" starts a comment),
 * 'single-quoted' (literal) or "double-quoted" (backslash escapes, may
 * span lines). cb gets each key, value and the line the assignment
 * starts on; a cb that returns non-zero stops the parse. Lines that are
 * none of these are skipped and counted; err describes the first.
 * Returns the number of skipped lines.
 */
int
dotenv_parse(const char *text, size_t len,
    int (*cb)(void *, const char *, const char *, int), void *arg, char *err,
    size_t errlen)
{
	const char *p = text, *end = text + len, *k0, *k1;
	char *val = NULL;
	size_t vlen, vcap = 0;
	int line = 1, nbad = 0, start;
	const char *why;

	if (errlen > 0)
		*err = '\0';
	while (p < end) {
		start = line;
		while (p < end && (*p == ' ' || *p == '\t' || *p == '\r'))
			p++;
		if (p == end)
			break;
		if (*p == '\n' || *p == '#')
			goto skip_line;
		if ((size_t)(end - p) > 7 && strncmp(p, "export", 6) == 0 &&
		    (p[6] == ' ' || p[6] == '\t')) {
			p += 7;
			while (p < end && (*p == ' ' || *p == '\t'))
				p++;
		}
		k0 = p;
		while (p < end &&
		    (isalnum((unsigned char)*p) || *p == '_' || *p == '.'))
			p++;
		k1 = p;
		while (p < end && (*p == ' ' || *p == '\t'))
			p++;
		why = "expected KEY=value";
		if (k1 == k0 || isdigit((unsigned char)*k0) || p == end ||
		    *p != '=')
			goto bad_line;
		p++;
		while (p < end && (*p == ' ' || *p == '\t'))
			p++;

		vlen = 0;
		if (vcap < (size_t)(end - p) + 1) {
			vcap = (size_t)(end - p) + 1;
			free(val);
			val = malloc(vcap);
			if (val == NULL)
				fatalx_oom();
		}
		if (p < end && (*p == '"' || *p == '\'')) {
			char q = *p++;

			while (p < end && *p != q) {
				if (*p == '\n')
					line++;
				if (q == '"' && *p == '\\' && p + 1 < end) {
					p++;
					switch (*p) {
					case 'n':
						val[vlen++] = '\n';
						break;
					case 't':
						val[vlen++] = '\t';
						break;
					case 'r':
						val[vlen++] = '\r';
						break;
					default:
						val[vlen++] = *p;
					}
					p++;
					continue;
				}
				val[vlen++] = *p++;
			}
			why = "unterminated quoted value";
			if (p == end)
				goto bad_line;
			p++;
			while (
			    p < end && (*p == ' ' || *p == '\t' || *p == '\r'))
				p++;
			why = "text after the closing quote";
			if (p < end && *p != '\n' && *p != '#')
				goto bad_line;
		} else {
			while (p < end && *p != '\n') {
				if (*p == '#' && vlen > 0 &&
				    (val[vlen - 1] == ' ' ||
					val[vlen - 1] == '\t'))
					break;
				val[vlen++] = *p++;
			}
			while (vlen > 0 &&
			    (val[vlen - 1] == ' ' || val[vlen - 1] == '\t' ||
				val[vlen - 1] == '\r'))
				vlen--;
		}
		val[vlen] = '\0';
		{
			char key[128];
			size_t kl = (size_t)(k1 - k0);

			why = "key longer than 127 characters";
			if (kl >= sizeof(key))
				goto bad_line;
			memcpy(key, k0, kl);
			key[kl] = '\0';
			if (cb(arg, key, val, start) != 0)
				break;
		}
		goto skip_line;
	bad_line:
		if (nbad++ == 0 && errlen > 0)
			snprintf(err, errlen, "line %d: %s", start, why);
	skip_line:
		while (p < end && *p != '\n')
			p++;
		if (p < end) {
			p++;
			line++;
		}
	}
	free(val);
	return nbad;
}

/* A string map (jansson object) holding the first value of every key. */
struct env_file_ctx {
	json_t *file;
	const char *path;
	char *err; /* set, and the file refused, by a setting not UTF-8 */
	size_t errlen;
	int failed;
};

/* key names one of limpeza's settings (DATABASE_URL, LIMPEZA_...). */
static int
is_setting(const char *key)
{
	int k;

	for (k = 0; k < config_nsettings(); k++)
		if (strcmp(config_setting_env(k), key) == 0)
			return 1;
	return 0;
}

static int
env_file_set(void *arg, const char *key, const char *value, int line)
{
	struct env_file_ctx *ctx = arg;
	json_t *v;

	/*
	 * A value that is not UTF-8 (jansson refuses it) would be no
	 * value at all: a setting so written is refused by name, not read
	 * as unset (a DATABASE_URL "not set"). The value is not shown: it
	 * may be a password. Other keys are not limpeza's to judge.
	 */
	if ((v = json_string(value)) == NULL) {
		if (!is_setting(key))
			return 0;
		snprintf(ctx->err, ctx->errlen,
		    "env file %s, line %d: the value of %s is not UTF-8 "
		    "text (not shown); write it in UTF-8",
		    ctx->path, line, key);
		ctx->failed = 1;
		return 1;
	}
	/* Within one file the last assignment wins, as in a shell. */
	json_object_set_new(ctx->file, key, v);
	return 0;
}

/*
 * Reads one dotenv file into vars, keeping values already there. A file
 * that cannot be read is worth a warning, or with strict (a file named
 * with --env-file: the unit's settings file) an error, since the daemon
 * would otherwise run without its settings (a missing file is fine). A
 * setting whose value is not UTF-8 is an error either way.
 */
int
dotenv_read_file(struct config *cfg, const char *path, json_t *vars, int strict,
    char *err, size_t errlen)
{
	char why[256] = "";
	struct env_file_ctx ctx;
	struct stat st;
	char *buf = NULL, perr[160];
	ssize_t n;
	size_t len = 0;
	int fd, nbad;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd == -1) {
		if (errno == ENOENT)
			return 0;
		snprintf(why, sizeof(why), "%s", strerror(errno));
		goto unreadable;
	}
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
		snprintf(why, sizeof(why), "not a regular file");
		goto done;
	}
	if (st.st_mode & (S_IRGRP | S_IROTH))
		config_warn(cfg,
		    "env file %s is readable by group or others (mode %04o) "
		    "and may hold secrets: chmod 600 it",
		    path, (unsigned)(st.st_mode & 07777));
	if (st.st_size > MAX_ENV_FILE) {
		snprintf(why, sizeof(why), "larger than 1 MiB, skipped");
		goto done;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (buf == NULL)
		fatalx_oom();
	while ((n = read(fd, buf + len, (size_t)st.st_size - len)) > 0)
		len += (size_t)n;
	if (n == -1) {
		snprintf(why, sizeof(why), "%s", strerror(errno));
		goto done;
	}
	ctx.file = json_object();
	if (ctx.file == NULL)
		fatalx_oom();
	ctx.path = path;
	ctx.err = err;
	ctx.errlen = errlen;
	ctx.failed = 0;
	nbad = dotenv_parse(buf, len, env_file_set, &ctx, perr, sizeof(perr));
	if (nbad > 0)
		config_warn(cfg, "env file %s: %d line(s) skipped, first: %s",
		    path, nbad, perr);
	if (!ctx.failed)
		json_object_update_missing(vars, ctx.file);
	json_decref(ctx.file);
	if (ctx.failed) {
		free(buf);
		close(fd);
		return -1;
	}
done:
	free(buf);
	close(fd);
unreadable:
	if (*why == '\0')
		return 0;
	if (strict) {
		snprintf(err, errlen,
		    "cannot read the settings file %s given with --env-file: "
		    "%s (it must be readable by the user limpeza runs as)",
		    path, why);
		return -1;
	}
	config_warn(cfg, "env file %s: %s", path, why);
	return 0;
}

/* The files of a list, in order; -1 with err at a setting not UTF-8. */
int
dotenv_read_files(struct config *cfg, const char *list, json_t *vars, char *err,
    size_t errlen)
{
	char *copy, *p, *tok;
	int rc = 0;

	copy = strdup(list);
	if (copy == NULL)
		fatalx_oom();
	for (p = copy; rc == 0 && (tok = strsep(&p, ":")) != NULL;)
		if (*tok != '\0')
			rc = dotenv_read_file(cfg, tok, vars, 0, err, errlen);
	free(copy);
	return rc;
}
