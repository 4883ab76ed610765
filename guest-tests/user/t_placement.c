// SPDX-License-Identifier: GPL-2.0
/*
 * amdvi-tests, the kernel moving pages on its own under a device: NUMA
 * balancing (PROT_NONE hinting and migration across the two nodes) and
 * compaction.
 *
 * Flush paths: task_numa_work() -> change_prot_numa() -> change_protection()
 * (range start/end, flush_tlb_range()), then do_numa_page() ->
 * migrate_misplaced_folio(); compaction: compact_nodes() ->
 * migrate_pages() -> try_to_migrate_one(): range start/end around
 * ptep_clear_flush() and a migration entry.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "tests.h"

#define NUMA_DBG	"/sys/kernel/debug/sched/numa_balancing/"

/* A counter of /proc/vmstat, 0 when absent. */
static uint64_t vmstat(const char *name)
{
	FILE *f = fopen("/proc/vmstat", "r");
	unsigned long long v, got = 0;
	char key[64];

	if (!f)
		return 0;
	while (fscanf(f, "%63s %llu", key, &v) == 2)
		if (!strcmp(key, name))
			got = v;
	fclose(f);
	return got;
}

/* How many of the @n pages at @buf are on @node (move_pages query). */
static unsigned int pages_on(uint8_t *buf, unsigned int n, int node)
{
	void *pages[64];
	int status[64];
	unsigned int on = 0;

	for (unsigned int i = 0; i < n && i < 64; i++)
		pages[i] = buf + (size_t)i * PAGE_SZ;
	if (syscall(__NR_move_pages, 0, n, pages, NULL, status, 0))
		return 0;
	for (unsigned int i = 0; i < n; i++)
		on += status[i] == node;
	return on;
}

static void move_all(uint8_t *buf, unsigned int n, int node)
{
	void *pages[64];
	int nodes[64], status[64];

	for (unsigned int i = 0; i < n && i < 64; i++) {
		pages[i] = buf + (size_t)i * PAGE_SZ;
		nodes[i] = node;
	}
	syscall(__NR_move_pages, 0, n, pages, nodes, status, MPOL_MF_MOVE);
}

static void pin_to_cpu(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	sched_setaffinity(0, sizeof(set), &set);
}

/*
 * Pages on node 0, this task on node 1's CPU touching them, a write stream
 * over them: NUMA balancing marks them PROT_NONE and the hinting faults
 * (the CPU's, and the device's page requests) migrate them to node 1.
 */
void t_numa_balancing(struct ctx *c)
{
	const unsigned int n = 64;
	size_t len = n * PAGE_SZ;
	uint64_t nb0 = 0, upd0, hint0, mig0, t0;
	struct amdvi_ioc_stream_counts k;
	unsigned int on1 = 0;
	uint8_t *buf;
	uint32_t sid;

	SKIP_IF(c, access("/sys/devices/system/node/node1", F_OK),
		"only one NUMA node");
	SKIP_IF(c, read_sysfs_u64("/proc/sys/kernel/numa_balancing", &nb0),
		"no /proc/sys/kernel/numa_balancing (CONFIG_NUMA_BALANCING off)");
	SKIP_IF(c, write_sysfs("/proc/sys/kernel/numa_balancing", "1"),
		"cannot enable NUMA balancing");
	write_sysfs(NUMA_DBG "scan_delay_ms", "0");
	write_sysfs(NUMA_DBG "scan_period_min_ms", "100");
	write_sysfs(NUMA_DBG "scan_period_max_ms", "200");
	buf = map_anon(len);
	REQUIRE(c, buf, "expected memory, saw allocation failure");
	fill_words(buf, len, 36);
	move_all(buf, n, 0);
	diag(c, "start: %u of %u pages on node 0", pages_on(buf, n, 0), n);
	upd0 = vmstat("numa_pte_updates");
	hint0 = vmstat("numa_hint_faults");
	mig0 = vmstat("numa_pages_migrated");
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = buf, .len = len, .stride = PAGE_SZ, .wr = 1,
		.rate = c->rate, .write_value = WV_BASE });
	pin_to_cpu(1);
	t0 = now_ms();
	/*
	 * Stay on the CPU: task_tick_numa() queues the scan only from a tick
	 * that finds this task running.
	 */
	while (now_ms() - t0 < 20000) {
		uint64_t t1 = now_ms();

		while (now_ms() - t1 < 100)
			for (unsigned int i = 0; i < n; i++)
				*(volatile uint64_t *)(buf + i * PAGE_SZ + 8) += 1;
		on1 = pages_on(buf, n, 1);
		if (on1 >= n / 2 && vmstat("numa_pte_updates") > upd0)
			break;
	}
	epoch_bump(c);
	audit(c, c->pasid, buf, len, "NUMA balancing");
	stream_end(c, sid, &k);
	pin_to_cpu(0);
	write_sysfs("/proc/sys/kernel/numa_balancing", nb0 ? "1" : "0");
	diag(c, "after %llu ms: %u of %u pages on node 1; vmstat numa_pte_updates +%llu numa_hint_faults +%llu numa_pages_migrated +%llu",
	     (unsigned long long)(now_ms() - t0), on1, n,
	     (unsigned long long)(vmstat("numa_pte_updates") - upd0),
	     (unsigned long long)(vmstat("numa_hint_faults") - hint0),
	     (unsigned long long)(vmstat("numa_pages_migrated") - mig0));
	check_write_stream(c, buf, n, PAGE_SZ, WV_BASE, &k,
			   "writes across NUMA balancing");
	roundtrip(c, (uint64_t *)(buf + 5 * PAGE_SZ + 64), 0x6e756d61ULL,
		  "after NUMA balancing");
	if (vmstat("numa_pte_updates") == upd0)
		skip(c, "NUMA balancing made no PROT_NONE pass in 20 s");
	munmap(buf, len);
}

/* Page frame of @addr (pagemap bits 0-54), 0 when unknown. */
static uint64_t pfn_of(const void *addr)
{
	uint64_t e = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY);

	if (fd < 0)
		return 0;
	if (pread(fd, &e, 8, (uintptr_t)addr / PAGE_SZ * 8) != 8)
		e = 0;
	close(fd);
	return e >> 63 ? e & ((1ULL << 55) - 1) : 0;
}

/*
 * MiB free on the node this thread runs on (from the node's meminfo; the
 * whole system's MemFree when the node files are absent), 0 when unknown.
 */
static unsigned int node_free_mib(void)
{
	unsigned int cpu = 0, node = 0;
	unsigned long kb = 0;
	char path[64], line[128];
	FILE *f;

	if (syscall(SYS_getcpu, &cpu, &node, NULL))
		node = 0;
	snprintf(path, sizeof(path), "/sys/devices/system/node/node%u/meminfo", node);
	f = fopen(path, "r");
	if (f) {
		while (fgets(line, sizeof(line), f))
			if (sscanf(line, "Node %*u MemFree: %lu kB", &kb) == 1)
				break;
	} else {
		f = fopen("/proc/meminfo", "r");
		if (!f)
			return 0;
		while (fgets(line, sizeof(line), f))
			if (sscanf(line, "MemFree: %lu kB", &kb) == 1)
				break;
	}
	fclose(f);
	return kb >> 10;
}

/*
 * Fragment: free every other page of a large range, keep the even pages
 * under a write stream, compact all zones.  Pages compaction moves must
 * keep their content and the device's writes.  @moved: how many of the
 * streamed pages changed frame.
 */
static void compact_once(struct ctx *c, unsigned int filler_mib,
			 unsigned int *moved_out)
{
	const unsigned int n = 8192, kept = n / 2;
	size_t len = (size_t)n * PAGE_SZ;
	uint64_t *pfn = calloc(kept, sizeof(*pfn));
	struct amdvi_ioc_stream_counts k;
	uint64_t mig0 = vmstat("pgmigrate_success");
	uint64_t fail0 = vmstat("pgmigrate_fail");
	uint64_t scan0 = vmstat("compact_migrate_scanned");
	unsigned int moved = 0, bad = 0;
	/*
	 * A filler taken first and freed after the fragmentation leaves a
	 * large free area beside the range for compaction to move into.
	 */
	size_t flen = (size_t)filler_mib << 20;
	uint8_t *filler = map_anon(flen);
	uint8_t *buf = map_anon(len);
	uint32_t sid;

	REQUIRE(c, buf && pfn, "expected memory, saw allocation failure");
	SKIP_IF(c, access("/proc/sys/vm/compact_memory", W_OK),
		"no /proc/sys/vm/compact_memory (CONFIG_COMPACTION off)");
	if (filler) {
		madvise(filler, flen, MADV_NOHUGEPAGE);
		memset(filler, 1, flen);
	}
	madvise(buf, len, MADV_NOHUGEPAGE);
	fill_words(buf, len, 37);
	for (unsigned int i = 1; i < n; i += 2)
		madvise(buf + (size_t)i * PAGE_SZ, PAGE_SZ, MADV_DONTNEED);
	if (filler)
		munmap(filler, flen);
	for (unsigned int i = 0; i < kept; i++)
		pfn[i] = pfn_of(buf + (size_t)2 * i * PAGE_SZ);
	sid = stream_begin(c, &(struct stream_cfg){ .ep = c->ep_stream,
		.va = buf, .len = len, .stride = 2 * PAGE_SZ, .wr = 1,
		.rate = c->rate, .write_value = WV_BASE });
	msleep(20);
	CHECK(c, !write_sysfs("/proc/sys/vm/compact_memory", "1"),
	      "compact_memory: expected the write to succeed");
	epoch_bump(c);
	audit(c, c->pasid, buf, len, "compaction");
	msleep(20);
	stream_end(c, sid, &k);
	for (unsigned int i = 0; i < kept; i++) {
		size_t o = (size_t)2 * i * PAGE_SZ;

		moved += pfn[i] && pfn_of(buf + o) != pfn[i];
		for (size_t w = 8; w < PAGE_SZ; w += 8) {
			if (*(uint64_t *)(buf + o + w) != word_at(37, o + w)) {
				bad++;
				break;
			}
		}
	}
	diag(c, "compaction moved %u of the %u streamed pages (pgmigrate_success +%llu, pgmigrate_fail +%llu, compact_migrate_scanned +%llu)",
	     moved, kept, (unsigned long long)(vmstat("pgmigrate_success") - mig0),
	     (unsigned long long)(vmstat("pgmigrate_fail") - fail0),
	     (unsigned long long)(vmstat("compact_migrate_scanned") - scan0));
	CHECK(c, bad == 0,
	      "pages after compaction: expected the pattern past each stream slot, saw %u pages changed",
	      bad);
	check_write_stream(c, buf, kept, 2 * PAGE_SZ, WV_BASE, &k,
			   "writes across compaction");
	audit(c, c->pasid, buf, len, "stream stop");
	*moved_out = moved;
	munmap(buf, len);
	free(pfn);
}

/*
 * Compaction's migrate scanner works up from the bottom of the zone and its
 * free scanner down from the top; a range the allocator handed out near the
 * top is left where it is.  The buddy allocator gives the most recently
 * freed (highest) pages first, so the rounds take a filler before
 * the range, which pushes the range lower: 128 MiB, half and all but 48 MiB
 * of the node's free memory, then none.  Up to four rounds, until one moved
 * some of the streamed pages (the first did, moving about half of them, in
 * each of 3 runs on the source-built kernel, where no filler moved none).
 */
void t_compaction(struct ctx *c)
{
	unsigned int moved = 0, round;

	for (round = 1; round <= 4 && !moved && !c->failed && !c->skipped;
	     round++) {
		unsigned int free_mib = node_free_mib();
		unsigned int filler = 0;

		if (round == 1)
			filler = 128;
		else if (round == 2)
			filler = free_mib / 2;
		else if (round == 3 && free_mib > 64)
			filler = free_mib - 48;
		diag(c, "compaction round %u: filler %u MiB of %u MiB free on the node",
		     round, filler, free_mib);
		compact_once(c, filler, &moved);
	}
	if (!moved && !c->failed && !c->skipped)
		skip(c, "compaction moved none of the streamed pages in %u rounds",
		     round - 1);
}
