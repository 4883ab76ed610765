// SPDX-License-Identifier: GPL-2.0
/*
 * amdvi-tests, page sharing: COW after fork (the 2017 ordering bug and its
 * negative control), KSM merging, and COW and munmap of a hugetlb page under
 * a device stream.
 */
#define _GNU_SOURCE
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

#include "tests.h"

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

void t_cow_fork(struct ctx *c)
{
	cow_round(c, 32, c->rate);
}

void t_cow_notifier_order(struct ctx *c)
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

void t_ksm_merge(struct ctx *c)
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

/* ---- hugetlb ---- */

#define NR_HUGE "/proc/sys/vm/nr_hugepages"

/*
 * A private 2 MiB hugetlb mapping streamed by the device: fork shares and
 * write-protects it (copy_hugetlb_page_range), CPU writes break the COW
 * (hugetlb_wp: range start/end around huge_ptep_clear_flush), munmap zaps
 * it (__unmap_hugepage_range with the mmu_gather flush).
 */
void t_hugetlb(struct ctx *c)
{
	uint8_t *buf, *want = malloc(HPAGE_SZ);
	struct sleeper s = { 0 };
	uint64_t nr0 = 0, nr = 0, got;
	uint32_t sid;
	char v[32];
	int ret;

	REQUIRE(c, want, "expected memory, saw allocation failure");
	SKIP_IF(c, read_sysfs_u64(NR_HUGE, &nr0),
		"no %s (CONFIG_HUGETLBFS off)", NR_HUGE);
	write_sysfs(NR_HUGE, "4");
	read_sysfs_u64(NR_HUGE, &nr);
	buf = nr >= 2 ? mmap(NULL, HPAGE_SZ, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0) :
			MAP_FAILED;
	if (buf == MAP_FAILED) {
		skip(c, "no 2 MiB hugetlb mapping (%llu huge pages reserved): %s",
		     (unsigned long long)nr, strerror(errno));
		goto restore;
	}
	fill_words(buf, HPAGE_SZ, 50);
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = buf, .len = HPAGE_SZ, .stride = PAGE_SZ, .rd = 4, .tr = 1,
		.rate = c->rate });
	msleep(20);
	if (!sleeper_fork(c, &s, buf, HPAGE_SZ, 50))
		goto unmap;
	epoch_bump(c);
	audit(c, c->pasid, buf, HPAGE_SZ, "fork of a hugetlb mapping");
	fill_words(buf, HPAGE_SZ, 51);		/* COW of the huge page */
	epoch_bump(c);
	audit(c, c->pasid, buf, HPAGE_SZ, "hugetlb COW");
	fill_words(want, HPAGE_SZ, 51);
	device_reads(c, buf, want, HPAGE_SZ, "hugetlb page after COW");
	sleeper_finish(c, &s);
	roundtrip(c, (uint64_t *)(buf + 300 * PAGE_SZ + 8), 0x68756765ULL,
		  "hugetlb after COW");
	REQUIRE(c, !munmap(buf, HPAGE_SZ), "munmap of the hugetlb page: %s",
		strerror(errno));
	epoch_bump(c);
	audit(c, c->pasid, buf, HPAGE_SZ, "munmap of a hugetlb page");
	ret = dacc(c, 0, AMDVI_OP_READ, buf + 8, &got, 8, NULL);
	CHECK(c, ret == ST_TRANSLATION_FAULT,
	      "device read of the unmapped hugetlb page: expected TRANSLATION_FAULT, saw %s",
	      st_str(ret));
	stream_end(c, sid, NULL);
	goto restore;
unmap:
	stream_end(c, sid, NULL);
	munmap(buf, HPAGE_SZ);
restore:
	snprintf(v, sizeof(v), "%llu", (unsigned long long)nr0);
	write_sysfs(NR_HUGE, v);
	free(want);
}
