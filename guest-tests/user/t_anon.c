// SPDX-License-Identifier: GPL-2.0
/*
 * amdvi-tests, PTE changes of anonymous memory under a stream: move_pages
 * migration, MADV_DONTNEED, munmap, mprotect, mremap (move, MREMAP_DONTUNMAP,
 * growing in place and by moving), THP collapse and split, and mlock/munlock/
 * MADV_COLD (which must change nothing the device sees).
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

#include "tests.h"

/* ---- NUMA migration ---- */

void t_migrate_numa(struct ctx *c)
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

void t_dontneed_race(struct ctx *c)
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

void t_munmap_stream(struct ctx *c)
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

void t_mprotect_ro_stream(struct ctx *c)
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
void t_upgrade_write(struct ctx *c)
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
	/* up to 2 s: a stream starved on a loaded host makes no access for a while */
	for (unsigned int w = 0; w < 200; w++) {
		msleep(10);
		dev_stream_ctl(c->fd, sid, 0, &k2);
		if (w >= 4 && k2.writes > k1.writes)
			break;
	}
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

void t_mremap_move(struct ctx *c)
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

void t_thp_collapse(struct ctx *c)
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

void t_thp_split(struct ctx *c)
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

/* ---- more mremap, mlock and MADV_COLD ---- */

#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP	4
#endif
#ifndef MADV_COLD
#define MADV_COLD		20
#endif

/*
 * MREMAP_DONTUNMAP moves the pages and leaves the old range mapped but
 * empty (move_page_tables: range start/end, flush_tlb_range): the device
 * must read zeroes at the old address and the moved data at the new one.
 */
void t_mremap_dontunmap(struct ctx *c)
{
	const unsigned int n = 16;
	size_t len = n * PAGE_SZ;
	uint8_t *a = map_anon(len), *want = malloc(len), *b;
	uint64_t got = ~0ULL;
	uint32_t sid;
	int ret;

	REQUIRE(c, a && want, "expected memory, saw allocation failure");
	fill_words(a, len, 61);
	memcpy(want, a, len);
	hold_translations(c, a, len);
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = a, .len = len, .rd = 1, .tr = 1, .rate = c->rate });
	msleep(10);
	b = mremap(a, len, len, MREMAP_MAYMOVE | MREMAP_DONTUNMAP);
	if (b == MAP_FAILED) {
		stream_end(c, sid, NULL);
		skip(c, "MREMAP_DONTUNMAP: %s", strerror(errno));
		goto out;
	}
	epoch_bump(c);
	audit(c, c->pasid, a, len, "MREMAP_DONTUNMAP (old range)");
	audit(c, c->pasid, b, len, "MREMAP_DONTUNMAP (new range)");
	stream_end(c, sid, NULL);
	device_reads(c, b, want, len, "new range after MREMAP_DONTUNMAP");
	ret = dacc(c, 0, AMDVI_OP_READ, a + 3 * PAGE_SZ + 8, &got, 8, NULL);
	CHECK(c, ret == ST_OK && got == 0,
	      "device read of the emptied old range: expected OK and 0, saw %s %#llx",
	      st_str(ret), (unsigned long long)got);
	roundtrip(c, (uint64_t *)(b + 2 * PAGE_SZ + 32), 0x646f6e74ULL,
		  "after MREMAP_DONTUNMAP");
	munmap(b, len);
out:
	munmap(a, len);
	free(want);
}

/*
 * Grow a streamed mapping in place (no PTE moves), then grow it where it
 * cannot stay so that mremap moves it (move_page_tables).
 */
void t_mremap_grow(struct ctx *c)
{
	const unsigned int n = 16;
	size_t len = n * PAGE_SZ;
	uint8_t *r, *a, *b, *want = malloc(2 * len);
	uint64_t got;
	uint32_t sid;
	int ret;

	r = mmap(NULL, 4 * len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	REQUIRE(c, r != MAP_FAILED && want, "expected address space");
	munmap(r + len, 3 * len);
	a = mmap(r, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	REQUIRE(c, a == r, "expected a mapping at %p", (void *)r);
	fill_words(a, len, 62);
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = a, .len = len, .rd = 1, .tr = 1, .rate = c->rate });
	msleep(10);
	b = mremap(a, len, 2 * len, 0);
	REQUIRE(c, b == a, "mremap growing in place: expected %p, saw %p (%s)",
		(void *)a, (void *)b, strerror(errno));
	epoch_bump(c);
	audit(c, c->pasid, a, 2 * len, "mremap grown in place");
	fill_words(a + len, len, 63);
	memcpy(want, a, 2 * len);
	device_reads(c, a, want, 2 * len, "after growing in place");

	/* a guard right behind: growing again must move */
	REQUIRE(c, mmap(a + 2 * len, PAGE_SZ, PROT_NONE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) ==
		   a + 2 * len, "expected a guard mapping");
	b = mremap(a, 2 * len, 3 * len, MREMAP_MAYMOVE);
	REQUIRE(c, b != MAP_FAILED && b != a,
		"mremap growing past a guard: expected a move, saw %p (%s)",
		(void *)b, strerror(errno));
	epoch_bump(c);
	audit(c, c->pasid, a, 2 * len, "mremap grown by moving (old range)");
	audit(c, c->pasid, b, 3 * len, "mremap grown by moving (new range)");
	stream_end(c, sid, NULL);
	ret = dacc(c, 0, AMDVI_OP_READ, a + 8, &got, 8, NULL);
	CHECK(c, ret == ST_TRANSLATION_FAULT,
	      "device read at the old address: expected TRANSLATION_FAULT, saw %s",
	      st_str(ret));
	device_reads(c, b, want, 2 * len, "after growing by moving");
	roundtrip(c, (uint64_t *)(b + 2 * len + 64), 0x67726f77ULL,
		  "grown tail after the move");
	munmap(b, 3 * len);
	munmap(a + 2 * len, PAGE_SZ);
	free(want);
}

/*
 * mlock, munlock and MADV_COLD change no PTE a device depends on: under a
 * write stream they must leave no stale entry, no finding and every write.
 */
void t_mlock_cold(struct ctx *c)
{
	const unsigned int n = 32;
	size_t len = n * PAGE_SZ;
	struct amdvi_ioc_stream_counts k;
	uint8_t *buf = map_anon(len);
	uint32_t sid;

	REQUIRE(c, buf, "expected memory, saw allocation failure");
	fill_words(buf, len, 64);
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = buf, .len = len, .stride = PAGE_SZ, .wr = 1,
		.rate = c->rate, .write_value = WV_BASE });
	msleep(10);
	EXPECT_EQ(c, mlock(buf, len), 0);
	epoch_bump(c);
	audit(c, c->pasid, buf, len, "mlock");
	EXPECT_EQ(c, munlock(buf, len), 0);
	epoch_bump(c);
	audit(c, c->pasid, buf, len, "munlock");
	EXPECT_EQ(c, madvise(buf, len, MADV_COLD), 0);
	epoch_bump(c);
	audit(c, c->pasid, buf, len, "MADV_COLD");
	msleep(20);
	stream_end(c, sid, &k);
	check_write_stream(c, buf, n, PAGE_SZ, WV_BASE, &k,
			   "writes across mlock, munlock, MADV_COLD");
	for (unsigned int i = 0; i < n; i++)
		for (size_t w = 8; w < PAGE_SZ; w += 8)
			if (*(uint64_t *)(buf + i * PAGE_SZ + w) !=
			    word_at(64, i * PAGE_SZ + w)) {
				fail(c, "page %u word +%#zx: expected the fill pattern, saw %#llx",
				     i, w, (unsigned long long)*(uint64_t *)(buf + i * PAGE_SZ + w));
				break;
			}
	EXPECT_EQ(c, c->stale, 0);
	roundtrip(c, (uint64_t *)(buf + 9 * PAGE_SZ + 40), 0x636f6c64ULL,
		  "after MADV_COLD");
	munmap(buf, len);
}
