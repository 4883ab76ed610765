// SPDX-License-Identifier: GPL-2.0
/*
 * amdvi_test: the IOMMU driver side, shaped like drivers/iommu/amd/: device
 * table, GCR3 tables, the AMD command format, COMPLETION_WAIT polling, the
 * event log decoder and the PPR log front end.  Bit layouts follow
 * docs/amd-iommu.md (§ numbers below point there).
 */
#include <linux/bitops.h>
#include <linux/delay.h>
#include <linux/gfp.h>
#include <linux/io.h>
#include <linux/jiffies.h>
#include <linux/mm.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/virtio.h>
#include <asm/pgtable.h>

#include "amdvi.h"

#define AMDVI_WAIT_LOOPS	2000000		/* udelay(1) steps, as Linux */
#define AMDVI_WAIT_TIMEOUT	(2 * HZ)

/* ---- §4.3 command builders ---- */

static void cmd_set_type(struct amdvi_cmd *cmd, u32 type)
{
	cmd->data[1] |= type << 28;
}

static void build_completion_wait(struct amdvi_cmd *cmd, u64 store, u64 data)
{
	memset(cmd, 0, sizeof(*cmd));
	cmd->data[0] = lower_32_bits(store) & ~0x7U;
	cmd->data[0] |= CMD_COMPL_WAIT_STORE;
	cmd->data[1] = upper_32_bits(store) & 0xfffff;
	cmd->data[2] = lower_32_bits(data);
	cmd->data[3] = upper_32_bits(data);
	cmd_set_type(cmd, CMD_COMPL_WAIT);
}

static void build_inv_dte(struct amdvi_cmd *cmd, u16 devid)
{
	memset(cmd, 0, sizeof(*cmd));
	cmd->data[0] = devid;
	cmd_set_type(cmd, CMD_INV_DEV_ENTRY);
}

static void build_inv_all(struct amdvi_cmd *cmd)
{
	memset(cmd, 0, sizeof(*cmd));
	cmd_set_type(cmd, CMD_INV_ALL);
}

/*
 * Planted driver bugs for the fault matrix (docs/fault-injection.md):
 * inv_bug=none (default) | no_wait (no COMPLETION_WAIT: the commands are
 * posted and not waited for) | iommu_only (no INVALIDATE_IOTLB_PAGES, the
 * ATC is never flushed) | atc_only (no INVALIDATE_IOMMU_PAGES) |
 * all_encoding (the flush-all range 0..~0 encoded as the single page 0) |
 * first_page (a ranged flush names only its first page, S=0).
 */
static char *inv_bug = "none";
module_param(inv_bug, charp, 0444);
MODULE_PARM_DESC(inv_bug,
		 "planted invalidation bug: none|no_wait|iommu_only|atc_only|all_encoding|first_page");

enum amdvi_inv_bug amdvi_inv_bug_mode = AMDVI_INV_BUG_NONE;

int amdvi_parse_inv_bug(void)
{
	static const char * const names[] = {
		[AMDVI_INV_BUG_NONE] = "none",
		[AMDVI_INV_BUG_NO_WAIT] = "no_wait",
		[AMDVI_INV_BUG_IOMMU_ONLY] = "iommu_only",
		[AMDVI_INV_BUG_ATC_ONLY] = "atc_only",
		[AMDVI_INV_BUG_ALL_ENCODING] = "all_encoding",
		[AMDVI_INV_BUG_FIRST_PAGE] = "first_page",
	};
	int i;

	for (i = 0; i < ARRAY_SIZE(names); i++) {
		if (sysfs_streq(inv_bug ? inv_bug : "none", names[i])) {
			amdvi_inv_bug_mode = i;
			if (i != AMDVI_INV_BUG_NONE)
				pr_warn("amdvi_test: planted driver bug inv_bug=%s\n",
					names[i]);
			return 0;
		}
	}
	pr_err("amdvi_test: invalid inv_bug '%s'\n", inv_bug);
	return -EINVAL;
}

/*
 * §4.2: address covering [start, end) in the "S" encoding, computed as
 * Linux's build_inv_address(): one page -> S=0; otherwise set every bit
 * below the most significant bit in which start and end-1 differ.
 */
static u64 amdvi_inv_address(unsigned long start, unsigned long end, bool *s)
{
	u64 last, msb;

	/* planted: 0..~0 taken as one page (the size end - start + 1 wraps) */
	if (amdvi_inv_bug_mode == AMDVI_INV_BUG_ALL_ENCODING &&
	    start == 0 && end == ULONG_MAX) {
		*s = false;
		return 0;
	}
	if (end <= start)		/* empty or wrapped: flush everything */
		goto all;
	last = (u64)end - 1;
	if ((start >> PAGE_SHIFT) == (last >> PAGE_SHIFT)) {
		*s = false;
		return start & PAGE_MASK;
	}
	msb = fls64(start ^ last) - 1;
	if (msb > 51)
		goto all;
	*s = true;
	return ((u64)start | ((1ULL << msb) - 1)) & PAGE_MASK;
all:
	*s = true;
	return CMD_INV_ALL_PAGES_ADDR;
}

static void build_inv_iommu_pages(struct amdvi_cmd *cmd, u16 domid, u32 pasid,
				  u64 addr, bool s)
{
	memset(cmd, 0, sizeof(*cmd));
	cmd->data[0] = pasid & 0xfffff;
	cmd->data[1] = domid;
	cmd->data[2] = lower_32_bits(addr) & PAGE_MASK;
	cmd->data[3] = upper_32_bits(addr);
	cmd->data[2] |= CMD_INV_PAGES_PDE | CMD_INV_PAGES_GN;
	if (s)
		cmd->data[2] |= CMD_INV_PAGES_S;
	cmd_set_type(cmd, CMD_INV_IOMMU_PAGES);
}

static void build_inv_iotlb_pages(struct amdvi_cmd *cmd, u16 devid, u32 pasid,
				  u64 addr, bool s)
{
	memset(cmd, 0, sizeof(*cmd));
	cmd->data[0] = devid;
	cmd->data[0] |= ((pasid >> 8) & 0xff) << 16;
	cmd->data[0] |= (CMD_IOTLB_MAXPEND & 0xff) << 24;
	cmd->data[1] = devid;			/* QueueID, as Linux */
	cmd->data[1] |= (pasid & 0xff) << 16;
	cmd->data[1] |= ((pasid >> 16) & 0xf) << 24;
	cmd->data[2] = lower_32_bits(addr) & PAGE_MASK;
	cmd->data[3] = upper_32_bits(addr);
	cmd->data[2] |= CMD_INV_PAGES_GN;
	if (s)
		cmd->data[2] |= CMD_INV_PAGES_S;
	cmd_set_type(cmd, CMD_INV_IOTLB_PAGES);
}

static void build_complete_ppr(struct amdvi_cmd *cmd, u16 devid, u32 pasid,
			       u16 tag, u32 code)
{
	memset(cmd, 0, sizeof(*cmd));
	cmd->data[0] = devid;
	cmd->data[1] = pasid & 0xfffff;
	cmd->data[2] = CMD_INV_PAGES_GN;
	cmd->data[3] = tag & PPR_TAG_PRGI_MASK;
	cmd->data[3] |= (code & 0xf) << PPR_STATUS_SHIFT;
	cmd_set_type(cmd, CMD_COMPLETE_PPR);
}

/* ---- COMMANDS requests ---- */

static int amdvi_sem_alloc(struct amdvi_dev *ad)
{
	unsigned int slot;

	do {
		slot = find_first_zero_bit(ad->sem_busy, AMDVI_SEM_SLOTS);
		if (slot >= AMDVI_SEM_SLOTS)
			return -EBUSY;
	} while (test_and_set_bit(slot, ad->sem_busy));
	return slot;
}

static struct amdvi_req *amdvi_cmds_req(const struct amdvi_cmd *cmds,
					unsigned int n, unsigned int extra,
					gfp_t gfp)
{
	struct amdvi_commands *hdr;
	struct amdvi_req *req;
	__le32 *dst;
	unsigned int i, j;

	req = amdvi_req_alloc(AMDVI_REQ_COMMANDS,
			      sizeof(*hdr) + (n + extra) * AMDVI_CMD_SIZE,
			      sizeof(struct amdvi_commands_resp), 0, false, gfp);
	if (!req)
		return NULL;
	hdr = req->body;
	hdr->count = cpu_to_le32(n + extra);
	dst = (__le32 *)(hdr + 1);
	for (i = 0; i < n; i++)
		for (j = 0; j < 4; j++)
			*dst++ = cpu_to_le32(cmds[i].data[j]);
	return req;
}

static void amdvi_cmds_log_error(struct amdvi_dev *ad, struct amdvi_req *req,
				 int status)
{
	struct amdvi_commands_resp *resp = req->rbody;

	amdvi_count(ad, AMDVI_MC_CMD_ERRORS);
	dev_err_ratelimited(ad->dev,
			    "COMMANDS failed: status %d, executed %u, illegal command at 0x%llx\n",
			    status, le32_to_cpu(resp->executed),
			    le64_to_cpu(resp->illegal_gpa));
}

/*
 * Send @cmds followed by COMPLETION_WAIT(S=1) and wait until the store
 * lands, like Linux's iommu_completion_wait()/wait_on_sem().  The COMMANDS
 * response is the backstop: an error status ends the wait early.  With
 * @atomic the caller may hold spinlocks (secondary-TLB hook): no sleeping.
 */
static int amdvi_cmds_sync(struct amdvi_dev *ad, const struct amdvi_cmd *cmds,
			   unsigned int n, bool atomic)
{
	gfp_t gfp = atomic ? GFP_ATOMIC : GFP_KERNEL;
	unsigned long deadline = jiffies + AMDVI_WAIT_TIMEOUT;
	unsigned long loops = 0;
	struct amdvi_cmd wait;
	struct amdvi_req *req;
	u64 *sem, data;
	int slot, ret, status;

	if (n + 1 > AMDVI_MAX_COMMANDS)
		return -EINVAL;
	req = amdvi_cmds_req(cmds, n, 1, gfp);
	if (!req)
		return -ENOMEM;
	slot = amdvi_sem_alloc(ad);
	if (slot < 0) {
		amdvi_req_put(req);
		return slot;
	}
	req->sem_slot = slot;
	sem = &ad->sem_page[slot];
	data = atomic64_inc_return(&ad->sem_seq);
	WRITE_ONCE(*sem, 0);
	build_completion_wait(&wait, virt_to_phys(sem), data);
	{
		__le32 *dst = (__le32 *)((u8 *)req->body +
					 sizeof(struct amdvi_commands) +
					 n * AMDVI_CMD_SIZE);
		int j;

		for (j = 0; j < 4; j++)
			dst[j] = cpu_to_le32(wait.data[j]);
	}

	amdvi_count(ad, AMDVI_MC_CMD_BATCHES);
	amdvi_count_add(ad, AMDVI_MC_CMDS, n + 1);
	ret = amdvi_req_submit(ad, req, gfp);
	if (ret) {
		amdvi_req_put(req);
		return ret;
	}

	for (;;) {
		if (READ_ONCE(*sem) == data) {
			amdvi_count(ad, AMDVI_MC_COMP_WAITS);
			ret = 0;
			break;
		}
		if (completion_done(&req->done)) {
			status = amdvi_req_status(req, sizeof(struct amdvi_commands_resp));
			if (READ_ONCE(*sem) == data)
				continue;
			if (status != AMDVI_S_OK) {
				amdvi_cmds_log_error(ad, req, status);
				ret = status < 0 ? status : -EIO;
				break;
			}
			/* answered OK but no store: trust the response */
			dev_warn_once(ad->dev,
				      "COMPLETION_WAIT answered without its store\n");
			ret = 0;
			break;
		}
		if (atomic) {
			if (++loops > AMDVI_WAIT_LOOPS)
				goto timeout;
			udelay(1);
		} else {
			if (time_after(jiffies, deadline))
				goto timeout;
			usleep_range(5, 20);
		}
	}
	amdvi_req_put(req);
	return ret;

timeout:
	amdvi_count(ad, AMDVI_MC_COMP_WAIT_TIMEOUTS);
	req->log_status = true;
	dev_err_ratelimited(ad->dev, "COMPLETION_WAIT timed out (data %llu)\n",
			    data);
	amdvi_req_put(req);
	return -ETIMEDOUT;
}

/*
 * Planted bug inv_bug=no_wait: post @cmds without a COMPLETION_WAIT and
 * return at once; the invalidations run whenever the device gets to them.
 */
static int amdvi_cmds_post(struct amdvi_dev *ad, const struct amdvi_cmd *cmds,
			   unsigned int n, bool atomic)
{
	gfp_t gfp = atomic ? GFP_ATOMIC : GFP_KERNEL;
	struct amdvi_req *req;
	int ret;

	req = amdvi_cmds_req(cmds, n, 0, gfp);
	if (!req)
		return -ENOMEM;
	amdvi_count(ad, AMDVI_MC_CMD_BATCHES);
	amdvi_count_add(ad, AMDVI_MC_CMDS, n);
	ret = amdvi_req_submit(ad, req, gfp);
	amdvi_req_put(req);
	return ret;
}

/* Send @cmds without a COMPLETION_WAIT; wait for the response. */
static int amdvi_cmds_send(struct amdvi_dev *ad, const struct amdvi_cmd *cmds,
			   unsigned int n)
{
	struct amdvi_req *req;
	int status;

	req = amdvi_cmds_req(cmds, n, 0, GFP_KERNEL);
	if (!req)
		return -ENOMEM;
	amdvi_count(ad, AMDVI_MC_CMD_BATCHES);
	amdvi_count_add(ad, AMDVI_MC_CMDS, n);
	status = amdvi_request(ad, req, false);
	if (status == AMDVI_S_OK)
		status = amdvi_req_status(req,
					  sizeof(struct amdvi_commands_resp));
	if (status > 0)
		amdvi_cmds_log_error(ad, req, status);
	amdvi_req_put(req);
	return status > 0 ? -EIO : status;
}

/*
 * Test hook (AMDVI_IOC_RAW_CMDS): send @cmds exactly as given, without a
 * COMPLETION_WAIT, and return the device status (>= 0) or -errno, with the
 * response body when the device wrote it.
 */
int amdvi_cmds_raw(struct amdvi_dev *ad, const struct amdvi_cmd *cmds,
		   unsigned int n, u32 *executed, u64 *illegal_gpa)
{
	struct amdvi_commands_resp *resp;
	struct amdvi_req *req;
	int status;

	*executed = 0;
	*illegal_gpa = 0;
	if (!n || n > AMDVI_MAX_COMMANDS)
		return -EINVAL;
	req = amdvi_cmds_req(cmds, n, 0, GFP_KERNEL);
	if (!req)
		return -ENOMEM;
	amdvi_count(ad, AMDVI_MC_CMD_BATCHES);
	amdvi_count_add(ad, AMDVI_MC_CMDS, n);
	status = amdvi_request(ad, req, true);
	if (status >= 0 &&
	    req->used >= sizeof(req->resp) + sizeof(*resp)) {
		resp = req->rbody;
		*executed = le32_to_cpu(resp->executed);
		*illegal_gpa = le64_to_cpu(resp->illegal_gpa);
	} else if (status == AMDVI_S_OK) {
		status = -EIO;		/* OK without its response body */
	}
	if (status > 0) {
		amdvi_count(ad, AMDVI_MC_CMD_ERRORS);
		dev_info_ratelimited(ad->dev,
				     "raw COMMANDS: status %d, executed %u, illegal command at 0x%llx\n",
				     status, *executed, *illegal_gpa);
	}
	amdvi_req_put(req);
	return status;
}

/*
 * Flush the IOMMU TLB/walk caches (INVALIDATE_IOMMU_PAGES, GN=1, PDE) and
 * the endpoints' ATCs (INVALIDATE_IOTLB_PAGES, GN=1) of @pasid for
 * [start, end) on every endpoint in @ep_mask, then COMPLETION_WAIT.
 */
int amdvi_flush_pasid(struct amdvi_dev *ad, u32 ep_mask, u32 pasid,
		      unsigned long start, unsigned long end, bool atomic)
{
	enum amdvi_inv_bug bug = amdvi_inv_bug_mode;
	struct amdvi_cmd cmds[2 * AMDVI_MAX_ENDPOINTS];
	unsigned int i, n = 0;
	bool s;
	u64 addr = amdvi_inv_address(start, end, &s);

	/* planted: a ranged flush names only its first page */
	if (bug == AMDVI_INV_BUG_FIRST_PAGE && s &&
	    addr != CMD_INV_ALL_PAGES_ADDR) {
		addr = start & PAGE_MASK;
		s = false;
	}
	for (i = 0; i < ad->num_ep; i++) {
		if (!(ep_mask & BIT(i)))
			continue;
		if (bug != AMDVI_INV_BUG_ATC_ONLY)
			build_inv_iommu_pages(&cmds[n++], ad->ep[i].domid,
					      pasid, addr, s);
		if (bug != AMDVI_INV_BUG_IOMMU_ONLY)
			build_inv_iotlb_pages(&cmds[n++], ad->ep[i].devid,
					      pasid, addr, s);
	}
	if (!n)
		return 0;
	if (bug == AMDVI_INV_BUG_NO_WAIT)
		return amdvi_cmds_post(ad, cmds, n, atomic);
	return amdvi_cmds_sync(ad, cmds, n, atomic);
}

/*
 * One invalidation as an ordering script spells it: INVALIDATE_IOMMU_PAGES
 * for each endpoint's domain, then INVALIDATE_IOTLB_PAGES for each endpoint
 * (as @flags asks), for @addr in the S encoding, then COMPLETION_WAIT and
 * the wait for it when AMDVI_INV_WAIT.  Without the wait the commands have
 * still run when the COMMANDS response arrives.
 */
int amdvi_inv_pages(struct amdvi_dev *ad, u32 ep_mask, u32 pasid, u64 addr,
		    bool s, u32 flags)
{
	struct amdvi_cmd cmds[2 * AMDVI_MAX_ENDPOINTS];
	unsigned int i, n = 0;

	if (flags & AMDVI_INV_IOMMU)
		for (i = 0; i < ad->num_ep; i++)
			if (ep_mask & BIT(i))
				build_inv_iommu_pages(&cmds[n++],
						      ad->ep[i].domid, pasid,
						      addr, s);
	if (flags & AMDVI_INV_IOTLB)
		for (i = 0; i < ad->num_ep; i++)
			if (ep_mask & BIT(i))
				build_inv_iotlb_pages(&cmds[n++],
						      ad->ep[i].devid, pasid,
						      addr, s);
	if (flags & AMDVI_INV_WAIT)
		return amdvi_cmds_sync(ad, cmds, n, false);
	return n ? amdvi_cmds_send(ad, cmds, n) : 0;
}

int amdvi_complete_ppr(struct amdvi_dev *ad, u16 devid, u32 pasid, u16 tag,
		       u32 code)
{
	struct amdvi_cmd cmd;

	build_complete_ppr(&cmd, devid, pasid, tag, code);
	return amdvi_cmds_send(ad, &cmd, 1);
}

int amdvi_ep_index(struct amdvi_dev *ad, u16 devid)
{
	unsigned int i;

	for (i = 0; i < ad->num_ep; i++)
		if (ad->ep[i].devid == devid)
			return i;
	return -ENOENT;
}

/* ---- §2 GCR3 tables ---- */

/*
 * Set (cr3 != 0) or clear GCR3[@pasid] of endpoint @ep.  With GLX=1 the
 * root indexes PASID[15:9] and points to level-0 tables indexed by
 * PASID[8:0], allocated on demand.  Caller holds cfg_lock and flushes.
 */
int amdvi_gcr3_set(struct amdvi_dev *ad, unsigned int ep, u32 pasid, u64 cr3)
{
	struct amdvi_endpoint_state *es = &ad->ep[ep];
	u64 *table = es->gcr3_root;
	u64 val = cr3 ? ((cr3 & GCR3_ADDR_MASK) | GCR3_VALID) : 0;

	lockdep_assert_held(&ad->cfg_lock);
	if (pasid > ad->max_pasid)
		return -EINVAL;
	if (ad->glx == 1) {
		unsigned int hi = (pasid >> 9) & (GCR3_L1_ENTRIES - 1);

		if (!es->gcr3_l0[hi]) {
			if (!cr3)
				return 0;
			es->gcr3_l0[hi] = (u64 *)get_zeroed_page(GFP_KERNEL);
			if (!es->gcr3_l0[hi])
				return -ENOMEM;
			/* the table is zero before the walker can see it */
			smp_wmb();
			WRITE_ONCE(table[hi],
				   virt_to_phys(es->gcr3_l0[hi]) | GCR3_VALID);
		}
		table = es->gcr3_l0[hi];
	}
	WRITE_ONCE(table[pasid & (GCR3_ENTRIES - 1)], val);
	return 0;
}

/* ---- §1 device table ---- */

static void amdvi_write_dte(struct amdvi_dev *ad, unsigned int ep)
{
	struct amdvi_endpoint_state *es = &ad->ep[ep];
	u64 *dte = ad->dev_table + (size_t)es->devid * (DTE_ENTRY_SIZE / 8);
	u64 root = virt_to_phys(es->gcr3_root);
	u64 q0, q1, q2 = 0;

	q0 = DTE_Q0_V | DTE_Q0_TV | DTE_Q0_IR | DTE_Q0_IW;
	q1 = es->domid & DTE_Q1_DOMID_MASK;
	q1 |= DTE_Q1_I;				/* ATS allowed */
	if (ad->sva_ok) {
		/* Mode = 0: no host translation, output = GPA = SPA */
		q0 |= DTE_Q0_GV | ((u64)ad->glx << DTE_Q0_GLX_SHIFT);
		q0 |= ((root >> 12) & 0x7ULL) << DTE_Q0_GCR3_14_12_SHIFT;
		q1 |= ((root >> 15) & 0xffffULL) << DTE_Q1_GCR3_30_15_SHIFT;
		q1 |= ((root >> 31) & 0x1fffffULL) << DTE_Q1_GCR3_51_31_SHIFT;
		if (ad->five_level)
			q2 |= DTE_GPM_5LEVEL << DTE_Q2_GPM_SHIFT;
	}
	if (ad->eph)
		q0 |= DTE_Q0_PPR;

	WRITE_ONCE(dte[3], 0);
	WRITE_ONCE(dte[2], q2);
	WRITE_ONCE(dte[1], q1);
	/* the walker must not see V=1 with the old upper quadwords */
	smp_wmb();
	WRITE_ONCE(dte[0], q0);
	dev_dbg(ad->dev, "DTE[%04x] = %016llx %016llx %016llx %016llx\n",
		es->devid, q0, q1, q2, 0ULL);
}

/*
 * Test hook (AMDVI_IOC_DTE_ATS): clear or set DTE.I (ATS allowed) of
 * endpoint @ep, then INVALIDATE_DEVTAB_ENTRY + COMPLETION_WAIT.  Only the
 * I bit of quadword 1 changes, in one store: the DTE stays valid throughout.
 */
int amdvi_dte_set_ats(struct amdvi_dev *ad, unsigned int ep, bool ats)
{
	struct amdvi_cmd cmd;
	u64 *dte, q1;
	int ret;

	if (ep >= ad->num_ep)
		return -EINVAL;
	mutex_lock(&ad->cfg_lock);
	dte = ad->dev_table + (size_t)ad->ep[ep].devid * (DTE_ENTRY_SIZE / 8);
	q1 = READ_ONCE(dte[1]);
	q1 = ats ? q1 | DTE_Q1_I : q1 & ~DTE_Q1_I;
	WRITE_ONCE(dte[1], q1);
	build_inv_dte(&cmd, ad->ep[ep].devid);
	ret = amdvi_cmds_sync(ad, &cmd, 1, false);
	mutex_unlock(&ad->cfg_lock);
	dev_dbg(ad->dev, "DTE[%04x].I = %d: %d\n", ad->ep[ep].devid, ats, ret);
	return ret;
}

static int amdvi_set_devtab(struct amdvi_dev *ad)
{
	struct amdvi_set_devtab *sd;
	struct amdvi_req *req;
	u64 pages = ad->dev_table_size >> PAGE_SHIFT;
	int status;

	req = amdvi_req_alloc(AMDVI_REQ_SET_DEVTAB, sizeof(*sd), 0, 0, false,
			      GFP_KERNEL);
	if (!req)
		return -ENOMEM;
	sd = req->body;
	sd->dev_table_base = cpu_to_le64(virt_to_phys(ad->dev_table) |
					 (pages - 1));
	sd->control = cpu_to_le64(ad->control);
	status = amdvi_request(ad, req, false);
	amdvi_req_put(req);
	if (status) {
		dev_err(ad->dev, "SET_DEVTAB (control 0x%llx) failed: %d\n",
			ad->control, status);
		return status > 0 ? -EIO : status;
	}
	return 0;
}

int amdvi_send_epoch(struct amdvi_dev *ad)
{
	struct amdvi_oracle_epoch *oe;
	struct amdvi_req *req;
	int status;

	req = amdvi_req_alloc(AMDVI_REQ_ORACLE_EPOCH, sizeof(*oe), 0, 0, false,
			      GFP_KERNEL);
	if (!req)
		return -ENOMEM;
	oe = req->body;
	oe->gpa = cpu_to_le64(virt_to_phys(ad->epoch));
	status = amdvi_request(ad, req, false);
	amdvi_req_put(req);
	if (status)
		dev_warn(ad->dev, "ORACLE_EPOCH failed: %d\n", status);
	return status > 0 ? -EIO : status;
}

/* §4 of docs/protocol.md: INFO is in ad->info; set up the IOMMU. */
int amdvi_iommu_init(struct amdvi_dev *ad)
{
	struct amdvi_cmd cmds[AMDVI_MAX_ENDPOINTS + 1];
	unsigned int i, n = 0, pasmax, gats;
	u32 max_devid = 0, flags;
	int ret;

	ad->efr = le64_to_cpu(ad->info.efr);
	flags = le32_to_cpu(ad->info.flags);
	ad->num_ep = min_t(u32, le32_to_cpu(ad->info.num_endpoints),
			   AMDVI_MAX_ENDPOINTS);
	for (i = 0; i < ad->num_ep; i++) {
		u16 devid = le16_to_cpu(ad->info.endpoint_devid[i]);

		if (devid == AMDVI_DEVID_NONE) {
			ad->num_ep = i;
			break;
		}
		ad->ep[i].devid = devid;
		ad->ep[i].domid = i + 1;
		max_devid = max_t(u32, max_devid, devid);
	}
	if (!ad->num_ep) {
		dev_err(ad->dev, "INFO reports no endpoints\n");
		return -ENODEV;
	}

	pasmax = (ad->efr >> EFR_PASMAX_SHIFT) & EFR_PASMAX_MASK;
	gats = (ad->efr >> EFR_GATS_SHIFT) & EFR_GATS_MASK;
	ad->glx = ((ad->efr >> EFR_GLX_SHIFT) & EFR_GLX_MASK) >= 1 ? 1 : 0;
	ad->max_pasid = min_t(u32, (1U << min(pasmax + 1, 16U)) - 1, 0xffff);
	if (!ad->glx)
		ad->max_pasid = min_t(u32, ad->max_pasid, GCR3_ENTRIES - 1);
	ad->five_level = pgtable_l5_enabled();
	ad->sva_ok = (ad->efr & EFR_GT_SUP) && ad->max_pasid > 0;
	if (ad->sva_ok && ad->five_level && gats < 1) {
		dev_err(ad->dev,
			"guest uses 5-level paging but EFR.GATS=%u (4-level walker): SVA disabled\n",
			gats);
		ad->sva_ok = false;
	}
	ad->ppr_ok = !!(ad->efr & EFR_PPR_SUP);
	ad->eph = ad->ppr_ok && (ad->efr & EFR_EPH_SUP);

	ad->control = CTRL_IOMMU_EN | CTRL_EVT_LOG_EN;
	if (ad->efr & EFR_GT_SUP)
		ad->control |= CTRL_GT_EN;
	if (ad->ppr_ok)
		ad->control |= CTRL_PPR_LOG_EN | CTRL_PPR_EN;
	if (ad->eph)
		ad->control |= CTRL_EPH_EN;

	/* COMPLETION_WAIT store slots and the oracle epoch word */
	ad->sem_page = (u64 *)get_zeroed_page(GFP_KERNEL);
	ad->epoch = (u64 *)get_zeroed_page(GFP_KERNEL);
	if (!ad->sem_page || !ad->epoch)
		return -ENOMEM;

	/* device table: 32 bytes per devid up to the highest endpoint */
	ad->dev_table_size = PAGE_ALIGN((size_t)(max_devid + 1) *
					DTE_ENTRY_SIZE);
	ad->dev_table = alloc_pages_exact(ad->dev_table_size,
					  GFP_KERNEL | __GFP_ZERO);
	if (!ad->dev_table)
		return -ENOMEM;
	for (i = 0; i < ad->num_ep; i++) {
		ad->ep[i].gcr3_root = (u64 *)get_zeroed_page(GFP_KERNEL);
		if (!ad->ep[i].gcr3_root)
			return -ENOMEM;
		amdvi_write_dte(ad, i);
	}

	ret = amdvi_set_devtab(ad);
	if (ret)
		return ret;

	for (i = 0; i < ad->num_ep; i++)
		build_inv_dte(&cmds[n++], ad->ep[i].devid);
	if (ad->efr & EFR_IA_SUP)
		build_inv_all(&cmds[n++]);
	ret = amdvi_cmds_sync(ad, cmds, n, false);
	if (ret) {
		dev_err(ad->dev, "initial invalidation failed: %d\n", ret);
		return ret;
	}

	amdvi_send_epoch(ad);

	dev_info(ad->dev,
		 "amdvi: %u endpoint(s), EFR 0x%016llx, max PASID %u, GLX %u, %u-level guest tables, SVA %s, PPR %s%s, oracle %s\n",
		 ad->num_ep, ad->efr, ad->max_pasid, ad->glx,
		 ad->five_level ? 5 : 4, ad->sva_ok ? "on" : "off",
		 ad->ppr_ok ? "on" : "off", ad->eph ? " (EPH)" : "",
		 (flags & AMDVI_INFO_F_ORACLE) ? "on" : "off");
	return 0;
}

void amdvi_iommu_free(struct amdvi_dev *ad)
{
	unsigned int i, j;

	for (i = 0; i < AMDVI_MAX_ENDPOINTS; i++) {
		for (j = 0; j < GCR3_L1_ENTRIES; j++)
			free_page((unsigned long)ad->ep[i].gcr3_l0[j]);
		free_page((unsigned long)ad->ep[i].gcr3_root);
	}
	if (ad->dev_table)
		free_pages_exact(ad->dev_table, ad->dev_table_size);
	free_page((unsigned long)ad->sem_page);
	free_page((unsigned long)ad->epoch);
}

/* ---- §5 event log ---- */

static const char * const amdvi_event_names[16] = {
	[EVENT_ILL_DEV]		= "ILLEGAL_DEV_TABLE_ENTRY",
	[EVENT_IO_FAULT]	= "IO_PAGE_FAULT",
	[EVENT_DEV_TAB_ERR]	= "DEV_TAB_HARDWARE_ERROR",
	[EVENT_PAGE_TAB_ERR]	= "PAGE_TAB_HARDWARE_ERROR",
	[EVENT_ILL_CMD]		= "ILLEGAL_COMMAND_ERROR",
	[EVENT_CMD_HARD_ERR]	= "COMMAND_HARDWARE_ERROR",
	[EVENT_IOTLB_INV_TO]	= "IOTLB_INV_TIMEOUT",
	[EVENT_INV_DEV_REQ]	= "INVALID_DEVICE_REQUEST",
	[EVENT_INV_PPR_REQ]	= "INVALID_PPR_REQUEST",
	[0xa]			= "EVENT_COUNTER_ZERO",
	[0xd]			= "RMP_PAGE_FAULT",
	[0xe]			= "RMP_HW_ERROR",
};

static void amdvi_entry_words(const u8 *entry, u32 dw[4])
{
	const __le32 *le = (const __le32 *)entry;
	int i;

	for (i = 0; i < 4; i++)
		dw[i] = le32_to_cpu(le[i]);
}

void amdvi_handle_event(struct amdvi_dev *ad, const u8 *entry, u32 dropped)
{
	struct device *dev = ad->dev;
	u32 dw[4], type, devid, pasid, flags;
	u8 bus, slot, fn;
	u64 addr;

	amdvi_entry_words(entry, dw);
	type = EVENT_TYPE(dw[1]);
	devid = EVENT_DEVID(dw[0]);
	pasid = (dw[0] & 0xf0000) | (dw[1] & 0xffff);
	flags = EVENT_FLAGS(dw[1]);
	addr = ((u64)dw[3] << 32) | dw[2];
	bus = PCI_BUS_NUM(devid);
	slot = PCI_SLOT(devid & 0xff);
	fn = PCI_FUNC(devid & 0xff);

	spin_lock(&ad->ev_last_lock);
	memcpy(ad->ev_last[type], dw, sizeof(ad->ev_last[type]));
	amdvi_count(ad, AMDVI_MC_EVENTS);
	amdvi_count(ad, AMDVI_MC_EVENT_TYPE0 + type);
	if (dropped)
		amdvi_count_add(ad, AMDVI_MC_EVENTS_DROPPED, dropped);
	spin_unlock(&ad->ev_last_lock);
	if (dropped) {
		dev_warn_ratelimited(dev, "Event log overflow: %u event(s) dropped\n",
				     dropped);
	}

	switch (type) {
	case EVENT_IO_FAULT:
		if (flags & EVENT_FLAG_GN)
			dev_warn_ratelimited(dev,
					     "Event logged [IO_PAGE_FAULT device=%02x:%02x.%x pasid=0x%05x address=0x%llx flags=0x%04x]\n",
					     bus, slot, fn, pasid, addr, flags);
		else
			dev_warn_ratelimited(dev,
					     "Event logged [IO_PAGE_FAULT device=%02x:%02x.%x domain=0x%04x address=0x%llx flags=0x%04x]\n",
					     bus, slot, fn, pasid & 0xffff, addr,
					     flags);
		break;
	case EVENT_ILL_DEV:
	case EVENT_PAGE_TAB_ERR:
	case EVENT_INV_DEV_REQ:
		dev_warn_ratelimited(dev,
				     "Event logged [%s device=%02x:%02x.%x pasid=0x%05x address=0x%llx flags=0x%04x]\n",
				     amdvi_event_names[type], bus, slot, fn,
				     pasid, addr, flags);
		break;
	case EVENT_DEV_TAB_ERR:
	case EVENT_CMD_HARD_ERR:
		dev_warn_ratelimited(dev,
				     "Event logged [%s device=%02x:%02x.%x address=0x%llx flags=0x%04x]\n",
				     amdvi_event_names[type], bus, slot, fn,
				     addr, flags);
		break;
	case EVENT_ILL_CMD:
		dev_warn_ratelimited(dev,
				     "Event logged [ILLEGAL_COMMAND_ERROR address=0x%llx]\n",
				     addr);
		break;
	case EVENT_IOTLB_INV_TO:
		dev_warn_ratelimited(dev,
				     "Event logged [IOTLB_INV_TIMEOUT device=%02x:%02x.%x address=0x%llx]\n",
				     bus, slot, fn, addr);
		break;
	case EVENT_INV_PPR_REQ:
		/* laid out like a PPR log entry (§6.1) */
		pasid = (dw[0] >> 16) | (((dw[1] >> 10) & 0xf) << 16);
		dev_warn_ratelimited(dev,
				     "Event logged [INVALID_PPR_REQUEST device=%02x:%02x.%x pasid=0x%05x address=0x%llx flags=0x%04x tag=0x%03x]\n",
				     bus, slot, fn, pasid, addr, flags,
				     dw[1] & 0x3ff);
		break;
	default:
		dev_warn_ratelimited(dev,
				     "Event logged [%s event[0]=0x%08x event[1]=0x%08x event[2]=0x%08x event[3]=0x%08x]\n",
				     amdvi_event_names[type] ?: "UNKNOWN",
				     dw[0], dw[1], dw[2], dw[3]);
	}
}

void amdvi_events_read(struct amdvi_dev *ad, struct amdvi_ioc_events *u)
{
	unsigned int i;

	BUILD_BUG_ON(AMDVI_MC_EVENT_TYPE0 + AMDVI_EVENT_CODES > AMDVI_MC_NR);
	spin_lock(&ad->ev_last_lock);
	for (i = 0; i < AMDVI_EVENT_CODES; i++)
		u->count[i] = atomic64_read(&ad->ctr[AMDVI_MC_EVENT_TYPE0 + i]);
	memcpy(u->last, ad->ev_last, sizeof(u->last));
	u->dropped = atomic64_read(&ad->ctr[AMDVI_MC_EVENTS_DROPPED]);
	spin_unlock(&ad->ev_last_lock);
}

/* ---- §6 PPR log ---- */

void amdvi_handle_ppr(struct amdvi_dev *ad, const u8 *entry, u32 dropped)
{
	u32 dw[4], type, pasid;
	u16 devid, tag, flags;
	u64 addr;

	amdvi_entry_words(entry, dw);
	devid = dw[0] & 0xffff;
	pasid = (dw[0] >> 16) | (((dw[1] >> 10) & 0xf) << 16);
	tag = dw[1] & 0x3ff;
	flags = (dw[1] >> 16) & 0xfff;
	type = dw[1] >> 28;
	addr = (((u64)dw[3] << 32) | dw[2]) & PAGE_MASK;

	amdvi_count(ad, AMDVI_MC_PPR_ENTRIES);
	if (dropped) {
		amdvi_count_add(ad, AMDVI_MC_PPR_DROPPED, dropped);
		dev_warn_ratelimited(ad->dev,
				     "PPR log overflow: %u page request(s) dropped\n",
				     dropped);
	}
	if (type != PPR_TYPE_PAGE_REQ) {
		dev_warn_ratelimited(ad->dev,
				     "PPR log entry of unknown type %u: %08x %08x %08x %08x\n",
				     type, dw[0], dw[1], dw[2], dw[3]);
		return;
	}
	dev_dbg(ad->dev, "PPR devid %04x pasid 0x%05x tag 0x%03x flags 0x%03x address 0x%llx\n",
		devid, pasid, tag, flags, addr);
	amdvi_ppr_request(ad, devid, pasid, tag, flags, addr);
}
