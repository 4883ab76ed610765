// SPDX-License-Identifier: GPL-2.0
/*
 * amdvi-tests: mmu_notifier ordering against the emulated AMD IOMMUv2 page
 * walker and ATS endpoints of amdvi-bench.
 *
 * Every scenario runs a device stream (reads and writes through ATS on the
 * bound PASID) while the kernel changes the page tables, and checks:
 *  (a) the daemon's oracle: ORACLE_AUDIT after each kernel operation finds no
 *      stale cached translation, and no R1 (stale page) finding occurs unless
 *      user space itself races an unmap against the device (SC_ALLOW_R1);
 *      R2/R3/R4 are normal inside flush windows and only reported;
 *  (b) data end to end: device writes are visible through the CPU mapping and
 *      device reads see CPU writes that completed before them.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "amdvi_lib.h"
#include "harness.h"

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE	25
#endif
#ifndef MPOL_MF_MOVE
#define MPOL_MF_MOVE	(1 << 1)
#endif

#define WV_BASE		0x1000000000000000ULL

static const char *st_str(int ret)
{
	return ret < 0 ? strerror(-ret) : status_name(ret);
}

/* ---- common pieces ---- */

struct sleeper {
	pid_t pid;
	int wfd;
};

/*
 * fork() a child that keeps the COW copy of @buf alive until told to go,
 * then checks that its copy still holds @seed's pattern (exit 0) or not (1).
 */
static bool sleeper_fork(struct ctx *c, struct sleeper *s, void *buf,
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

static void sleeper_finish(struct ctx *c, struct sleeper *s)
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
static void check_write_stream(struct ctx *c, const void *base,
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
static void roundtrip(struct ctx *c, uint64_t *p, uint64_t v, const char *what)
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

static uint64_t mod_counter(struct ctx *c, unsigned int idx)
{
	struct amdvi_ioc_stats st;

	if (dev_stats(c->fd, &st) || idx >= st.nmod)
		return ~0ULL;
	return st.mod[idx];
}

/* ---- scenarios ---- */

static void t_bind_basic(struct ctx *c)
{
	size_t len = 4 * PAGE_SZ;
	uint8_t *buf = map_anon(len), *tmp = malloc(len);
	struct amdvi_ioc_access a;
	uint32_t sid;
	long off;
	int ret;

	REQUIRE(c, buf && tmp, "expected memory, saw allocation failure");
	fill_words(buf, len, 1);
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = buf, .len = len, .rd = 1, .rate = c->rate });

	ret = dacc(c, 0, AMDVI_OP_TRANSLATE, buf, NULL, 0, &a);
	CHECK(c, ret == ST_OK, "TRANSLATE: expected OK, saw %s", st_str(ret));
	CHECK(c, (a.ats & 3) == 3,
	      "TRANSLATE of a written page: expected R=W=1, saw ats %#llx",
	      (unsigned long long)a.ats);

	ret = dacc(c, 0, AMDVI_OP_READ, buf, tmp, len, NULL);
	CHECK(c, ret == ST_OK, "READ 16 KiB: expected OK, saw %s", st_str(ret));
	off = cmp_words(tmp, len, 1);
	CHECK(c, off < 0, "device READ at +%#lx: expected %#llx, saw %#llx",
	      off, (unsigned long long)word_at(1, off > 0 ? off : 0),
	      (unsigned long long)*(uint64_t *)(tmp + (off > 0 ? off : 0)));

	fill_words(tmp, len, 2);
	ret = dacc(c, 0, AMDVI_OP_WRITE, buf, tmp, len, NULL);
	CHECK(c, ret == ST_OK, "WRITE 16 KiB: expected OK, saw %s", st_str(ret));
	off = cmp_words(buf, len, 2);
	CHECK(c, off < 0, "CPU view of device WRITE at +%#lx: expected %#llx, saw %#llx",
	      off, (unsigned long long)word_at(2, off > 0 ? off : 0),
	      (unsigned long long)*(uint64_t *)(buf + (off > 0 ? off : 0)));

	stream_end(c, sid, NULL);
	audit(c, c->pasid, buf, len, "bind + accesses");
	munmap(buf, len);
	free(tmp);
}

static void t_pri_untouched(struct ctx *c)
{
	const unsigned int n = 16;
	size_t len = n * PAGE_SZ;
	uint8_t *buf = map_anon(len), *side = map_anon(len);
	struct amdvi_ioc_access a;
	uint64_t v, got;
	uint32_t sid;
	int ret;

	REQUIRE(c, buf && side, "expected memory, saw allocation failure");
	fill_words(side, len, 3);
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = side, .len = len, .rd = 1, .wr = 1, .rate = c->rate,
		.write_value = WV_BASE });

	for (unsigned int i = 0; i < n - 1; i++) {
		v = 0xabcd000000000000ULL | i;
		ret = dacc(c, 0, AMDVI_OP_WRITE, buf + i * PAGE_SZ + 8 * i, &v,
			   8, &a);
		CHECK(c, ret == ST_OK,
		      "device write to untouched page %u: expected OK via PRI, saw %s",
		      i, st_str(ret));
		CHECK(c, ret != ST_OK || a.page_requests >= 1,
		      "device write to untouched page %u: expected >= 1 page request, saw %u",
		      i, a.page_requests);
		if (ret == ST_OK)
			CHECK(c, *(uint64_t *)(buf + i * PAGE_SZ + 8 * i) == v,
			      "CPU read of page %u: expected %#llx, saw %#llx",
			      i, (unsigned long long)v,
			      (unsigned long long)*(uint64_t *)(buf + i * PAGE_SZ + 8 * i));
	}

	/* read of an untouched page: zero page; then the CPU replaces it */
	uint64_t *last = (uint64_t *)(buf + (n - 1) * PAGE_SZ);

	got = 1;
	ret = dacc(c, 0, AMDVI_OP_READ, last, &got, 8, &a);
	CHECK(c, ret == ST_OK && got == 0,
	      "device read of untouched page: expected OK and 0, saw %s %#llx",
	      st_str(ret), (unsigned long long)got);
	*(volatile uint64_t *)last = 0x1234;	/* COW away from the zero page */
	epoch_bump(c);
	audit(c, c->pasid, last, PAGE_SZ, "CPU write replaced the zero page");
	ret = dacc(c, 0, AMDVI_OP_READ, last, &got, 8, NULL);
	CHECK(c, ret == ST_OK && got == 0x1234,
	      "device read after CPU write to a zero-page mapping: expected 0x1234, saw %s %#llx",
	      st_str(ret), (unsigned long long)got);

	stream_end(c, sid, NULL);
	audit(c, c->pasid, buf, len, "PRI faults");
	munmap(buf, len);
	munmap(side, len);
}

static void t_pri_cow_readonly(struct ctx *c)
{
	const unsigned int n = 8;
	size_t len = n * PAGE_SZ;
	uint8_t *buf = map_anon(len);
	struct sleeper s = { 0 };
	struct amdvi_ioc_access a;
	uint32_t sid;
	uint64_t v;
	int ret;

	REQUIRE(c, buf, "expected memory, saw allocation failure");
	fill_words(buf, len, 4);
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = buf, .len = len, .rd = 1, .rate = c->rate });
	if (!sleeper_fork(c, &s, buf, len, 4))
		goto out;
	epoch_bump(c);
	audit(c, c->pasid, buf, len, "fork write-protected the range");

	for (unsigned int i = 0; i < n; i++) {
		uint64_t *p = (uint64_t *)(buf + i * PAGE_SZ + 64);

		v = 0xc0e0000000000000ULL | i;
		ret = dacc(c, 0, AMDVI_OP_WRITE, p, &v, 8, &a);
		CHECK(c, ret == ST_OK,
		      "device write to COW-shared page %u: expected OK via PRI, saw %s",
		      i, st_str(ret));
		CHECK(c, ret != ST_OK || a.page_requests >= 1,
		      "device write to read-only COW page %u: expected >= 1 page request, saw %u",
		      i, a.page_requests);
		if (ret == ST_OK)
			CHECK(c, *(volatile uint64_t *)p == v,
			      "parent CPU read of page %u: expected the device's %#llx, saw %#llx",
			      i, (unsigned long long)v, (unsigned long long)*p);
	}
	epoch_bump(c);
	audit(c, c->pasid, buf, len, "COW broken by page requests");
	sleeper_finish(c, &s);
out:
	stream_end(c, sid, NULL);
	munmap(buf, len);
}

/* ---- COW: the 2017 scenario ---- */

struct cow_writer {
	uint8_t *buf;
	unsigned int n;
	uint64_t seed;
};

static void *cow_writer_fn(void *arg)
{
	struct cow_writer *w = arg;

	for (unsigned int i = 0; i < w->n; i++)
		fill_words(w->buf + i * PAGE_SZ, PAGE_SZ, w->seed + i);
	return NULL;
}

/*
 * Parent fills A; the device reads the range continuously; fork; another
 * thread of the parent writes B to every page (COW fault per page).  After
 * the COW the device must see the parent's new pages: the old page may not
 * be used through a cached translation once the new PTE is visible (R1).
 */
static void cow_round(struct ctx *c, unsigned int n, uint32_t rate)
{
	size_t len = n * PAGE_SZ;
	uint8_t *buf = map_anon(len);
	struct cow_writer w = { .n = n, .seed = 100 };
	struct sleeper s = { 0 };
	pthread_t th;
	uint32_t sid;

	REQUIRE(c, buf, "expected memory, saw allocation failure");
	w.buf = buf;
	fill_words(buf, len, 5);
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = buf, .len = len, .stride = 256, .rd = 8, .tr = 1,
		.rate = rate });
	msleep(10);
	if (!sleeper_fork(c, &s, buf, len, 5))
		goto out;
	epoch_bump(c);
	/* fork write-protected the parent: no writable entry may survive it */
	audit(c, c->pasid, buf, len, "fork");
	msleep(10);		/* let the device re-cache read translations */
	REQUIRE(c, !pthread_create(&th, NULL, cow_writer_fn, &w),
		"expected a writer thread, saw pthread_create failure");
	pthread_join(th, NULL);
	epoch_bump(c);
	audit(c, c->pasid, buf, len, "COW faults");

	for (unsigned int i = 0; i < n; i++) {
		uint64_t got = 0, want = word_at(w.seed + i, 8);
		int ret = dacc(c, 0, AMDVI_OP_READ, buf + i * PAGE_SZ + 8,
			       &got, 8, NULL);

		CHECK(c, ret == ST_OK && got == want,
		      "device read of page %u after COW: expected the parent's new %#llx, saw %s %#llx",
		      i, (unsigned long long)want, st_str(ret),
		      (unsigned long long)got);
	}
	sleeper_finish(c, &s);
out:
	stream_end(c, sid, NULL);
	munmap(buf, len);
}

static void t_cow_fork(struct ctx *c)
{
	cow_round(c, 32, c->rate);
}

static void t_cow_notifier_order(struct ctx *c)
{
	if (c->repeat <= 1)
		diag(c, "notifier mode mask 0x%x (1 secondary, 2 start, 4 end): end-only must show R1",
		     c->info.notifier_mode);
	cow_round(c, 64, 0);	/* unthrottled: widen the chance to hit the window */
}

/* ---- KSM ---- */

#define KSM "/sys/kernel/mm/ksm/"

/*
 * ksmd replaces a read-only page by a KSM page with the same content with
 * ptep_clear_flush() (no _notify): "No need to notify as we are replacing a
 * read only page with another read only page with the same content"
 * (mm/ksm.c, Documentation/mm/mmu_notifier.rst).  Where the secondary-TLB
 * flush comes only at invalidate_range_end (6.1) the device may read the
 * old page for a while: R1 by the oracle's rule, harmless by the kernel's.
 * Report R1 of the merge phase, but a device *write* through such a stale
 * entry would corrupt the merge and fails.  After the merge R1 is checked
 * as everywhere else.
 */
static void ksm_merge_findings(struct ctx *c)
{
	struct amdvi_ioc_finding rec[AMDVI_ORACLE_RECORDS];
	struct amdvi_ioc_oracle o;
	unsigned int writes = 0, r1 = 0;
	int ret;

	ret = dev_oracle(c->fd, 0, 0, 0, 0, AMDVI_ORACLE_CLEAR, rec,
			 AMDVI_ORACLE_RECORDS, &o);
	if (ret < 0 || o.status != ST_OK) {
		fail(c, "ORACLE_READ after the merge: expected OK, saw %s",
		     ret < 0 ? strerror(-ret) : status_name(o.status));
		return;
	}
	for (int i = 0; i < 4; i++)
		c->r[i] += o.count[i];
	if (!o.count[AMDVI_CNT_R1])
		return;
	for (unsigned int i = 0; i < o.nrecords; i++) {
		if (rec[i].rule != AMDVI_RULE_R1)
			continue;
		rec[r1++] = rec[i];		/* keep the R1 records only */
		writes += rec[i].write != 0;
	}
	diag(c, "KSM merge: %llu R1 finding(s): device reads of a page ksmd replaced by a same-content KSM page before the late secondary flush; exempt by design (mm/ksm.c replace_page), reported only",
	     (unsigned long long)o.count[AMDVI_CNT_R1]);
	print_findings(c, rec, r1, 2);
	CHECK(c, writes == 0,
	      "R1 during the KSM merge: expected only device reads of the replaced page, saw %u write(s) among %u records",
	      writes, r1);
}

static void t_ksm_merge(struct ctx *c)
{
	const unsigned int n = 32, hot = 4;
	size_t len = (n + hot) * PAGE_SZ;
	uint64_t run0 = 0, sleep0 = 20, scan0 = 100, sharing = 0, t0;
	uint8_t *buf, *tmp;
	uint32_t s1, s2;
	char v[32];
	int ret;

	SKIP_IF(c, access(KSM "run", W_OK), "KSM not available (no %srun)", KSM);
	read_sysfs_u64(KSM "run", &run0);
	read_sysfs_u64(KSM "sleep_millisecs", &sleep0);
	read_sysfs_u64(KSM "pages_to_scan", &scan0);
	write_sysfs(KSM "pages_to_scan", "1000");
	write_sysfs(KSM "sleep_millisecs", "10");
	SKIP_IF(c, write_sysfs(KSM "run", "1"), "cannot start ksmd");

	buf = map_anon(len);
	tmp = malloc(PAGE_SZ);
	REQUIRE(c, buf && tmp, "expected memory, saw allocation failure");
	for (unsigned int i = 0; i < n; i++)
		fill_words(buf + i * PAGE_SZ, PAGE_SZ, 6);	/* identical */
	for (unsigned int i = n; i < n + hot; i++)
		fill_words(buf + i * PAGE_SZ, PAGE_SZ, 60 + i);
	ret = madvise(buf, len, MADV_MERGEABLE);
	if (ret) {
		skip(c, "MADV_MERGEABLE: %s", strerror(errno));
		goto restore;
	}
	/* device reads the mergeable pages and writes the hot ones */
	s1 = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = buf, .len = n * PAGE_SZ, .rd = 1, .rate = c->rate });
	s2 = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = buf + n * PAGE_SZ, .len = hot * PAGE_SZ, .wr = 1,
		.rate = c->rate, .write_value = WV_BASE });

	/* our merged pages (per process; the global count lags after unmaps) */
	const char *cnt = access("/proc/self/ksm_merging_pages", R_OK) ?
			  KSM "pages_sharing" : "/proc/self/ksm_merging_pages";

	t0 = now_ms();
	while (now_ms() - t0 < 20000) {
		if (!read_sysfs_u64(cnt, &sharing) && sharing >= n - 1)
			break;
		msleep(50);
	}
	/* stop ksmd: the kernel operation is over before the audit */
	write_sysfs(KSM "run", "0");
	read_sysfs_u64(cnt, &sharing);
	if (sharing < n / 2) {
		stream_end(c, s1, NULL);
		stream_end(c, s2, NULL);
		skip(c, "KSM merged only %llu pages in 20 s",
		     (unsigned long long)sharing);
		goto unmap;
	}
	diag(c, "KSM merged %llu pages (%s) after %llu ms",
	     (unsigned long long)sharing, cnt, (unsigned long long)(now_ms() - t0));
	epoch_bump(c);
	audit(c, c->pasid, buf, len, "KSM merge");
	ksm_merge_findings(c);

	for (unsigned int i = 0; i < n; i++) {
		long off;

		ret = dacc(c, 0, AMDVI_OP_READ, buf + i * PAGE_SZ, tmp, PAGE_SZ,
			   NULL);
		off = cmp_words(tmp, PAGE_SZ, 6);
		CHECK(c, ret == ST_OK && off < 0,
		      "device read of merged page %u: expected the common content, saw %s (mismatch at %ld)",
		      i, st_str(ret), off);
	}
	/* a device write must break the merge (PRI), never write in place */
	uint64_t x = 0xfeedfacecafef00dULL;

	ret = dacc(c, 0, AMDVI_OP_WRITE, buf, &x, 8, NULL);
	CHECK(c, ret == ST_OK, "device write to a merged page: expected OK, saw %s",
	      st_str(ret));
	CHECK(c, *(volatile uint64_t *)buf == x,
	      "CPU view of the written merged page: expected %#llx, saw %#llx",
	      (unsigned long long)x, (unsigned long long)*(uint64_t *)buf);
	for (unsigned int i = 1; i < n; i++)
		CHECK(c, cmp_words(buf + i * PAGE_SZ, PAGE_SZ, 6) < 0,
		      "page %u shared with the written one: expected unchanged content, saw it modified",
		      i);
	stream_end(c, s1, NULL);
	stream_end(c, s2, NULL);
	epoch_bump(c);
	audit(c, c->pasid, buf, len, "COW of a KSM page");
unmap:
	munmap(buf, len);
	free(tmp);
restore:
	snprintf(v, sizeof(v), "%llu", (unsigned long long)scan0);
	write_sysfs(KSM "pages_to_scan", v);
	snprintf(v, sizeof(v), "%llu", (unsigned long long)sleep0);
	write_sysfs(KSM "sleep_millisecs", v);
	snprintf(v, sizeof(v), "%llu", (unsigned long long)run0);
	write_sysfs(KSM "run", v);
}

/* ---- NUMA migration ---- */

static void t_migrate_numa(struct ctx *c)
{
	const unsigned int n = 16;
	size_t len = n * PAGE_SZ;
	struct amdvi_ioc_stream_counts k;
	void *pages[16];
	int nodes[16], status[16];
	uint8_t *buf;
	uint32_t sid;
	long ret;

	SKIP_IF(c, access("/sys/devices/system/node/node1", F_OK),
		"only one NUMA node");
	buf = map_anon(len);
	REQUIRE(c, buf, "expected memory, saw allocation failure");
	fill_words(buf, len, 7);
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = buf, .len = len, .stride = PAGE_SZ, .wr = 1,
		.rate = c->rate, .write_value = WV_BASE });
	msleep(10);
	for (int round = 0; round < 4; round++) {
		int target = (round & 1) ? 0 : 1;
		unsigned int moved = 0;

		for (unsigned int i = 0; i < n; i++) {
			pages[i] = buf + i * PAGE_SZ;
			nodes[i] = target;
			status[i] = -1;
		}
		ret = syscall(__NR_move_pages, 0, n, pages, nodes, status,
			      MPOL_MF_MOVE);
		if (ret < 0 && errno == ENOSYS) {
			stream_end(c, sid, NULL);
			skip(c, "move_pages: ENOSYS");
			goto out;
		}
		CHECK(c, ret >= 0, "move_pages to node %d: expected success, saw %s",
		      target, strerror(errno));
		for (unsigned int i = 0; i < n; i++)
			moved += status[i] == target;
		if (moved < n)
			diag(c, "round %d: %u of %u pages on node %d (others busy)",
			     round, moved, n, target);
		epoch_bump(c);
		audit(c, c->pasid, buf, len, "move_pages");
		msleep(10);
	}
	stream_end(c, sid, &k);
	check_write_stream(c, buf, n, PAGE_SZ, WV_BASE, &k,
			   "writes across migrations");
	roundtrip(c, (uint64_t *)(buf + 8), 0x4d49475241544544ULL,
		  "after migration");
out:
	munmap(buf, len);
}

/* ---- MADV_DONTNEED from two threads ---- */

struct zapper {
	uint8_t *buf;
	size_t len;
	int loops;
	int err;	/* errno of a failed MADV_DONTNEED, 0 if none */
};

static void *zapper_fn(void *arg)
{
	struct zapper *z = arg;

	for (int i = 0; i < z->loops; i++) {
		if (madvise(z->buf, z->len, MADV_DONTNEED))
			z->err = errno;
		z->buf[(i * 7 % (z->len / PAGE_SZ)) * PAGE_SZ] = (uint8_t)i;
	}
	return NULL;
}

static void t_dontneed_race(struct ctx *c)
{
	const unsigned int n = 32;
	size_t len = n * PAGE_SZ;
	uint8_t *buf = map_anon(len);
	struct zapper z;
	pthread_t th[2];
	uint32_t sid;

	REQUIRE(c, buf, "expected memory, saw allocation failure");
	fill_words(buf, len, 8);
	z = (struct zapper){ .buf = buf, .len = len, .loops = 50 };
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = buf, .len = len, .rd = 1, .wr = 1, .rate = c->rate,
		.write_value = WV_BASE });
	msleep(10);
	for (int i = 0; i < 2; i++)
		REQUIRE(c, !pthread_create(&th[i], NULL, zapper_fn, &z),
			"expected zapper thread %d, saw pthread_create failure", i);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	CHECK(c, !z.err, "MADV_DONTNEED: expected success, saw %s",
	      strerror(z.err));
	epoch_bump(c);
	/*
	 * Stop the stream before the audit.  While it runs, its page requests
	 * keep changing the range: a read request maps the zero page, a write
	 * request then breaks that COW (wp_page_copy: clear the PTE, flush,
	 * set the new PTE), and an audit inside that flush window sees the
	 * zero-page translation still cached over a cleared PTE.  Stopping
	 * the stream waits for its page requests to be answered, i.e. for
	 * those faults to have returned.  It flushes nothing, so an entry the
	 * zaps left stale is still cached at the audit.
	 */
	stream_end(c, sid, NULL);
	audit(c, c->pasid, buf, len, "concurrent MADV_DONTNEED");
	roundtrip(c, (uint64_t *)(buf + 3 * PAGE_SZ), 0xd0e7ULL,
		  "after MADV_DONTNEED");
	munmap(buf, len);
}

/* ---- munmap under a stream ---- */

static void t_munmap_stream(struct ctx *c)
{
	const unsigned int n = 32;
	size_t len = n * PAGE_SZ, half = len / 2;
	uint8_t *buf = map_anon(len), *tmp = malloc(half);
	uint64_t got;
	uint32_t sid;
	int ret;

	REQUIRE(c, buf && tmp, "expected memory, saw allocation failure");
	fill_words(buf, len, 9);
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = buf, .len = len, .rd = 1, .wr = 1, .rate = c->rate,
		.write_value = WV_BASE });
	msleep(20);
	REQUIRE(c, !munmap(buf + half, half), "expected munmap to succeed, saw %s",
		strerror(errno));
	epoch_bump(c);
	audit(c, c->pasid, buf + half, half, "munmap (unmapped half)");
	audit(c, c->pasid, buf, len, "munmap (whole range)");

	ret = dacc(c, 0, AMDVI_OP_READ, buf + half + PAGE_SZ, &got, 8, NULL);
	CHECK(c, ret == ST_TRANSLATION_FAULT,
	      "device read of an unmapped page: expected TRANSLATION_FAULT, saw %s",
	      st_str(ret));
	msleep(10);
	stream_end(c, sid, NULL);
	/* the mapped half only ever saw stream writes in stream slots */
	ret = dacc(c, 0, AMDVI_OP_READ, buf, tmp, half, NULL);
	CHECK(c, ret == ST_OK && !memcmp(tmp, buf, half),
	      "device read of the mapped half: expected the CPU's content, saw %s%s",
	      st_str(ret), ret == ST_OK ? " with different data" : "");
	audit(c, c->pasid, buf, len, "stream stop");
	munmap(buf, half);
	free(tmp);
}

/* ---- mprotect RW -> RO under a write stream ---- */

static void t_mprotect_ro_stream(struct ctx *c)
{
	const unsigned int n = 16;
	size_t len = n * PAGE_SZ;
	uint8_t *buf = map_anon(len), *snap = malloc(len);
	struct amdvi_ioc_stream_counts k1, k2;
	uint64_t v = 0x524f, got;
	uint32_t sid;
	int ret;

	REQUIRE(c, buf && snap, "expected memory, saw allocation failure");
	fill_words(buf, len, 10);
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = buf, .len = len, .stride = 512, .wr = 1,
		.rate = c->rate, .write_value = WV_BASE });
	msleep(20);
	REQUIRE(c, !mprotect(buf, len, PROT_READ),
		"expected mprotect(PROT_READ) to succeed, saw %s", strerror(errno));
	epoch_bump(c);
	audit(c, c->pasid, buf, len, "mprotect RW->RO");
	memcpy(snap, buf, len);
	dev_stream_ctl(c->fd, sid, 0, &k1);
	msleep(50);
	dev_stream_ctl(c->fd, sid, 0, &k2);
	CHECK(c, !memcmp(snap, buf, len),
	      "memory after mprotect RO: expected no device write to land, saw the content change");
	CHECK(c, k2.writes == k1.writes,
	      "stream after mprotect RO: expected no successful writes, saw %llu more (faults +%llu)",
	      (unsigned long long)(k2.writes - k1.writes),
	      (unsigned long long)(k2.faults - k1.faults));
	ret = dacc(c, 0, AMDVI_OP_WRITE, buf + 8, &v, 8, NULL);
	CHECK(c, ret == ST_TRANSLATION_FAULT,
	      "device write to a read-only mapping: expected TRANSLATION_FAULT, saw %s",
	      st_str(ret));
	ret = dacc(c, 0, AMDVI_OP_READ, buf + 8, &got, 8, NULL);
	CHECK(c, ret == ST_OK && got == *(uint64_t *)(buf + 8),
	      "device read of a read-only mapping: expected OK %#llx, saw %s %#llx",
	      (unsigned long long)*(uint64_t *)(buf + 8), st_str(ret),
	      (unsigned long long)got);
	stream_end(c, sid, NULL);
	audit(c, c->pasid, buf, len, "stream stop");
	munmap(buf, len);
	free(snap);
}

/*
 * ---- permission upgrades without invalidation ----
 *
 * Linux raises permissions without a secondary-TLB flush (wp_page_reuse()
 * after the COW sharer has gone; the x86 TLB re-walks on a fault, SDM
 * 4.10.4.3), so after a PRI Success the IOMMU must answer the device's new
 * translation request from the tables, not from a read-only IOTLB entry
 * (iommu-dev `ats_permission_miss`, docs/fault-injection.md). Part A:
 * mprotect RO->RW under a write stream. Part B: a write-fault upgrade: the
 * device caches the read-only PTE of a fork-shared page, the child exits,
 * and a device write must land through PRI.
 */
static void t_upgrade_write(struct ctx *c)
{
	const unsigned int n = 8;
	size_t len = n * PAGE_SZ;
	uint8_t *a = map_anon(len), *b = map_anon(len), *tmp = malloc(len);
	struct amdvi_ioc_stream_counts k1, k2;
	struct amdvi_ioc_access acc;
	struct sleeper s = { 0 };
	uint32_t sid;
	uint64_t v;
	int ret;

	REQUIRE(c, a && b && tmp, "expected memory, saw allocation failure");

	/* A: RO, the device caches read-only entries, then RO->RW */
	fill_words(a, len, 21);
	REQUIRE(c, !mprotect(a, len, PROT_READ),
		"expected mprotect(PROT_READ) to succeed, saw %s", strerror(errno));
	ret = dacc(c, 0, AMDVI_OP_READ, a, tmp, len, NULL);
	CHECK(c, ret == ST_OK, "device read of the read-only range: expected OK, saw %s",
	      st_str(ret));
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = a, .len = len, .stride = 512, .wr = 1,
		.rate = c->rate, .write_value = WV_BASE });
	msleep(10);
	REQUIRE(c, !mprotect(a, len, PROT_READ | PROT_WRITE),
		"expected mprotect(PROT_READ|PROT_WRITE) to succeed, saw %s",
		strerror(errno));
	dev_stream_ctl(c->fd, sid, 0, &k1);
	msleep(50);
	dev_stream_ctl(c->fd, sid, 0, &k2);
	CHECK(c, k2.writes > k1.writes,
	      "write stream after mprotect RO->RW: expected writes to land, saw %llu more (faults +%llu)",
	      (unsigned long long)(k2.writes - k1.writes),
	      (unsigned long long)(k2.faults - k1.faults));
	stream_end(c, sid, NULL);
	for (unsigned int i = 0; i < n; i++) {
		uint64_t *p = (uint64_t *)(a + i * PAGE_SZ + 8);

		v = 0x5570000000000000ULL | i;
		ret = dacc(c, 0, AMDVI_OP_WRITE, p, &v, 8, &acc);
		CHECK(c, ret == ST_OK && *(volatile uint64_t *)p == v,
		      "device write to page %u after mprotect RO->RW: expected OK and %#llx, saw %s %#llx (%u page requests)",
		      i, (unsigned long long)v, st_str(ret),
		      (unsigned long long)*p, acc.page_requests);
	}
	epoch_bump(c);
	audit(c, c->pasid, a, len, "mprotect RO->RW");

	/* B: read-only PTEs cached, then a write fault upgrades them in place */
	fill_words(b, len, 22);
	if (!sleeper_fork(c, &s, b, len, 22))
		goto out;
	ret = dacc(c, 0, AMDVI_OP_READ, b, tmp, len, NULL);
	CHECK(c, ret == ST_OK, "device read of the fork-shared range: expected OK, saw %s",
	      st_str(ret));
	sleeper_finish(c, &s);		/* the pages are ours alone again */
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = b + PAGE_SZ * (n / 2), .len = len / 2, .stride = 512,
		.wr = 1, .rate = c->rate, .write_value = WV_BASE });
	for (unsigned int i = 0; i < n / 2; i++) {
		uint64_t *p = (uint64_t *)(b + i * PAGE_SZ + 16);

		v = 0x5571000000000000ULL | i;
		ret = dacc(c, 0, AMDVI_OP_WRITE, p, &v, 8, &acc);
		CHECK(c, ret == ST_OK && *(volatile uint64_t *)p == v,
		      "device write to page %u after its COW sharer exited: expected OK and %#llx via PRI, saw %s %#llx (%u page requests)",
		      i, (unsigned long long)v, st_str(ret),
		      (unsigned long long)*p, acc.page_requests);
	}
	dev_stream_ctl(c->fd, sid, 0, &k1);
	msleep(50);
	dev_stream_ctl(c->fd, sid, 0, &k2);
	CHECK(c, k2.writes > k1.writes,
	      "write stream after the write-fault upgrade: expected writes to land, saw %llu more (faults +%llu)",
	      (unsigned long long)(k2.writes - k1.writes),
	      (unsigned long long)(k2.faults - k1.faults));
	stream_end(c, sid, NULL);
	epoch_bump(c);
	audit(c, c->pasid, b, len, "write-fault upgrade");
out:
	munmap(a, len);
	munmap(b, len);
	free(tmp);
}

/* ---- mremap ---- */

static void t_mremap_move(struct ctx *c)
{
	const unsigned int n = 16;
	size_t len = n * PAGE_SZ;
	uint8_t *a = map_anon(len), *tmp = malloc(len), *b;
	uint64_t got;
	uint32_t sid;
	long off;
	int ret;

	b = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	REQUIRE(c, a && tmp && b != MAP_FAILED,
		"expected memory, saw allocation failure");
	fill_words(a, len, 11);
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = a, .len = len, .rd = 1, .wr = 1, .rate = c->rate,
		.write_value = WV_BASE });
	msleep(20);
	REQUIRE(c, mremap(a, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, b) == b,
		"expected mremap to move to %p, saw %s", (void *)b,
		strerror(errno));
	epoch_bump(c);
	audit(c, c->pasid, a, len, "mremap (old range)");
	audit(c, c->pasid, b, len, "mremap (new range)");

	ret = dacc(c, 0, AMDVI_OP_READ, a, &got, 8, NULL);
	CHECK(c, ret == ST_TRANSLATION_FAULT,
	      "device read at the old address: expected TRANSLATION_FAULT, saw %s",
	      st_str(ret));
	stream_end(c, sid, NULL);

	fill_words(b, len, 12);
	ret = dacc(c, 0, AMDVI_OP_READ, b, tmp, len, NULL);
	off = ret == ST_OK ? cmp_words(tmp, len, 12) : 0;
	CHECK(c, ret == ST_OK && off < 0,
	      "device read at the new address: expected the CPU's writes, saw %s (mismatch at %ld)",
	      st_str(ret), off);
	roundtrip(c, (uint64_t *)(b + 5 * PAGE_SZ), 0x6d72656dULL,
		  "after mremap");
	audit(c, c->pasid, b, len, "stream stop");
	munmap(b, len);
	free(tmp);
}

/* ---- THP ---- */

/* AnonHugePages (kB) of the mapping holding @addr, -1 if unknown */
static long anon_huge_kb(const void *addr)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	unsigned long lo, hi, a = (uintptr_t)addr;
	char line[256];
	long kb = -1;
	bool in = false;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (isxdigit((unsigned char)line[0]) &&
		    sscanf(line, "%lx-%lx ", &lo, &hi) == 2)
			in = a >= lo && a < hi;
		else if (in && sscanf(line, "AnonHugePages: %ld kB", &kb) == 1)
			break;
	}
	fclose(f);
	return kb;
}

static void t_thp_collapse(struct ctx *c)
{
	const unsigned int n = HPAGE_SZ / PAGE_SZ;
	struct amdvi_ioc_stream_counts k;
	void *base;
	size_t maplen;
	uint8_t *buf = map_aligned(HPAGE_SZ, HPAGE_SZ, &base, &maplen);
	uint32_t sid;
	int ret = -1;

	REQUIRE(c, buf, "expected memory, saw allocation failure");
	madvise(buf, HPAGE_SZ, MADV_NOHUGEPAGE);
	fill_words(buf, HPAGE_SZ, 13);		/* 512 small pages */
	madvise(buf, HPAGE_SZ, MADV_HUGEPAGE);
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = buf, .len = HPAGE_SZ, .stride = PAGE_SZ, .wr = 1,
		.rate = c->rate, .write_value = WV_BASE });
	msleep(20);
	for (int i = 0; i < 5; i++) {
		ret = madvise(buf, HPAGE_SZ, MADV_COLLAPSE);
		if (!ret || errno != EAGAIN)
			break;
		msleep(20);
	}
	if (ret && (errno == EINVAL || errno == ENOSYS || errno == EPERM)) {
		stream_end(c, sid, NULL);
		skip(c, "MADV_COLLAPSE unsupported (%s)", strerror(errno));
		goto out;
	}
	CHECK(c, !ret, "MADV_COLLAPSE: expected success, saw %s",
	      strerror(errno));
	epoch_bump(c);
	diag(c, "after MADV_COLLAPSE: AnonHugePages %ld kB", anon_huge_kb(buf));
	audit(c, c->pasid, buf, HPAGE_SZ, "MADV_COLLAPSE");
	msleep(20);
	stream_end(c, sid, &k);
	check_write_stream(c, buf, n, PAGE_SZ, WV_BASE, &k,
			   "writes across the collapse");
	roundtrip(c, (uint64_t *)(buf + 100 * PAGE_SZ + 16), 0x746870ULL,
		  "after collapse");
	audit(c, c->pasid, buf, HPAGE_SZ, "stream stop");
out:
	munmap(base, maplen);
}

static void t_thp_split(struct ctx *c)
{
	void *base;
	size_t maplen, half = HPAGE_SZ / 2;
	uint8_t *buf = map_aligned(HPAGE_SZ, HPAGE_SZ, &base, &maplen);
	uint64_t v = 0x73706c6974ULL;
	uint32_t sid;
	int ret;

	REQUIRE(c, buf, "expected memory, saw allocation failure");
	madvise(buf, HPAGE_SZ, MADV_HUGEPAGE);
	fill_words(buf, HPAGE_SZ, 14);
	if (anon_huge_kb(buf) < 2048)	/* THP off at fault time: make one */
		madvise(buf, HPAGE_SZ, MADV_COLLAPSE);
	diag(c, "before the split: AnonHugePages %ld kB%s", anon_huge_kb(buf),
	     anon_huge_kb(buf) < 2048 ? " (no THP: split path not exercised)" : "");
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = buf, .len = HPAGE_SZ, .stride = PAGE_SZ, .rd = 1, .wr = 1,
		.rate = c->rate, .write_value = WV_BASE });
	msleep(20);
	REQUIRE(c, !mprotect(buf + half, half, PROT_READ),
		"expected mprotect of half a THP to succeed, saw %s",
		strerror(errno));
	epoch_bump(c);
	audit(c, c->pasid, buf, HPAGE_SZ, "mprotect of half a THP");
	REQUIRE(c, !munmap(buf + half + half / 2, half / 2),
		"expected munmap of a quarter to succeed, saw %s",
		strerror(errno));
	epoch_bump(c);
	audit(c, c->pasid, buf, HPAGE_SZ, "munmap of a quarter THP");
	msleep(20);
	stream_end(c, sid, NULL);

	ret = dacc(c, 0, AMDVI_OP_WRITE, buf + half + 64, &v, 8, NULL);
	CHECK(c, ret == ST_TRANSLATION_FAULT,
	      "device write into the read-only half: expected TRANSLATION_FAULT, saw %s",
	      st_str(ret));
	ret = dacc(c, 0, AMDVI_OP_READ, buf + half + half / 2, &v, 8, NULL);
	CHECK(c, ret == ST_TRANSLATION_FAULT,
	      "device read of the unmapped quarter: expected TRANSLATION_FAULT, saw %s",
	      st_str(ret));
	roundtrip(c, (uint64_t *)(buf + 3 * PAGE_SZ + 24), 0x5350ULL,
		  "writable half after split");
	audit(c, c->pasid, buf, half + half / 2, "stream stop");
	munmap(base, maplen);
}

/* ---- process exit and unbind with accesses in flight ---- */

static void *hammer_fn(void *arg)
{
	struct { int fd; uint32_t pasid; uint8_t *buf; volatile int *stop; } *h = arg;
	uint64_t v = 0;

	while (!*h->stop) {
		dev_access(h->fd, 0, h->pasid, AMDVI_OP_WRITE, 0,
			   (uintptr_t)h->buf + (v % 32) * PAGE_SZ, &v, 8, NULL);
		v++;
	}
	return NULL;
}

static void t_exit_inflight(struct ctx *c)
{
	uint64_t bonds0 = mod_counter(c, AMDVI_MC_BONDS_ACTIVE);
	uint64_t streams0 = mod_counter(c, AMDVI_MC_STREAMS_ACTIVE);
	uint64_t bonds = 0, streams = 0, t0;
	struct amdvi_ioc_stream_counts k;
	int p[2], status, kill9 = (c->repeat & 1) == 0;
	uint32_t msg[2] = { 0, 0 };
	pid_t pid;

	REQUIRE(c, !pipe(p), "expected a pipe, saw %s", strerror(errno));
	fflush(stdout);
	pid = fork();
	REQUIRE(c, pid >= 0, "expected fork, saw %s", strerror(errno));
	if (!pid) {
		static volatile int stop;
		struct { int fd; uint32_t pasid; uint8_t *buf; volatile int *stop; } h;
		struct stream_cfg cfg = { 0 };
		size_t len = 32 * PAGE_SZ;
		pthread_t th;
		int fd = dev_open();

		close(p[0]);
		if (fd < 0 || dev_bind(fd, 0, &msg[0]))
			_exit(2);
		h.fd = fd;
		h.pasid = msg[0];
		h.buf = map_anon(len);
		h.stop = &stop;
		if (!h.buf)
			_exit(3);
		fill_words(h.buf, len, 15);
		cfg = (struct stream_cfg){ .ep = c->ep_stream, .pasid = msg[0],
			.va = h.buf, .len = len, .stride = 512, .rd = 1,
			.wr = 1, .write_value = WV_BASE };
		if (dev_stream_start(fd, &cfg, &msg[1]) != ST_OK)
			_exit(4);
		pthread_create(&th, NULL, hammer_fn, &h);
		if (write(p[1], msg, sizeof(msg)) != sizeof(msg))
			_exit(5);
		msleep(30);
		_exit(0);	/* accesses in flight, nothing closed */
	}
	close(p[1]);
	if (read(p[0], msg, sizeof(msg)) != sizeof(msg))
		msg[1] = 0;
	close(p[0]);
	if (kill9 && msg[1]) {
		msleep(15);
		kill(pid, SIGKILL);
	}
	waitpid(pid, &status, 0);
	CHECK(c, msg[1] && ((WIFEXITED(status) && !WEXITSTATUS(status)) ||
			    (kill9 && WIFSIGNALED(status))),
	      "child: expected bind + stream then exit, saw wait status %#x",
	      status);
	if (!msg[1])
		return;
	diag(c, "child pasid %u stream %u %s", msg[0], msg[1],
	     kill9 ? "killed with SIGKILL" : "exited");

	/* everything the child had must go away without its help */
	t0 = now_ms();
	do {
		bonds = mod_counter(c, AMDVI_MC_BONDS_ACTIVE);
		streams = mod_counter(c, AMDVI_MC_STREAMS_ACTIVE);
		if (bonds == bonds0 && streams == streams0)
			break;
		msleep(20);
	} while (now_ms() - t0 < 5000);
	CHECK(c, bonds == bonds0,
	      "module bonds after child exit: expected %llu, saw %llu",
	      (unsigned long long)bonds0, (unsigned long long)bonds);
	CHECK(c, streams == streams0,
	      "module streams after child exit: expected %llu, saw %llu",
	      (unsigned long long)streams0, (unsigned long long)streams);
	memset(&k, 0, sizeof(k));
	status = dev_stream_ctl(c->fd, msg[1], 0, &k);
	CHECK(c, status != ST_OK || !k.running,
	      "child's stream %u after exit: expected stopped or released, saw running (%llu accesses)",
	      msg[1], (unsigned long long)(k.reads + k.writes));
	audit(c, msg[0], NULL, ~0ULL >> 8, "child exit (its PASID)");

	/* the device still works for us */
	uint8_t *buf = map_anon(PAGE_SZ);

	REQUIRE(c, buf, "expected memory, saw allocation failure");
	roundtrip(c, (uint64_t *)buf, 0x65786974ULL, "after child exit");
	munmap(buf, PAGE_SZ);
}

static void t_unbind_inflight(struct ctx *c)
{
	const unsigned int n = 32;
	size_t len = n * PAGE_SZ;
	uint8_t *buf = map_anon(len);
	uint64_t streams0 = mod_counter(c, AMDVI_MC_STREAMS_ACTIVE), got;
	struct { int fd; uint32_t pasid; uint8_t *buf; volatile int *stop; } h;
	struct amdvi_ioc_stream_counts k;
	volatile int stop = 0;
	uint32_t p2 = 0, p3 = 0, sid;
	pthread_t th;
	int ret;

	REQUIRE(c, buf, "expected memory, saw allocation failure");
	fill_words(buf, len, 16);
	ret = dev_bind(c->fd, 0, &p2);
	REQUIRE(c, !ret, "second BIND: expected a PASID, saw %s", strerror(-ret));
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.pasid = p2, .va = buf, .len = len, .rd = 1, .wr = 1,
		.rate = c->rate, .write_value = WV_BASE });
	h.fd = c->fd;
	h.pasid = p2;
	h.buf = buf;
	h.stop = &stop;
	REQUIRE(c, !pthread_create(&th, NULL, hammer_fn, &h),
		"expected an access thread, saw pthread_create failure");
	msleep(30);
	ret = dev_unbind(c->fd, p2);
	CHECK(c, !ret, "UNBIND %u: expected success, saw %s", p2,
	      strerror(-ret));
	epoch_bump(c);
	stop = 1;
	pthread_join(th, NULL);

	audit(c, p2, buf, len, "unbind with accesses in flight");
	CHECK(c, mod_counter(c, AMDVI_MC_STREAMS_ACTIVE) == streams0,
	      "module streams after unbind: expected %llu (stream stopped by the teardown), saw %llu",
	      (unsigned long long)streams0,
	      (unsigned long long)mod_counter(c, AMDVI_MC_STREAMS_ACTIVE));
	memset(&k, 0, sizeof(k));
	ret = dev_stream_ctl(c->fd, sid, 0, &k);
	CHECK(c, ret != ST_OK || !k.running,
	      "stream %u after unbind: expected stopped or released, saw running",
	      sid);
	if (ret == ST_OK)
		c->accesses += k.reads + k.writes + k.translations;
	ret = dev_access(c->fd, c->ep_data, p2, AMDVI_OP_READ, 0,
			 (uintptr_t)buf, &got, 8, NULL);
	c->accesses++;
	CHECK(c, ret != ST_OK,
	      "device read on the unbound PASID %u: expected a failure, saw OK", p2);

	ret = dev_bind(c->fd, 0, &p3);
	CHECK(c, !ret, "re-BIND: expected a PASID, saw %s", strerror(-ret));
	if (!ret) {
		ret = dev_access(c->fd, c->ep_data, p3, AMDVI_OP_READ, 0,
				 (uintptr_t)buf, &got, 8, NULL);
		c->accesses++;
		CHECK(c, ret == ST_OK && got == *(uint64_t *)buf,
		      "device read after re-bind (pasid %u): expected OK %#llx, saw %s %#llx",
		      p3, (unsigned long long)*(uint64_t *)buf, st_str(ret),
		      (unsigned long long)got);
		dev_unbind(c->fd, p3);
	}
	munmap(buf, len);
}

/* ---- the event log (docs/protocol.md §3) ---- */

/* AMD event-log entry (§5.1): codes, flags, fields */
#define EV_ILLEGAL_COMMAND	0x5
#define EV_IOTLB_INV_TIMEOUT	0x7
#define EV_INVALID_DEV_REQ	0x8
#define EV_FLAG_GN		(1U << 0)
#define EV_FLAG_TR		(1U << 8)
#define EV_WAIT_MS		1000

#define CMD_OP_INV_DEVTAB	0x2U
#define CMD_OP_INV_IOTLB	0x4U

static uint32_t ev_code(const uint32_t *e)
{
	return e[1] >> 28;
}

static uint32_t ev_devid(const uint32_t *e)
{
	return e[0] & 0xffff;
}

static uint32_t ev_flags(const uint32_t *e)
{
	return (e[1] >> 16) & 0xfff;
}

static uint32_t ev_pasid(const uint32_t *e)
{
	return (e[0] & 0xf0000) | (e[1] & 0xffff);
}

static uint64_t ev_addr(const uint32_t *e)
{
	return (uint64_t)e[3] << 32 | e[2];
}

static bool is_endpoint(struct ctx *c, uint32_t devid)
{
	for (unsigned int i = 0; i < c->info.num_endpoints; i++)
		if (c->info.endpoint_devid[i] == devid)
			return true;
	return false;
}

/*
 * Poll the module's decoder (EVENTS) until it has received more events of
 * @code than @before says, at most EV_WAIT_MS; the last such entry goes to
 * @last.  Returns how many arrived (0 after the deadline).
 */
static uint64_t ev_wait(struct ctx *c, const struct amdvi_ioc_events *before,
			unsigned int code, uint32_t last[4])
{
	struct amdvi_ioc_events now;
	uint64_t t0 = now_ms();
	int ret;

	for (;;) {
		ret = dev_events(c->fd, &now);
		if (ret) {
			fail(c, "EVENTS ioctl: %s", strerror(-ret));
			return 0;
		}
		if (now.count[code] > before->count[code]) {
			memcpy(last, now.last[code], sizeof(now.last[code]));
			return now.count[code] - before->count[code];
		}
		if (now_ms() - t0 > EV_WAIT_MS)
			return 0;
		msleep(20);
	}
}

/*
 * The device -> eventq -> module decoder path, which correct runs never
 * take.  (1) One COMMANDS request: INVALIDATE_IOTLB_PAGES to a device id no
 * endpoint has (nobody answers: IOTLB_INV_TIMEOUT at that command's GPA),
 * then INVALIDATE_DEVTAB_ENTRY with reserved bits 31:16 set (ILLEGAL_COMMAND,
 * executed 1, ILLEGAL_COMMAND_ERROR at the GPA the response names).  (2) An
 * endpoint whose DTE has I=0 asks for a translation: DEVICE_ERROR and
 * INVALID_DEVICE_REQUEST (TR=1, GN=1, our PASID and VA); with I=1 again the
 * same TRANSLATE succeeds.
 */
static void t_events(struct ctx *c)
{
	unsigned int ep = c->info.num_endpoints - 1;
	uint32_t ep_devid = c->info.endpoint_devid[ep];
	uint32_t nodev = 0x0100, pasid = c->pasid, cmds[2][4], e[4];
	const uint64_t all = 0x7ffffffffffff000ULL;
	struct amdvi_ioc_events before;
	struct amdvi_ioc_raw_cmds rc;
	struct amdvi_ioc_access a;
	uint64_t *buf, n, got = 0;
	int ret, ret2;

	while (is_endpoint(c, nodev))
		nodev++;
	ret = dev_events(c->fd, &before);
	REQUIRE(c, !ret, "EVENTS ioctl: expected 0, saw %s", strerror(-ret));

	/* (1) IOTLB_INV_TIMEOUT, then ILLEGAL_COMMAND_ERROR */
	cmds[0][0] = nodev | ((pasid >> 8) & 0xff) << 16;
	cmds[0][1] = nodev | (pasid & 0xff) << 16 | ((pasid >> 16) & 0xf) << 24 |
		     CMD_OP_INV_IOTLB << 28;
	cmds[0][2] = (uint32_t)all | 0x4 | 0x1;		/* GN, S: everything */
	cmds[0][3] = all >> 32;
	cmds[1][0] = ep_devid | 0xffff0000U;		/* reserved 31:16 */
	cmds[1][1] = CMD_OP_INV_DEVTAB << 28;
	cmds[1][2] = 0;
	cmds[1][3] = 0;
	ret = dev_raw_cmds(c->fd, &cmds[0][0], 2, &rc);
	REQUIRE(c, !ret, "RAW_CMDS ioctl: expected 0, saw %s", strerror(-ret));
	CHECK(c, rc.status == ST_ILLEGAL_COMMAND,
	      "COMMANDS with a reserved bit set: expected ILLEGAL_COMMAND, saw %s",
	      status_name(rc.status));
	CHECK(c, rc.executed == 1,
	      "COMMANDS: expected executed 1 (the INVALIDATE_IOTLB_PAGES), saw %u",
	      rc.executed);
	REQUIRE(c, rc.illegal_gpa != 0,
		"COMMANDS: expected the illegal command's GPA, saw 0");

	n = ev_wait(c, &before, EV_ILLEGAL_COMMAND, e);
	CHECK(c, n == 1,
	      "expected 1 ILLEGAL_COMMAND_ERROR event within %u ms, saw %llu",
	      EV_WAIT_MS, (unsigned long long)n);
	if (n) {
		CHECK(c, ev_code(e) == EV_ILLEGAL_COMMAND &&
		      ev_addr(e) == rc.illegal_gpa,
		      "ILLEGAL_COMMAND_ERROR: expected address %#llx, saw code %u address %#llx",
		      (unsigned long long)rc.illegal_gpa, ev_code(e),
		      (unsigned long long)ev_addr(e));
		diag(c, "decoded ILLEGAL_COMMAND_ERROR address=%#llx (COMMANDS illegal_gpa %#llx)",
		     (unsigned long long)ev_addr(e),
		     (unsigned long long)rc.illegal_gpa);
	}

	n = ev_wait(c, &before, EV_IOTLB_INV_TIMEOUT, e);
	CHECK(c, n == 1,
	      "expected 1 IOTLB_INV_TIMEOUT event within %u ms, saw %llu",
	      EV_WAIT_MS, (unsigned long long)n);
	if (n) {
		CHECK(c, ev_code(e) == EV_IOTLB_INV_TIMEOUT &&
		      ev_devid(e) == nodev &&
		      ev_addr(e) == rc.illegal_gpa - 16,
		      "IOTLB_INV_TIMEOUT: expected device %#x address %#llx, saw code %u device %#x address %#llx",
		      nodev, (unsigned long long)(rc.illegal_gpa - 16),
		      ev_code(e), ev_devid(e), (unsigned long long)ev_addr(e));
		diag(c, "decoded IOTLB_INV_TIMEOUT device=%#06x address=%#llx",
		     ev_devid(e), (unsigned long long)ev_addr(e));
	}

	/* (2) INVALID_DEVICE_REQUEST: ATS through a DTE with I=0 */
	buf = map_anon(PAGE_SZ);
	REQUIRE(c, buf, "expected memory, saw allocation failure");
	fill_words(buf, PAGE_SZ, 40);
	ret = dev_dte_ats(c->fd, ep, 0);
	CHECK(c, !ret, "DTE_ATS clear on endpoint %u: expected 0, saw %s", ep,
	      strerror(-ret));
	if (!ret) {
		ret = dev_access(c->fd, ep, pasid, AMDVI_OP_TRANSLATE, 0,
				 (uintptr_t)buf, NULL, 0, &a);
		c->accesses++;
	}
	ret2 = dev_dte_ats(c->fd, ep, 1);	/* whatever happened */
	REQUIRE(c, !ret2, "DTE_ATS set on endpoint %u: expected 0, saw %s", ep,
		strerror(-ret2));
	CHECK(c, ret == ST_DEVICE_ERROR,
	      "TRANSLATE with DTE.I=0: expected DEVICE_ERROR, saw %s",
	      st_str(ret));
	n = ev_wait(c, &before, EV_INVALID_DEV_REQ, e);
	CHECK(c, n == 1,
	      "expected 1 INVALID_DEVICE_REQUEST event within %u ms, saw %llu",
	      EV_WAIT_MS, (unsigned long long)n);
	if (n) {
		CHECK(c, ev_code(e) == EV_INVALID_DEV_REQ &&
		      ev_devid(e) == ep_devid &&
		      (ev_flags(e) & (EV_FLAG_TR | EV_FLAG_GN)) ==
		      (EV_FLAG_TR | EV_FLAG_GN) &&
		      ev_pasid(e) == pasid && ev_addr(e) == (uintptr_t)buf,
		      "INVALID_DEVICE_REQUEST: expected device %#x pasid %#x address %p TR=1 GN=1, saw code %u device %#x pasid %#x address %#llx flags %#x",
		      ep_devid, pasid, (void *)buf, ev_code(e), ev_devid(e),
		      ev_pasid(e), (unsigned long long)ev_addr(e),
		      ev_flags(e));
		diag(c,
		     "decoded INVALID_DEVICE_REQUEST device=%#06x pasid=%#x address=%#llx flags=%#05x",
		     ev_devid(e), ev_pasid(e), (unsigned long long)ev_addr(e),
		     ev_flags(e));
	}

	/* I=1 again: the endpoint translates and reads */
	ret = dev_access(c->fd, ep, pasid, AMDVI_OP_TRANSLATE, 0,
			 (uintptr_t)buf, NULL, 0, &a);
	c->accesses++;
	CHECK(c, ret == ST_OK && (a.ats & 3) == 3,
	      "TRANSLATE with DTE.I=1 again: expected OK with R=W=1, saw %s ats %#llx",
	      st_str(ret), (unsigned long long)a.ats);
	ret = dev_access(c->fd, ep, pasid, AMDVI_OP_READ, 0, (uintptr_t)buf,
			 &got, 8, NULL);
	c->accesses++;
	CHECK(c, ret == ST_OK && got == buf[0],
	      "READ with DTE.I=1 again: expected OK %#llx, saw %s %#llx",
	      (unsigned long long)buf[0], st_str(ret),
	      (unsigned long long)got);
	audit(c, pasid, buf, PAGE_SZ, "DTE.I restored");
	munmap(buf, PAGE_SZ);
}

const struct scenario scenarios[] = {
	{ "bind_basic", t_bind_basic, 0, 0,
	  "bind, translate, read, write; data both ways" },
	{ "pri_untouched", t_pri_untouched, 0, 0,
	  "device access to never-touched memory resolves through PRI" },
	{ "pri_cow_readonly", t_pri_cow_readonly, 0, 0,
	  "device write to a read-only COW page after fork, via PRI" },
	{ "cow_fork", t_cow_fork, SC_RACE, 0,
	  "fork + CPU COW writes while the device reads: no R1" },
	{ "ksm_merge", t_ksm_merge, SC_RACE, 0,
	  "KSM merges pages the device reads; device write breaks the merge" },
	{ "migrate_numa", t_migrate_numa, SC_RACE, 0,
	  "move_pages between nodes 0 and 1 under device writes" },
	{ "dontneed_race", t_dontneed_race, SC_RACE | SC_ALLOW_R1, 0,
	  "concurrent MADV_DONTNEED from two threads under a stream" },
	{ "munmap_stream", t_munmap_stream, SC_RACE, 0,
	  "munmap half of a streamed range" },
	{ "mprotect_ro_stream", t_mprotect_ro_stream, 0, 0,
	  "RW->RO under a write stream: no later device write lands" },
	{ "upgrade_write", t_upgrade_write, 0, 0,
	  "RO->RW by mprotect and by a write fault, without invalidation, under device writes" },
	{ "mremap_move", t_mremap_move, 0, 0,
	  "mremap a streamed range to a new address" },
	{ "thp_collapse", t_thp_collapse, 0, 0,
	  "MADV_COLLAPSE under device writes" },
	{ "thp_split", t_thp_split, 0, 0,
	  "mprotect/munmap of part of a THP under a stream" },
	{ "exit_inflight", t_exit_inflight, SC_RACE, 2,
	  "bound child exits / is killed with accesses in flight" },
	{ "unbind_inflight", t_unbind_inflight, SC_RACE, 0,
	  "unbind a PASID with a stream and accesses in flight" },
	{ "events", t_events, 0, 0,
	  "illegal command, ATS invalidation and ATS request errors reach the event log decoder" },
	{ "cow_notifier_order", t_cow_notifier_order, SC_RACE, 8,
	  "negative control: COW repeated; notifier_mode=end_only must show R1" },
};

const unsigned int nr_scenarios = sizeof(scenarios) / sizeof(scenarios[0]);

int main(int argc, char **argv)
{
	return harness_main(argc, argv);
}
