// SPDX-License-Identifier: GPL-2.0
/*
 * amdvi-tests, basic scenarios: bind and data both ways, page requests
 * (PRI) for untouched pages and for read-only COW pages.
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

void t_bind_basic(struct ctx *c)
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

void t_pri_untouched(struct ctx *c)
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

void t_pri_cow_readonly(struct ctx *c)
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
