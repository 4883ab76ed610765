// SPDX-License-Identifier: GPL-2.0
/*
 * amdvi-tests, file-backed mappings under a device: writeback of a shared
 * mapping (tmpfs and ext2 on a loop device), reclaim of clean page-cache
 * pages, truncate and hole punch.
 *
 * Flush paths: msync/fsync -> write_cache_pages() -> folio_clear_dirty_for_io()
 * -> folio_mkclean() -> page_vma_mkclean_one(): range start/end
 * (MMU_NOTIFY_PROTECTION_PAGE) around ptep_clear_flush + wrprotect + mkclean.
 * Clean page cache: MADV_PAGEOUT -> shrink_folio_list() -> try_to_unmap()
 * (batched flush) then remove_mapping().  Truncate and hole punch:
 * unmap_mapping_range() -> zap_page_range_single(): range start/end and the
 * mmu_gather flush.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "tests.h"

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT	21
#endif
#define EXT4_MAGIC	0xef53

/* A file of @len bytes holding @seed's pattern, written and synced. */
static int file_make(struct ctx *c, const char *path, size_t len,
		     uint64_t seed, uint8_t *want)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);

	if (fd < 0) {
		fail(c, "open %s: %s", path, strerror(errno));
		return -1;
	}
	fill_words(want, len, seed);
	if (pwrite(fd, want, len, 0) != (ssize_t)len || fsync(fd)) {
		fail(c, "writing %s: %s", path, strerror(errno));
		close(fd);
		unlink(path);
		return -1;
	}
	return fd;
}

/* The block-backed file system /init mounted, or false with a skip. */
static bool blk_fs(struct ctx *c)
{
	struct statfs st;
	char why[160];

	if (setup_reason(BLK_REASON, why, sizeof(why))) {
		skip(c, "no block-backed file system: %s", why);
		return false;
	}
	if (statfs(BLK_DIR, &st) || st.f_type != EXT4_MAGIC) {
		skip(c, "no ext2/ext4 file system at %s", BLK_DIR);
		return false;
	}
	return true;
}

/* Pages of the mapping at @p resident in the page cache (mincore). */
static unsigned int cached_pages(void *p, unsigned int n)
{
	unsigned char vec[64];
	unsigned int got = 0;

	if (n > sizeof(vec) || mincore(p, (size_t)n * PAGE_SZ, vec))
		return n;
	for (unsigned int i = 0; i < n; i++)
		got += vec[i] & 1;
	return got;
}

/*
 * Dirty every page through the device, msync (folio_mkclean write-protects
 * and cleans the PTEs), write every page again through the device, msync.
 * A write stream runs across the first sync.  The file must then hold every
 * write after its clean pages are dropped and read back (on ext2 from the
 * disk).  A device writing through a writable entry cached before the
 * first sync never re-dirties the page and its later writes are lost.
 */
static void writeback_round(struct ctx *c, const char *dir)
{
	const unsigned int n = 16;
	size_t len = n * PAGE_SZ;
	uint8_t *want = malloc(len), *snap = malloc(len), *back = malloc(len);
	struct amdvi_ioc_stream_counts k;
	char path[128];
	uint8_t *p = MAP_FAILED;
	uint32_t sid = 0;
	int fd, ret;

	REQUIRE(c, want && snap && back, "expected memory, saw allocation failure");
	snprintf(path, sizeof(path), "%s/amdvi-writeback", dir);
	fd = file_make(c, path, len, 30, want);
	if (fd < 0)
		goto out;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	REQUIRE(c, p != MAP_FAILED, "mmap of %s: %s", path, strerror(errno));

	for (unsigned int round = 1; round <= 2; round++) {
		for (unsigned int i = 0; i < n; i++) {
			uint64_t v = (0xd0d0ULL + round) << 48 | i;
			size_t o = (size_t)i * PAGE_SZ + 8 * round;

			ret = dacc(c, 0, AMDVI_OP_WRITE, p + o, &v, 8, NULL);
			CHECK(c, ret == ST_OK,
			      "round %u: device write to file page %u: expected OK, saw %s",
			      round, i, st_str(ret));
			*(uint64_t *)(want + o) = v;
		}
		if (round == 1) {
			sid = stream_begin(c, &(struct stream_cfg){
				.ep = c->ep_stream, .va = p, .len = len,
				.stride = PAGE_SZ, .wr = 1, .rate = c->rate,
				.write_value = WV_BASE });
			msleep(20);
		}
		REQUIRE(c, !msync(p, len, MS_SYNC),
			"msync round %u: expected success, saw %s", round,
			strerror(errno));
		epoch_bump(c);
		audit(c, c->pasid, p, len, round == 1 ?
		      "msync (folio_mkclean) under a write stream" :
		      "second msync");
		if (round == 1) {
			msleep(20);
			stream_end(c, sid, &k);
			check_write_stream(c, p, n, PAGE_SZ, WV_BASE, &k,
					   "stream writes across folio_mkclean");
		}
	}
	memcpy(snap, p, len);
	for (unsigned int i = 0; i < n; i++) {
		size_t o = (size_t)i * PAGE_SZ;

		CHECK(c, !memcmp(snap + o + 8, want + o + 8, PAGE_SZ - 8),
		      "CPU view of file page %u: expected both device writes, saw %#llx %#llx",
		      i, (unsigned long long)*(uint64_t *)(snap + o + 8),
		      (unsigned long long)*(uint64_t *)(snap + o + 16));
	}
	REQUIRE(c, !msync(p, len, MS_SYNC) && !fsync(fd),
		"final sync: expected success, saw %s", strerror(errno));
	munmap(p, len);
	p = MAP_FAILED;
	/* drop the clean cache: what is read back now was written back */
	posix_fadvise(fd, 0, len, POSIX_FADV_DONTNEED);
	write_sysfs("/proc/sys/vm/drop_caches", "1");
	ret = pread(fd, back, len, 0);
	CHECK(c, ret == (int)len, "read back %s: expected %zu bytes, saw %d (%s)",
	      path, len, ret, strerror(errno));
	for (unsigned int i = 0; ret == (int)len && i < n; i++) {
		size_t o = (size_t)i * PAGE_SZ;

		CHECK(c, !memcmp(back + o, snap + o, PAGE_SZ),
		      "file page %u after writeback: expected every write (%#llx, %#llx, slot %#llx), saw %#llx, %#llx, slot %#llx: a device write was lost",
		      i, (unsigned long long)*(uint64_t *)(snap + o + 8),
		      (unsigned long long)*(uint64_t *)(snap + o + 16),
		      (unsigned long long)*(uint64_t *)(snap + o),
		      (unsigned long long)*(uint64_t *)(back + o + 8),
		      (unsigned long long)*(uint64_t *)(back + o + 16),
		      (unsigned long long)*(uint64_t *)(back + o));
	}
	close(fd);
	unlink(path);
out:
	if (p != MAP_FAILED)
		munmap(p, len);
	free(want);
	free(snap);
	free(back);
}

void t_writeback_tmpfs(struct ctx *c)
{
	diag(c, "tmpfs has no writeback: msync leaves the PTEs alone; the data checks still apply");
	writeback_round(c, "/dev/shm");
}

void t_writeback_ext2(struct ctx *c)
{
	if (blk_fs(c))
		writeback_round(c, BLK_DIR);
}

/*
 * Clean page-cache pages of a file on ext2, mapped shared (first half) and
 * private read-only (second half), read by streams; MADV_PAGEOUT drops
 * them from the cache, drop_caches runs too; device reads must then fetch
 * the file's content again through page requests.
 */
void t_file_reclaim(struct ctx *c)
{
	const unsigned int n = 32, half = n / 2;
	size_t len = n * PAGE_SZ, hl = half * PAGE_SZ;
	uint8_t *want = malloc(len), *ps = MAP_FAILED, *pp = MAP_FAILED;
	unsigned int before, after, tries;
	bool pinned = false;
	cpu_set_t saved;
	char path[128];
	int ret;
	uint32_t s1, s2;
	int fd;

	REQUIRE(c, want, "expected memory, saw allocation failure");
	if (!blk_fs(c))
		goto out;
	/*
	 * New page-cache folios wait in the creating CPU's LRU batch (up to
	 * 31 of them), where reclaim cannot isolate them; MADV_PAGEOUT drains
	 * only its own CPU's batch.  Create and reclaim them on one CPU, with
	 * no other thread of this mm running (no spinner): with the flush
	 * deferred to the batched path, the Debian 6.12 kernel's MADV_PAGEOUT
	 * dropped none of these pages in 3 of 4 runs.  swap_pageout and
	 * madv_free drive the batched path.
	 */
	pinned = pin_here(&saved) >= 0;
	snprintf(path, sizeof(path), "%s/amdvi-reclaim", BLK_DIR);
	fd = file_make(c, path, len, 32, want);
	if (fd < 0)
		goto out;
	ps = mmap(NULL, hl, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	pp = mmap(NULL, hl, PROT_READ, MAP_PRIVATE, fd, hl);
	REQUIRE(c, ps != MAP_FAILED && pp != MAP_FAILED, "mmap of %s: %s", path,
		strerror(errno));
	CHECK(c, !memcmp(ps, want, hl) && !memcmp(pp, want + hl, hl),
	      "CPU view of the mapped file: expected its content, saw different data");
	hold_translations(c, ps, hl);
	hold_translations(c, pp, hl);
	s1 = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = ps, .len = hl, .rd = 1, .tr = 1, .rate = c->rate });
	s2 = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = pp, .len = hl, .rd = 1, .tr = 1, .rate = c->rate });
	msleep(10);
	before = cached_pages(ps, half) + cached_pages(pp, half);
	/*
	 * A page still in another CPU's LRU batch cannot be isolated, so
	 * MADV_PAGEOUT may drop none on the first try; up to four tries.
	 */
	for (tries = 0, after = before; tries < 4 && after == before; tries++) {
		if (tries)
			msleep(20);
		ret = madvise(ps, hl, MADV_PAGEOUT) || madvise(pp, hl, MADV_PAGEOUT);
		CHECK(c, !ret, "MADV_PAGEOUT of file pages: expected success, saw %s",
		      strerror(errno));
		after = cached_pages(ps, half) + cached_pages(pp, half);
	}
	epoch_bump(c);
	audit(c, c->pasid, ps, hl, "MADV_PAGEOUT (shared file mapping)");
	audit(c, c->pasid, pp, hl, "MADV_PAGEOUT (private file mapping)");
	write_sysfs("/proc/sys/vm/drop_caches", "3");
	epoch_bump(c);
	audit(c, c->pasid, ps, hl, "drop_caches (shared)");
	audit(c, c->pasid, pp, hl, "drop_caches (private)");
	stream_end(c, s1, NULL);
	stream_end(c, s2, NULL);
	diag(c, "page cache: %u of %u pages resident before MADV_PAGEOUT, %u after %u tries",
	     before, n, after, tries);
	if (after == before) {
		skip(c, "MADV_PAGEOUT dropped none of the %u file pages from the cache",
		     n);
	} else {
		device_reads(c, ps, want, hl, "shared mapping after reclaim");
		device_reads(c, pp, want + hl, hl, "private mapping after reclaim");
	}
	close(fd);
	unlink(path);
out:
	if (ps != MAP_FAILED)
		munmap(ps, hl);
	if (pp != MAP_FAILED)
		munmap(pp, hl);
	if (pinned)
		sched_setaffinity(0, sizeof(saved), &saved);
	free(want);
}

/*
 * A shared tmpfs mapping streamed by the device; punch a hole (pages 8-15),
 * then truncate to 24 pages.  The hole must read as zeroes, the pages past
 * the end must fault, the rest must keep the file's content.
 */
void t_truncate_punch(struct ctx *c)
{
	const unsigned int n = 32;
	size_t len = n * PAGE_SZ, pg = PAGE_SZ;
	uint8_t *want = malloc(len), *zero = calloc(1, 8 * pg), *p;
	const char *path = "/dev/shm/amdvi-truncate";
	uint64_t got;
	uint32_t sid;
	int fd, ret;

	REQUIRE(c, want && zero, "expected memory, saw allocation failure");
	fd = file_make(c, path, len, 31, want);
	REQUIRE(c, fd >= 0, "expected the file %s", path);
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	REQUIRE(c, p != MAP_FAILED, "mmap of %s: %s", path, strerror(errno));
	hold_translations(c, p, len);
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = p, .len = len, .rd = 1, .tr = 1, .rate = c->rate });
	msleep(10);
	ret = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 8 * pg,
			8 * pg);
	if (ret) {
		stream_end(c, sid, NULL);
		skip(c, "hole punch on tmpfs: %s", strerror(errno));
		goto out;
	}
	epoch_bump(c);
	audit(c, c->pasid, p, len, "hole punch");
	REQUIRE(c, !ftruncate(fd, 24 * pg), "ftruncate: expected success, saw %s",
		strerror(errno));
	epoch_bump(c);
	audit(c, c->pasid, p, len, "truncate");
	msleep(10);
	stream_end(c, sid, NULL);
	audit(c, c->pasid, p, len, "stream stop");

	device_reads(c, p + 8 * pg, zero, 8 * pg, "punched hole");
	device_reads(c, p, want, 8 * pg, "pages before the hole");
	device_reads(c, p + 16 * pg, want + 16 * pg, 8 * pg,
		     "pages between the hole and the new end");
	ret = dacc(c, 0, AMDVI_OP_READ, p + 28 * pg, &got, 8, NULL);
	CHECK(c, ret != ST_OK,
	      "device read past the truncated end: expected a fault, saw OK %#llx",
	      (unsigned long long)got);
out:
	munmap(p, len);
	close(fd);
	unlink(path);
	free(want);
	free(zero);
}
