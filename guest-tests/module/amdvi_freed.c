// SPDX-License-Identifier: GPL-2.0
/*
 * Freed-frame check at the kernel's secondary-TLB flush.
 *
 * The kernel may free a page only after every TLB that could still map it
 * has been flushed: mmu_gather flushes, then frees; COW, KSM and migration
 * drop the old page after ptep_clear_flush().  The secondary-TLB hook runs
 * inside such a flush.  Before the driver invalidates, this asks the device
 * (ORACLE_AUDIT) which of its cached translations for the range no longer
 * match the page tables, and looks at the frames they give.
 *
 * A frame whose folio has no reference left is suspect, but not yet proof:
 * the audit is a snapshot, and another thread's flush of an overlapping
 * range may have invalidated the entry and freed the page between the
 * snapshot and the reference count read.  So a suspect is confirmed by a
 * second audit taken after the count was seen at zero: an entry that is
 * still cached then, for the same address and frame, was cached while its
 * frame sat in the allocator, and no correct kernel allows that (the flush
 * that must precede the free would have removed it, and the cleared PTE
 * cannot refill it).  That is a DMA use-after-free window.
 *
 * It costs one request round trip per flush (two when there is a suspect);
 * the freed_check parameter turns it off.
 */

#include <linux/delay.h>
#include <linux/mm.h>
#include <linux/module.h>

#include "amdvi.h"

static bool freed_check = true;
module_param(freed_check, bool, 0644);
MODULE_PARM_DESC(freed_check,
		 "At each secondary-TLB flush, check that no frame the device still caches has been freed (default on)");

#define AMDVI_FREED_POLL_LOOPS	2000000		/* udelay(1) steps */
#define AMDVI_FINDING_STALE	5
#define AMDVI_SOURCE_ATC	1
#define AMDVI_SOURCE_IOTLB	2

struct amdvi_audit {
	struct amdvi_req *req;
	struct amdvi_finding *rec;
	u32 n;
};

/*
 * One ORACLE_AUDIT of [start, end) without sleeping (the hook may run under
 * the page-table lock): atomic allocation, polled answer.
 */
static int amdvi_audit_atomic(struct amdvi_dev *ad, u32 pasid,
			      unsigned long start, unsigned long end,
			      struct amdvi_audit *a)
{
	const size_t rlen = sizeof(struct amdvi_oracle_resp) +
		AMDVI_ORACLE_MAX_RECORDS * sizeof(struct amdvi_finding);
	struct amdvi_oracle_audit *oa;
	struct amdvi_oracle_resp *resp;
	struct amdvi_req *req;
	size_t room;
	int ret;

	req = amdvi_req_alloc(AMDVI_REQ_ORACLE_AUDIT, sizeof(*oa), rlen, 0,
			      false, GFP_ATOMIC);
	if (!req)
		return -ENOMEM;
	oa = req->body;
	oa->pasid = cpu_to_le32(pasid);
	oa->max_records = cpu_to_le32(AMDVI_ORACLE_MAX_RECORDS);
	oa->va = cpu_to_le64(start);
	oa->len = cpu_to_le64(end - start);
	ret = amdvi_req_submit(ad, req, GFP_ATOMIC);
	if (!ret)
		ret = amdvi_req_poll(ad, req, AMDVI_FREED_POLL_LOOPS);
	if (!ret && amdvi_req_status(req, sizeof(*resp)) != AMDVI_S_OK)
		ret = -EIO;
	if (ret) {
		amdvi_req_put(req);
		return ret;
	}
	resp = req->rbody;
	room = (req->used - sizeof(req->resp) - sizeof(*resp)) /
		sizeof(struct amdvi_finding);
	a->req = req;
	a->rec = (struct amdvi_finding *)(resp + 1);
	a->n = min_t(u32, le32_to_cpu(resp->nrecords), room);
	a->n = min_t(u32, a->n, AMDVI_ORACLE_MAX_RECORDS);
	return 0;
}

/* A STALE record of a data frame (walk-cache records hold table addresses). */
static bool amdvi_stale_data(const struct amdvi_finding *f)
{
	u16 source = le16_to_cpu(f->source);

	return le32_to_cpu(f->rule) == AMDVI_FINDING_STALE &&
	       (source == AMDVI_SOURCE_ATC || source == AMDVI_SOURCE_IOTLB);
}

static bool amdvi_frame_free(u64 pa)
{
	unsigned long pfn = pa >> PAGE_SHIFT;
	struct page *page;

	if (!pfn_valid(pfn))
		return false;
	page = pfn_to_page(pfn);
	return !PageReserved(page) && !folio_ref_count(page_folio(page));
}

static bool amdvi_audit_has(const struct amdvi_audit *a,
			    const struct amdvi_finding *f)
{
	u32 i;

	for (i = 0; i < a->n; i++)
		if (amdvi_stale_data(&a->rec[i]) &&
		    a->rec[i].source == f->source && a->rec[i].va == f->va &&
		    a->rec[i].cached_pa == f->cached_pa)
			return true;
	return false;
}

void amdvi_freed_scan(struct amdvi_dev *ad, u32 pasid, unsigned long start,
		      unsigned long end)
{
	struct amdvi_audit first, second = {};
	bool suspect = false;
	u32 i;

	if (!READ_ONCE(freed_check) || end <= start)
		return;
	amdvi_count(ad, AMDVI_MC_FREED_CHECKS);
	if (amdvi_audit_atomic(ad, pasid, start, end, &first))
		return;
	for (i = 0; i < first.n && !suspect; i++)
		suspect = amdvi_stale_data(&first.rec[i]) &&
			  amdvi_frame_free(le64_to_cpu(first.rec[i].cached_pa));
	if (suspect && !amdvi_audit_atomic(ad, pasid, start, end, &second)) {
		for (i = 0; i < first.n; i++) {
			const struct amdvi_finding *f = &first.rec[i];

			if (!amdvi_stale_data(f) ||
			    !amdvi_frame_free(le64_to_cpu(f->cached_pa)) ||
			    !amdvi_audit_has(&second, f))
				continue;
			amdvi_count(ad, AMDVI_MC_FREED_CACHED);
			dev_err_ratelimited(ad->dev,
					    "pasid %u va %#llx: %s caches frame %#llx, which the kernel freed before its secondary-TLB flush [%#lx, %#lx)\n",
					    pasid, le64_to_cpu(f->va),
					    le16_to_cpu(f->source) == AMDVI_SOURCE_ATC ?
					    "an ATC" : "the IOTLB",
					    le64_to_cpu(f->cached_pa) >> PAGE_SHIFT,
					    start, end);
		}
		amdvi_req_put(second.req);
	}
	amdvi_req_put(first.req);
}
