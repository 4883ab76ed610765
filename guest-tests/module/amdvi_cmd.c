// SPDX-License-Identifier: GPL-2.0
/*
 * amdvi_test: the command side of the driver, shaped like
 * drivers/iommu/amd/: the 128-bit command builders, their submission in
 * COMMANDS requests, the COMPLETION_WAIT wait and the flush helpers the
 * notifier and the ioctls use, with the planted invalidation bugs of the
 * fault matrix.  Bit layouts follow docs/amd-iommu.md (§ numbers below).
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

void amdvi_build_inv_dte(struct amdvi_cmd *cmd, u16 devid)
{
	memset(cmd, 0, sizeof(*cmd));
	cmd->data[0] = devid;
	cmd_set_type(cmd, CMD_INV_DEV_ENTRY);
}

void amdvi_build_inv_all(struct amdvi_cmd *cmd)
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
int amdvi_cmds_sync(struct amdvi_dev *ad, const struct amdvi_cmd *cmds,
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
