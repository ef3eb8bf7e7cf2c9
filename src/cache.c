/* cache.c: the cache-file reaper: flock, decide, rewrite atomically. */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "limpeza.h"

#define CACHE_TRIES 5
#define LOCK_WAIT_MS 2000
#define CACHE_MAX_BYTES (2LL * 1024 * 1024 * 1024)

/*
 * What the reaper remembers between passes: when it first saw each active
 * job that carries no usable timestamp, keyed "status\nid", in monotonic
 * milliseconds. Only jobs present in the last pass are kept, so the map
 * never grows beyond the file. A restart forgets it, which only gives
 * such jobs more time.
 */
struct cache {
	json_t *seen;
	/*
	 * The file as the last full pass left it, and when its first active
	 * job falls due: until then, an unchanged file is not even read.
	 */
	int known;
	struct stat last;
	long long next_due; /* monotonic ms; LLONG_MAX: no active job */
	long active;
	double oldest_since; /* wall clock start of the oldest active job */
};

/* One top-level member of the file, as byte offsets into the buffer. */
struct member {
	size_t ks, ke, vs, ve;
	enum cache_fate fate;
	double age;
	json_t *job;
	char *id;
};

struct scan {
	struct member *m;
	size_t n, cap;
};

struct cache *
cache_new(void)
{
	struct cache *c = calloc(1, sizeof(*c));

	if (c == NULL || (c->seen = json_object()) == NULL)
		fatalx_oom();
	return c;
}

/* Forgets the file, so the next pass reads it (new settings, new TTLs). */
void
cache_invalidate(struct cache *c)
{
	c->known = 0;
}

/*
 * When the first active job in the file falls due, in monotonic ms
 * (LLONG_MAX if none, or if the file is not known yet).
 */
long long
cache_next_due(const struct cache *c)
{
	return c->known ? c->next_due : LLONG_MAX;
}

void
cache_free(struct cache *c)
{
	if (c == NULL)
		return;
	json_decref(c->seen);
	free(c);
}

static long long
days_from_civil(long long y, unsigned m, unsigned d)
{
	long long era;
	unsigned yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = (unsigned)(y - era * 400);
	doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (long long)doe - 719468;
}

static int
digits(const char **p, int n, int *out)
{
	int v = 0;

	while (n-- > 0) {
		if (**p < '0' || **p > '9')
			return -1;
		v = v * 10 + (*(*p)++ - '0');
	}
	*out = v;
	return 0;
}

/*
 * ISO-8601 as Python's isoformat() and most APIs write it:
 * YYYY-MM-DD[(T| )HH:MM[:SS[.fff]]][Z|+HH:MM|+HHMM|+HH]. A time without
 * a zone is UTC, as the API writes utcnow().
 */
int
cache_parse_iso8601(const char *s, double *out)
{
	static const int mdays[] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30,
		31 };
	int y, mo, d, h = 0, mi = 0, sec = 0, zh = 0, zm = 0, sign = 0;
	double frac = 0, scale = 0.1;
	const char *p = s;

	if (digits(&p, 4, &y) == -1 || *p++ != '-' ||
	    digits(&p, 2, &mo) == -1 || *p++ != '-' || digits(&p, 2, &d) == -1)
		return -1;
	if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1])
		return -1;
	if (*p == 'T' || *p == 't' || *p == ' ') {
		p++;
		if (digits(&p, 2, &h) == -1 || *p++ != ':' ||
		    digits(&p, 2, &mi) == -1)
			return -1;
		if (*p == ':') {
			p++;
			if (digits(&p, 2, &sec) == -1)
				return -1;
			if (*p == '.' || *p == ',') {
				p++;
				if (*p < '0' || *p > '9')
					return -1;
				for (; *p >= '0' && *p <= '9'; p++) {
					frac += (*p - '0') * scale;
					scale /= 10;
				}
			}
		}
		if (h > 23 || mi > 59 || sec > 60)
			return -1;
		if (*p == 'Z' || *p == 'z')
			p++;
		else if (*p == '+' || *p == '-') {
			sign = *p++ == '-' ? -1 : 1;
			if (digits(&p, 2, &zh) == -1)
				return -1;
			if (*p == ':')
				p++;
			if (*p != '\0' && digits(&p, 2, &zm) == -1)
				return -1;
			if (zh > 23 || zm > 59)
				return -1;
		}
	}
	if (*p != '\0')
		return -1;
	*out =
	    (double)(days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400LL +
		h * 3600LL + mi * 60LL + sec -
		sign * (zh * 3600LL + zm * 60LL)) +
	    frac;
	return 0;
}

/*
 * A job's time field: epoch seconds (int or float) or an ISO-8601 string.
 * Zero, negative and absurd values count as missing: the old cleaner read
 * a missing time as 1970 and killed every new job (SPEC §8.1).
 */
int
cache_parse_time(const json_t *v, double *out)
{
	double t;
	char *end;

	if (json_is_integer(v))
		t = (double)json_integer_value(v);
	else if (json_is_real(v))
		t = json_real_value(v);
	else if (json_is_string(v)) {
		const char *s = json_string_value(v);

		if (cache_parse_iso8601(s, &t) == -1) {
			t = strtod(s, &end);
			if (end == s || *end != '\0')
				return -1;
		}
	} else
		return -1;
	if (!isfinite(t) || t <= 0 || t > 1e11)
		return -1;
	*out = t;
	return 0;
}

/*
 * Decides one job's fate. now is the host clock (the clock that wrote
 * the times); first_age is how long this job has been seen in its status,
 * used when it has no usable time. A job is reaped only when it is
 * strictly older than its TTL.
 */
enum cache_fate
cache_decide(const json_t *job, const struct cache_policy *p, double now,
    double first_age, double *age)
{
	const char *status;
	int running, queued;
	double t;

	*age = 0;
	if (!json_is_object(job))
		return p->force && p->force_all ? FATE_FORCED : FATE_KEEP;
	status = json_string_value(json_object_get(job, "status"));
	running = status != NULL && strcmp(status, p->running) == 0;
	queued = status != NULL && strcmp(status, p->queued) == 0;
	if (!running && !queued)
		return p->force && p->force_all ? FATE_FORCED : FATE_KEEP;

	if (cache_parse_time(json_object_get(job, "start_time"), &t) == 0 ||
	    (queued &&
		cache_parse_time(json_object_get(job, "created_at"), &t) == 0))
		*age = now - t;
	else
		*age = first_age;

	if (p->force)
		return p->force_min_age > 0 && *age < p->force_min_age
		    ? FATE_KEEP
		    : FATE_FORCED;
	if (running && *age > p->running_ttl)
		return FATE_RUNNING;
	if (queued && *age > p->queued_ttl)
		return FATE_QUEUED;
	return FATE_KEEP;
}

static size_t
skip_ws(const char *b, size_t len, size_t i)
{
	while (i < len &&
	    (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r'))
		i++;
	return i;
}

static size_t
skip_string(const char *b, size_t len, size_t i)
{
	for (i++; i < len && b[i] != '"'; i++)
		if (b[i] == '\\')
			i++;
	return i < len ? i + 1 : len + 1;
}

/* Ends a value that starts at i: a string, a nested container or a scalar. */
static size_t
skip_value(const char *b, size_t len, size_t i)
{
	size_t depth = 0;

	if (i >= len)
		return len + 1;
	if (b[i] == '"')
		return skip_string(b, len, i);
	if (b[i] != '{' && b[i] != '[') {
		while (i < len && b[i] != ',' && b[i] != '}' && b[i] != ']' &&
		    b[i] != ' ' && b[i] != '\t' && b[i] != '\n' && b[i] != '\r')
			i++;
		return i;
	}
	while (i < len) {
		if (b[i] == '"') {
			i = skip_string(b, len, i);
			continue;
		}
		if (b[i] == '{' || b[i] == '[')
			depth++;
		else if ((b[i] == '}' || b[i] == ']') && --depth == 0)
			return i + 1;
		i++;
	}
	return len + 1;
}

/*
 * Walks the members of a top-level object that jansson has already
 * accepted, giving the byte spans of each key (quotes included) and
 * value. The spans let kept jobs be copied byte for byte: the reaper
 * never re-serialises data it does not own.
 */
int
cache_members(const char *b, size_t len,
    int (*cb)(void *, size_t, size_t, size_t, size_t), void *arg)
{
	size_t i = skip_ws(b, len, 0), ks, ke, vs, ve;

	if (i >= len || b[i] != '{')
		return -1;
	i = skip_ws(b, len, i + 1);
	if (i < len && b[i] == '}')
		return 0;
	for (;;) {
		if (i >= len || b[i] != '"')
			return -1;
		ks = i;
		ke = skip_string(b, len, i);
		if (ke > len)
			return -1;
		i = skip_ws(b, len, ke);
		if (i >= len || b[i] != ':')
			return -1;
		vs = skip_ws(b, len, i + 1);
		ve = skip_value(b, len, vs);
		if (ve > len || ve == vs)
			return -1;
		if (cb(arg, ks, ke, vs, ve) != 0)
			return -1;
		i = skip_ws(b, len, ve);
		if (i < len && b[i] == '}')
			return 0;
		if (i >= len || b[i] != ',')
			return -1;
		i = skip_ws(b, len, i + 1);
	}
}

static int
scan_add(void *arg, size_t ks, size_t ke, size_t vs, size_t ve)
{
	struct scan *s = arg;

	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 64;
		struct member *m = realloc(s->m, cap * sizeof(*m));

		if (m == NULL)
			fatalx_oom();
		s->m = m;
		s->cap = cap;
	}
	memset(&s->m[s->n], 0, sizeof(s->m[0]));
	s->m[s->n].ks = ks;
	s->m[s->n].ke = ke;
	s->m[s->n].vs = vs;
	s->m[s->n].ve = ve;
	s->n++;
	return 0;
}

static int
read_all(int fd, char **bufp, size_t *lenp)
{
	size_t cap = 65536, len = 0;
	char *buf = malloc(cap), *nb;
	ssize_t n;
	struct stat st;

	if (buf == NULL)
		fatalx_oom();
	if (fstat(fd, &st) == 0 && st.st_size + 1 > (off_t)cap)
		cap = (size_t)st.st_size + 1;
	if ((nb = realloc(buf, cap)) == NULL)
		fatalx_oom();
	buf = nb;
	for (;;) {
		if (len == cap) {
			if ((long long)cap > CACHE_MAX_BYTES) {
				errno = EFBIG;
				goto fail;
			}
			cap *= 2;
			if ((nb = realloc(buf, cap)) == NULL)
				fatalx_oom();
			buf = nb;
		}
		n = read(fd, buf + len, cap - len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			goto fail;
		if (n == 0)
			break;
		len += (size_t)n;
	}
	*bufp = buf;
	*lenp = len;
	return 0;
fail:
	free(buf);
	return -1;
}

static int
write_full(int fd, const char *b, size_t len)
{
	ssize_t n;

	while (len > 0) {
		n = write(fd, b, len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			return -1;
		b += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Takes the exclusive lock, waiting a bounded time for a cooperating writer. */
static int
lock_file(int fd)
{
	struct timespec pause = { 0, 10L * 1000 * 1000 };
	long long deadline = now_monotonic_ms() + LOCK_WAIT_MS;

	while (flock(fd, LOCK_EX | LOCK_NB) == -1) {
		if (errno != EWOULDBLOCK && errno != EINTR)
			return -1;
		if (now_monotonic_ms() > deadline) {
			errno = EWOULDBLOCK;
			return -1;
		}
		nanosleep(&pause, NULL);
	}
	return 0;
}

static int
same_version(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino &&
	    a->st_size == b->st_size &&
	    a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
	    a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/*
 * True if the file changes within a moment: a parse error then means the
 * API was caught writing, not a broken file.
 */
static int
settling(int fd, const struct stat *was)
{
	struct timespec pause = { 0, 20L * 1000 * 1000 };
	struct stat now;

	/* Only a file written within the last second can be mid-write. */
	if (now_realtime() - (double)was->st_mtim.tv_sec > 1.0)
		return 0;
	nanosleep(&pause, NULL);
	return fstat(fd, &now) == 0 && !same_version(was, &now);
}

/* The new file: kept members copied from buf, marked jobs re-serialised. */
static int
is_active(const struct config *cfg, const json_t *job)
{
	const char *st = json_string_value(json_object_get(job, "status"));

	return st != NULL &&
	    (strcmp(st, cfg->running_status) == 0 ||
		strcmp(st, cfg->queued_status) == 0);
}

static char *
build_output(
    const char *buf, struct scan *s, const struct config *cfg, size_t *outlen)
{
	size_t cap = 2, o = 0, i;
	char *out, msg[256], *dump;

	for (i = 0; i < s->n; i++)
		cap += s->m[i].ve - s->m[i].ks + 2;
	out = malloc(cap + 1);
	if (out == NULL)
		fatalx_oom();
	out[o++] = '{';
	for (i = 0; i < s->n; i++) {
		struct member *m = &s->m[i];
		size_t need;

		dump = NULL;
		if (m->fate != FATE_KEEP) {
			/* Marking keeps active jobs as errors; the rest just
			 * go. */
			if (cfg->cache_action != CACHE_MARK ||
			    !is_active(cfg, m->job))
				continue;
			config_reap_message(cfg,
			    m->fate == FATE_RUNNING	 ? REAP_RUNNING
				: m->fate == FATE_QUEUED ? REAP_QUEUED
							 : REAP_FORCED,
			    msg, sizeof(msg));
			json_object_set_new(
			    m->job, "status", json_string(cfg->error_status));
			json_object_set_new(m->job, "error", json_string(msg));
			dump = json_dumps(m->job,
			    JSON_ENSURE_ASCII | JSON_PRESERVE_ORDER |
				JSON_REAL_PRECISION(17));
			if (dump == NULL)
				fatalx_oom();
		}
		need = (m->ke - m->ks) + 2 +
		    (dump ? strlen(dump) : m->ve - m->vs) + 2;
		if (o + need + 2 > cap) {
			char *grown;

			cap = (o + need + 2) * 2;
			if ((grown = realloc(out, cap)) == NULL)
				fatalx_oom();
			out = grown;
		}
		if (o > 1) {
			memcpy(out + o, ", ", 2);
			o += 2;
		}
		memcpy(out + o, buf + m->ks, m->ke - m->ks);
		o += m->ke - m->ks;
		memcpy(out + o, ": ", 2);
		o += 2;
		if (dump != NULL) {
			memcpy(out + o, dump, strlen(dump));
			o += strlen(dump);
			free(dump);
		} else {
			memcpy(out + o, buf + m->vs, m->ve - m->vs);
			o += m->ve - m->vs;
		}
	}
	out[o++] = '}';
	*outlen = o;
	return out;
}

/*
 * Writes data next to path and renames it over path, keeping mode and
 * owner, unless the file (open as oldfd) changed since `was` was taken:
 * then the file in place is the writer's and 1 is returned so the caller
 * reads the new version.
 */
static int
replace_file(const char *path, int oldfd, const struct stat *was,
    const char *data, size_t len, char *err, size_t errlen)
{
	char tmp[4096], dir[4096], *slash;
	const char *base;
	struct stat now;
	int fd = -1, dfd;

	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (slash == NULL) {
		strcpy(dir, ".");
		base = path;
	} else {
		base = path + (slash - dir) + 1;
		if (slash == dir)
			slash[1] = '\0';
		else
			*slash = '\0';
	}
	if (snprintf(tmp, sizeof(tmp), "%s/.%s.limpeza-XXXXXX", dir, base) >=
	    (int)sizeof(tmp)) {
		snprintf(err, errlen, "path too long");
		return -1;
	}
	fd = mkstemp(tmp);
	if (fd == -1) {
		snprintf(err, errlen,
		    "cannot create a temporary file in %.200s: %s", dir,
		    strerror(errno));
		return -1;
	}
	if (fchmod(fd, was->st_mode & 07777) == -1) {
		snprintf(
		    err, errlen, "cannot keep the mode: %s", strerror(errno));
		goto fail;
	}
	/* The API must still be able to open the file for writing. */
	if ((was->st_uid != geteuid() || was->st_gid != getegid()) &&
	    fchown(fd, was->st_uid, was->st_gid) == -1) {
		snprintf(err, errlen,
		    "cannot keep the owner %u:%u (%s); run limpeza as the "
		    "file's owner",
		    (unsigned)was->st_uid, (unsigned)was->st_gid,
		    strerror(errno));
		goto fail;
	}
	if (write_full(fd, data, len) == -1 || fsync(fd) == -1) {
		snprintf(err, errlen, "cannot write the new file: %s",
		    strerror(errno));
		goto fail;
	}
	if (close(fd) == -1) {
		fd = -1;
		snprintf(err, errlen, "cannot write the new file: %s",
		    strerror(errno));
		goto fail;
	}
	fd = -1;
	if (lstat(path, &now) == -1 || !same_version(was, &now)) {
		unlink(tmp);
		return 1;
	}
	/*
	 * The API writes without a lock. Swapping the names (not a plain
	 * rename) keeps the old file at tmp, so a writer that opened it
	 * after the check above can be noticed: its version goes back in
	 * place and the pass is retried. What is left is a window of two
	 * system calls in which a second writer would have to open the file.
	 */
	if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_EXCHANGE) == 0) {
		if (fstat(oldfd, &now) == 0 && same_version(was, &now)) {
			unlink(tmp);
		} else {
			if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path,
				RENAME_EXCHANGE) == 0)
				unlink(tmp);
			return 1;
		}
	} else if ((errno != EINVAL && errno != ENOSYS) ||
	    rename(tmp, path) == -1) {
		snprintf(err, errlen, "cannot replace the file: %s",
		    strerror(errno));
		goto fail;
	}
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd != -1) {
		fsync(dfd);
		close(dfd);
	}
	return 0;
fail:
	if (fd != -1)
		close(fd);
	unlink(tmp);
	return -1;
}

/*
 * Removes temporary files that a limpeza killed mid-rewrite left next to
 * the cache file. Called with the lock held: every limpeza writes its
 * temporary file only while it holds the lock, so any such file now is a
 * leftover.
 */
static void
remove_leftovers(const char *path)
{
	char dir[4096], prefix[512], full[4608];
	const char *base, *slash = strrchr(path, '/');
	struct dirent *de;
	DIR *d;

	if (slash == NULL) {
		snprintf(dir, sizeof(dir), ".");
		base = path;
	} else {
		snprintf(dir, sizeof(dir), "%.*s",
		    slash == path ? 1 : (int)(slash - path), path);
		base = slash + 1;
	}
	snprintf(prefix, sizeof(prefix), ".%s.limpeza-", base);
	if ((d = opendir(dir)) == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		if (strncmp(de->d_name, prefix, strlen(prefix)) != 0 ||
		    strlen(de->d_name) != strlen(prefix) + 6)
			continue;
		snprintf(full, sizeof(full), "%s/%s", dir, de->d_name);
		if (unlink(full) == 0)
			log_event(LVL_INFO, EV_CACHE_LEFTOVER, full);
	}
	closedir(d);
}

static void
log_reaped(
    const struct scan *s, const struct config *cfg, struct cache_result *res)
{
	size_t i;

	for (i = 0; i < s->n; i++) {
		const struct member *m = &s->m[i];
		const char *id = m->id != NULL ? m->id : "?";

		switch (m->fate) {
		case FATE_RUNNING:
			log_event(LVL_INFO, EV_CACHE_ORPHAN, id, (long)m->age);
			res->reaped_running++;
			break;
		case FATE_QUEUED:
			log_event(LVL_INFO, EV_CACHE_QUEUED, id);
			res->reaped_queued++;
			break;
		case FATE_FORCED: {
			const char *st = json_string_value(
			    json_object_get(m->job, "status"));

			log_event(LVL_INFO, EV_CACHE_FORCED, id);
			res->forced++;
			if (st != NULL && strcmp(st, cfg->running_status) == 0)
				res->forced_running++;
			else if (st != NULL &&
			    strcmp(st, cfg->queued_status) == 0)
				res->forced_queued++;
			break;
		}
		case FATE_KEEP:
			break;
		}
	}
	if (res->reaped_running + res->reaped_queued > 0)
		log_event(LVL_INFO,
		    cfg->cache_action == CACHE_MARK ? EV_CACHE_MARKED
						    : EV_CACHE_CLEANED,
		    res->reaped_running + res->reaped_queued);
}

/*
 * Decides every member of the parsed file and notes first sightings. The
 * key decides which job a span is; a key that cannot be decoded is kept.
 */
static void
decide_all(struct cache *c, const struct config *cfg, int force,
    const char *buf, json_t *root, struct scan *s, json_t *seen)
{
	struct cache_policy pol = {
		.running_ttl = (double)cfg->running_ttl / MS_PER_S,
		.queued_ttl = (double)cfg->queued_ttl / MS_PER_S,
		.force = force,
		.force_all = cfg->force_cache == FORCE_ALL,
		.force_min_age = (double)cfg->force_min_age / MS_PER_S,
		.running = cfg->running_status,
		.queued = cfg->queued_status,
	};
	double now = now_realtime();
	long long mono = now_monotonic_ms();
	size_t i;

	for (i = 0; i < s->n; i++) {
		struct member *m = &s->m[i];
		json_t *key, *first;
		const char *status, *k;
		double first_age = 0;
		char *sk;
		size_t kl;

		key = json_loadb(buf + m->ks, m->ke - m->ks,
		    JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
		if (key == NULL) {
			m->fate = FATE_KEEP;
			continue;
		}
		k = json_string_value(key);
		kl = json_string_length(key);
		m->job = json_object_getn(root, k, kl);
		m->id = strndup(k, kl);
		status = json_string_value(json_object_get(m->job, "status"));
		if (status != NULL &&
		    (strcmp(status, pol.running) == 0 ||
			strcmp(status, pol.queued) == 0)) {
			size_t sl = strlen(status), skl = sl + 1 + kl;

			if ((sk = malloc(skl)) == NULL)
				fatalx_oom();
			memcpy(sk, status, sl);
			sk[sl] = '\n';
			memcpy(sk + sl + 1, k, kl);
			first = json_object_getn(c->seen, sk, skl);
			if (first != NULL) {
				first_age =
				    (double)(mono - json_integer_value(first)) /
				    MS_PER_S;
				json_object_setn_nocheck(seen, sk, skl, first);
			} else
				json_object_setn_new_nocheck(
				    seen, sk, skl, json_integer(mono));
			free(sk);
		}
		json_decref(key);
		m->fate = cache_decide(m->job, &pol, now, first_age, &m->age);
	}
}

static void
scan_free(struct scan *s)
{
	size_t i;

	for (i = 0; i < s->n; i++)
		free(s->m[i].id);
	free(s->m);
	memset(s, 0, sizeof(*s));
}

/*
 * One pass over the file. Returns 0 when done (whether or not anything
 * changed), 1 when the file changed underneath and the pass must be
 * retried, -1 on an error that was logged.
 */
static int
cache_pass(struct cache *c, const struct config *cfg, int force, int dry_run,
    struct cache_result *res)
{
	const char *path = cfg->cache_file;
	struct stat st, pst;
	struct scan s = { NULL, 0, 0 };
	json_t *root = NULL, *seen = NULL;
	json_error_t jerr;
	char *buf = NULL, *out = NULL, err[512];
	size_t len = 0, outlen, i;
	long long next_due, due;
	int fd, rc = -1, r, changes = 0;

	fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd == -1) {
		if (errno == ENOENT) {
			log_event(LVL_DEBUG, EV_CACHE_MISSING, path);
			return 0;
		}
		log_event(LVL_ERROR, EV_CACHE_ERROR, path,
		    errno == ELOOP ? "is a symbolic link; it is not followed "
				     "or replaced"
				   : strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
		log_event(LVL_ERROR, EV_CACHE_ERROR, path,
		    "not a regular file; left alone");
		goto done;
	}
	if (lock_file(fd) == -1) {
		log_event(LVL_ERROR, EV_CACHE_ERROR, path,
		    errno == EWOULDBLOCK
			? "locked by another process for more than 2 s"
			: strerror(errno));
		goto done;
	}
	/* The lock is only worth something if path still names this file. */
	if (lstat(path, &pst) == -1 || pst.st_ino != st.st_ino ||
	    pst.st_dev != st.st_dev) {
		rc = 1;
		goto done;
	}
	if (!dry_run)
		remove_leftovers(path);
	if (fstat(fd, &st) == -1 || read_all(fd, &buf, &len) == -1) {
		log_event(LVL_ERROR, EV_CACHE_ERROR, path, strerror(errno));
		goto done;
	}

	root = json_loadb(buf, len, JSON_ALLOW_NUL, &jerr);
	if (root == NULL && settling(fd, &st)) {
		/* Caught mid-write by the API: read it again shortly. */
		rc = 1;
		goto done;
	}
	if (root == NULL) {
		log_event(LVL_ERROR, EV_CACHE_INVALID, path, (long)jerr.line,
		    (long)jerr.column, len == 0 ? "empty file" : jerr.text);
		goto done;
	}
	if (!json_is_object(root) ||
	    cache_members(buf, len, scan_add, &s) == -1) {
		log_event(LVL_ERROR, EV_CACHE_NOT_OBJECT, path);
		goto done;
	}

	if ((seen = json_object()) == NULL)
		fatalx_oom();
	decide_all(c, cfg, force, buf, root, &s, seen);
	res->active = 0;
	res->oldest_s = -1;
	next_due = LLONG_MAX;
	for (i = 0; i < s.n; i++) {
		const char *stt;
		double ttl;

		if (s.m[i].fate != FATE_KEEP) {
			changes++;
			continue;
		}
		if (!is_active(cfg, s.m[i].job))
			continue;
		res->active++;
		if (s.m[i].age > res->oldest_s)
			res->oldest_s = s.m[i].age;
		stt = json_string_value(json_object_get(s.m[i].job, "status"));
		ttl = (double)(strcmp(stt, cfg->running_status) == 0
			      ? cfg->running_ttl
			      : cfg->queued_ttl) /
		    MS_PER_S;
		due = now_monotonic_ms() +
		    (long long)((ttl - s.m[i].age) * MS_PER_S);
		if (due < next_due)
			next_due = due;
	}

	if (changes > 0 && !dry_run) {
		out = build_output(buf, &s, cfg, &outlen);
		r = replace_file(path, fd, &st, out, outlen, err, sizeof(err));
		if (r == 1) {
			rc = 1;
			goto done;
		}
		if (r == -1) {
			log_event(LVL_ERROR, EV_CACHE_ERROR, path, err);
			goto done;
		}
		res->rewritten = 1;
	}
	if (changes > 0)
		log_reaped(&s, cfg, res);
	json_decref(c->seen);
	c->seen = seen;
	seen = NULL;
	c->known = !force && lstat(path, &c->last) == 0;
	c->next_due = next_due;
	c->active = res->active;
	c->oldest_since = now_realtime() - res->oldest_s;
	rc = 0;
done:
	json_decref(seen);
	json_decref(root);
	scan_free(&s);
	free(out);
	free(buf);
	close(fd);
	return rc;
}

/*
 * Reaps the cache file: stale jobs (or, with force, active ones, and all
 * jobs when LIMPEZA_FORCE_CACHE=all). A file that changes while it is
 * being cleaned is read again, a few times at most.
 */
int
cache_reap(struct cache *c, const struct config *cfg, int force, int dry_run,
    struct cache_result *res)
{
	struct stat now;
	int try, r;

	memset(res, 0, sizeof(*res));
	res->oldest_s = -1;
	if (cfg->cache_file == NULL || *cfg->cache_file == '\0')
		return 0;
	/* Nothing changed and nothing is due: no need to read 50 MB. */
	if (!force && c->known && lstat(cfg->cache_file, &now) == 0 &&
	    same_version(&c->last, &now) && now_monotonic_ms() < c->next_due) {
		res->active = c->active;
		res->oldest_s =
		    c->active > 0 ? now_realtime() - c->oldest_since : -1;
		log_event(LVL_DEBUG, EV_CACHE_UNCHANGED, cfg->cache_file);
		return 0;
	}
	c->known = 0;
	for (try = 0; try < CACHE_TRIES; try++) {
		memset(res, 0, sizeof(*res));
		res->oldest_s = -1;
		r = cache_pass(c, cfg, force, dry_run, res);
		if (r != 1)
			return r;
		log_event(LVL_DEBUG, EV_CACHE_CHANGED, cfg->cache_file);
	}
	log_event(LVL_WARNING, EV_CACHE_GAVE_UP, cfg->cache_file);
	return 0;
}
