// SPDX-License-Identifier: GPL-2.0
/*
 * amdvi-tests, userfaultfd under a device: UFFDIO_COPY into a missing range
 * (faults from the CPU and from the device's page requests), UFFDIO_
 * WRITEPROTECT of a range the device writes, UFFDIO_MOVE of a range it reads.
 *
 * Flush paths: UFFDIO_WRITEPROTECT -> mwriteprotect_range() ->
 * change_protection() (range start/end, MMU_NOTIFY_PROTECTION_VMA, and
 * flush_tlb_range()); UFFDIO_MOVE -> move_pages() -> move_present_pte():
 * range start/end (MMU_NOTIFY_CLEAR) around ptep_clear_flush() of the
 * source; UFFDIO_COPY installs PTEs where none were (no flush needed).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "tests.h"

/* UFFDIO_MOVE (Linux 6.8) is newer than the build host's headers */
#ifndef UFFDIO_MOVE
struct uffdio_move {
	__u64 dst;
	__u64 src;
	__u64 len;
	__u64 mode;
	__s64 move;
};

#define _UFFDIO_MOVE		(0x05)
#define UFFDIO_MOVE		_IOWR(UFFDIO, _UFFDIO_MOVE, struct uffdio_move)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE	(1ULL << 16)
#endif

struct uffd_server {
	int uffd;
	uint8_t *base;
	size_t len;
	uint64_t seed;		/* UFFDIO_COPY content: fill_words(seed + page) */
	volatile int stop;
	unsigned int missing, wp;
	uint8_t wp_seen[64];	/* per page: a write-protect fault arrived */
};

/* A userfaultfd with @features, or -errno. */
static int uffd_open(uint64_t features, uint64_t *have)
{
	struct uffdio_api api = { .api = UFFD_API, .features = features };
	int fd = syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd < 0)
		return -errno;
	if (ioctl(fd, UFFDIO_API, &api)) {
		int e = errno;

		close(fd);
		return -e;
	}
	*have = api.features;
	return fd;
}

static int uffd_register(int uffd, void *p, size_t len, uint64_t mode)
{
	struct uffdio_register r = {
		.range = { .start = (uintptr_t)p, .len = len }, .mode = mode,
	};

	return ioctl(uffd, UFFDIO_REGISTER, &r) ? -errno : 0;
}

static int uffd_wp(int uffd, void *p, size_t len, bool on)
{
	struct uffdio_writeprotect w = {
		.range = { .start = (uintptr_t)p, .len = len },
		.mode = on ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};

	return ioctl(uffd, UFFDIO_WRITEPROTECT, &w) ? -errno : 0;
}

/* Serves missing faults with UFFDIO_COPY and WP faults by un-protecting. */
static void *uffd_serve(void *arg)
{
	struct uffd_server *s = arg;
	uint8_t *page = malloc(PAGE_SZ);
	struct uffd_msg m;

	while (!s->stop && page) {
		struct pollfd pfd = { .fd = s->uffd, .events = POLLIN };
		uint64_t addr;
		size_t idx;

		if (poll(&pfd, 1, 20) <= 0 ||
		    read(s->uffd, &m, sizeof(m)) != sizeof(m) ||
		    m.event != UFFD_EVENT_PAGEFAULT)
			continue;
		addr = m.arg.pagefault.address & ~(PAGE_SZ - 1);
		idx = (addr - (uintptr_t)s->base) / PAGE_SZ;
		if (m.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
			s->wp++;
			if (idx < sizeof(s->wp_seen))
				s->wp_seen[idx] = 1;
			uffd_wp(s->uffd, (void *)addr, PAGE_SZ, false);
		} else {
			struct uffdio_copy cp = { .dst = addr,
				.src = (uintptr_t)page, .len = PAGE_SZ };

			fill_words(page, PAGE_SZ, s->seed + idx);
			s->missing++;
			ioctl(s->uffd, UFFDIO_COPY, &cp);
		}
	}
	free(page);
	return NULL;
}

/*
 * A missing-registered range beside a streamed populated one (same page
 * table); the CPU touches half of it and the device reads the other half,
 * each fault answered with UFFDIO_COPY.  Both must see the copied content.
 */
void t_uffd_copy(struct ctx *c)
{
	const unsigned int n = 32, half = n / 2;
	size_t len = n * PAGE_SZ;
	uint8_t *side = map_anon(len), *r = map_anon(len), *want = malloc(len);
	struct uffd_server s = { .base = r, .len = len, .seed = 300 };
	uint64_t have;
	pthread_t th;
	uint32_t sid;

	REQUIRE(c, side && r && want, "expected memory, saw allocation failure");
	s.uffd = uffd_open(0, &have);
	SKIP_IF(c, s.uffd < 0, "userfaultfd: %s", strerror(-s.uffd));
	for (unsigned int i = 0; i < n; i++)
		fill_words(want + i * PAGE_SZ, PAGE_SZ, s.seed + i);
	REQUIRE(c, !uffd_register(s.uffd, r, len, UFFDIO_REGISTER_MODE_MISSING),
		"UFFDIO_REGISTER missing: %s", strerror(errno));
	fill_words(side, len, 33);
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = side, .len = len, .rd = 1, .wr = 1, .rate = c->rate,
		.write_value = WV_BASE });
	REQUIRE(c, !pthread_create(&th, NULL, uffd_serve, &s),
		"expected a fault server thread");
	for (unsigned int i = 0; i < half; i++)
		CHECK(c, !memcmp(r + i * PAGE_SZ, want + i * PAGE_SZ, PAGE_SZ),
		      "CPU view of copied page %u: expected UFFDIO_COPY's content",
		      i);
	epoch_bump(c);
	audit(c, c->pasid, r, len, "UFFDIO_COPY of CPU faults");
	device_reads(c, r, want, half * PAGE_SZ, "device read of CPU-faulted pages");
	device_reads(c, r + half * PAGE_SZ, want + half * PAGE_SZ,
		     half * PAGE_SZ, "device read through page requests into a missing range");
	s.stop = 1;
	pthread_join(th, NULL);
	stream_end(c, sid, NULL);
	epoch_bump(c);
	audit(c, c->pasid, r, len, "UFFDIO_COPY of device faults");
	diag(c, "fault server: %u missing faults served", s.missing);
	EXPECT_GE(c, s.missing, n);
	close(s.uffd);
	munmap(side, len);
	munmap(r, len);
	free(want);
}

/*
 * The device writes a range, which is then write-protected with
 * UFFDIO_WRITEPROTECT while a write stream runs.  Until the fault server
 * starts, no device write may land; then every page the stream wrote must
 * have raised a WP fault first.
 */
void t_uffd_wp(struct ctx *c)
{
	const unsigned int n = 16;
	size_t len = n * PAGE_SZ;
	uint8_t *buf = map_anon(len), *snap = malloc(len);
	struct uffd_server s = { .base = buf, .len = len };
	struct amdvi_ioc_stream_counts k;
	uint64_t have, v = 0x77700000ULL;
	pthread_t th;
	uint32_t sid;
	int ret;

	REQUIRE(c, buf && snap, "expected memory, saw allocation failure");
	fill_words(buf, len, 34);
	s.uffd = uffd_open(0, &have);
	SKIP_IF(c, s.uffd < 0, "userfaultfd: %s", strerror(-s.uffd));
	ret = uffd_register(s.uffd, buf, len, UFFDIO_REGISTER_MODE_WP);
	if (ret) {
		close(s.uffd);
		skip(c, "UFFDIO_REGISTER_MODE_WP on anonymous memory: %s",
		     strerror(-ret));
		goto out;
	}
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = buf, .len = len, .stride = PAGE_SZ, .wr = 1,
		.rate = c->rate, .write_value = WV_BASE });
	msleep(20);
	ret = uffd_wp(s.uffd, buf, len, true);
	REQUIRE(c, !ret, "UFFDIO_WRITEPROTECT: %s", strerror(-ret));
	epoch_bump(c);
	audit(c, c->pasid, buf, len, "UFFDIO_WRITEPROTECT");
	memcpy(snap, buf, len);
	msleep(50);
	CHECK(c, !memcmp(snap, buf, len),
	      "write-protected range: expected no device write to land before the WP faults are served, saw the content change");
	REQUIRE(c, !pthread_create(&th, NULL, uffd_serve, &s),
		"expected a fault server thread");
	msleep(50);
	ret = dacc(c, 0, AMDVI_OP_WRITE, buf + 8, &v, 8, NULL);
	stream_end(c, sid, &k);
	s.stop = 1;
	pthread_join(th, NULL);
	epoch_bump(c);
	audit(c, c->pasid, buf, len, "WP faults served");
	diag(c, "fault server: %u write-protect faults; stream writes %llu faults %llu",
	     s.wp, (unsigned long long)k.writes, (unsigned long long)k.faults);
	if (ret == ST_OK)
		CHECK(c, *(uint64_t *)(buf + 8) == v && s.wp_seen[0],
		      "device write to a write-protected page: expected it to land only after a WP fault, saw value %#llx, WP fault %s",
		      (unsigned long long)*(uint64_t *)(buf + 8),
		      s.wp_seen[0] ? "seen" : "never raised");
	for (unsigned int i = 0; i < n; i++)
		CHECK(c, *(uint64_t *)(buf + i * PAGE_SZ) ==
		      *(uint64_t *)(snap + i * PAGE_SZ) || s.wp_seen[i],
		      "page %u: a device write landed (%#llx) without a write-protect fault",
		      i, (unsigned long long)*(uint64_t *)(buf + i * PAGE_SZ));
	close(s.uffd);
out:
	munmap(buf, len);
	free(snap);
}

/*
 * UFFDIO_MOVE of a range the device reads and holds translations of: the
 * destination must read the moved content, the source (now empty
 * anonymous memory) zeroes, never the moved pages.
 */
void t_uffd_move(struct ctx *c)
{
	const unsigned int n = 16;
	size_t len = n * PAGE_SZ;
	uint8_t *src = map_anon(len), *dst = map_anon(len), *want = malloc(len);
	uint8_t *zero = calloc(1, len);
	struct uffdio_move mv;
	uint64_t have = 0;
	uint32_t sid;
	int uffd, ret;

	REQUIRE(c, src && dst && want && zero,
		"expected memory, saw allocation failure");
	uffd = uffd_open(UFFD_FEATURE_MOVE, &have);
	if (uffd < 0 || !(have & UFFD_FEATURE_MOVE)) {
		skip(c, "UFFD_FEATURE_MOVE unavailable (Linux < 6.8): %s",
		     uffd < 0 ? strerror(-uffd) : "feature not reported");
		if (uffd >= 0)
			close(uffd);
		goto out;
	}
	REQUIRE(c, !uffd_register(uffd, dst, len, UFFDIO_REGISTER_MODE_MISSING),
		"UFFDIO_REGISTER of the destination: %s", strerror(errno));
	fill_words(src, len, 35);
	memcpy(want, src, len);
	hold_translations(c, src, len);
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = src, .len = len, .rd = 1, .tr = 1, .rate = c->rate });
	msleep(10);
	mv = (struct uffdio_move){ .dst = (uintptr_t)dst, .src = (uintptr_t)src,
				   .len = len };
	ret = ioctl(uffd, UFFDIO_MOVE, &mv) ? -errno : 0;
	epoch_bump(c);
	audit(c, c->pasid, src, len, "UFFDIO_MOVE (source)");
	audit(c, c->pasid, dst, len, "UFFDIO_MOVE (destination)");
	stream_end(c, sid, NULL);
	CHECK(c, !ret && mv.move == (int64_t)len,
	      "UFFDIO_MOVE: expected %zu bytes moved, saw %lld (%s)", len,
	      (long long)mv.move, ret ? strerror(-ret) : "ok");
	device_reads(c, dst, want, len, "destination after UFFDIO_MOVE");
	device_reads(c, src, zero, len, "source after UFFDIO_MOVE");
	close(uffd);
out:
	munmap(src, len);
	munmap(dst, len);
	free(want);
	free(zero);
}
