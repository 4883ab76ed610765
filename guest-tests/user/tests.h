/* SPDX-License-Identifier: GPL-2.0 */
/*
 * amdvi-tests: what the scenario files share: the data checks of
 * common.c and every scenario function of the table in scenarios.c.
 */
#ifndef AMDVI_TESTS_H
#define AMDVI_TESTS_H

#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "amdvi_lib.h"
#include "harness.h"

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE	25
#endif
#ifndef MPOL_MF_MOVE
#define MPOL_MF_MOVE	(1 << 1)
#endif

/* first value a write stream stores; stream values are WV_BASE + n */
#define WV_BASE		0x1000000000000000ULL

/* ---- common.c ---- */

const char *st_str(int ret);

/* a forked child holding the COW copy of a range until told to check it */
struct sleeper {
	pid_t pid;
	int wfd;
};

bool sleeper_fork(struct ctx *c, struct sleeper *s, void *buf, size_t len,
		  uint64_t seed);
void sleeper_finish(struct ctx *c, struct sleeper *s);
void check_write_stream(struct ctx *c, const void *base, unsigned int nslots,
			uint32_t stride, uint64_t wv,
			const struct amdvi_ioc_stream_counts *k,
			const char *what);
void roundtrip(struct ctx *c, uint64_t *p, uint64_t v, const char *what);
uint64_t mod_counter(struct ctx *c, unsigned int idx);
int page_state(const void *addr, bool *present, bool *swapped);
void count_pages(const void *buf, unsigned int n, unsigned int *swapped,
		 unsigned int *absent);
bool setup_reason(const char *path, char *buf, size_t len);
void hold_translations(struct ctx *c, const void *buf, size_t len);
bool device_reads(struct ctx *c, const void *va, const void *want, size_t len,
		  const char *what);

/*
 * A thread of this mm spinning on another CPU while the caller is pinned to
 * its own: x86 defers an unmap's flush to the batched path
 * (arch_tlbbatch_should_defer) only for an mm loaded on other CPUs, as in
 * any multi-threaded program.  false on a single CPU.
 */
struct spinner {
	pthread_t th;
	cpu_set_t saved;
	volatile int stop;
	int cpu;
	bool on;
};

bool spinner_start(struct spinner *s);
/* Pin the caller to the CPU it runs on; its CPU, or -1.  @saved: the old mask. */
int pin_here(cpu_set_t *saved);
void spinner_stop(struct spinner *s);

/* what /init set up for the mm scenarios (guest-tests/initramfs/init) */
#define SWAP_REASON	"/run/amdvi-swap.reason"
#define BLK_REASON	"/run/amdvi-blk.reason"
#define BLK_DIR		"/mnt/blk"

/* ---- scenarios, one file per family ---- */

/* t_basic.c */
void t_bind_basic(struct ctx *c);
void t_pri_untouched(struct ctx *c);
void t_pri_cow_readonly(struct ctx *c);
/* t_share.c */
void t_cow_fork(struct ctx *c);
void t_cow_notifier_order(struct ctx *c);
void t_ksm_merge(struct ctx *c);
void t_hugetlb(struct ctx *c);
/* t_anon.c */
void t_migrate_numa(struct ctx *c);
void t_dontneed_race(struct ctx *c);
void t_munmap_stream(struct ctx *c);
void t_mprotect_ro_stream(struct ctx *c);
void t_upgrade_write(struct ctx *c);
void t_mremap_move(struct ctx *c);
void t_thp_collapse(struct ctx *c);
void t_thp_split(struct ctx *c);
void t_mremap_dontunmap(struct ctx *c);
void t_mremap_grow(struct ctx *c);
void t_mlock_cold(struct ctx *c);
/* t_reclaim.c */
void t_swap_pageout(struct ctx *c);
void t_madv_free(struct ctx *c);
/* t_file.c */
void t_writeback_tmpfs(struct ctx *c);
void t_writeback_ext2(struct ctx *c);
void t_file_reclaim(struct ctx *c);
void t_truncate_punch(struct ctx *c);
/* t_uffd.c */
void t_uffd_copy(struct ctx *c);
void t_uffd_wp(struct ctx *c);
void t_uffd_move(struct ctx *c);
/* t_placement.c */
void t_numa_balancing(struct ctx *c);
void t_compaction(struct ctx *c);
/* t_lifecycle.c */
void t_exit_inflight(struct ctx *c);
void t_unbind_inflight(struct ctx *c);
/* t_events.c */
void t_events(struct ctx *c);
/* t_selftest.c */
void t_crash_selftest(struct ctx *c);
void t_hang_selftest(struct ctx *c);

#endif /* AMDVI_TESTS_H */
