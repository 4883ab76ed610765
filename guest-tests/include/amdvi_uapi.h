/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * ioctl interface of /dev/amdvi (amdvi_test.ko).
 *
 * Every ioctl returns 0 when the request reached the device and came back;
 * the device's own answer (docs/protocol.md §2.1) is then in a `status`
 * field, so a test can tell TRANSLATION_FAULT from OK.  A negative errno
 * means the module refused the call or the transport failed.
 *
 * Oracle epoch: the module owns the epoch word.  At probe it allocates one
 * page, stores 0 in its first 8 bytes and tells the daemon the word's GPA
 * with ORACLE_EPOCH.  AMDVI_IOC_EPOCH reads, sets or adds to that word; every
 * oracle finding records the value current when it was found.
 */
#ifndef AMDVI_UAPI_H
#define AMDVI_UAPI_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define AMDVI_DEV_NAME		"amdvi"
#define AMDVI_IOC_TYPE		'A'
#define AMDVI_UAPI_MAX_EP	16

/* notifier_mode: which mmu_notifier callbacks flush the IOMMU and ATCs */
#define AMDVI_NOTIFIER_SECONDARY	(1U << 0)	/* arch_invalidate_secondary_tlbs / invalidate_range */
#define AMDVI_NOTIFIER_START		(1U << 1)	/* invalidate_range_start */
#define AMDVI_NOTIFIER_END		(1U << 2)	/* invalidate_range_end */

/* features the module enabled (amdvi_ioc_info.features) */
#define AMDVI_FEAT_SVA		(1U << 0)	/* GT + GCR3 usable: BIND works */
#define AMDVI_FEAT_PPR		(1U << 1)	/* PPR log on: page requests answered */
#define AMDVI_FEAT_EPH		(1U << 2)	/* DTE.PPR + EPHEn */
#define AMDVI_FEAT_INV_ALL	(1U << 3)	/* INVALIDATE_IOMMU_ALL used */
#define AMDVI_FEAT_ORACLE	(1U << 4)	/* INFO.flags bit 0 */

struct amdvi_ioc_info {
	__u64 efr;
	__u32 num_endpoints;
	__u32 dev_flags;		/* INFO.flags */
	__u32 iotlb_entries;
	__u32 pwc_entries;
	__u32 dte_cache_entries;
	__u32 atc_entries;
	__u32 max_streams;
	__u32 pri_timeout_ms;
	__u16 endpoint_devid[AMDVI_UAPI_MAX_EP];
	__u32 max_pasid;
	__u32 guest_levels;		/* 4 or 5 */
	__u32 features;			/* AMDVI_FEAT_* */
	__u32 notifier_mode;		/* AMDVI_NOTIFIER_* mask in effect */
	__u64 epoch_gpa;
	char fault_rules[256];
};

/* BIND: the caller's mm to a new PASID on the endpoints in endpoint_mask */
struct amdvi_ioc_bind {
	__u32 endpoint_mask;		/* in: bit i = endpoint index i; 0 = all */
	__u32 flags;			/* in: 0 */
	__u32 pasid;			/* out */
	__u32 reserved;
};

/*
 * BIND_PID: the mm of another process, given by a pidfd (pidfd_open(2)), to
 * a new PASID.  The caller must be that process's ptracer (PTRACE_TRACEME,
 * PTRACE_ATTACH or PTRACE_SEIZE): the kernel checked the ptrace access
 * rights (PTRACE_MODE_ATTACH_REALCREDS) when it attached, and
 * ptrace_may_access() is not exported to modules.  The bond belongs to the
 * caller's file like a BIND; it is torn down when the bound mm goes away
 * (the process exits or execs: mmu_notifier release), and the PASID stays
 * allocated until UNBIND or close.
 */
struct amdvi_ioc_bind_pid {
	__s32 pidfd;			/* in */
	__u32 endpoint_mask;		/* in: bit i = endpoint index i; 0 = all */
	__u32 flags;			/* in: 0 */
	__u32 pasid;			/* out */
};

struct amdvi_ioc_unbind {
	__u32 pasid;
	__u32 flags;			/* 0 */
};

/* ACCESS: one ENDPOINT request (TRANSLATE, READ or WRITE) */
#define AMDVI_OP_TRANSLATE	0
#define AMDVI_OP_READ		1
#define AMDVI_OP_WRITE		2

#define AMDVI_ACC_PRIV		(1U << 0)
#define AMDVI_ACC_EXEC		(1U << 1)
#define AMDVI_ACC_NO_WRITE	(1U << 2)
#define AMDVI_ACC_NO_PRI	(1U << 3)

#define AMDVI_ACCESS_MAX	65536

struct amdvi_ioc_access {
	__u32 endpoint;			/* index into endpoint_devid */
	__u32 pasid;
	__u64 va;			/* device virtual address */
	__u64 buf;			/* user buffer: READ destination, WRITE source */
	__u32 len;			/* READ/WRITE 1..65536, TRANSLATE 0 */
	__u8 op;			/* AMDVI_OP_* */
	__u8 flags;			/* AMDVI_ACC_* */
	__u16 reserved;
	__u32 status;			/* out: device status */
	__u32 page_requests;		/* out */
	__u64 ats;			/* out: ATS completion entry */
};

/*
 * STREAM_START / STREAM_STOP / STREAM_STATUS
 *
 * stream_start.flags may carry AMDVI_STREAM_FOLLOW besides AMDVI_ACC_*: the
 * stream then follows the PASID's address space (docs/protocol.md, mode
 * FOLLOW): each access goes to a random address the PASID maps now; va and
 * len are a window (len 0: everything), stride is ignored.
 */
#define AMDVI_STREAM_FOLLOW	(1U << 7)

struct amdvi_ioc_stream_start {
	__u32 endpoint;
	__u32 pasid;
	__u64 va;
	__u64 len;
	__u32 stride;
	__u8 read_weight;
	__u8 write_weight;
	__u8 translate_weight;
	__u8 flags;			/* AMDVI_ACC_* */
	__u32 rate;			/* accesses/s, 0 = unthrottled */
	__u32 duration_ms;		/* 0 = until stopped */
	__u64 write_value;
	__u32 stream_id;		/* out */
	__u32 status;			/* out */
};

struct amdvi_ioc_stream_counts {
	__u64 reads;
	__u64 writes;
	__u64 translations;
	__u64 faults;
	__u64 page_requests;
	__u64 atc_hits;
	__u64 atc_misses;
	__u64 errors;
	__u64 elapsed_us;
	__u32 running;
	__u32 reserved;
};

struct amdvi_ioc_stream {
	__u32 stream_id;		/* in */
	__u32 status;			/* out: device status */
	struct amdvi_ioc_stream_counts counts;	/* out */
};

/* ORACLE_READ / ORACLE_AUDIT */
#define AMDVI_ORACLE_CLEAR	(1U << 0)	/* ORACLE_READ: clear after reading */
#define AMDVI_ORACLE_RECORDS	64

#define AMDVI_RULE_R1		1
#define AMDVI_RULE_R2		2
#define AMDVI_RULE_R3		3
#define AMDVI_RULE_R4		4
#define AMDVI_RULE_STALE	5

/* amdvi_ioc_oracle.count[] indices */
#define AMDVI_CNT_R1		0
#define AMDVI_CNT_R2		1
#define AMDVI_CNT_R3		2
#define AMDVI_CNT_R4		3
#define AMDVI_CNT_STALE		4
#define AMDVI_CNT_DROPPED	5

struct amdvi_ioc_finding {
	__u32 rule;
	__u16 devid;
	__u16 source;			/* 1 ATC, 2 IOTLB, 3 walk cache */
	__u32 pasid;
	__u32 write;
	__u64 va;
	__u64 cached_pa;
	__u64 current_pte;
	__u64 seq;
	__u64 epoch;
	__u64 reserved;
};

struct amdvi_ioc_oracle {
	__u32 pasid;			/* AUDIT */
	__u32 flags;			/* READ: AMDVI_ORACLE_CLEAR */
	__u64 va;			/* AUDIT */
	__u64 len;			/* AUDIT */
	__u64 records;			/* user pointer to max_records findings, or 0 */
	__u32 max_records;		/* <= AMDVI_ORACLE_RECORDS */
	__u32 nrecords;			/* out */
	__u32 status;			/* out */
	__u32 reserved;
	__u64 count[8];			/* out: R1 R2 R3 R4 STALE dropped 0 0 */
};

/* EPOCH: the oracle epoch word (see top of file) */
#define AMDVI_EPOCH_GET		0
#define AMDVI_EPOCH_SET		1
#define AMDVI_EPOCH_ADD		2

struct amdvi_ioc_epoch {
	__u32 op;
	__u32 reserved;
	__u64 value;			/* in: SET/ADD operand; out: value now */
};

/* STATS: daemon counters (docs/protocol.md STATS order) + module counters */
#define AMDVI_STATS_MAX		64

enum amdvi_mod_counter {
	AMDVI_MC_NOTIF_START,		/* invalidate_range_start calls */
	AMDVI_MC_NOTIF_END,		/* invalidate_range_end calls */
	AMDVI_MC_NOTIF_SECONDARY,	/* arch_invalidate_secondary_tlbs / invalidate_range */
	AMDVI_MC_NOTIF_RELEASE,		/* release calls */
	AMDVI_MC_FLUSH_RANGE,		/* range flushes sent (INV_IOMMU + INV_IOTLB + wait) */
	AMDVI_MC_FLUSH_ALL,		/* whole-PASID flushes sent */
	AMDVI_MC_CMD_BATCHES,		/* COMMANDS requests */
	AMDVI_MC_CMDS,			/* AMD commands sent */
	AMDVI_MC_COMP_WAITS,		/* COMPLETION_WAITs seen complete */
	AMDVI_MC_COMP_WAIT_TIMEOUTS,
	AMDVI_MC_CMD_ERRORS,		/* COMMANDS answered with an error */
	AMDVI_MC_PPR_ENTRIES,		/* PPR log entries received */
	AMDVI_MC_PPR_GROUPS,		/* page request groups answered */
	AMDVI_MC_PPR_SUCCESS,
	AMDVI_MC_PPR_INVALID,
	AMDVI_MC_PPR_STOP_MARKERS,
	AMDVI_MC_PPR_DROPPED,		/* dropped entries reported by the device */
	AMDVI_MC_EVENTS,		/* event-log entries received */
	AMDVI_MC_EVENTS_DROPPED,	/* dropped entries reported by the device */
	AMDVI_MC_BINDS,
	AMDVI_MC_UNBINDS,
	AMDVI_MC_BONDS_ACTIVE,		/* gauge */
	AMDVI_MC_STREAMS_ACTIVE,	/* gauge */
	AMDVI_MC_REQ_TIMEOUTS,		/* requests abandoned by a waiter */
	AMDVI_MC_EVENT_TYPE0,		/* + event code (0..15): events by type */
	AMDVI_MC_FREED_CHECKS = AMDVI_MC_EVENT_TYPE0 + 16,	/* audits at a secondary flush */
	AMDVI_MC_FREED_CACHED,		/* cached frames found freed there */
	AMDVI_MC_NR,
};

struct amdvi_ioc_stats {
	__u32 ndev;			/* out: daemon counters returned */
	__u32 nmod;			/* out: module counters returned */
	__u32 status;			/* out: status of the STATS request */
	__u32 reserved;
	__u64 dev[AMDVI_STATS_MAX];
	__u64 mod[AMDVI_STATS_MAX];
};

/*
 * Private page tables, for ordering scripts (sim/, docs/ordering-scripts.md).
 * PT_CREATE builds an x86-64 page table that no CPU uses (4 or 5 levels, as
 * the guest's paging and the DTE's GPM) and binds it to a PASID on the
 * endpoints: GCR3[pasid] = its root.  User space then writes its leaf
 * entries (PT_PTE), the contents of its data pages (PT_PAGE) and sends
 * invalidations (PT_INV) one by one, in the order a script gives.  A present
 * leaf may only point to a data page of the same table, and data pages are
 * freed only when the table is, so the device never reaches other memory.
 * One table per open file; closing the file unbinds and frees it.
 */
#define AMDVI_PT_MAX_PAGES	256	/* data pages per table */
#define AMDVI_PT_MAX_TABLES	128	/* page-table pages per table */
#define AMDVI_PT_VA_LIMIT	(1ULL << 47)	/* VAs below this */

struct amdvi_ioc_pt_create {
	__u32 pasid;			/* in: PASID to bind (1..max_pasid) */
	__u32 endpoint_mask;		/* in: bit i = endpoint index i; 0 = all */
	__u32 levels;			/* out: 4 or 5 */
	__u32 reserved;
	__u64 root_pa;			/* out */
};

/* PT_PAGE ops */
#define AMDVI_PT_PAGE_ALLOC	0	/* a zeroed page: out index, pa */
#define AMDVI_PT_PAGE_READ	1	/* len bytes at offset to buf */
#define AMDVI_PT_PAGE_WRITE	2	/* len bytes at offset from buf */

struct amdvi_ioc_pt_page {
	__u32 op;
	__u32 index;			/* in: READ/WRITE; out: ALLOC */
	__u32 offset;			/* offset + len <= 4096 */
	__u32 len;
	__u64 buf;			/* user pointer */
	__u64 pa;			/* out: physical address of the page */
};

/* PT_PTE ops */
#define AMDVI_PT_PTE_GET	0	/* value = the leaf entry (0 without a table) */
#define AMDVI_PT_PTE_SET	1	/* the leaf entry = value (tables allocated) */

struct amdvi_ioc_pt_pte {
	__u32 op;
	__u32 reserved;
	__u64 va;			/* page aligned, below AMDVI_PT_VA_LIMIT */
	__u64 value;			/* SET: in; GET: out */
	__u64 old;			/* out: the entry before */
};

/* PT_INV flags: the commands, in this order, as one COMMANDS request */
#define AMDVI_INV_IOMMU		(1U << 0)	/* INVALIDATE_IOMMU_PAGES (GN=1, PDE=1) per endpoint domain */
#define AMDVI_INV_IOTLB		(1U << 1)	/* INVALIDATE_IOTLB_PAGES (GN=1) per endpoint */
#define AMDVI_INV_WAIT		(1U << 2)	/* then COMPLETION_WAIT, waited for */

struct amdvi_ioc_pt_inv {
	__u32 flags;
	__u32 pasid;			/* any PASID (invalidating another one is a test) */
	__u32 endpoint_mask;		/* 0 = the table's endpoints */
	__u32 s;			/* S bit of the address */
	__u64 addr;			/* address in the commands' S encoding, page aligned */
};

/*
 * EVENTS: what the module's event-log decoder received (docs/protocol.md
 * §3), by event code (§5.1, 0..15): how many entries and the last entry of
 * each code, DW0..DW3 as the device wrote it.  count[] are the module
 * counters AMDVI_MC_EVENT_TYPE0 + code of STATS, read together with last[].
 */
#define AMDVI_EVENT_CODES	16

struct amdvi_ioc_events {
	__u64 count[AMDVI_EVENT_CODES];		/* out */
	__u32 last[AMDVI_EVENT_CODES][4];	/* out: zeros before the first */
	__u64 dropped;				/* out: AMDVI_MC_EVENTS_DROPPED */
};

/*
 * Test-only ioctls, for the error paths a correct driver never takes.
 *
 * RAW_CMDS sends 1..AMDVI_RAW_CMDS_MAX AMD commands (4 dwords each) exactly
 * as given as one COMMANDS request, without a COMPLETION_WAIT, and returns
 * the device's answer.  COMPLETION_WAIT commands are refused (-EINVAL): their
 * store would write wherever user space said.
 */
#define AMDVI_RAW_CMDS_MAX	16

struct amdvi_ioc_raw_cmds {
	__u64 cmds;			/* in: user pointer to count x __u32[4] */
	__u32 count;			/* in */
	__u32 status;			/* out: device status of COMMANDS */
	__u32 executed;			/* out: commands completed */
	__u32 reserved;
	__u64 illegal_gpa;		/* out: GPA of the illegal command, or 0 */
};

/*
 * DTE_ATS clears (ats = 0) or sets again (ats = 1) the I bit (ATS allowed)
 * of an endpoint's DTE, then sends INVALIDATE_DEVTAB_ENTRY + COMPLETION_WAIT
 * and waits for it.  Closing the file sets the bit again on every endpoint
 * this file cleared it on.
 */
struct amdvi_ioc_dte_ats {
	__u32 endpoint;			/* index into endpoint_devid */
	__u32 ats;			/* 0 or 1 */
};

/* ioctl numbers: type letter 'A', numbers from 0x10 (1 and 2 are unusable) */
#define AMDVI_IOC_INFO		_IOR(AMDVI_IOC_TYPE, 0x10, struct amdvi_ioc_info)
#define AMDVI_IOC_BIND		_IOWR(AMDVI_IOC_TYPE, 0x11, struct amdvi_ioc_bind)
#define AMDVI_IOC_UNBIND	_IOW(AMDVI_IOC_TYPE, 0x12, struct amdvi_ioc_unbind)
#define AMDVI_IOC_ACCESS	_IOWR(AMDVI_IOC_TYPE, 0x13, struct amdvi_ioc_access)
#define AMDVI_IOC_STREAM_START	_IOWR(AMDVI_IOC_TYPE, 0x14, struct amdvi_ioc_stream_start)
#define AMDVI_IOC_STREAM_STOP	_IOWR(AMDVI_IOC_TYPE, 0x15, struct amdvi_ioc_stream)
#define AMDVI_IOC_STREAM_STATUS	_IOWR(AMDVI_IOC_TYPE, 0x16, struct amdvi_ioc_stream)
#define AMDVI_IOC_ORACLE_READ	_IOWR(AMDVI_IOC_TYPE, 0x17, struct amdvi_ioc_oracle)
#define AMDVI_IOC_ORACLE_AUDIT	_IOWR(AMDVI_IOC_TYPE, 0x18, struct amdvi_ioc_oracle)
#define AMDVI_IOC_EPOCH		_IOWR(AMDVI_IOC_TYPE, 0x19, struct amdvi_ioc_epoch)
#define AMDVI_IOC_STATS		_IOR(AMDVI_IOC_TYPE, 0x1a, struct amdvi_ioc_stats)
#define AMDVI_IOC_PT_CREATE	_IOWR(AMDVI_IOC_TYPE, 0x1b, struct amdvi_ioc_pt_create)
#define AMDVI_IOC_PT_PAGE	_IOWR(AMDVI_IOC_TYPE, 0x1c, struct amdvi_ioc_pt_page)
#define AMDVI_IOC_PT_PTE	_IOWR(AMDVI_IOC_TYPE, 0x1d, struct amdvi_ioc_pt_pte)
#define AMDVI_IOC_PT_INV	_IOW(AMDVI_IOC_TYPE, 0x1e, struct amdvi_ioc_pt_inv)
#define AMDVI_IOC_EVENTS	_IOR(AMDVI_IOC_TYPE, 0x1f, struct amdvi_ioc_events)
#define AMDVI_IOC_RAW_CMDS	_IOWR(AMDVI_IOC_TYPE, 0x20, struct amdvi_ioc_raw_cmds)
#define AMDVI_IOC_DTE_ATS	_IOW(AMDVI_IOC_TYPE, 0x21, struct amdvi_ioc_dte_ats)
#define AMDVI_IOC_BIND_PID	_IOWR(AMDVI_IOC_TYPE, 0x22, struct amdvi_ioc_bind_pid)

#endif /* AMDVI_UAPI_H */
