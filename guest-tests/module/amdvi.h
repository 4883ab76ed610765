/* SPDX-License-Identifier: GPL-2.0 */
/*
 * amdvi_test: internal declarations shared by the module's files.
 *
 * amdvi_main.c    virtio driver, request plumbing, event queue
 * amdvi_cmd.c     AMD commands, COMPLETION_WAIT, flush helpers
 * amdvi_iommu.c   device table, GCR3 tables
 * amdvi_log.c     event log decoder, PPR log front end
 * amdvi_sva.c     bind/unbind of an mm to a PASID, mmu_notifier, PPR worker
 * amdvi_chrdev.c  /dev/amdvi
 * amdvi_pt.c      private page tables for ordering scripts
 * amdvi_freed.c   freed-frame check at the secondary-TLB flush
 */
#ifndef AMDVI_H
#define AMDVI_H

#include <linux/atomic.h>
#include <linux/completion.h>
#include <linux/idr.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/miscdevice.h>
#include <linux/mutex.h>
#include <linux/refcount.h>
#include <linux/scatterlist.h>
#include <linux/spinlock.h>
#include <linux/types.h>
#include <linux/version.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>

#include "amdvi_proto.h"
#include "amdvi_uapi.h"

struct virtio_device;
struct virtqueue;
struct mm_struct;

/* ---- AMD IOMMU bit layouts (docs/amd-iommu.md) ---- */

/* §7.3 Extended Feature Register */
#define EFR_PPR_SUP		BIT_ULL(1)
#define EFR_NX_SUP		BIT_ULL(3)
#define EFR_GT_SUP		BIT_ULL(4)
#define EFR_IA_SUP		BIT_ULL(6)
#define EFR_GATS_SHIFT		12
#define EFR_GATS_MASK		0x3ULL
#define EFR_GLX_SHIFT		14
#define EFR_GLX_MASK		0x3ULL
#define EFR_PASMAX_SHIFT	32
#define EFR_PASMAX_MASK		0x1fULL
#define EFR_GIO_SUP		BIT_ULL(48)
#define EFR_EPH_SUP		BIT_ULL(50)

/* §7.2 Control register bits honoured by SET_DEVTAB */
#define CTRL_IOMMU_EN		BIT_ULL(0)
#define CTRL_EVT_LOG_EN		BIT_ULL(2)
#define CTRL_PPR_LOG_EN		BIT_ULL(13)
#define CTRL_PPR_EN		BIT_ULL(15)
#define CTRL_GT_EN		BIT_ULL(16)
#define CTRL_EPH_EN		BIT_ULL(45)

/* §1 DTE, as four 64-bit words */
#define DTE_ENTRY_SIZE		32
#define DTE_Q0_V		BIT_ULL(0)
#define DTE_Q0_TV		BIT_ULL(1)
#define DTE_Q0_MODE_SHIFT	9
#define DTE_Q0_PPR		BIT_ULL(52)
#define DTE_Q0_GV		BIT_ULL(55)
#define DTE_Q0_GLX_SHIFT	56
#define DTE_Q0_GCR3_14_12_SHIFT	58	/* GCR3 root [14:12] at Q0 60:58 */
#define DTE_Q0_IR		BIT_ULL(61)
#define DTE_Q0_IW		BIT_ULL(62)
#define DTE_Q1_DOMID_MASK	0xffffULL
#define DTE_Q1_GCR3_30_15_SHIFT	16	/* GCR3 root [30:15] at Q1 31:16 */
#define DTE_Q1_I		BIT_ULL(32)
#define DTE_Q1_GCR3_51_31_SHIFT	43	/* GCR3 root [51:31] at Q1 63:43 */
#define DTE_Q2_GPM_SHIFT	54	/* guest paging mode, Q2 55:54 */
#define DTE_GPM_4LEVEL		0ULL
#define DTE_GPM_5LEVEL		1ULL

/* §2 GCR3 table */
#define GCR3_VALID		BIT_ULL(0)
#define GCR3_ADDR_MASK		0x000ffffffffff000ULL
#define GCR3_ENTRIES		512
#define GCR3_L1_ENTRIES		128	/* 16-bit PASIDs: PASID[15:9] */

/* §4 commands: opcode in DW1[31:28] */
#define CMD_COMPL_WAIT		0x1
#define CMD_INV_DEV_ENTRY	0x2
#define CMD_INV_IOMMU_PAGES	0x3
#define CMD_INV_IOTLB_PAGES	0x4
#define CMD_COMPLETE_PPR	0x7
#define CMD_INV_ALL		0x8

#define CMD_COMPL_WAIT_STORE	BIT(0)
#define CMD_INV_PAGES_S		BIT(0)	/* in DW2 */
#define CMD_INV_PAGES_PDE	BIT(1)
#define CMD_INV_PAGES_GN	BIT(2)
#define CMD_INV_ALL_PAGES_ADDR	0x7ffffffffffff000ULL
#define CMD_IOTLB_MAXPEND	32
#define PPR_STATUS_SHIFT	12

/* §5 event log entry */
#define EVENT_DEVID(dw0)	((dw0) & 0xffff)
#define EVENT_FLAGS(dw1)	(((dw1) >> 16) & 0xfff)
#define EVENT_TYPE(dw1)		((dw1) >> 28)
#define EVENT_FLAG_GN		BIT(0)
#define EVENT_FLAG_RW		BIT(5)

#define EVENT_ILL_DEV		0x1
#define EVENT_IO_FAULT		0x2
#define EVENT_DEV_TAB_ERR	0x3
#define EVENT_PAGE_TAB_ERR	0x4
#define EVENT_ILL_CMD		0x5
#define EVENT_CMD_HARD_ERR	0x6
#define EVENT_IOTLB_INV_TO	0x7
#define EVENT_INV_DEV_REQ	0x8
#define EVENT_INV_PPR_REQ	0x9

/* §6 PPR log entry */
#define PPR_TYPE_PAGE_REQ	0x1
#define PPR_TAG_PRGI_MASK	0x1ff
#define PPR_TAG_LAST		0x200
#define PPR_FLAG_EXEC		0x002
#define PPR_FLAG_READ		0x004
#define PPR_FLAG_WRITE		0x020
#define PPR_FLAG_US		0x040
#define PPR_FLAG_RZ		0x080
#define PPR_FLAG_GN		0x100

#define PPR_RESP_SUCCESS	0x0
#define PPR_RESP_INVALID	0x1

struct amdvi_cmd {
	u32 data[4];
};

/* ---- device state ---- */

#define AMDVI_EV_BUFS		64
#define AMDVI_EV_RECS_PER_BUF	8
#define AMDVI_SEM_SLOTS		(PAGE_SIZE / sizeof(u64))
#define AMDVI_REQ_MAX_SG	48

struct amdvi_endpoint_state {
	u16 devid;
	u16 domid;
	u64 *gcr3_root;			/* level-1 (or only) GCR3 table */
	u64 *gcr3_l0[GCR3_L1_ENTRIES];	/* level-0 tables, on demand */
};

struct amdvi_dev {
	struct kref kref;
	struct virtio_device *vdev;
	struct device *dev;
	struct virtqueue *reqq;
	struct virtqueue *evq;
	bool dead;

	/* request queue */
	spinlock_t req_lock;		/* serialises reqq and @dead */
	wait_queue_head_t req_wait;	/* ring full */

	/* event queue */
	spinlock_t ev_lock;
	struct workqueue_struct *ev_wq;
	struct work_struct ev_work;
	void *ev_buf[AMDVI_EV_BUFS];
	spinlock_t ev_last_lock;	/* ev_last, event counters by code */
	u32 ev_last[AMDVI_EVENT_CODES][4];	/* last event of each code */

	/* INFO, parsed */
	struct amdvi_info info;
	u64 efr;
	u32 num_ep;
	u32 max_pasid;
	u32 glx;
	bool five_level;
	bool sva_ok;
	bool ppr_ok;
	bool eph;
	u64 control;

	/* device table and GCR3 tables */
	struct mutex cfg_lock;		/* DTE/GCR3 updates, binding list */
	u64 *dev_table;
	size_t dev_table_size;
	struct amdvi_endpoint_state ep[AMDVI_MAX_ENDPOINTS];

	/* COMPLETION_WAIT store slots */
	u64 *sem_page;
	unsigned long sem_busy[BITS_TO_LONGS(AMDVI_SEM_SLOTS)];
	atomic64_t sem_seq;

	/* oracle epoch word */
	u64 *epoch;

	/* SVA */
	struct ida pasid_ida;
	struct xarray bonds;		/* pasid -> struct amdvi_bond */
	struct mutex stream_lock;
	struct list_head streams;
	struct workqueue_struct *ppr_wq;
	spinlock_t ppr_lock;		/* ppr_partial */
	struct list_head ppr_partial;	/* page requests of open groups */

	atomic64_t ctr[AMDVI_MC_NR];
	struct miscdevice misc;
};

static inline void amdvi_count(struct amdvi_dev *ad, unsigned int idx)
{
	atomic64_inc(&ad->ctr[idx]);
}

static inline void amdvi_count_add(struct amdvi_dev *ad, unsigned int idx,
				   s64 n)
{
	atomic64_add(n, &ad->ctr[idx]);
}

/* One request on the request queue (docs/protocol.md §2). */
struct amdvi_req {
	refcount_t ref;			/* waiter + device */
	struct completion done;
	struct amdvi_dev *ad;
	u32 used;			/* used-ring length */
	int sem_slot;			/* COMPLETION_WAIT store slot or -1 */
	bool log_status;		/* log a bad status when nobody waits */
	struct amdvi_req_hdr hdr;
	struct amdvi_resp_hdr resp;
	void *body;			/* readable body, owned */
	size_t body_len;
	void *data;			/* readable or writable data, owned */
	size_t data_len;
	bool data_in;			/* data is device-writable */
	void *rbody;			/* writable response body, owned */
	size_t rbody_len;
	struct scatterlist sg[AMDVI_REQ_MAX_SG];
	struct scatterlist *sgs[AMDVI_REQ_MAX_SG];
};

/* amdvi_main.c */
extern int amdvi_notifier_mask;

/* Planted driver invalidation bugs (module parameter inv_bug). */
enum amdvi_inv_bug {
	AMDVI_INV_BUG_NONE,
	AMDVI_INV_BUG_NO_WAIT,
	AMDVI_INV_BUG_IOMMU_ONLY,
	AMDVI_INV_BUG_ATC_ONLY,
	AMDVI_INV_BUG_ALL_ENCODING,
	AMDVI_INV_BUG_FIRST_PAGE,
};

extern enum amdvi_inv_bug amdvi_inv_bug_mode;
int amdvi_parse_inv_bug(void);
struct amdvi_req *amdvi_req_alloc(u32 type, size_t body_len, size_t rbody_len,
				  size_t data_len, bool data_in, gfp_t gfp);
void amdvi_req_put(struct amdvi_req *req);
int amdvi_req_submit(struct amdvi_dev *ad, struct amdvi_req *req, gfp_t gfp);
int amdvi_req_wait(struct amdvi_req *req, unsigned long timeout,
		   bool killable);
int amdvi_req_status(struct amdvi_req *req, size_t min_rlen);
int amdvi_req_poll(struct amdvi_dev *ad, struct amdvi_req *req,
		   unsigned long loops);
int amdvi_request(struct amdvi_dev *ad, struct amdvi_req *req, bool killable);
void amdvi_dev_put(struct amdvi_dev *ad);
void amdvi_dev_get(struct amdvi_dev *ad);

/* amdvi_cmd.c */
void amdvi_build_inv_dte(struct amdvi_cmd *cmd, u16 devid);
void amdvi_build_inv_all(struct amdvi_cmd *cmd);
int amdvi_cmds_sync(struct amdvi_dev *ad, const struct amdvi_cmd *cmds,
		    unsigned int n, bool atomic);
int amdvi_flush_pasid(struct amdvi_dev *ad, u32 ep_mask, u32 pasid,
		      unsigned long start, unsigned long end, bool atomic);
int amdvi_inv_pages(struct amdvi_dev *ad, u32 ep_mask, u32 pasid, u64 addr,
		    bool s, u32 flags);
int amdvi_complete_ppr(struct amdvi_dev *ad, u16 devid, u32 pasid, u16 tag,
		       u32 code);
int amdvi_cmds_raw(struct amdvi_dev *ad, const struct amdvi_cmd *cmds,
		   unsigned int n, u32 *executed, u64 *illegal_gpa);

/* amdvi_iommu.c */
int amdvi_iommu_init(struct amdvi_dev *ad);
void amdvi_iommu_free(struct amdvi_dev *ad);
int amdvi_gcr3_set(struct amdvi_dev *ad, unsigned int ep, u32 pasid, u64 cr3);
int amdvi_dte_set_ats(struct amdvi_dev *ad, unsigned int ep, bool ats);
int amdvi_send_epoch(struct amdvi_dev *ad);
int amdvi_ep_index(struct amdvi_dev *ad, u16 devid);

/* amdvi_log.c */
void amdvi_handle_event(struct amdvi_dev *ad, const u8 *entry, u32 dropped);
void amdvi_events_read(struct amdvi_dev *ad, struct amdvi_ioc_events *u);
void amdvi_handle_ppr(struct amdvi_dev *ad, const u8 *entry, u32 dropped);

/* amdvi_sva.c */
struct amdvi_bond;
struct amdvi_bond *amdvi_bind(struct amdvi_dev *ad, struct mm_struct *mm,
			      u32 ep_mask);
void amdvi_unbind(struct amdvi_bond *bond);
u32 amdvi_bond_pasid(struct amdvi_bond *bond);
void amdvi_ppr_request(struct amdvi_dev *ad, u16 devid, u32 pasid, u16 tag,
		       u16 flags, u64 addr);

/* amdvi_pt.c */
struct amdvi_pt;
void amdvi_pt_destroy(struct amdvi_pt *pt);
long amdvi_pt_ioctl(struct amdvi_dev *ad, struct amdvi_pt **ptp,
		    unsigned int cmd, void __user *arg);

/* amdvi_freed.c */
void amdvi_freed_scan(struct amdvi_dev *ad, u32 pasid, unsigned long start,
		      unsigned long end);

/* amdvi_chrdev.c */
int amdvi_chrdev_register(struct amdvi_dev *ad);
void amdvi_chrdev_unregister(struct amdvi_dev *ad);
void amdvi_stream_stop_pasid(struct amdvi_dev *ad, u32 pasid);

#endif /* AMDVI_H */
