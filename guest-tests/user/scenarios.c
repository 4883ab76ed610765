// SPDX-License-Identifier: GPL-2.0
/*
 * amdvi-tests: mmu_notifier ordering against the emulated AMD IOMMUv2 page
 * walker and ATS endpoints of amdvi-bench; the table of scenarios in suite
 * order.
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

#include "tests.h"

const struct scenario scenarios[] = {
	{ .name = "crash_selftest", .fn = t_crash_selftest, .flags = SC_HIDDEN,
	  .what = "harness control: SIGSEGV with a stream running (-x crash_selftest)" },
	{ .name = "hang_selftest", .fn = t_hang_selftest, .flags = SC_HIDDEN,
	  .what = "harness control: never returns, 5 s timeout (-x hang_selftest)",
	  .timeout_s = 5 },
	{ .name = "bind_basic", .fn = t_bind_basic,
	  .what = "bind, translate, read, write; data both ways" },
	{ .name = "pri_untouched", .fn = t_pri_untouched,
	  .what = "device access to never-touched memory resolves through PRI" },
	{ .name = "pri_cow_readonly", .fn = t_pri_cow_readonly,
	  .what = "device write to a read-only COW page after fork, via PRI" },
	{ .name = "cow_fork", .fn = t_cow_fork, .flags = SC_RACE,
	  .what = "fork + CPU COW writes while the device reads: no R1" },
	{ .name = "ksm_merge", .fn = t_ksm_merge, .flags = SC_RACE,
	  .what = "KSM merges pages the device reads; device write breaks the merge" },
	{ .name = "migrate_numa", .fn = t_migrate_numa, .flags = SC_RACE,
	  .what = "move_pages between nodes 0 and 1 under device writes" },
	{ .name = "dontneed_race", .fn = t_dontneed_race, .flags = SC_RACE | SC_ALLOW_R1,
	  .what = "concurrent MADV_DONTNEED from two threads under a stream" },
	{ .name = "munmap_stream", .fn = t_munmap_stream, .flags = SC_RACE,
	  .what = "munmap half of a streamed range" },
	{ .name = "mprotect_ro_stream", .fn = t_mprotect_ro_stream,
	  .what = "RW->RO under a write stream: no later device write lands" },
	{ .name = "upgrade_write", .fn = t_upgrade_write,
	  .what = "RO->RW by mprotect and by a write fault, without invalidation, under device writes" },
	{ .name = "mremap_move", .fn = t_mremap_move,
	  .what = "mremap a streamed range to a new address" },
	{ .name = "thp_collapse", .fn = t_thp_collapse,
	  .what = "MADV_COLLAPSE under device writes" },
	{ .name = "thp_split", .fn = t_thp_split,
	  .what = "mprotect/munmap of part of a THP under a stream" },
	{ .name = "exit_inflight", .fn = t_exit_inflight, .flags = SC_RACE, .min_repeats = 2,
	  .what = "bound child exits / is killed with accesses in flight" },
	{ .name = "unbind_inflight", .fn = t_unbind_inflight, .flags = SC_RACE,
	  .what = "unbind a PASID with a stream and accesses in flight" },
	{ .name = "events", .fn = t_events,
	  .what = "illegal command, ATS invalidation and ATS request errors reach the event log decoder" },
	{ .name = "swap_pageout", .fn = t_swap_pageout,
	  .what = "MADV_PAGEOUT to zram swap under a stream, swap-in by page requests and under writes" },
	{ .name = "file_reclaim", .fn = t_file_reclaim,
	  .what = "MADV_PAGEOUT and drop_caches of clean ext2 page cache, shared and private, under streams" },
	{ .name = "writeback_tmpfs", .fn = t_writeback_tmpfs,
	  .what = "device dirties a shared tmpfs mapping across msync; the file holds every write" },
	{ .name = "writeback_ext2", .fn = t_writeback_ext2,
	  .what = "folio_mkclean by msync of a shared ext2 mapping the device writes; every write reaches the disk" },
	{ .name = "truncate_punch", .fn = t_truncate_punch,
	  .what = "hole punch and truncate of a shared tmpfs mapping under a stream" },
	{ .name = "madv_free", .fn = t_madv_free,
	  .what = "MADV_FREE, device writes, reclaim: written pages kept, others discarded or whole" },
	{ .name = "uffd_copy", .fn = t_uffd_copy,
	  .what = "UFFDIO_COPY into a missing range, CPU and device faults, beside a stream" },
	{ .name = "uffd_wp", .fn = t_uffd_wp,
	  .what = "UFFDIO_WRITEPROTECT under a write stream: no write without a WP fault" },
	{ .name = "uffd_move", .fn = t_uffd_move,
	  .what = "UFFDIO_MOVE of a streamed range: source empty, destination holds the data" },
	{ .name = "numa_balancing", .fn = t_numa_balancing,
	  .what = "NUMA balancing PROT_NONE hinting faults migrate streamed pages to node 1" },
	{ .name = "compaction", .fn = t_compaction,
	  .what = "compact_memory over fragmented memory under a write stream" },
	{ .name = "hugetlb", .fn = t_hugetlb,
	  .what = "2 MiB hugetlb mapping under a stream: fork, COW, munmap" },
	{ .name = "mremap_dontunmap", .fn = t_mremap_dontunmap,
	  .what = "MREMAP_DONTUNMAP of a streamed range" },
	{ .name = "mremap_grow", .fn = t_mremap_grow,
	  .what = "mremap growing a streamed range in place, then by moving" },
	{ .name = "mlock_cold", .fn = t_mlock_cold,
	  .what = "mlock, munlock, MADV_COLD under a write stream: no finding" },
	{ .name = "cow_notifier_order", .fn = t_cow_notifier_order, .flags = SC_RACE, .min_repeats = 8,
	  .what = "negative control: COW repeated; notifier_mode=end_only must show R1" },
};

const unsigned int nr_scenarios = sizeof(scenarios) / sizeof(scenarios[0]);

int main(int argc, char **argv)
{
	return harness_main(argc, argv);
}
