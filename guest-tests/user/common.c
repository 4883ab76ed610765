// SPDX-License-Identifier: GPL-2.0
/*
 * amdvi-tests: checks and helpers shared by the scenario files: the
 * fork-and-keep-COW-copy sleeper, the write-stream and round-trip data
 * checks, module counters.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests.h"

const char *st_str(int ret)
{
	return ret < 0 ? strerror(-ret) : status_name(ret);
}

/* ---- common pieces ---- */

/*
 * fork() a child that keeps the COW copy of @buf alive until told to go,
 * then checks that its copy still holds @seed's pattern (exit 0) or not (1).
 */
bool sleeper_fork(struct ctx *c, struct sleeper *s, void *buf,
			 size_t len, uint64_t seed)
{
	int p[2];
	char x;

	if (pipe(p)) {
		fail(c, "pipe: %s", strerror(errno));
		return false;
	}
	fflush(stdout);
	s->pid = fork();
	if (s->pid < 0) {
		fail(c, "fork: %s", strerror(errno));
		return false;
	}
	if (!s->pid) {
		close(p[1]);
		while (read(p[0], &x, 1) < 0 && errno == EINTR)
			;
		_exit(cmp_words(buf, len, seed) < 0 ? 0 : 1);
	}
	close(p[0]);
	s->wfd = p[1];
	return true;
}

void sleeper_finish(struct ctx *c, struct sleeper *s)
{
	int status = 0;

	if (s->pid <= 0)
		return;
	if (write(s->wfd, "x", 1) != 1)
		kill(s->pid, SIGKILL);
	close(s->wfd);
	waitpid(s->pid, &status, 0);
	CHECK(c, WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "child's COW copy: expected the pre-fork content, saw it changed (wait status %#x)",
	      status);
	s->pid = 0;
}

/*
 * Check the slots a write-only stream wrote (first word of each stride):
 * the last write must be visible to the CPU, and with no faults the slots
 * must hold exactly the last @nslots values (no write lost).
 */
void check_write_stream(struct ctx *c, const void *base,
			       unsigned int nslots, uint32_t stride,
			       uint64_t wv, const struct amdvi_ioc_stream_counts *k,
			       const char *what)
{
	uint64_t lo = wv, hi = wv + k->writes, max = 0, min = ~0ULL;
	unsigned int written = 0, bad = 0;

	if (!k->writes) {
		diag(c, "%s: stream made no writes (faults %llu)", what,
		     (unsigned long long)k->faults);
		return;
	}
	for (unsigned int i = 0; i < nslots; i++) {
		uint64_t v = *(const volatile uint64_t *)((const char *)base +
						(size_t)i * stride);

		if (v >= lo && v <= hi) {
			written++;
			max = v > max ? v : max;
			min = v < min ? v : min;
		} else if ((v >> 48) != 0x5a5a) {
			bad++;
		}
	}
	CHECK(c, bad == 0,
	      "%s: expected every slot to hold the fill pattern or a stream value in [%#llx, %#llx], saw %u foreign values",
	      what, (unsigned long long)lo, (unsigned long long)hi, bad);
	CHECK(c, max == hi || max == hi - 1,
	      "%s: expected the last device write (%#llx) visible to the CPU, saw newest %#llx",
	      what, (unsigned long long)(hi - 1), (unsigned long long)max);
	if (!k->faults && !k->errors && k->writes >= nslots)
		CHECK(c, written == nslots && max - min == nslots - 1,
		      "%s: expected the %u slots to hold the last %u writes (%#llx..%#llx), saw %u written, range %#llx..%#llx",
		      what, nslots, nslots,
		      (unsigned long long)(max - nslots + 1),
		      (unsigned long long)max, written,
		      (unsigned long long)min, (unsigned long long)max);
}

/* device writes @v at @p, CPU must see it; CPU writes, device must see it */
void roundtrip(struct ctx *c, uint64_t *p, uint64_t v, const char *what)
{
	uint64_t got = 0;
	int ret;

	ret = dacc(c, 0, AMDVI_OP_WRITE, p, &v, 8, NULL);
	CHECK(c, ret == ST_OK, "%s: device write at %p: expected OK, saw %s",
	      what, (void *)p, st_str(ret));
	if (ret == ST_OK)
		CHECK(c, *(volatile uint64_t *)p == v,
		      "%s: CPU read after device write at %p: expected %#llx, saw %#llx",
		      what, (void *)p, (unsigned long long)v,
		      (unsigned long long)*p);
	*(volatile uint64_t *)p = ~v;
	ret = dacc(c, 0, AMDVI_OP_READ, p, &got, 8, NULL);
	CHECK(c, ret == ST_OK && got == ~v,
	      "%s: device read after CPU write at %p: expected OK %#llx, saw %s %#llx",
	      what, (void *)p, (unsigned long long)~v, st_str(ret),
	      (unsigned long long)got);
}

uint64_t mod_counter(struct ctx *c, unsigned int idx)
{
	struct amdvi_ioc_stats st;

	if (dev_stats(c->fd, &st) || idx >= st.nmod)
		return ~0ULL;
	return st.mod[idx];
}

/* Bits 63 (present) and 62 (swapped) of @addr's /proc/self/pagemap entry. */
int page_state(const void *addr, bool *present, bool *swapped)
{
	uint64_t e = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY);
	off_t off = (uintptr_t)addr / PAGE_SZ * sizeof(e);
	int ret = 0;

	if (fd < 0)
		return -errno;
	if (pread(fd, &e, sizeof(e), off) != sizeof(e))
		ret = -EIO;
	close(fd);
	*present = e >> 63 & 1;
	*swapped = e >> 62 & 1;
	return ret;
}

/* Pages of [buf, buf + n pages) that are swapped out / not present. */
void count_pages(const void *buf, unsigned int n, unsigned int *swapped,
		 unsigned int *absent)
{
	*swapped = *absent = 0;
	for (unsigned int i = 0; i < n; i++) {
		bool p = true, s = false;

		page_state((const char *)buf + (size_t)i * PAGE_SZ, &p, &s);
		*swapped += s;
		*absent += !p;
	}
}

/*
 * The first line of @path (a /run/amdvi-*.reason file /init leaves when it
 * could not set something up) into @buf; false when there is none.
 */
bool setup_reason(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "r");
	bool got;

	if (!f)
		return false;
	got = fgets(buf, len, f) != NULL;
	fclose(f);
	if (got)
		buf[strcspn(buf, "\n")] = '\0';
	return got;
}

/* Have the data endpoint cache a translation of every page of the range. */
void hold_translations(struct ctx *c, const void *buf, size_t len)
{
	for (size_t off = 0; off < len; off += PAGE_SZ) {
		int ret = dacc(c, 0, AMDVI_OP_TRANSLATE, (const char *)buf + off,
			       NULL, 0, NULL);

		CHECK(c, ret == ST_OK, "TRANSLATE at +%#zx: expected OK, saw %s",
		      off, st_str(ret));
	}
}

/*
 * Device read of [va, va + len), in accesses of at most AMDVI_ACCESS_MAX,
 * compared with @want; false (with a failure) on an error or a difference.
 */
bool device_reads(struct ctx *c, const void *va, const void *want, size_t len,
		  const char *what)
{
	uint8_t *tmp = malloc(AMDVI_ACCESS_MAX);
	const uint8_t *w = want, *p = va;
	size_t at, n, off;
	int ret = ST_OK;

	if (!tmp) {
		fail(c, "%s: expected memory, saw allocation failure", what);
		return false;
	}
	for (at = 0; at < len; at += n) {
		n = len - at < AMDVI_ACCESS_MAX ? len - at : AMDVI_ACCESS_MAX;
		ret = dacc(c, 0, AMDVI_OP_READ, p + at, tmp, n, NULL);
		if (ret != ST_OK) {
			fail(c, "%s: device READ of %p+%#zx: expected OK, saw %s",
			     what, (const void *)(p + at), n, st_str(ret));
			break;
		}
		for (off = 0; off < n; off += 8)
			if (memcmp(tmp + off, w + at + off, 8))
				break;
		if (off < n) {
			fail(c, "%s: device READ at +%#zx: expected %#llx, saw %#llx",
			     what, at + off,
			     (unsigned long long)*(const uint64_t *)(w + at + off),
			     (unsigned long long)*(uint64_t *)(tmp + off));
			ret = -1;
			break;
		}
	}
	free(tmp);
	return ret == ST_OK;
}

/* ---- device helpers that account into a ctx and report failures ---- */

uint32_t stream_begin(struct ctx *c, struct stream_cfg *cfg)
{
	uint32_t id = 0;
	int ret;

	if (!cfg->pasid)
		cfg->pasid = c->pasid;
	if (!cfg->stride)
		cfg->stride = 512;
	ret = dev_stream_start(c->fd, cfg, &id);
	if (ret != ST_OK) {
		fail(c, "STREAM_START on %p+%#zx: expected OK, saw %s",
		     cfg->va, cfg->len,
		     ret < 0 ? strerror(-ret) : status_name(ret));
		return 0;
	}
	return id;
}

void stream_end(struct ctx *c, uint32_t id,
		struct amdvi_ioc_stream_counts *counts)
{
	struct amdvi_ioc_stream_counts k;
	int ret;

	memset(&k, 0, sizeof(k));
	if (!id)
		goto out;
	ret = dev_stream_ctl(c->fd, id, 1, &k);
	if (ret != ST_OK) {
		fail(c, "STREAM_STOP %u: expected OK, saw %s", id,
		     ret < 0 ? strerror(-ret) : status_name(ret));
		goto out;
	}
	c->accesses += k.reads + k.writes + k.translations;
	if (k.errors)
		diag(c, "stream %u: %llu accesses ended with device errors",
		     id, (unsigned long long)k.errors);
out:
	if (counts)
		*counts = k;
}

void print_findings(struct ctx *c, const struct amdvi_ioc_finding *f,
		    unsigned int n, unsigned int max_print)
{
	static const char * const src[] = { "?", "ATC", "IOTLB", "walk" };

	for (unsigned int i = 0; i < n && i < max_print; i++, f++)
		diag(c, "  finding rule=%s%u devid=%04x %s pasid=%u %s va=%#llx cached_pa=%#llx current_pte=%#llx epoch=%llu",
		     f->rule == AMDVI_RULE_STALE ? "STALE/" : "R",
		     f->rule, f->devid, src[f->source < 4 ? f->source : 0],
		     f->pasid, f->write ? "write" : "read",
		     (unsigned long long)f->va,
		     (unsigned long long)f->cached_pa,
		     (unsigned long long)f->current_pte,
		     (unsigned long long)f->epoch);
}

void audit(struct ctx *c, uint32_t pasid, const void *va, size_t len,
	   const char *after)
{
	struct amdvi_ioc_finding rec[8];
	struct amdvi_ioc_oracle o;
	int ret;

	ret = dev_oracle(c->fd, 1, pasid, (uintptr_t)va, len, 0, rec, 8, &o);
	if (ret < 0 || o.status != ST_OK) {
		fail(c, "ORACLE_AUDIT after %s: expected status OK, saw %s",
		     after, ret < 0 ? strerror(-ret) : status_name(o.status));
		return;
	}
	c->stale += o.count[AMDVI_CNT_STALE];
	if (o.count[AMDVI_CNT_STALE]) {
		fail(c, "audit after %s: expected no stale translation for pasid %u in %p+%#zx, saw %llu",
		     after, pasid, va, len,
		     (unsigned long long)o.count[AMDVI_CNT_STALE]);
		print_findings(c, rec, o.nrecords, 8);
	}
}

int dacc(struct ctx *c, uint32_t pasid, uint8_t op, const void *va, void *buf,
	 uint32_t len, struct amdvi_ioc_access *out)
{
	c->accesses++;
	return dev_access(c->fd, c->ep_data, pasid ? pasid : c->pasid, op, 0,
			  (uintptr_t)va, buf, len, out);
}

void epoch_bump(struct ctx *c)
{
	dev_epoch(c->fd, AMDVI_EPOCH_ADD, 1, NULL);
}

static void *spinner_fn(void *arg)
{
	struct spinner *s = arg;
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(s->cpu, &set);
	sched_setaffinity(0, sizeof(set), &set);
	while (!s->stop)
		__asm__ volatile("pause");
	return NULL;
}

int pin_here(cpu_set_t *saved)
{
	int here = sched_getcpu();
	cpu_set_t one;

	if (here < 0 || sched_getaffinity(0, sizeof(*saved), saved))
		return -1;
	CPU_ZERO(&one);
	CPU_SET(here, &one);
	return sched_setaffinity(0, sizeof(one), &one) ? -1 : here;
}

bool spinner_start(struct spinner *s)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	int here;

	memset(s, 0, sizeof(*s));
	if (n < 2 || (here = pin_here(&s->saved)) < 0)
		return false;
	s->cpu = (here + 1) % n;
	if (pthread_create(&s->th, NULL, spinner_fn, s)) {
		sched_setaffinity(0, sizeof(s->saved), &s->saved);
		return false;
	}
	s->on = true;
	usleep(5000);	/* let it run on its CPU, with this mm loaded there */
	return true;
}

void spinner_stop(struct spinner *s)
{
	if (!s->on)
		return;
	s->stop = 1;
	pthread_join(s->th, NULL);
	sched_setaffinity(0, sizeof(s->saved), &s->saved);
	s->on = false;
}
