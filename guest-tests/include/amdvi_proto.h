/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Wire format of the amdvi guest protocol, version 1 (docs/protocol.md).
 *
 * All fields are little-endian.  The kernel module uses __le16/__le32/__le64
 * with cpu_to_le*() / le*_to_cpu(); user space gets the same names from the
 * uapi <linux/types.h> (plain integers there, x86 is little-endian).
 *
 * The AMD data structures carried inside the requests (DTE, GCR3 entries,
 * commands, event and PPR log entries) are described in
 * docs/amd-iommu.md; their bit layouts are in amdvi.h of the module.
 */
#ifndef AMDVI_PROTO_H
#define AMDVI_PROTO_H

#ifdef __KERNEL__
#include <linux/types.h>
#include <linux/build_bug.h>
#else
#include <linux/types.h>
#include <assert.h>
#endif

/* §1 config space */
#define AMDVI_CFG_MAGIC			0x56444d41	/* "AMDV" */
#define AMDVI_CFG_VERSION		1
#define AMDVI_CFG_OFF_MAGIC		0
#define AMDVI_CFG_OFF_VERSION		4

#define AMDVI_VIRTIO_ID_GPIO		41	/* vhost-user-gpio-pci carrier */
#define AMDVI_VIRTIO_ID_OWN		21	/* vhost-user-test-device-pci (see docs/protocol.md) */

#define AMDVI_VQ_REQUEST		0
#define AMDVI_VQ_EVENT			1
#define AMDVI_NUM_VQS			2

/* §2.2 request types */
enum amdvi_req_type {
	AMDVI_REQ_INFO		= 1,
	AMDVI_REQ_SET_DEVTAB	= 2,
	AMDVI_REQ_COMMANDS	= 3,
	AMDVI_REQ_ENDPOINT	= 4,
	AMDVI_REQ_STREAM_START	= 5,
	AMDVI_REQ_STREAM_STOP	= 6,
	AMDVI_REQ_ORACLE_READ	= 7,
	AMDVI_REQ_ORACLE_AUDIT	= 8,
	AMDVI_REQ_ORACLE_EPOCH	= 9,
	AMDVI_REQ_STATS		= 10,
};

/* §2.1 status codes */
enum amdvi_status {
	AMDVI_S_OK			= 0,
	AMDVI_S_BAD_REQUEST		= 1,
	AMDVI_S_UNSUPPORTED		= 2,
	AMDVI_S_NOT_READY		= 3,
	AMDVI_S_OUT_OF_RANGE		= 4,
	AMDVI_S_TRANSLATION_FAULT	= 5,
	AMDVI_S_ILLEGAL_COMMAND		= 6,
	AMDVI_S_TIMEOUT			= 7,
	AMDVI_S_NO_RESOURCE		= 8,
	AMDVI_S_DEVICE_ERROR		= 9,
};

struct amdvi_req_hdr {
	__le32 type;
	__le32 reserved;
};

struct amdvi_resp_hdr {
	__le32 status;
	__le32 reserved;
};

/* INFO (1) */
#define AMDVI_INFO_F_ORACLE		(1U << 0)
#define AMDVI_INFO_F_GUEST_5LEVEL	(1U << 1)
#define AMDVI_MAX_ENDPOINTS		16
#define AMDVI_DEVID_NONE		0xffff
#define AMDVI_FAULT_RULES_LEN		256

struct amdvi_info {
	__le64 efr;
	__le32 num_endpoints;
	__le32 flags;
	__le32 iotlb_entries;
	__le32 pwc_entries;
	__le32 dte_cache_entries;
	__le32 atc_entries;
	__le32 max_streams;
	__le32 pri_timeout_ms;
	__le16 endpoint_devid[AMDVI_MAX_ENDPOINTS];
	char fault_rules[AMDVI_FAULT_RULES_LEN];
};

/* SET_DEVTAB (2): MMIO 0x0000 and 0x0018 images */
struct amdvi_set_devtab {
	__le64 dev_table_base;
	__le64 control;
};

/* COMMANDS (3) */
#define AMDVI_CMD_SIZE			16
#define AMDVI_MAX_COMMANDS		512

struct amdvi_commands {
	__le32 count;
	__le32 reserved;
	/* followed by count 16-byte AMD commands */
};

struct amdvi_commands_resp {
	__le32 executed;
	__le32 comp_wait_int;
	__le64 illegal_gpa;
};

/* ENDPOINT (4) */
enum amdvi_ep_op {
	AMDVI_EP_TRANSLATE	= 0,
	AMDVI_EP_READ		= 1,
	AMDVI_EP_WRITE		= 2,
};

#define AMDVI_EP_F_PRIV			(1U << 0)
#define AMDVI_EP_F_EXEC			(1U << 1)
#define AMDVI_EP_F_NO_WRITE		(1U << 2)
#define AMDVI_EP_F_NO_PRI		(1U << 3)
#define AMDVI_EP_F_MASK			0x0f
#define AMDVI_EP_MAX_LEN		65536

struct amdvi_endpoint {
	__le16 devid;
	__u8 op;
	__u8 flags;
	__le32 pasid;
	__le64 va;
	__le32 len;
	__le32 reserved;
	/* WRITE: followed by len bytes of data */
};

struct amdvi_endpoint_resp {
	__le64 ats;
	__le32 page_requests;
	__le32 reserved;
	/* READ: followed by len bytes of data */
};

/* ATS translation completion entry (docs/amd-iommu.md §8.2) */
#define AMDVI_ATS_R			(1ULL << 0)
#define AMDVI_ATS_W			(1ULL << 1)
#define AMDVI_ATS_U			(1ULL << 2)
#define AMDVI_ATS_EXE			(1ULL << 3)
#define AMDVI_ATS_PRIV			(1ULL << 4)
#define AMDVI_ATS_GLOBAL		(1ULL << 5)
#define AMDVI_ATS_N			(1ULL << 10)
#define AMDVI_ATS_S			(1ULL << 11)
#define AMDVI_ATS_ADDR_MASK		0xfffffffffffff000ULL

/* STREAM_START (5), STREAM_STOP (6) */
#define AMDVI_STREAM_MODE_RANGE		0	/* walk [va, va + len) in stride steps */
#define AMDVI_STREAM_MODE_FOLLOW	1	/* sample what the PASID maps now */

struct amdvi_stream_start {
	__le16 devid;
	__u8 flags;
	__u8 mode;			/* AMDVI_STREAM_MODE_* */
	__le32 pasid;
	__le64 va;
	__le64 len;
	__le32 stride;
	__u8 read_weight;
	__u8 write_weight;
	__u8 translate_weight;
	__u8 reserved2;
	__le32 rate;
	__le32 duration_ms;
	__le64 write_value;
};

struct amdvi_stream_start_resp {
	__le32 stream_id;
	__le32 reserved;
};

#define AMDVI_STREAM_STOP_F_REPORT	(1U << 0)

struct amdvi_stream_stop {
	__le32 stream_id;
	__le32 flags;
};

struct amdvi_stream_counts {
	__le64 reads;
	__le64 writes;
	__le64 translations;
	__le64 faults;
	__le64 page_requests;
	__le64 atc_hits;
	__le64 atc_misses;
	__le64 errors;
	__le64 elapsed_us;
	__le32 running;
	__le32 reserved;
};

/* ORACLE_READ (7), ORACLE_AUDIT (8), ORACLE_EPOCH (9) */
#define AMDVI_ORACLE_MAX_RECORDS	64
#define AMDVI_ORACLE_READ_F_CLEAR	(1U << 0)

enum amdvi_oracle_count {
	AMDVI_ORC_R1		= 0,	/* stale page */
	AMDVI_ORC_R2		= 1,	/* stale write permission */
	AMDVI_ORC_R3		= 2,	/* access after unmap */
	AMDVI_ORC_R4		= 3,	/* write without dirty */
	AMDVI_ORC_STALE		= 4,	/* audit */
	AMDVI_ORC_DROPPED	= 5,
	AMDVI_ORC_NR		= 8,
};

struct amdvi_oracle_read {
	__le32 max_records;
	__le32 flags;
};

struct amdvi_oracle_audit {
	__le32 pasid;
	__le32 max_records;
	__le64 va;
	__le64 len;
};

struct amdvi_finding {
	__le32 rule;		/* 1..4 = R1..R4, 5 = STALE */
	__le16 devid;
	__le16 source;		/* 1 ATC, 2 IOTLB, 3 walk cache */
	__le32 pasid;
	__le32 write;
	__le64 va;
	__le64 cached_pa;
	__le64 current_pte;
	__le64 seq;
	__le64 epoch;
	__le64 reserved;
};

struct amdvi_oracle_resp {
	__le64 count[AMDVI_ORC_NR];
	__le32 nrecords;
	__le32 reserved;
	/* followed by nrecords struct amdvi_finding */
};

struct amdvi_oracle_epoch {
	__le64 gpa;
};

/* STATS (10) */
enum amdvi_dev_counter {
	AMDVI_DC_REQUESTS, AMDVI_DC_BAD_CHAINS, AMDVI_DC_COMMANDS,
	AMDVI_DC_COMPLETION_WAITS, AMDVI_DC_WALKS, AMDVI_DC_IOTLB_HITS,
	AMDVI_DC_IOTLB_MISSES, AMDVI_DC_PWC_HITS, AMDVI_DC_ATC_HITS,
	AMDVI_DC_ATC_MISSES, AMDVI_DC_ATS_REQUESTS, AMDVI_DC_ATS_FAULTS,
	AMDVI_DC_PAGE_REQUESTS, AMDVI_DC_PRG_RESPONSES,
	AMDVI_DC_EVENTS_LOGGED, AMDVI_DC_EVENTS_DROPPED,
	AMDVI_DC_PPR_LOGGED, AMDVI_DC_PPR_DROPPED,
	AMDVI_DC_IOMMU_INVALIDATIONS, AMDVI_DC_ATC_INVALIDATIONS,
	AMDVI_DC_ORACLE_FINDINGS, AMDVI_DC_ILLEGAL_COMMANDS,
	AMDVI_DC_INJECTED_FAULTS,
	AMDVI_DC_NR_KNOWN,
};

struct amdvi_stats {
	__le32 count;
	__le32 reserved;
	/* followed by count __le64 counters */
};

/* §3 event queue */
#define AMDVI_EVREC_EVENT		1
#define AMDVI_EVREC_PPR			2

struct amdvi_event_rec {
	__le16 kind;
	__le16 reserved;
	__le32 dropped;
	__u8 entry[16];
};

#ifdef __KERNEL__
#define AMDVI_ASSERT_SIZE(t, n) static_assert(sizeof(t) == (n), #t " size")
#else
#define AMDVI_ASSERT_SIZE(t, n) _Static_assert(sizeof(t) == (n), #t " size")
#endif

AMDVI_ASSERT_SIZE(struct amdvi_req_hdr, 8);
AMDVI_ASSERT_SIZE(struct amdvi_resp_hdr, 8);
AMDVI_ASSERT_SIZE(struct amdvi_info, 328);
AMDVI_ASSERT_SIZE(struct amdvi_set_devtab, 16);
AMDVI_ASSERT_SIZE(struct amdvi_commands, 8);
AMDVI_ASSERT_SIZE(struct amdvi_commands_resp, 16);
AMDVI_ASSERT_SIZE(struct amdvi_endpoint, 24);
AMDVI_ASSERT_SIZE(struct amdvi_endpoint_resp, 16);
AMDVI_ASSERT_SIZE(struct amdvi_stream_start, 48);
AMDVI_ASSERT_SIZE(struct amdvi_stream_start_resp, 8);
AMDVI_ASSERT_SIZE(struct amdvi_stream_stop, 8);
AMDVI_ASSERT_SIZE(struct amdvi_stream_counts, 80);
AMDVI_ASSERT_SIZE(struct amdvi_oracle_read, 8);
AMDVI_ASSERT_SIZE(struct amdvi_oracle_audit, 24);
AMDVI_ASSERT_SIZE(struct amdvi_oracle_resp, 72);
AMDVI_ASSERT_SIZE(struct amdvi_finding, 64);
AMDVI_ASSERT_SIZE(struct amdvi_oracle_epoch, 8);
AMDVI_ASSERT_SIZE(struct amdvi_stats, 8);
AMDVI_ASSERT_SIZE(struct amdvi_event_rec, 24);

#endif /* AMDVI_PROTO_H */
