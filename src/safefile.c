/* safefile.c: replacing a file others write: lock, same-version checks, write,
 * swap, leftovers. */

/*
 * The protocol of SPEC §6.2. A file is opened without following a
 * symbolic link and locked with flock(); after the lock, the path must
 * still name the locked file. Its version (inode, size, mtime) is noted
 * before it is read; the new contents go to a temporary file next to it,
 * made of pieces of the old file (copied by the kernel) and bytes in
 * memory, with the old file's mode and owner, fsync'ed, and swapped in
 * only if the file is still the version that was read. A writer that
 * follows the same protocol is then fully safe. One that writes without
 * the lock (the API) is held off by a lease on the old file around
 * the last check and the swap: see swap_in().
 */

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "jsonscan.h"
#include "limpeza.h"

#define LOCK_WAIT_MS 2000
/* The API has the file open for a few ms per request: try that long. */
#define LEASE_TRIES 20
#define LEASE_RETRY_NS (1000L * 1000)
/* An open() that looked the path up just before the swap reaches the
 * lease within this long, unless it is held off the CPU longer. */
#define LEASE_SETTLE_NS (3000L * 1000)
#define FLUSH_CHUNK (4L * 1024 * 1024)
#define COPY_BUF ((size_t)64 * 1024)
#define HASH_BUF ((size_t)256 * 1024)
/* The hex digits of a hash (jsonscan_hash): 2 x 64 bits. */
#define HASH_HEX 32

/*
 * The cache file's descriptor while it holds an early lease: one taken as
 * the file is opened, so that no writer can change it, unseen, between
 * the read and the swap (see safefile_open()). A writer's open() breaks
 * it, and the SIGIO handler lets go at once: the writer waits only for
 * the signal, and the pass sees the lease gone. -1: none, or the swap
 * has begun and a break must wait for its answer (swap_in()).
 */
static volatile sig_atomic_t early_fd = -1;

static void
on_sigio(int sig)
{
	int saved = errno, fd = early_fd;

	(void)sig;
	if (fd != -1)
		(void)fcntl(fd, F_SETLEASE, F_UNLCK);
	errno = saved;
}

/*
 * The kernel tells a lease holder of a break with SIGIO, whose default
 * action ends the process: limpeza takes it (on_sigio()) and otherwise
 * asks F_GETLEASE.
 */
static void
handle_sigio(void)
{
	struct sigaction sa;

	if (sigaction(SIGIO, NULL, &sa) == 0 && sa.sa_handler != on_sigio) {
		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = on_sigio;
		sigfillset(&sa.sa_mask);
		sa.sa_flags = SA_RESTART;
		(void)sigaction(SIGIO, &sa, NULL);
	}
}

/*
 * A read lease: granted while nobody has the file open for writing,
 * broken by an open() for writing; readers neither break it nor keep it
 * away. Every lease limpeza takes is this one.
 */
static int
read_lease(int fd)
{
	return fcntl(fd, F_SETLEASE, F_RDLCK);
}

int
safefile_same_version(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino &&
	    a->st_size == b->st_size &&
	    a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
	    a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
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

/*
 * A file written within the current clock tick can be written again
 * without its mtime moving (file times are coarse), and then a later
 * version check would not see the change: let it age one tick. The
 * kernel's clock, not the daemon's, wrote the mtime.
 */
#define FRESH_NS (20L * 1000 * 1000)

static int
fresh_wait(int fd, struct stat *st)
{
	struct timespec now, pause = { 0, FRESH_NS };
	long long age;

	clock_gettime(CLOCK_REALTIME, &now);
	age = (long long)(now.tv_sec - st->st_mtim.tv_sec) * 1000000000LL +
	    (now.tv_nsec - st->st_mtim.tv_nsec);
	if (age < 0 || age >= FRESH_NS)
		return 0;
	nanosleep(&pause, NULL);
	return fstat(fd, st);
}

/*
 * Opens path for reading and locks it. Returns 0 with the file open as
 * *fd and its version in *st, taken after the lock and at least one clock
 * tick after its last write, so any later write shows; 1 if path names
 * another file by the time the lock is held (open it again); -1 with err
 * set (errno ENOENT: there is no file).
 */
int
safefile_open(
    const char *path, int *fdp, struct stat *st, char *err, size_t errlen)
{
	struct stat pst;
	int fd;

	*fdp = -1;
	early_fd = -1;
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd == -1) {
		snprintf(err, errlen, "%s",
		    errno == ELOOP ? "is a symbolic link; it is not followed "
				     "or replaced"
				   : strerror(errno));
		return -1;
	}
	if (fstat(fd, st) == -1 || !S_ISREG(st->st_mode)) {
		snprintf(err, errlen, "not a regular file; left alone");
		goto fail;
	}
	if (lock_file(fd) == -1) {
		snprintf(err, errlen, "%s",
		    errno == EWOULDBLOCK
			? "locked by another process for more than 2 s"
			: strerror(errno));
		goto fail;
	}
	/* The lock is only worth something if path still names this file. */
	if (lstat(path, &pst) == -1 || pst.st_ino != st->st_ino ||
	    pst.st_dev != st->st_dev) {
		close(fd);
		return 1;
	}
	if (fstat(fd, st) == -1 || fresh_wait(fd, st) == -1) {
		snprintf(err, errlen, "%s", strerror(errno));
		goto fail;
	}
	/*
	 * The early lease: granted only while nobody has the file open for
	 * writing, and broken by the first open() for writing after, so
	 * while it holds, the bytes are those read. Not granted (a writer
	 * at work, no leases here): the bytes are compared before the swap.
	 */
	handle_sigio();
	early_fd = fd;
	if (read_lease(fd) == -1)
		early_fd = -1;
	*fdp = fd;
	return 0;
fail:
	close(fd);
	errno = 0;
	return -1;
}

/*
 * True if the file changes within a moment: a parse error then means the
 * writer was caught mid-write, not a broken file.
 */
int
safefile_settling(int fd, const struct stat *was)
{
	struct timespec pause = { 0, 20L * 1000 * 1000 };
	struct stat now;

	/* Not the version noted before the read: the writer is at work,
	 * however long the file had rested before. */
	if (fstat(fd, &now) == 0 && !safefile_same_version(was, &now))
		return 1;
	/* Only a file written within the last second can be mid-write. */
	if (now_realtime() -
		((double)was->st_mtim.tv_sec +
		    (double)was->st_mtim.tv_nsec / 1e9) >
	    1.0)
		return 0;
	nanosleep(&pause, NULL);
	return fstat(fd, &now) == 0 && !safefile_same_version(was, &now);
}

/*
 * Adds a piece to the new file: len bytes of mem, or with mem NULL the
 * range [off, off + len) of the old file. A range that goes on where the
 * last one ended extends it, so a run of kept bytes is one copy.
 */
void
safefile_put(struct safefile_out *o, const char *mem, off_t off, size_t len)
{
	struct safefile_piece *last;

	if (len == 0)
		return;
	last = o->p != NULL && o->n > 0 ? &o->p[o->n - 1] : NULL;
	if (mem == NULL && last != NULL && last->mem == NULL &&
	    last->off + (off_t)last->len == off) {
		last->len += len;
		return;
	}
	if (o->p == NULL || o->n == o->cap) {
		o->cap = o->cap ? o->cap * 2 : 64;
		o->p = realloc(o->p, o->cap * sizeof(*o->p));
		if (o->p == NULL)
			fatalx_oom();
	}
	o->p[o->n].mem = mem;
	o->p[o->n].off = off;
	o->p[o->n].len = len;
	o->n++;
}

void
safefile_out_free(struct safefile_out *o)
{
	free(o->p);
	memset(o, 0, sizeof(*o));
}

/* Where copy_file_range() cannot: n bytes at *off of in through buf. */
static ssize_t
copy_through(int in, off_t *off, int fd, char *buf, size_t n)
{
	ssize_t got, w;
	size_t done = 0;

	if ((got = pread(in, buf, n, *off)) <= 0)
		return got;
	while (done < (size_t)got) {
		w = write(fd, buf + done, (size_t)got - done);
		if (w == -1 && errno == EINTR)
			continue;
		if (w == -1)
			return -1;
		done += (size_t)w;
	}
	*off += got;
	return got;
}

/*
 * Writes the pieces to fd, the old file's ranges by copy_file_range():
 * the kernel copies them page to page, nothing passes through limpeza.
 * Write-back of each few MB is started as soon as they are written, so
 * the disk works while the rest is copied and the final fsync() has
 * little left to wait for. Returns 1 if the old file (in) is shorter
 * than it was: it changed.
 */
static int
write_output(int fd, int in, const struct safefile_out *o)
{
	off_t done = 0, flushed = 0, off;
	size_t i, left, n;
	char *buf = NULL;
	ssize_t w;
	int kernel = 1, rc = -1;

	for (i = 0; i < o->n; i++) {
		const struct safefile_piece *p = &o->p[i];

		off = p->off;
		for (left = p->len; left > 0;) {
			n = left < FLUSH_CHUNK ? left : FLUSH_CHUNK;
			if (p->mem != NULL)
				w = write(fd, p->mem + (p->len - left), n);
			else if (kernel) {
				w = copy_file_range(in, &off, fd, NULL, n, 0);
				if (w == -1 &&
				    (errno == EXDEV || errno == EINVAL ||
					errno == ENOSYS ||
					errno == EOPNOTSUPP)) {
					kernel = 0;
					if ((buf = malloc(COPY_BUF)) == NULL)
						fatalx_oom();
					continue;
				}
			} else
				w = copy_through(in, &off, fd, buf,
				    n < COPY_BUF ? n : COPY_BUF);
			if (w == -1 && errno == EINTR)
				continue;
			if (w == -1)
				goto done;
			if (w == 0 && p->mem == NULL) {
				rc = 1;
				goto done;
			}
			if (w == 0) {
				errno = EIO;
				goto done;
			}
			left -= (size_t)w;
			done += w;
			if (done - flushed >= FLUSH_CHUNK) {
				/* Only a hint: fsync() decides durability. */
				(void)sync_file_range(fd, flushed,
				    done - flushed, SYNC_FILE_RANGE_WRITE);
				flushed = done;
			}
		}
	}
	rc = 0;
done:
	free(buf);
	return rc;
}

/* The hash (jsonscan_hash) of the file open as fd, start to end. */
static int
hash_fd(int fd, uint64_t out[2])
{
	struct jsonscan_hash hs;
	off_t off = 0;
	ssize_t n;
	char *buf;

	if ((buf = malloc(HASH_BUF)) == NULL)
		fatalx_oom();
	jsonscan_hash_init(&hs);
	for (;;) {
		n = pread(fd, buf, HASH_BUF, off);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		jsonscan_hash_add(&hs, buf, (size_t)n);
		off += n;
	}
	free(buf);
	if (n == -1)
		return -1;
	jsonscan_hash_end(&hs, out);
	return 0;
}

/* True if the file open as fd holds exactly the bytes hashed as h. */
static int
same_bytes(int fd, const uint64_t h[2])
{
	uint64_t now[2];

	return hash_fd(fd, now) == 0 && now[0] == h[0] && now[1] == h[1];
}

/*
 * Takes a read lease on the old file: from then on an open() of it for
 * writing (or a truncate) waits in the kernel until limpeza lets go,
 * while readers come and go untouched (the API reads the whole file on
 * every request, so it is seldom closed for long, but a reader only ever
 * sees a whole version and cannot lose a job). The kernel grants the
 * lease only while nobody has the file open for writing, so while the
 * API writes it this retries for a few ms. Returns 0 with the lease
 * held, 1 if the file changed meanwhile, -1 with errno if no lease can
 * be had (EAGAIN: open for writing all along; EACCES: not the file's
 * owner; EINVAL: a file system without leases).
 */
static int
lease_take(int fd, const char *path, const struct stat *was)
{
	struct timespec pause = { 0, LEASE_RETRY_NS };
	struct stat now;
	int i;

	handle_sigio();
	for (i = 0; i < LEASE_TRIES; i++) {
		if (read_lease(fd) == 0)
			return 0;
		if (errno != EAGAIN)
			return -1;
		if (lstat(path, &now) == -1 ||
		    !safefile_same_version(was, &now))
			return 1;
		nanosleep(&pause, NULL);
	}
	errno = EAGAIN;
	return -1;
}

/* True if someone opened the leased file to write: its lease is being
 * broken. */
static int
lease_broken(int fd)
{
	return fcntl(fd, F_GETLEASE) != F_RDLCK;
}

static void
lease_release(int fd)
{
	(void)fcntl(fd, F_SETLEASE, F_UNLCK);
}

/*
 * Whether file holds exactly the bytes hashed as a or as b: 1 if so, 0 if
 * not, -1 if a writer has it open right now (its write may be yet to
 * come). Read under a lease, so no writer can change it meanwhile; the
 * file stays open as *fdp, the lease held, for the caller to remove it
 * before any writer can open it, and then let go.
 */
static int
holds(const char *file, const uint64_t a[2], const uint64_t b[2], int *fdp)
{
	uint64_t h[2];
	struct stat st;
	int fd, own, leased;

	*fdp = -1;
	fd = open(file, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd == -1)
		return -1;
	*fdp = fd;
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode))
		return 0;
	handle_sigio();
	leased = read_lease(fd) == 0;
	if (!leased && errno == EAGAIN)
		return -1;
	if (hash_fd(fd, h) == -1)
		return 0;
	own = (h[0] == a[0] && h[1] == a[1]) || (h[0] == b[0] && h[1] == b[1]);
	/* A writer opened it meanwhile: its write is yet to come. */
	if (own && leased && lease_broken(fd))
		return -1;
	return own;
}

/* Lets go of a file holds() left open. */
static void
holds_done(int fd)
{
	if (fd != -1) {
		lease_release(fd);
		close(fd);
	}
}

/*
 * Gives a leftover that may hold a writer's job a name of its own next to
 * the cache file, NAME.limpeza-recovered-<UTC time>-<its random part>,
 * which no pass removes; the log names it. Returns where it is now.
 */
static const char *
recover(const char *leftover)
{
	static char to[4608];
	char when[32];
	const char *base, *rnd, *p, *slash;
	struct tm tm;
	time_t t = time(NULL);
	size_t dlen;

	slash = strrchr(leftover, '/');
	dlen = slash == NULL ? 0 : (size_t)(slash - leftover) + 1;
	base = leftover + dlen + 1; /* past the dot */
	for (rnd = NULL, p = base; (p = strstr(p, ".limpeza-")) != NULL; p++)
		rnd = p;
	if (rnd == NULL)
		return leftover;
	gmtime_r(&t, &tm);
	strftime(when, sizeof(when), "%Y%m%dT%H%M%SZ", &tm);
	snprintf(to, sizeof(to), "%.*s%.*s.limpeza-recovered-%s-%.6s",
	    (int)dlen, leftover, (int)(rnd - base), base, when,
	    rnd + strlen(".limpeza-"));
	if (renameat2(AT_FDCWD, leftover, AT_FDCWD, to, RENAME_NOREPLACE) ==
	    -1) {
		log_event(LVL_ERROR, EV_CACHE_ERROR, leftover, strerror(errno));
		return leftover;
	}
	log_event(LVL_WARNING, EV_CACHE_RECOVERED, to, leftover);
	return to;
}

/*
 * Swaps the new file (at tmp) in for the old one (open as oldfd) if path
 * still names the version that was read. The API writes without a lock
 * (open(path, "w") and json.dump), so a job it adds to the old file just
 * as the names are swapped would go with the old file. Hence a lease on
 * the old file from the last check to the end of the swap: an open() of
 * the old file for writing in that time waits in the kernel, and limpeza
 * sees the lease being broken. Then the old file goes back in place
 * before the lease is released, so the waiting open() lands in the file
 * that stays, and 1 is returned for the pass to be retried. A short
 * pause after the swap lets an open() that looked the path up just
 * before it reach the lease. The lease is held for a few ms, so the API
 * waits no longer than that; if limpeza dies, the kernel drops it at
 * once. While someone has the file open for writing the pass is retried;
 * where no lease can be had at all (not the owner, a file system without
 * leases), the names are swapped without one, as before leases, and the
 * log says why, once.
 * The version (inode, size, mtime) does not see a rewrite of the same
 * size within one tick of a coarse file system clock: the old file's
 * bytes are compared with those read (read_hash) too, under the lease,
 * so no writer can change them between the comparison and the swap.
 * Returns 0 when swapped, 1 when the file is not the version read, -1
 * with err set; tmp is gone in every case but one: when the writer's
 * version could not be put back, it is kept as a recovered file.
 */
static int
swap_in(const char *tmp, const char *path, int oldfd, const struct stat *was,
    const uint64_t read_hash[2], const uint64_t new_hash[2], char *err,
    size_t errlen)
{
	static int warned_errno;
	struct timespec settle = { 0, LEASE_SETTLE_NS };
	struct stat now;
	long long t0;
	int leased, broken = 0, e, fd, early = early_fd == oldfd;

	/* From here a break waits for the swap's answer. */
	early_fd = -1;
	if (early) {
		/* Held since the read unless a writer opened the file. */
		leased = lease_broken(oldfd) ? 1 : 0;
		e = 0;
	} else {
		leased = lease_take(oldfd, path, was);
		e = errno;
	}
	if (leased == 1) {
		if (early)
			lease_release(oldfd);
		goto changed;
	}
	/*
	 * Open for writing all along: a writer is at it right now, perhaps
	 * one whose open() has reached the file but not yet truncated it.
	 * This is the very moment a swap would lose its job: the pass is
	 * tried again instead, whoever else waits (a cooperating writer
	 * waiting for limpeza's lock gets it when this pass lets go).
	 */
	if (leased == -1 && e == EAGAIN) {
		log_event(LVL_DEBUG, EV_CACHE_CHANGED, path);
		goto changed;
	}
	t0 = now_monotonic_ms();
	leased = leased == 0;
	/* No lease to be had here at all: said once, then as before leases. */
	if (!leased && e != warned_errno) {
		log_event(LVL_WARNING, EV_CACHE_NO_LEASE, path, strerror(e));
		warned_errno = e;
	}
	if (lstat(path, &now) == -1 || !safefile_same_version(was, &now) ||
	    (!early && !same_bytes(oldfd, read_hash)) ||
	    (leased && lease_broken(oldfd))) {
		if (leased)
			lease_release(oldfd);
		goto changed;
	}
	if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_EXCHANGE) == -1) {
		if (leased)
			lease_release(oldfd);
		/* A file system without RENAME_EXCHANGE: a plain rename. */
		if ((errno != EINVAL && errno != ENOSYS) ||
		    rename(tmp, path) == -1) {
			snprintf(err, errlen, "cannot replace the file: %s",
			    strerror(errno));
			unlink(tmp);
			return -1;
		}
		return 0;
	}
	if (leased) {
		nanosleep(&settle, NULL);
		broken = lease_broken(oldfd);
	}
	/* Without a lease, a writer can only be seen by what it changed. */
	if (broken || fstat(oldfd, &now) == -1 ||
	    !safefile_same_version(was, &now)) {
		if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_EXCHANGE) ==
		    -1) {
			/* The old file keeps the path's version only if we
			 * cannot put it back; keep both rather than lose,
			 * under a name no pass takes for a leftover. */
			e = errno;
			if (leased)
				lease_release(oldfd);
			snprintf(err, errlen,
			    "cannot put the writer's version back (it is at "
			    "%.200s): %s",
			    recover(tmp), strerror(e));
			return -1;
		}
		if (leased)
			lease_release(oldfd);
		log_event(LVL_DEBUG, EV_CACHE_SWAP, path,
		    (long)(now_monotonic_ms() - t0), "undone");
		/* The new file was at path for a moment: a writer that opened
		 * it then wrote into it; kept rather than lost. */
		if (holds(tmp, new_hash, new_hash, &fd) == 1)
			unlink(tmp);
		else
			(void)recover(tmp);
		holds_done(fd);
		return 1;
	}
	if (leased)
		lease_release(oldfd);
	unlink(tmp);
	log_event(LVL_DEBUG, EV_CACHE_SWAP, path,
	    (long)(now_monotonic_ms() - t0),
	    leased ? "kept" : "kept, no lease");
	return 0;
changed:
	unlink(tmp);
	return 1;
}

/*
 * Writes the pieces next to path and swaps them in, keeping mode and
 * owner, unless the file (open as oldfd) changed since `was` was taken:
 * then the file in place is the writer's and 1 is returned so the caller
 * reads the new version. On success *written is the new file's version.
 */
int
safefile_replace(const char *path, int oldfd, const struct stat *was,
    const uint64_t read_hash[2], const struct safefile_out *data,
    struct stat *written, char *err, size_t errlen)
{
	char tmp[4096], dir[4096], named[4200], *slash;
	uint64_t new_hash[2];
	const char *base;
	int fd = -1, lk = -1, dfd, r;

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
	if (snprintf(tmp, sizeof(tmp), "%s/.%s.limpeza-XXXXXX.new", dir,
		base) >= (int)sizeof(tmp)) {
		snprintf(err, errlen, "path too long");
		return -1;
	}
	fd = mkstemps(tmp, 4);
	if (fd == -1) {
		snprintf(err, errlen,
		    "cannot create a temporary file in %.200s: %s", dir,
		    strerror(errno));
		return -1;
	}
	/*
	 * Locked until the swap is over, on a descriptor of its own that
	 * does not write (a lease on the file is then still to be had). So
	 * whatever the path names during the swap is locked, and no other
	 * limpeza can be removing leftovers then (it does that under the
	 * lock) and take this file, or the old one, for one.
	 */
	lk = open(tmp, O_RDONLY | O_CLOEXEC);
	if (lk == -1 || flock(lk, LOCK_EX | LOCK_NB) == -1) {
		snprintf(err, errlen, "cannot lock the temporary file: %s",
		    strerror(errno));
		goto fail;
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
	if ((r = write_output(fd, oldfd, data)) == 1) {
		close(fd);
		unlink(tmp);
		if (lk != -1)
			close(lk);
		return 1;
	}
	if (r == -1 || fsync(fd) == -1 || fstat(fd, written) == -1 ||
	    hash_fd(fd, new_hash) == -1) {
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
	/*
	 * Before it can ever be swapped, the temporary file's name says what
	 * it may hold: the bytes read (the old file, once swapped) or the
	 * bytes written. A leftover holding anything else holds a writer's
	 * job (safefile_remove_leftovers()).
	 */
	snprintf(named, sizeof(named), "%.*s.%016llx%016llx%016llx%016llx",
	    (int)(strlen(tmp) - strlen(".new")), tmp,
	    (unsigned long long)read_hash[0], (unsigned long long)read_hash[1],
	    (unsigned long long)new_hash[0], (unsigned long long)new_hash[1]);
	if (rename(tmp, named) == -1) {
		snprintf(err, errlen, "cannot name the temporary file: %s",
		    strerror(errno));
		goto fail;
	}
	/* From here the temporary file is swap_in()'s to remove. */
	r = swap_in(named, path, oldfd, was, read_hash, new_hash, err, errlen);
	if (lk != -1)
		close(lk);
	if (r != 0)
		return r;
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
	if (lk != -1)
		close(lk);
	return -1;
}

/* The 16 hex digits at s as a number; -1 if one is not a digit. */
static int
hex64(const char *s, uint64_t *v)
{
	int i;

	*v = 0;
	for (i = 0; i < 16; i++) {
		if (!isxdigit((unsigned char)s[i]) ||
		    isupper((unsigned char)s[i]))
			return -1;
		*v = *v << 4 |
		    (uint64_t)(isdigit((unsigned char)s[i]) ? s[i] - '0'
							    : s[i] - 'a' + 10);
	}
	return 0;
}

/*
 * Whether the leftover at full, named with the hashes of the bytes read
 * and written (hex, 4 x 16 digits), holds exactly one of them: 1 if so,
 * 0 if not, -1 if a writer has it open right now (ask again next pass).
 * Under a lease, so no writer can change it while it is read.
 */
static int
own_copy(const char *full, const char *hex, int *fdp)
{
	uint64_t want[4];
	size_t i;

	*fdp = -1;
	for (i = 0; i < 4; i++)
		if (hex64(hex + 16 * i, &want[i]) == -1)
			return 0;
	return holds(full, want, want + 2, fdp);
}

/*
 * Deals with temporary files that a limpeza killed mid-rewrite left next
 * to the file. Called with the lock held, so no other limpeza is in a
 * rewrite now: from the temporary file's creation to the end of its swap
 * a limpeza holds the lock on whatever the path names (the old file, then
 * the new one, safefile_replace()). A killed limpeza's locks died with it.
 *
 * A leftover is removed only if it is provably limpeza's own copy:
 * - .NAME.limpeza-XXXXXX.new was being written and never swapped in
 *   (it is renamed before any swap), so no writer ever saw it;
 * - .NAME.limpeza-XXXXXX.<hashes> holds, byte for byte, the version
 *   limpeza read (the old file, swapped out) or the one it wrote (its
 *   new file, not yet swapped in or swapped back): read under a lease.
 * Anything else (a writer's open() that was waiting on the lease wrote
 * into the old file after limpeza died; a leftover of an older limpeza)
 * is kept under a recovered name and the log names it: never unlinked.
 */
void
safefile_remove_leftovers(const char *path)
{
	char dir[4096], prefix[512], full[4608];
	const char *base, *rest, *slash = strrchr(path, '/');
	struct dirent *de;
	size_t len;
	DIR *d;
	int own, fd;

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
		if (strncmp(de->d_name, prefix, strlen(prefix)) != 0)
			continue;
		rest = de->d_name + strlen(prefix);
		len = strlen(rest);
		if (len != 6 && !(len == 10 && strcmp(rest + 6, ".new") == 0) &&
		    !(len == 7 + 4 * 16 && rest[6] == '.'))
			continue;
		snprintf(full, sizeof(full), "%s/%s", dir, de->d_name);
		fd = -1;
		if (len == 10)
			own = 1;
		else if (len == 6)
			own = 0; /* an older limpeza's: no proof */
		else
			own = own_copy(full, rest + 7, &fd);
		if (own == 1 && unlink(full) == 0)
			log_event(LVL_INFO, EV_CACHE_LEFTOVER, full);
		else if (own == 0)
			(void)recover(full);
		holds_done(fd);
	}
	closedir(d);
}
