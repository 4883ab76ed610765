// SPDX-License-Identifier: GPL-2.0
/*
 * amdvi-tests, reclaim of anonymous memory under a device: MADV_PAGEOUT to
 * swap (zram) and back in through page requests, and MADV_FREE pages
 * reclaimed while the device holds translations.
 *
 * Flush path: shrink_folio_list() -> try_to_unmap() with TTU_BATCH_FLUSH;
 * try_to_unmap_one() clears each PTE inside invalidate_range_start/end and
 * queues the TLB flush (set_tlb_ubc_flush_pending(), whose
 * arch_tlbbatch_add_pending() calls arch_invalidate_secondary_tlbs on 6.6+;
 * 6.1 calls ->invalidate_range from try_to_unmap_one()).  MADV_FREE:
 * madvise_free_single_vma() -> range start/end around pte_mkclean/mkold,
 * then tlb_finish_mmu().
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tests.h"

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT	21
#endif

static bool swap_active(void)
{
	FILE *f = fopen("/proc/swaps", "r");
	char line[256];
	int lines = 0;

	if (!f)
		return false;
	while (fgets(line, sizeof(line), f))
		lines++;
	fclose(f);
	return lines > 1;	/* a header, then one line per swap area */
}

/* Words 1.. of every page (word 0 is a stream slot) match @want. */
static void check_pages_but_slot(struct ctx *c, const uint8_t *buf,
				 const uint8_t *want, unsigned int n,
				 const char *what)
{
	for (unsigned int i = 0; i < n; i++) {
		size_t o = (size_t)i * PAGE_SZ;

		CHECK(c, !memcmp(buf + o + 8, want + o + 8, PAGE_SZ - 8),
		      "%s: page %u: expected its content kept, saw it changed",
		      what, i);
	}
}

void t_swap_pageout(struct ctx *c)
{
	const unsigned int n = 64, half = n / 2;
	size_t len = n * PAGE_SZ, hl = half * PAGE_SZ;
	struct amdvi_ioc_stream_counts k;
	unsigned int sw, absent;
	uint8_t *buf, *want;
	char why[160];
	struct spinner sp;
	uint32_t sid;
	int ret;

	if (setup_reason(SWAP_REASON, why, sizeof(why))) {
		skip(c, "no swap: %s", why);
		return;
	}
	SKIP_IF(c, !swap_active(), "no swap area in /proc/swaps");
	buf = map_anon(len);
	want = malloc(len);
	REQUIRE(c, buf && want, "expected memory, saw allocation failure");
	fill_words(buf, len, 20);
	memcpy(want, buf, len);
	hold_translations(c, buf, len);
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = buf, .len = hl, .rd = 1, .tr = 1, .rate = c->rate });
	msleep(10);
	spinner_start(&sp);
	ret = madvise(buf, len, MADV_PAGEOUT);
	spinner_stop(&sp);
	if (ret) {
		stream_end(c, sid, NULL);
		skip(c, "MADV_PAGEOUT: %s", strerror(errno));
		goto out;
	}
	epoch_bump(c);
	count_pages(buf + hl, half, &sw, &absent);
	audit(c, c->pasid, buf, len, "MADV_PAGEOUT to swap");
	diag(c, "MADV_PAGEOUT: %u of the %u unstreamed pages swapped out", sw,
	     half);
	if (!sw) {
		stream_end(c, sid, NULL);
		skip(c, "MADV_PAGEOUT swapped out none of %u pages", half);
		goto out;
	}
	/* swap-in by the device: page requests fault the pages back */
	device_reads(c, buf + hl, want + hl, hl, "swap-in by device reads");
	stream_end(c, sid, NULL);
	audit(c, c->pasid, buf, len, "swap-in by page requests");

	/* out again, and back in under a write stream */
	spinner_start(&sp);
	ret = madvise(buf, len, MADV_PAGEOUT);
	spinner_stop(&sp);
	REQUIRE(c, !ret, "second MADV_PAGEOUT: expected success, saw %s",
		strerror(errno));
	epoch_bump(c);
	count_pages(buf, n, &sw, &absent);
	diag(c, "second MADV_PAGEOUT: %u of %u pages swapped out", sw, n);
	audit(c, c->pasid, buf, len, "second MADV_PAGEOUT");
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = buf, .len = len, .stride = PAGE_SZ, .wr = 1,
		.rate = c->rate, .write_value = WV_BASE });
	msleep(50);
	stream_end(c, sid, &k);
	epoch_bump(c);
	audit(c, c->pasid, buf, len, "swap-in under a write stream");
	check_write_stream(c, buf, n, PAGE_SZ, WV_BASE, &k,
			   "writes across swap-in");
	check_pages_but_slot(c, buf, want, n, "after swap-in");
	roundtrip(c, (uint64_t *)(buf + 7 * PAGE_SZ + 64), 0x73776170ULL,
		  "after swap-in");
out:
	munmap(buf, len);
	free(want);
}

/*
 * MADV_FREE leaves the PTEs writable but clean; the device writes some
 * pages after it, then MADV_PAGEOUT reclaims the range.  Pages the device
 * wrote are dirty again and must be kept with the write; the others are
 * either discarded (read as zero) or kept whole.  A device writing through
 * a translation cached before MADV_FREE would leave the PTE clean and its
 * write would be discarded with the page.
 */
void t_madv_free(struct ctx *c)
{
	const unsigned int n = 32, nw = 8;
	size_t len = n * PAGE_SZ;
	uint8_t *buf = map_anon(len), *want = malloc(len), *snap = malloc(len);
	unsigned int sw, absent, zeroed = 0;
	struct spinner sp;
	uint32_t sid;
	int ret;

	REQUIRE(c, buf && want && snap, "expected memory, saw allocation failure");
	fill_words(buf, len, 21);
	memcpy(want, buf, len);
	hold_translations(c, buf, len);
	/*
	 * Read-only requests: a translation asking for write would set D in a
	 * writable PTE (as hardware does) and keep the page from discard.
	 */
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = buf + nw * PAGE_SZ, .len = len - nw * PAGE_SZ, .rd = 1,
		.tr = 1, .flags = AMDVI_ACC_NO_WRITE, .rate = c->rate });
	msleep(10);
	if (madvise(buf, len, MADV_FREE)) {
		stream_end(c, sid, NULL);
		skip(c, "MADV_FREE: %s", strerror(errno));
		goto out;
	}
	epoch_bump(c);
	audit(c, c->pasid, buf, len, "MADV_FREE");
	for (unsigned int i = 0; i < nw; i++) {
		uint64_t v = 0xf4ee000000000000ULL | i;
		uint64_t *p = (uint64_t *)(buf + i * PAGE_SZ + 64);

		ret = dacc(c, 0, AMDVI_OP_WRITE, p, &v, 8, NULL);
		CHECK(c, ret == ST_OK,
		      "device write to lazily freed page %u: expected OK, saw %s",
		      i, st_str(ret));
		*(uint64_t *)(want + i * PAGE_SZ + 64) = v;
	}
	spinner_start(&sp);
	ret = madvise(buf, len, MADV_PAGEOUT);
	spinner_stop(&sp);
	CHECK(c, !ret, "MADV_PAGEOUT after MADV_FREE: expected success, saw %s",
	      strerror(errno));
	epoch_bump(c);
	count_pages(buf, n, &sw, &absent);
	audit(c, c->pasid, buf, len, "reclaim of lazily freed pages");
	stream_end(c, sid, NULL);
	diag(c, "after reclaim: %u of %u pages discarded (the %u device-written ones must stay)",
	     absent, n, nw);
	memcpy(snap, buf, len);
	for (unsigned int i = 0; i < n; i++) {
		size_t o = (size_t)i * PAGE_SZ;
		bool kept = !memcmp(snap + o, want + o, PAGE_SZ);
		bool zero = true;

		for (size_t w = 0; w < PAGE_SZ && zero; w += 8)
			zero = !*(uint64_t *)(snap + o + w);
		zeroed += zero;
		if (i < nw)
			CHECK(c, kept,
			      "page %u written by the device after MADV_FREE: expected kept with the write %#llx, saw %s",
			      i, (unsigned long long)*(uint64_t *)(want + o + 64),
			      zero ? "it discarded (zero)" : "different content");
		else
			CHECK(c, kept || zero,
			      "lazily freed page %u: expected its content or zeroes, saw something else",
			      i);
	}
	device_reads(c, buf, snap, len, "device view after reclaim");
	if (!zeroed)
		diag(c, "no lazily freed page was discarded (reclaim kept them)");
out:
	munmap(buf, len);
	free(want);
	free(snap);
}
